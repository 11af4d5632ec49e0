"""Write endpoint: `POST /api/proxy-logs/_ingest`."""
from flask import Blueprint, jsonify, request

from logsvc.access.principal import WRITE, authorize
from logsvc.store import ingest

from . import caller, state

blueprint = Blueprint("ingest", __name__, url_prefix="/api/proxy-logs")


@blueprint.route("/_ingest", methods=["HEAD"])
def ingest_health():
    # Log shippers (Vector's health check) probe with HEAD; it reveals nothing.
    return "", 200


@blueprint.post("/_ingest")
def post_entries():
    found = caller()
    authorize(found, WRITE)
    config = state().config
    items = ingest.parse_payload(
        request.get_data(cache=False), request.headers.get("Content-Type", ""),
        request.headers.get("Content-Encoding", ""), config.max_request_bytes,
        config.max_entries_per_request)
    big = len(items) > BIG_REQUEST
    result = ingest.ingest(items, config, found.scope)
    del items
    if result["accepted"]:
        state().tailer.notify()  # this process's subscribers need not wait for a poll
    response = jsonify(result)
    if big:
        response.call_on_close(ingest.release_memory)
    return response


BIG_REQUEST = 20_000  # entries; after one, the worker gives its peak memory back
