"""Who is calling, and what they may see.

A `Principal` is the authenticated caller: the operator (admin token, every
tenant) or a scoped caller bound to a project and optionally a container,
with the capabilities it was granted. `Authenticator.authenticate` resolves
an Authorization header; `authorize` turns the scope a request asks for into
the scope it gets, or refuses it. Query, stats and ingest take that scope as
plain arguments.

Credentials:
- `Bearer <admin token>`: LOGSVC_ADMIN_TOKEN, or generated once into
  `<data dir>/admin_token` (mode 0600) and shared by every process.
- `Bearer lst_<id>.<secret>`: a scoped API token (principals.py).
- `Bearer <JWT>`: HS256 with LOGSVC_JWT_SECRET; claims `projectId`
  (required), `containerId`, `capabilities`, `exp` (required). Every other
  algorithm, `none` included, is refused.
- `Basic user:password`: a scoped user (principals.py).
Secrets are compared as digests with `hmac.compare_digest`.
"""
import base64
import binascii
import dataclasses
import hashlib
import hmac
import os
import secrets
import time

import jwt

READ = "logs"
WRITE = "ingest"
CAPABILITIES = (READ, WRITE)
FOREIGN_SCOPE = "Caller is not permitted to read logs for this scope"


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
    expires_ms: int = None  # JWTs: when the credential stops being valid

    def can(self, capability):
        return self.is_admin or capability in self.capabilities

    @property
    def scope(self):
        """(project_id, container_id) for a scoped caller, None for the operator."""
        return None if self.is_admin else (self.project_id, self.container_id)

    @property
    def scope_key(self):
        return f"{self.project_id}/{self.container_id or '*'}"


ADMIN = Principal(name="admin", capabilities=CAPABILITIES, is_admin=True)


def granted_capabilities(matrix):
    """Capabilities from a capability map: only the JSON value `true` grants
    ("*", "true", 1 grant nothing)."""
    if not isinstance(matrix, dict):
        return ()
    return tuple(c for c in CAPABILITIES if matrix.get(c) is True)


class Authenticator:
    """Resolves an Authorization header to a Principal."""

    def __init__(self, admin_token, jwt_secret=""):
        self._admin_digest = _digest(admin_token)
        self._jwt_secret = jwt_secret

    def authenticate(self, authorization):
        from . import principals

        if not authorization:
            raise Unauthenticated("Credentials are required")
        scheme, _, credential = authorization.partition(" ")
        scheme, credential = scheme.lower(), credential.strip()
        if scheme == "basic" and credential:
            username, password = _basic(credential)
            found = principals.principal_for_password(username, password)
            if found is None:
                raise Unauthenticated("Unknown user or wrong password")
            return found
        if scheme != "bearer" or not credential:
            raise Unauthenticated("Use Authorization: Bearer <token> or Basic")
        if hmac.compare_digest(_digest(credential), self._admin_digest):
            return ADMIN
        if credential.startswith(principals.TOKEN_PREFIX):
            found = principals.principal_for_token(credential)
            if found is None:
                raise Unauthenticated("The token is not valid or was revoked")
            return found
        if credential.count(".") == 2 and self._jwt_secret:
            return self._from_jwt(credential)
        raise Unauthenticated("The token is not valid")

    def _from_jwt(self, credential):
        try:
            claims = jwt.decode(credential, self._jwt_secret, algorithms=["HS256"],
                                options={"require": ["exp"]})
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("The JWT has expired") from None
        except jwt.InvalidTokenError:
            raise Unauthenticated("The JWT is not valid") from None
        project_id = claims.get("projectId")
        container_id = claims.get("containerId")
        if not isinstance(project_id, str) or not project_id or not (
                container_id is None or (isinstance(container_id, str) and container_id)) or (
                "\x00" in project_id + (container_id or "")):
            raise Unauthenticated("The JWT must carry a projectId (and may carry a containerId)")
        return Principal(name=f"jwt:{claims.get('sub', '')}", project_id=project_id,
                         container_id=container_id,
                         capabilities=granted_capabilities(claims.get("capabilities")),
                         expires_ms=int(claims["exp"]) * 1000)


def authorize(principal, capability, project_id=None, container_id=None):
    """The (project_id, container_id) a request by `principal` works on.

    The operator gets what it asked for (None = all). A scoped caller gets
    its own scope; asking for another project or container is Forbidden.
    """
    if not principal.can(capability):
        if capability == READ:
            raise Forbidden(FOREIGN_SCOPE)
        raise Forbidden("Caller is not permitted to write logs")
    if principal.is_admin:
        return project_id, container_id
    if project_id is not None and project_id != principal.project_id:
        raise Forbidden(FOREIGN_SCOPE)
    if principal.container_id is not None:
        if container_id is not None and container_id != principal.container_id:
            raise Forbidden(FOREIGN_SCOPE)
        container_id = principal.container_id
    return principal.project_id, container_id


def require_admin(principal):
    if not principal.is_admin:
        raise Forbidden("This needs the admin token")


def load_admin_token(config):
    """LOGSVC_ADMIN_TOKEN, or the token generated once in the data dir."""
    if config.admin_token:
        return config.admin_token
    return load_secret(config, "admin_token", prefix="lsa_")


def load_secret(config, name, prefix=""):
    """A random secret kept in `<data dir>/<name>` (mode 0600), created by
    whichever process gets there first and read by all others."""
    path = os.path.join(config.data_dir, name)
    os.makedirs(config.data_dir, exist_ok=True)
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


def _basic(credential):
    try:
        decoded = base64.b64decode(credential, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthenticated("Malformed Basic credentials") from None
    username, sep, password = decoded.partition(":")
    if not sep or not username or "\x00" in decoded:
        raise Unauthenticated("Malformed Basic credentials")
    return username, password


def _digest(secret):
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()
