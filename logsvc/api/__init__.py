"""HTTP blueprints. Each view parses (schema), authorises (one call), calls a
service function and returns; errors are raised and rendered by `errors`."""
from flask import current_app, request

from ..auth import Unauthenticated

SESSION_COOKIE = "logsvc_session"


def state():
    """The per-application services bound by the factory."""
    return current_app.extensions["logsvc"]


def principal(allow_cookie=False):
    """The authenticated caller of the current request (401 otherwise).

    Only read endpoints pass `allow_cookie`: a browser session can read, but
    never write or administer (those need an Authorization header)."""
    from .. import principals

    found = getattr(request, "_logsvc_principal", None)
    if found is not None:
        return found
    authorization = request.headers.get("Authorization")
    cookie = request.cookies.get(SESSION_COOKIE)
    if not authorization and allow_cookie and cookie:
        found = principals.principal_for_session(cookie)
        if found is None:
            raise Unauthenticated("The session has ended; sign in again")
    else:
        found = state().authenticator.authenticate(authorization)
    request._logsvc_principal = found
    return found


def query_args():
    """The query string as a dict, repeated parameters joined by commas."""
    return {key: ",".join(values) for key, values in request.args.lists()}


def reader():
    """The caller of a read endpoint, counted against its scope's rate limit."""
    found = principal(allow_cookie=True)
    if not found.is_admin:
        state().limiter.hit(found.scope_key)
    return found


def blueprints():
    from . import admin, ingest, logs, ops, session, stream, ui
    return (ops.blueprint, logs.blueprint, ingest.blueprint, admin.blueprint,
            session.blueprint, stream.blueprint, ui.blueprint)
