"""HTTP blueprints. Each view parses (schema), authorises (one call), calls a
service function and shapes the answer; errors are raised and rendered by
`errors`."""
import dataclasses

from flask import current_app, request
from marshmallow import ValidationError

from logsvc.access import credentials
from logsvc.access.principal import CAPABILITIES, FOREIGN_SCOPE, Forbidden, Unauthenticated

SESSION_COOKIE = "logsvc_session"


def state():
    """The per-application services bound by the factory."""
    return current_app.extensions["logsvc"]


def caller(allow_cookie=False):
    """The authenticated caller of the current request (401 otherwise).

    Only read endpoints pass `allow_cookie`: a browser session can read, but
    never write or administer (those need an Authorization header)."""
    found = getattr(request, "_logsvc_principal", None)
    if found is not None:
        return found
    authorization = request.headers.get("Authorization")
    cookie = request.cookies.get(SESSION_COOKIE)
    if not authorization and allow_cookie and cookie:
        found = credentials.principal_for_session(cookie)
        if found is None or (found.name.startswith("admin") and found.name != "admin:"
                             + state().authenticator.admin_fingerprint):
            # An admin session ends when the admin token changes.
            raise Unauthenticated("The session has ended; sign in again")
        request._logsvc_session = cookie
    else:
        found = state().authenticator.authenticate(authorization, request.remote_addr)
    request._logsvc_principal = found
    return found


def session_cookie():
    """The session cookie the request's caller was found by, or None."""
    return getattr(request, "_logsvc_session", None)


def reader(found=None):
    """The caller of a read (list, stats, stream and WebSocket connects,
    ws-token, session), counted against its scope's rate limit. `found` is a
    caller already known (a WebSocket ticket's, or one from the header only);
    by default the request's, a browser session included."""
    found = host_scoped(found or caller(allow_cookie=True))
    if not found.is_admin:
        state().limiter.hit(found.scope_key)
    return found


def host_scoped(found):
    """`found`, limited to the scope of the host the request came to when
    that host matches LOGSVC_SCOPE_HOST (a container's own host name). A
    broader caller (the operator, a project-wide credential) is narrowed to
    it; a caller of another scope is refused."""
    scope_host = state().scope_host
    # The raw Host header (after trusted-proxy handling): werkzeug's
    # request.host refuses names with "_", which project ids often have;
    # the pattern itself only matches letters, digits, "-" and "_".
    host = request.environ.get("HTTP_HOST", "")
    scope = scope_host.match(host) if scope_host is not None else None
    if scope is None:
        return found
    project_id, container_id = scope
    if not found.is_admin and (found.project_id != project_id or (
            found.container_id is not None and container_id is not None
            and found.container_id != container_id)):
        raise Forbidden(FOREIGN_SCOPE)
    return dataclasses.replace(
        found, project_id=project_id, container_id=container_id or found.container_id,
        is_admin=False, capabilities=CAPABILITIES if found.is_admin else found.capabilities)


def query_args(schema):
    """The query string as a dict for `schema` to load. A parameter that
    takes a list (its field has a `joiner`) may be repeated: its values are
    joined. Repeating any other one is a 400 naming it: `projectId=a&
    projectId=b` would otherwise ask for a project called "a,b"."""
    joiners = {field.data_key or name: getattr(field, "joiner", None)
               for name, field in schema.fields.items()}
    args = {}
    for key, values in request.args.lists():
        if len(values) > 1 and joiners.get(key) is None and key in joiners:
            raise ValidationError({key: [f"Given {len(values)} times; it takes one value."]})
        args[key] = (joiners.get(key) or ",").join(values)
    return args


def blueprints():
    from . import admin, alerts, ingest, logs, loki, ops, session, shippers, stream, ui

    return (ops.blueprint, logs.blueprint, ingest.blueprint, admin.blueprint,
            session.blueprint, stream.blueprint, alerts.blueprint, shippers.blueprint,
            loki.blueprint, ui.blueprint)
