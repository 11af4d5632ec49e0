"""Who is calling, and what they may see.

`Authenticator.authenticate` resolves an Authorization header to a
`Principal` (principal.py): the operator (admin token, every tenant) or a
scoped caller bound to a project and optionally a container, with the
capabilities it was granted.

Credentials:
- `Bearer <admin token>`: LOGSVC_ADMIN_TOKEN, or generated once into
  `<data dir>/admin_token` (mode 0600) and shared by every process.
- `Bearer lst_<id>.<secret>`: a scoped API token (credentials.py).
- `Bearer <JWT>`: HS256 with LOGSVC_JWT_SECRET; claims `projectId`
  (required), `containerId`, `capabilities`, `exp` (required). Every other
  algorithm, `none` included, is refused.
- `Basic user:password`: a scoped user (credentials.py).
Secrets are compared as digests with `hmac.compare_digest`.
"""
import base64
import binascii
import hmac

import jwt

from . import credentials
from .limits import RateLimited
from .principal import ADMIN, Principal, Unauthenticated, granted_capabilities
from .secret import digest, load_secret


class Authenticator:
    """Resolves an Authorization header to a Principal."""

    def __init__(self, admin_token, jwt_secret="", failures=None):
        self._admin_digest = digest(admin_token)
        self._jwt_secret = jwt_secret
        self._failures = failures  # a limits.FailureLimiter, or None
        # Basic credentials checked lately (see credentials.principal_for_password).
        self._verified = {}

    @property
    def admin_fingerprint(self):
        """Names the admin token in force, without revealing it: an admin
        browser session records it, and ends when the token changes."""
        return self._admin_digest[:16]

    def authenticate(self, authorization, client=None):
        """`client`: the caller's address, for the limit on failed
        password checks."""
        if not authorization:
            raise Unauthenticated("Credentials are required")
        scheme, _, credential = authorization.partition(" ")
        scheme, credential = scheme.lower(), credential.strip()
        if scheme == "basic" and credential:
            username, password = _basic(credential)
            return self._from_password(username, password, client)
        if scheme != "bearer" or not credential:
            raise Unauthenticated("Use Authorization: Bearer <token> or Basic")
        if hmac.compare_digest(digest(credential), self._admin_digest):
            return ADMIN
        if credential.startswith(credentials.TOKEN_PREFIX):
            found = credentials.principal_for_token(credential)
            if found is None:
                raise Unauthenticated("The token is not valid or was revoked")
            return found
        if credential.count(".") == 2 and self._jwt_secret:
            return self._from_jwt(credential)
        raise Unauthenticated("The token is not valid")

    def _from_password(self, username, password, client):
        """A user's password, limited by failures per client address and
        per user name. Each attempt is counted before its (slow) check and
        given back if it succeeds, so the limits hold exactly under
        concurrency. The limit by name spares the addresses the user signed
        in from lately (see FailureLimiter.known_good): strangers' wrong
        guesses cannot lock the user out of a place they use."""
        limiter = self._failures
        counted = []
        if limiter is not None:
            keys = [f"client:{client}"] if client else []
            trusted = limiter.known_good(username, client)
            if not trusted:
                keys.append(f"user:{username}")
            for key in keys:
                wait = limiter.reserve(key)
                if wait:
                    for taken in counted:
                        limiter.refund(taken)
                    raise RateLimited(wait, "Too many failed sign-ins from this address or for "
                                            "this user; try again later")
                counted.append(key)
        found = credentials.principal_for_password(username, password, self._verified)
        if found is None:
            if limiter is not None and trusted:
                limiter.failed(f"user:{username}")
            raise Unauthenticated("Unknown user or wrong password")
        if limiter is not None:
            for key in counted:
                limiter.refund(key)
            if not trusted:
                limiter.remember_good(username, client)
        return found

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


def load_admin_token(config):
    """LOGSVC_ADMIN_TOKEN, or the token generated once in the data dir."""
    if config.admin_token:
        return config.admin_token
    return load_secret(config, "admin_token", prefix="lsa_")


def _basic(credential):
    try:
        decoded = base64.b64decode(credential, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthenticated("Malformed Basic credentials") from None
    username, sep, password = decoded.partition(":")
    if not sep or not username or "\x00" in decoded:
        raise Unauthenticated("Malformed Basic credentials")
    return username, password
