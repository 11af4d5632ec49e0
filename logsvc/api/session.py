"""Browser sessions: `POST /api/session` trades an Authorization header
(Basic or bearer) for an HttpOnly, SameSite=Strict cookie that the read
endpoints accept; `DELETE /api/session` ends it."""
import dataclasses

from flask import Blueprint, jsonify, request

from logsvc.access import credentials

from . import SESSION_COOKIE, caller, reader, state

blueprint = Blueprint("session", __name__, url_prefix="/api")


@blueprint.post("/session")
def open_session():
    found = reader(caller())  # from the Authorization header, never from a cookie
    if found.name == "admin":  # also the operator narrowed to a container's host
        found = dataclasses.replace(found, name=f"admin:{state().authenticator.admin_fingerprint}")
    cookie, expires_ms = credentials.open_session(found)
    response = jsonify({"status": "success", "expiresMs": expires_ms,
                        "projectId": found.project_id, "containerId": found.container_id,
                        "admin": found.is_admin})
    response.set_cookie(SESSION_COOKIE, cookie, expires=expires_ms / 1000, httponly=True,
                        samesite="Strict", secure=request.is_secure, path=_cookie_path())
    return response


@blueprint.get("/session")
def who():
    """The caller's scope (a session's, or the Authorization header's): what
    the web UI shows as signed in."""
    found = reader()
    return jsonify({"status": "success", "projectId": found.project_id,
                    "containerId": found.container_id, "admin": found.is_admin})


@blueprint.delete("/session")
def close_session():
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        credentials.close_session(cookie)
    response = jsonify({"status": "success"})
    response.delete_cookie(SESSION_COOKIE, path=_cookie_path(), httponly=True, samesite="Strict",
                           secure=request.is_secure)
    return response


def _cookie_path():
    """Where the application is mounted: the cookie goes to its paths only."""
    return request.script_root + "/" if request.script_root else "/"
