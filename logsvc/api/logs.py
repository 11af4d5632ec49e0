"""Read endpoints: query, stats, histogram."""
import orjson
from flask import Blueprint, Response

from schemas.params import histogram_params, query_params, stats_params

from .. import auth, cursor, entry, query, stats
from . import query_args, reader, state
from .errors import ApiError

blueprint = Blueprint("logs", __name__, url_prefix="/api/proxy-logs")

_CURSOR_EXCLUSIVE = ("last", "after_id", "offset", "order")


@blueprint.get("/_logs")
def list_logs():
    params = query_params.load(query_args())
    caller = reader()
    project_id, container_id = auth.authorize(
        caller, auth.READ, params.pop("project_id", None), params.pop("container_id", None))
    fmt = params.pop("format")
    if "cursor" in params:
        return _sweep(caller, params, project_id, container_id)
    page = query.Page(
        limit=params.pop("limit"), offset=params.pop("offset", 0),
        order=params.pop("order", "asc"), last=params.pop("last", None),
        after_id=params.pop("after_id", None),
        include_request_body=params.pop("include_request_body"),
        include_response_body=params.pop("include_response_body"))
    filters = query.Filters(project_id=project_id, container_id=container_id, **params)
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
    params = stats_params.load(query_args())
    project_id, container_id = auth.authorize(
        reader(), auth.READ, params.get("project_id"), params.get("container_id"))
    return stats.summary(project_id, container_id, params.get("since"), params.get("until"))


@blueprint.get("/_logs/stats/histogram")
def get_histogram():
    params = histogram_params.load(query_args())
    project_id, container_id = auth.authorize(
        reader(), auth.READ, params.get("project_id"), params.get("container_id"))
    until = params.get("until")
    until = entry.now_ms() if until is None else until
    since = params.get("since")
    since = until - 3_600_000 if since is None else since
    if since >= until:
        raise ApiError(400, "Invalid query parameter 'since': Must be earlier than until.")
    bucket_ms = stats.BUCKETS[params["bucket"]] * stats.MINUTE_MS
    if (until - since) // bucket_ms > stats.MAX_BUCKETS:
        raise ApiError(400, f"Invalid query parameter 'bucket': more than "
                            f"{stats.MAX_BUCKETS} buckets; use a larger bucket")
    return stats.histogram(params["bucket"], since, until, project_id, container_id)


def _sweep(caller, params, project_id, container_id):
    """One page of the operator's cross-tenant cursor sweep, as NDJSON."""
    if not caller.is_admin:
        raise ApiError(403, "Caller is not permitted to use the cross-tenant cursor")
    config = state().config
    if not config.admin_fanout:
        raise ApiError(400, "Invalid query parameter 'cursor': the cross-tenant cursor "
                            "is disabled (LOGSVC_ADMIN_FANOUT=false)")
    for name in _CURSOR_EXCLUSIVE:
        if name in params:
            raise ApiError(400, "Invalid query parameter 'cursor': it cannot be combined "
                                "with last, afterId, offset or order")
    page_size = params.pop("limit")
    with_request = params.pop("include_request_body")
    with_response = params.pop("include_response_body")
    token = params.pop("cursor")
    filters = query.Filters(project_id=project_id, container_id=container_id, **params)
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

