"""Write endpoint: `POST /api/proxy-logs/_ingest`."""
from flask import Blueprint, jsonify, request

from logsvc.access.principal import WRITE, authorize
from logsvc.store import ingest

from . import caller, state
from .errors import ApiError

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
    body = request.get_data(cache=False)
    key = _idempotency_key("*" if found.is_admin else found.scope_key, body, config)
    if key is not None:
        replayed = key.replay()
        if replayed is not None:
            return _replayed(replayed)
    items = ingest.parse_payload(
        body, request.headers.get("Content-Type", ""),
        request.headers.get("Content-Encoding", ""), config.max_request_bytes,
        config.max_entries_per_request)
    big = len(items) > BIG_REQUEST
    result = ingest.ingest(items, config, found.scope, key=key)
    del items, body
    if key is not None and key.replayed:
        return _replayed(result)
    if result["accepted"]:
        state().tailer.notify()  # this process's subscribers need not wait for a poll
    response = jsonify(result)
    if big:
        response.call_on_close(ingest.release_memory)
    return response


def _idempotency_key(scope, body, config):
    raw = request.headers.get("Idempotency-Key")
    if raw is None or not config.idempotency_window_s:
        return None
    if not 1 <= len(raw) <= MAX_KEY_LENGTH or not all(0x21 <= ord(c) <= 0x7E for c in raw):
        raise ApiError(400, f"Invalid header 'Idempotency-Key': 1 to {MAX_KEY_LENGTH} "
                            "visible ASCII characters (a UUID is a good choice)")
    return ingest.IdempotencyKey(scope, raw, body, config.idempotency_window_s)


def _replayed(answer):
    response = jsonify(answer)
    response.headers["Idempotent-Replayed"] = "true"
    return response


MAX_KEY_LENGTH = 255
BIG_REQUEST = 20_000  # entries; after one, the worker gives its peak memory back
