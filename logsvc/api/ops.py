"""Operations: health and metrics."""
from flask import Blueprint, Response

from .. import auth, db, metrics
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
