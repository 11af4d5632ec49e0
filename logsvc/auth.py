"""Who is calling, and what they may see.

A `Principal` is the authenticated caller: the operator (admin token, every
tenant) or a scoped caller bound to a project and optionally a container,
with a capability map. `authorize` turns the scope a request asks for into
the scope it gets, or refuses it; query, stats and ingest take that scope as
plain arguments.

Only the operator's admin token exists so far: from LOGSVC_ADMIN_TOKEN, or
generated once into `<data dir>/admin_token` (mode 0600) and reused by every
process on the host. It is kept as a SHA-256 digest in memory and compared
in constant time.
"""
import dataclasses
import hashlib
import hmac
import os
import secrets

READ = "logs"
WRITE = "ingest"
CAPABILITIES = (READ, WRITE)


class Unauthenticated(Exception):
    """No credential, or one that is not valid (401)."""


class Forbidden(Exception):
    """A valid credential that may not do this (403)."""


@dataclasses.dataclass(frozen=True)
class Principal:
    name: str
    project_id: str = None  # None: every tenant (the operator)
    container_id: str = None
    capabilities: tuple = ()
    is_admin: bool = False

    def can(self, capability):
        return self.is_admin or capability in self.capabilities

    @property
    def scope(self):
        """(project_id, container_id) for a scoped caller, None for the operator."""
        return None if self.is_admin else (self.project_id, self.container_id)


ADMIN = Principal(name="admin", capabilities=CAPABILITIES, is_admin=True)


def granted_capabilities(matrix):
    """Capabilities from a stored matrix: only the JSON value `true` grants
    ("*", "true", 1 grant nothing)."""
    return tuple(c for c in CAPABILITIES if isinstance(matrix, dict) and matrix.get(c) is True)


class Authenticator:
    """Resolves an Authorization header to a Principal."""

    def __init__(self, admin_token):
        self._admin_digest = _digest(admin_token)

    def authenticate(self, authorization):
        if not authorization:
            raise Unauthenticated("Credentials are required")
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise Unauthenticated("Use an Authorization: Bearer token")
        if hmac.compare_digest(_digest(credential), self._admin_digest):
            return ADMIN
        raise Unauthenticated("The token is not valid")


def authorize(principal, capability, project_id=None, container_id=None):
    """The (project_id, container_id) a request by `principal` works on.

    The operator gets what it asked for (None = all). A scoped caller gets
    its own scope; asking for another project or container is Forbidden.
    """
    if not principal.can(capability):
        verb = "read logs" if capability == READ else "write logs"
        raise Forbidden(f"Caller is not permitted to {verb}")
    if principal.is_admin:
        return project_id, container_id
    if project_id is not None and project_id != principal.project_id:
        raise Forbidden("Caller is not permitted to read logs for this scope")
    if principal.container_id is not None:
        if container_id is not None and container_id != principal.container_id:
            raise Forbidden("Caller is not permitted to read logs for this scope")
        container_id = principal.container_id
    return principal.project_id, container_id


def load_admin_token(config):
    """LOGSVC_ADMIN_TOKEN, or the token generated once in the data dir."""
    if config.admin_token:
        return config.admin_token
    path = os.path.join(config.data_dir, "admin_token")
    os.makedirs(config.data_dir, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_token(path)
    token = "lsa_" + secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


def _read_token(path):
    # Another process may have created the file an instant ago.
    for _ in range(50):
        with open(path) as handle:
            token = handle.read().strip()
        if token:
            return token
        import time
        time.sleep(0.01)
    raise RuntimeError(f"{path} is empty; delete it to generate a new admin token")


def _digest(secret):
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()
