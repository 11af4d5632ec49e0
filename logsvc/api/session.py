"""Browser sessions: `POST /api/session` trades an Authorization header
(Basic or bearer) for an HttpOnly, SameSite=Strict cookie that the read
endpoints accept; `DELETE /api/session` ends it."""
from flask import Blueprint, jsonify, request

from .. import principals
from . import SESSION_COOKIE, principal, state

blueprint = Blueprint("session", __name__, url_prefix="/api")


@blueprint.post("/session")
def open_session():
    caller = principal()  # from the Authorization header, never from a cookie
    if not caller.is_admin:
        state().limiter.hit(caller.scope_key)
    cookie, expires_ms = principals.open_session(caller)
    response = jsonify({"status": "success", "expiresMs": expires_ms,
                             "projectId": caller.project_id,
                             "containerId": caller.container_id,
                             "admin": caller.is_admin})
    response.set_cookie(SESSION_COOKIE, cookie, expires=expires_ms / 1000, httponly=True,
                        samesite="Strict", secure=request.is_secure, path="/")
    return response


@blueprint.delete("/session")
def close_session():
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        principals.close_session(cookie)
    response = jsonify({"status": "success"})
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="Strict")
    return response
