"""Secrets at rest: digests for comparison, and random secrets kept in the
data dir.

Long random secrets (tokens, session cookies, tickets) are kept only as
SHA-256 digests: they cannot be guessed, so a fast digest is enough, and
comparing digests with `hmac.compare_digest` takes constant time.
"""
import hashlib
import os
import secrets
import time


def digest(secret):
    """The hex SHA-256 digest of `secret`, as stored and compared."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def load_secret(config, name, prefix=""):
    """A random secret kept in `<data dir>/<name>` (mode 0600), created by
    whichever process gets there first and read by all others."""
    path = os.path.join(config.data_dir, name)
    os.makedirs(config.data_dir, mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_secret(path)
    value = prefix + secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


def _read_secret(path):
    for _ in range(50):  # another process may have created it an instant ago
        with open(path) as handle:
            value = handle.read().strip()
        if value:
            return value
        time.sleep(0.01)
    raise RuntimeError(f"{path} is empty; delete it to generate a new secret")
