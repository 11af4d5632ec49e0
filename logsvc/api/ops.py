"""Operations: health, metrics, and the API's own description."""
import functools
from importlib import resources

from flask import Blueprint, Response, request

from logsvc.access.principal import require_admin
from logsvc.store import db, metrics

from . import caller, openapi
from .errors import ApiError

blueprint = Blueprint("ops", __name__)


@blueprint.get("/healthz")
def healthz():
    try:
        db.call(lambda: db.database.execute_sql("SELECT 1").fetchone())
    except Exception:  # noqa: BLE001 - whatever the reason, the store is not answering
        raise ApiError(503, "The database does not answer") from None
    unwritable = db.current().unwritable
    if unwritable:
        # Still up for reads: a load balancer keeps sending them here.
        return {"status": "read-only", "writable": False, "message": unwritable}
    return {"status": "ok", "writable": True}


@blueprint.get("/metrics")
def get_metrics():
    require_admin(caller())
    return Response(metrics.render(), mimetype="text/plain; version=0.0.4")


@blueprint.get("/api/proxy-logs/openapi.json")
def openapi_document():
    # Paths are relative to where the application is mounted.
    return {**_document(), "servers": [{"url": request.script_root or "/"}]}


@blueprint.get("/api/proxy-logs/docs")
def docs_page():
    page = resources.files("logsvc.api").joinpath("static/docs.html").read_bytes()
    return Response(page, mimetype="text/html")


@functools.cache
def _document():
    return openapi.build()
