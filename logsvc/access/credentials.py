"""Scoped callers: API tokens, Basic users, browser sessions and WebSocket
tickets.

Secrets are never stored: a token's secret and a session cookie are kept as
SHA-256 digests (they are long random values, so a fast digest is enough),
a password as werkzeug's scrypt hash. Every comparison is constant-time.

A token reads `lst_<id>.<secret>`: the id finds the row, the digest of the
secret is compared with `hmac.compare_digest`.

Checking a password costs ~100 ms of CPU by design, which Basic auth would
pay on every request; a successful check is remembered for
`_VERIFIED_TTL_S` under a digest of the credentials (never the password),
and only while the user still exists with the same hash.
"""
import functools
import hmac
import secrets
import threading
import time

import orjson
from werkzeug.security import check_password_hash, generate_password_hash

from logsvc import runtime
from logsvc.entry import now_ms
from logsvc.store import db
from logsvc.store.db import database
from logsvc.store.models import ApiToken, Session, User, WsToken

from .principal import CAPABILITIES, Principal, granted_capabilities
from .secret import digest

TOKEN_PREFIX = "lst_"
SESSION_TTL_MS = 12 * 3_600_000
_VERIFIED_TTL_S = 60


class Conflict(ValueError):
    pass


class NotFound(LookupError):
    pass


# --- tokens -------------------------------------------------------------------

def create_token(name, project_id, container_id, capabilities):
    """Store a new token; return its description and, once, its secret."""
    secret = secrets.token_urlsafe(32)
    row = db.call(lambda: ApiToken.create(
        name=name, secret_digest=digest(secret), project_id=project_id,
        container_id=container_id, capabilities=_caps_json(capabilities),
        created_ms=now_ms()))
    return {**describe_token(row), "token": f"{TOKEN_PREFIX}{row.id}.{secret}"}


def list_tokens():
    return [describe_token(row) for row in
            db.call(lambda: list(ApiToken.select().order_by(ApiToken.id)))]


def revoke_token(token_id):
    def revoke():
        with database.atomic():
            row = ApiToken.get_or_none(ApiToken.id == token_id)
            if row is None:
                raise NotFound(f"No token with id {token_id}")
            if row.revoked_ms is None:
                row.revoked_ms = now_ms()
                row.save()
                Session.delete().where(Session.token_id == token_id).execute()
            return describe_token(row)
    return db.call(revoke)


def describe_token(row):
    return {"id": row.id, "name": row.name, "projectId": row.project_id,
            "containerId": row.container_id, "capabilities": orjson.loads(row.capabilities),
            "createdMs": row.created_ms, "revokedMs": row.revoked_ms}


def principal_for_token(credential):
    """The principal of a `lst_<id>.<secret>` token, or None."""
    if not credential.startswith(TOKEN_PREFIX):
        return None
    token_id, _, secret = credential[len(TOKEN_PREFIX):].partition(".")
    if not token_id.isdigit() or not secret or len(token_id) > 18:
        return None
    row = db.call(lambda: ApiToken.get_or_none(ApiToken.id == int(token_id)))
    if row is None or row.revoked_ms is not None:
        digest(secret)  # same work whether or not the id exists
        return None
    if not hmac.compare_digest(digest(secret), row.secret_digest):
        return None
    return _principal(f"token:{row.id}", row)


# --- users --------------------------------------------------------------------

def create_user(username, password, project_id, container_id, capabilities):
    password_hash = db.call(generate_password_hash, password)

    def create():
        with database.atomic():
            if User.get_or_none(User.username == username):
                raise Conflict(f"User {username!r} already exists")
            return User.create(username=username, password_hash=password_hash,
                               project_id=project_id, container_id=container_id,
                               capabilities=_caps_json(capabilities), created_ms=now_ms())
    return describe_user(db.call(create))


def list_users():
    return [describe_user(row) for row in
            db.call(lambda: list(User.select().order_by(User.username)))]


def delete_user(username):
    def delete():
        with database.atomic():
            if not User.delete().where(User.username == username).execute():
                raise NotFound(f"No user {username!r}")
            Session.delete().where(Session.username == username).execute()
    db.call(delete)


def describe_user(row):
    return {"username": row.username, "projectId": row.project_id,
            "containerId": row.container_id, "capabilities": orjson.loads(row.capabilities),
            "createdMs": row.created_ms}


_hasher = None


def _check_password(stored, password):
    """Password checks (about 100 ms of scrypt each) run on two threads of
    their own under gevent, so that a flood of them never holds the
    database threads that every other request needs; under a threaded
    server at most two request threads hash at once."""
    global _hasher
    if _hasher is None:
        _hasher = _pooled_hasher() if runtime.cooperative() else _bounded_hasher()
    return _hasher(stored, password)


def _pooled_hasher():
    import gevent.threadpool

    pool = gevent.threadpool.ThreadPool(2)
    return lambda stored, password: pool.apply(check_password_hash, (stored, password))


def _bounded_hasher():
    slots = threading.BoundedSemaphore(2)

    def check(stored, password):
        with slots:
            return check_password_hash(stored, password)
    return check


def principal_for_password(username, password, verified):
    """The principal of a Basic user whose password matches, or None.
    `verified` is the caller's memory of recent successful checks: digest
    of the credentials -> (password hash, monotonic deadline)."""
    row = db.call(lambda: User.get_or_none(User.username == username))
    key = digest(f"{len(username)}:{username}:{password}")
    remembered = verified.get(key)
    if row is not None and remembered and remembered[0] == row.password_hash \
            and remembered[1] > time.monotonic():
        return _principal(f"user:{row.username}", row)
    stored = row.password_hash if row is not None else _dummy_hash()
    if not _check_password(stored, password) or row is None:
        return None
    if len(verified) > 10_000:
        verified.clear()
    verified[key] = (row.password_hash, time.monotonic() + _VERIFIED_TTL_S)
    return _principal(f"user:{row.username}", row)


# --- sessions -----------------------------------------------------------------

def open_session(principal):
    """Store a session for `principal`; return the cookie value."""
    cookie = secrets.token_urlsafe(32)
    kind, _, ref = principal.name.partition(":")
    expires = now_ms() + SESSION_TTL_MS
    if principal.expires_ms:
        expires = min(expires, principal.expires_ms)
    db.call(lambda: Session.create(
        digest=digest(cookie), principal=orjson.dumps(_principal_fields(principal)).decode(),
        token_id=int(ref) if kind == "token" else None,
        username=ref if kind == "user" else None, expires_ms=expires))
    return cookie, expires


def principal_for_session(cookie):
    row = db.call(lambda: Session.get_or_none(Session.digest == digest(cookie)))
    if row is None or row.expires_ms <= now_ms():
        return None
    return _from_fields(row.principal)


def close_session(cookie):
    db.call(lambda: Session.delete().where(Session.digest == digest(cookie)).execute())


# --- WebSocket tickets ----------------------------------------------------------

WS_TOKEN_TTL_MS = 120_000


def issue_ws_token(principal, session_cookie=None):
    """A single-use ticket for `principal`, valid two minutes, on any worker.
    A ticket asked for with a browser session is worth no more than that
    session: it is refused once the session ends, and so is the WebSocket
    opened with it."""
    ticket = secrets.token_urlsafe(32)
    now = now_ms()
    fields = _principal_fields(principal)
    if session_cookie is not None:
        fields["session"] = digest(session_cookie)

    def store():
        with database.atomic():
            WsToken.delete().where(WsToken.expires_ms < now).execute()
            WsToken.create(digest=digest(ticket), expires_ms=now + WS_TOKEN_TTL_MS,
                           principal=orjson.dumps(fields).decode())
    db.call(store)
    return ticket


def revoked(principal, session_cookie=None, session_digest=None):
    """Why a credential checked earlier no longer holds (a token revoked,
    a user removed or moved to another scope, a JWT or a session expired
    or ended), or None while it still does. Open live streams ask it again
    and again. The session is named by its cookie or by the cookie's
    digest (a WebSocket ticket's)."""
    if principal.expires_ms is not None and principal.expires_ms <= now_ms():
        return "the credential has expired"
    kind, _, ref = principal.name.partition(":")
    if session_cookie is not None:
        session_digest = digest(session_cookie)

    def check():
        if session_digest is not None:
            row = Session.get_or_none(Session.digest == session_digest)
            if row is None or row.expires_ms <= now_ms():
                return "the session has ended"
        if kind == "token":
            row = ApiToken.get_or_none(ApiToken.id == int(ref))
            if row is None or row.revoked_ms is not None:
                return "the token was revoked"
        elif kind == "user":
            # The same name is not the same grant: a user removed and made
            # again in another scope, or with fewer capabilities, no longer
            # holds what this credential was given.
            row = User.get_or_none(User.username == ref)
            if row is None:
                return "the user was removed"
            if (row.project_id, row.container_id) != (principal.project_id, principal.container_id) \
                    or not set(principal.capabilities) <= set(_principal(ref, row).capabilities):
                return "the user's access was changed"
        return None
    return db.call(check)


def redeem_ws_token(ticket):
    """The principal a ticket was issued to, once; None if unknown, used or expired."""
    found, _ = redeem_ws_ticket(ticket)
    return found


def redeem_ws_ticket(ticket):
    """(principal, the digest of the session it was asked with or None),
    once; (None, None) if the ticket is unknown, used, expired or its
    credential or session no longer holds."""
    def take():
        with database.atomic():
            row = WsToken.get_or_none(WsToken.digest == digest(ticket))
            if row is None:
                return None
            # Only the process whose delete removed the row may use it: two
            # hosts redeeming the same ticket at once get one success.
            if not WsToken.delete().where(WsToken.digest == row.digest).execute():
                return None
            return row if row.expires_ms > now_ms() else None
    row = db.call(take)
    if row is None:
        return None, None
    fields = orjson.loads(row.principal)
    session = fields.pop("session", None)
    found = _from_fields(orjson.dumps(fields))
    # A ticket issued before its credential was revoked, or its session
    # ended, is worth nothing.
    if revoked(found, session_digest=session):
        return None, None
    return found, session


# --- helpers ------------------------------------------------------------------

def _principal(name, row):
    return Principal(name=name, project_id=row.project_id, container_id=row.container_id,
                     capabilities=granted_capabilities(orjson.loads(row.capabilities)))


def _from_fields(text):
    fields = orjson.loads(text)
    fields["capabilities"] = tuple(fields["capabilities"])
    return Principal(**fields)


def _principal_fields(principal):
    return {"name": principal.name, "project_id": principal.project_id,
            "container_id": principal.container_id,
            "capabilities": list(principal.capabilities), "is_admin": principal.is_admin,
            "expires_ms": principal.expires_ms}


def _caps_json(capabilities):
    return orjson.dumps({c: capabilities.get(c) is True for c in CAPABILITIES}).decode()





@functools.cache
def _dummy_hash():
    """Checked against when the user does not exist, so that an unknown name
    costs as much time as a wrong password."""
    return generate_password_hash(secrets.token_urlsafe(16))
