"""Read endpoints: query, stats, histogram."""
import orjson
from flask import Blueprint, Response

from logsvc import entry
from logsvc.access.principal import READ, Forbidden, authorize
from logsvc.store import cursor, query, stats
from logsvc.store.filters import Filters
from schemas.params import histogram_params, query_params, stats_params

from . import query_args, reader, state

blueprint = Blueprint("logs", __name__, url_prefix="/api/proxy-logs")


@blueprint.get("/_logs")
def list_logs():
    params = query_params.load(query_args(query_params))
    found = reader()
    project_id, container_id = authorize(
        found, READ, params.pop("project_id", None), params.pop("container_id", None))
    fmt = params.pop("format")
    if "cursor" in params:
        if not found.is_admin:
            raise Forbidden("Caller is not permitted to use the cross-tenant cursor")
        with state().gate.turn(found.scope_key):
            return _sweep(params, project_id, container_id)
    around = params.pop("around", None)
    page = query.Page(
        limit=params.pop("limit"), offset=params.pop("offset", 0),
        order=params.pop("order", "asc"), last=params.pop("last", None),
        after_id=params.pop("after_id", None),
        include_request_body=params.pop("include_request_body"),
        include_response_body=params.pop("include_response_body"))
    filters = Filters(project_id=project_id, container_id=container_id, **params)
    with state().gate.turn(found.scope_key):
        if around is not None:
            result = query.list_around(filters, around, page.limit, page)
        else:
            result = query.list_entries(filters, page)
    if fmt == "json":
        return Response(orjson.dumps(result), mimetype="application/json")
    headers = {"X-Total-Count": str(result["total"]),
               "X-Total-Exact": str(result["totalExact"]).lower()}
    if result.get("nextAfterId") is not None:
        headers["X-Next-After-Id"] = str(result["nextAfterId"])
    if fmt == "ndjson":
        body = b"".join(orjson.dumps(e) + b"\n" for e in result["entries"])
        return Response(body, mimetype="application/x-ndjson", headers=headers)
    body = "".join(entry.text_line(e) + "\n" for e in result["entries"])
    return Response(body, mimetype="text/plain", headers=headers)


@blueprint.get("/_logs/stats")
def get_stats():
    params = stats_params.load(query_args(stats_params))
    top_routes, sort = params.pop("top_routes"), params.pop("sort")
    filters, key = _filters(params)
    with state().gate.turn(key):
        return _json(stats.summary(filters, top_routes, sort))


@blueprint.get("/_logs/stats/histogram")
def get_histogram():
    params = histogram_params.load(query_args(histogram_params))
    bucket = params.pop("bucket")
    filters, key = _filters(params)
    with state().gate.turn(key):
        return _json(stats.histogram(bucket, filters))


def _json(result):
    # Keys sorted, as Flask's own JSON has them; orjson writes a summary
    # with thousands of keys several times faster.
    return Response(orjson.dumps(result, option=orjson.OPT_SORT_KEYS),
                    mimetype="application/json")


def _filters(params):
    """The filters of a stats question, the caller's scope folded in, and
    the caller's scope key (see QueryGate)."""
    found = reader()
    project_id, container_id = authorize(
        found, READ, params.pop("project_id", None), params.pop("container_id", None))
    return Filters(project_id=project_id, container_id=container_id, **params), found.scope_key


def _sweep(params, project_id, container_id):
    """One page of the operator's cross-tenant cursor sweep, as NDJSON."""
    config = state().config
    cursor.check_sweep(params, config.admin_fanout)
    token, page_size = params.pop("cursor"), params.pop("limit")
    with_request = params.pop("include_request_body")
    with_response = params.pop("include_response_body")
    filters = Filters(project_id=project_id, container_id=container_id, **params)
    try:
        entries, next_cursor = cursor.page(token, filters, page_size, with_request,
                                           with_response, state().server_secret,
                                           config.cursor_ttl_s)
    except cursor.SnapshotExpired:
        trailer = {"__trailer": True, "error": "snapshot_expired", "status": 410}
        return Response(orjson.dumps(trailer) + b"\n", status=410,
                        mimetype="application/x-ndjson")
    lines = [orjson.dumps(e) for e in entries]
    lines.append(orjson.dumps({"__trailer": True, "nextCursor": next_cursor}))
    return Response(b"\n".join(lines) + b"\n", mimetype="application/x-ndjson")
