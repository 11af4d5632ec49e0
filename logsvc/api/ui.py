"""The web UI: `/` and its static files under `/ui/`. The page signs in
through `/api/session` and then reads with the session cookie.

Every URL the page uses is relative to its `<base>`, which is where the
application is mounted (`SCRIPT_NAME`: a prefix that a proxy strips, or
werkzeug's DispatcherMiddleware), so the UI works at `/` and at `/logs/`.
"""
import functools
import html

from flask import Blueprint, Response, request

blueprint = Blueprint("ui", __name__, static_folder="static", static_url_path="/ui")


@blueprint.get("/")
def index():
    base = html.escape(request.script_root + "/", quote=True)
    return Response(_page().replace("__BASE__", base), mimetype="text/html",
                    headers={"Cache-Control": "no-cache"})


@functools.cache
def _page():
    with blueprint.open_resource("static/index.html") as page:
        return page.read().decode()
