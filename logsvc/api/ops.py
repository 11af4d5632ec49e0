"""Operations: health, metrics, and the API's own description."""
import functools
import time
from importlib import resources

from flask import Blueprint, Response, request

from logsvc.access.principal import require_admin
from logsvc.store import db, metrics

from . import caller, openapi, state
from .errors import ApiError

blueprint = Blueprint("ops", __name__)

PROBE_EVERY_S = 5.0


@blueprint.get("/healthz")
def healthz():
    try:
        db.call(lambda: db.database.execute_sql("SELECT 1").fetchone())
    except Exception:  # noqa: BLE001 - whatever the reason, the store is not answering
        raise ApiError(503, "The database does not answer") from None
    store = db.current()
    if store.unwritable and not state().config.read_only and time.monotonic() > store.probe_after:
        # Until a write succeeds the store is taken as unwritable; a health
        # check tries one (at most every few seconds), so that a disk freed
        # meanwhile is seen without waiting for the next ingest.
        store.probe_after = time.monotonic() + PROBE_EVERY_S
        try:
            db.call(db.probe_write)
        except Exception as exc:  # noqa: BLE001 - still unwritable, or why
            db.note_write(exc)
        else:
            db.note_write()
    unwritable = store.unwritable
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
