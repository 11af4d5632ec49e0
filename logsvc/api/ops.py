"""Operations: health, metrics, and the API's own description."""
import functools
from importlib import resources

from flask import Blueprint, Response

from .. import auth, db, metrics, openapi
from . import principal
from .errors import ApiError

blueprint = Blueprint("ops", __name__)


@blueprint.get("/healthz")
def healthz():
    try:
        db.call(lambda: db.database.execute_sql("SELECT 1").fetchone())
    except Exception:
        raise ApiError(503, "The database does not answer") from None
    return {"status": "ok"}


@blueprint.get("/metrics")
def get_metrics():
    auth.require_admin(principal())
    return Response(metrics.render(), mimetype="text/plain; version=0.0.4")


@blueprint.get("/api/proxy-logs/openapi.json")
def openapi_document():
    return _document()


@blueprint.get("/api/proxy-logs/docs")
def docs_page():
    page = resources.files("logsvc").joinpath("static/docs.html").read_bytes()
    return Response(page, mimetype="text/html")


@functools.cache
def _document():
    return openapi.build()
