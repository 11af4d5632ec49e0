"""Endpoints for the log shippers people already run (shipped.py maps their
payloads to entries):

- OTLP/HTTP logs: `POST /otlp/v1/logs`, protobuf (the SDKs' default) or
  JSON, gzip or not; answered with an ExportLogsServiceResponse in the
  request's encoding, its `partialSuccess` counting the records refused.
- Loki push: `POST /loki/api/v1/push`, snappy-compressed protobuf (what
  Promtail, Alloy and Vector's `loki` sink send) or JSON: 204.
- Elasticsearch bulk: `POST /elasticsearch/_bulk` and
  `/elasticsearch/{index}/_bulk` (`index` and `create` actions, an item
  result each, `errors`), and `GET /elasticsearch/` answering as a
  cluster's root, with the `X-Elastic-Product` header the official clients
  look for. A document's `_id` is kept for the idempotency window
  (ingest.DocumentKeys): sent again, it is not stored twice.

Every one writes with the caller's credential, as `_ingest` does: a scoped
writer's entries take its scope, and one naming another is refused (that
item only); the request size and entry count limits apply.
"""
import time

import orjson
from flask import Blueprint, Response, request

from logsvc.access.principal import WRITE, authorize
from logsvc.store import ingest

from . import caller, lokiproto, shipped, state
from .errors import ApiError

blueprint = Blueprint("shippers", __name__)
_CHUNK = ingest.MAX_REJECTIONS_LISTED  # every refusal of a chunk is listed


def _writer():
    found = caller()
    authorize(found, WRITE)
    return found


def _body():
    config = state().config
    return ingest.decoded_body(request.get_data(cache=False),
                               request.headers.get("Content-Encoding", ""),
                               config.max_request_bytes)


def _store(entries, found, keys=None):
    """Store the entries (in chunks whose refusals are all listed): the id
    of each entry stored (None for one refused), the reasons of the
    refused, in order, and the indexes of the entries not stored because
    their key (`keys`, beside the entries: an Elasticsearch `_id`) was
    stored before, whose id is then the stored entry's."""
    config = state().config
    if len(entries) > config.max_entries_per_request:
        raise ingest.PayloadTooLarge(
            f"more than {config.max_entries_per_request} entries in one request "
            "(LOGSVC_MAX_ENTRIES_PER_REQUEST); send smaller batches")
    if not config.idempotency_window_s:
        keys = None
    scope = "*" if found.is_admin else found.scope_key
    ids, reasons, duplicates = [], [], set()
    for start in range(0, len(entries), _CHUNK):
        part = entries[start:start + _CHUNK]
        part_keys = keys[start:start + _CHUNK] if keys and any(keys) else None
        known, first_of, sent = {}, {}, list(range(len(part)))
        for _ in range(_ATTEMPTS):
            doc_keys = None
            if part_keys:
                # Sent: the entries without a key, and the first of each key
                # not stored yet.
                known, first_of = ingest.DocumentKeys.stored(scope, part_keys), {}
                for at, key in enumerate(part_keys):
                    if key is not None and key not in known:
                        first_of.setdefault(key, at)
                sent = [at for at, key in enumerate(part_keys)
                        if key is None or first_of.get(key) == at]
                doc_keys = ingest.DocumentKeys(scope, [part_keys[at] for at in sent],
                                               config.idempotency_window_s)
            result = ingest.ingest([part[at] for at in sent], config, found.scope, key=doc_keys)
            if result is not ingest.DocumentKeys.AGAIN:
                break
        else:
            raise ApiError(503, "documents with the same _id are being stored by other "
                                "requests; retry", headers={"Retry-After": "1"})
        refused = {sent[r["index"]]: r["errors"] for r in result["rejected"]}
        stored, next_id = {}, result["firstId"]
        for at in sent:
            if at not in refused:
                stored[at] = next_id
                next_id += 1
        for at in range(len(part)):
            key = part_keys[at] if part_keys else None
            if at in stored or at in refused:
                ids.append(stored.get(at))
                reasons.append(refused.get(at))
            elif key in known:  # stored by an earlier request
                ids.append(known[key])
                reasons.append(None)
                duplicates.add(start + at)
            else:  # the same key earlier in this request
                first = first_of[key]
                ids.append(stored.get(first))
                reasons.append(refused.get(first))
                if first in stored:
                    duplicates.add(start + at)
    if any(i is not None for i in ids):
        state().tailer.notify()
    return ids, reasons, duplicates


# How often a chunk whose keys another request stored meanwhile is sent
# again (each time without the entries stored meanwhile).
_ATTEMPTS = 5


def _first_reason(reasons):
    """The first refusal, as text ("status: Must be ...")."""
    for reason in reasons:
        if reason:
            return "; ".join(f"{field}: {' '.join(map(str, problems))}"
                             for field, problems in reason.items())
    return ""


# --- OpenTelemetry -----------------------------------------------------------------

_PROTOBUF = ("application/x-protobuf", "application/protobuf")


@blueprint.post("/otlp/v1/logs")
def otlp_logs():
    found = _writer()
    media = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    body = _body()
    protobuf = media in _PROTOBUF
    try:
        if protobuf:
            entries = shipped.otlp_protobuf_entries(body)
        elif media in ("application/json", ""):
            entries = shipped.otlp_entries(orjson.loads(body))
        else:
            raise ApiError(415, f"Content-Type {media!r}: OTLP/HTTP takes application/x-protobuf "
                                "or application/json")
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise ApiError(400, f"Not an OTLP logs export request: {exc}") from None
    ids, reasons, _ = _store(entries, found)
    rejected = sum(1 for i in ids if i is None)
    why = _first_reason(reasons)
    if protobuf:
        return Response(shipped.otlp_response_protobuf(rejected, why),
                        mimetype="application/x-protobuf")
    answer = {"partialSuccess": {"rejectedLogRecords": str(rejected), "errorMessage": why}} \
        if rejected else {}
    return Response(orjson.dumps(answer), mimetype="application/json")


# --- Loki --------------------------------------------------------------------------

@blueprint.post("/loki/api/v1/push")
def loki_push():
    found = _writer()
    media = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if media not in ("application/json", "application/x-protobuf", ""):
        raise ApiError(415, f"Content-Type {media!r}: a Loki push is application/x-protobuf "
                            "(snappy) or application/json")
    try:
        if media == "application/x-protobuf":
            push = lokiproto.push_request_json(_body(), state().config.max_request_bytes)
        else:
            push = orjson.loads(_body())
        entries = shipped.loki_entries(push)
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise ApiError(400, f"Not a Loki push request: {exc}") from None
    ids, reasons, _ = _store(entries, found)
    refused = sum(1 for i in ids if i is None)
    if refused:
        raise ApiError(400, f"{refused} of {len(ids)} lines were refused (the others are "
                            f"stored): {_first_reason(reasons)}")
    return Response(status=204)


# --- Elasticsearch -----------------------------------------------------------------

_ES_HEADERS = {"X-Elastic-Product": "Elasticsearch"}
ES_VERSION = "8.17.0"


def _es(body, status=200):
    return Response(orjson.dumps(body), status=status, mimetype="application/json",
                    headers=_ES_HEADERS)


@blueprint.route("/elasticsearch", methods=["GET", "HEAD"])
@blueprint.route("/elasticsearch/", methods=["GET", "HEAD"])
def es_root():
    _writer()
    return _es({"name": "logsvc", "cluster_name": "logsvc", "cluster_uuid": "logsvc",
                "version": {"number": ES_VERSION, "build_flavor": "default",
                            "build_type": "logsvc", "lucene_version": "9.12.0",
                            "minimum_wire_compatibility_version": "7.17.0",
                            "minimum_index_compatibility_version": "7.0.0"},
                "tagline": "You Know, for Search"})


@blueprint.get("/elasticsearch/_cluster/health")
def es_health():
    _writer()
    return _es({"cluster_name": "logsvc", "status": "green", "timed_out": False,
                "number_of_nodes": 1, "number_of_data_nodes": 1})


@blueprint.route("/elasticsearch/_cat/health", methods=["GET", "HEAD"])
def es_cat_health():
    # What rsyslog's omelasticsearch asks before it sends.
    _writer()
    return Response(f"{int(time.time())} {time.strftime('%H:%M:%S', time.gmtime())} logsvc "
                    "green 1 1 0 0 0 0 0 0 - 100.0%\n", mimetype="text/plain",
                    headers=_ES_HEADERS)


# Elasticsearch takes a bulk request by POST or PUT (the official Python
# client sends PUT).
@blueprint.route("/elasticsearch/_bulk", methods=["POST", "PUT"])
@blueprint.route("/elasticsearch/<index>/_bulk", methods=["POST", "PUT"])
def es_bulk(index=None):
    found = _writer()
    started = time.monotonic()
    lines = [line for line in _body().split(b"\n") if line.strip()]
    entries, keys, items = [], [], []
    at = 0
    while at < len(lines):
        try:
            action = orjson.loads(lines[at])
        except orjson.JSONDecodeError:
            raise ApiError(400, f"Line {at + 1} of the bulk body is not JSON") from None
        if not isinstance(action, dict) or len(action) != 1:
            raise ApiError(400, f"Line {at + 1}: an action is an object with one key "
                                "(index, create, update or delete)")
        (name, meta), = action.items()
        meta = meta if isinstance(meta, dict) else {}
        target = meta.get("_index", index) or "logs"
        doc_id = meta.get("_id")
        if name == "delete":
            items.append((name, target, doc_id, "unsupported"))
            at += 1
            continue
        if at + 1 >= len(lines):
            raise ApiError(400, f"Line {at + 1}: the {name} action has no document after it")
        source_line = lines[at + 1]
        at += 2
        if name not in ("index", "create"):
            items.append((name, target, doc_id, "unsupported"))
            continue
        if doc_id is not None and not (isinstance(doc_id, str)
                                       and 0 < len(doc_id.encode()) <= MAX_ES_ID_BYTES):
            items.append((name, target, None, "bad id"))
            continue
        try:
            document = orjson.loads(source_line)
        except orjson.JSONDecodeError:
            document = None
        if not isinstance(document, dict):
            items.append((name, target, doc_id, "not an object"))
            continue
        items.append((name, target, doc_id, len(entries)))
        entries.append(shipped.es_entry(document))
        # An _id is unique within its index, as in Elasticsearch.
        keys.append(None if doc_id is None else f"\x1fes\x1f{target}\x1f{doc_id}")
    ids, reasons, duplicates = _store(entries, found, keys)
    out, errors = [], False
    for name, target, doc_id, what in items:
        shown_id = doc_id
        if isinstance(what, int) and ids[what] is not None:
            shown_id = doc_id if doc_id is not None else str(ids[what])
            if what in duplicates and name == "create":
                errors = True
                out.append({name: {"_index": target, "_id": shown_id, "status": 409, "error": {
                    "type": "version_conflict_engine_exception",
                    "reason": f"[{doc_id}]: version conflict, document already exists "
                              f"(current version [1])"}}})
                continue
            result, status = ("noop", 200) if what in duplicates else ("created", 201)
            out.append({name: {"_index": target, "_id": shown_id, "_version": 1,
                               "result": result, "status": status, "_seq_no": ids[what],
                               "_primary_term": 1,
                               "_shards": {"total": 1, "successful": 1, "failed": 0}}})
            continue
        errors = True
        if what == "unsupported":
            error = {"type": "action_request_validation_exception",
                     "reason": f"logsvc stores entries: the {name} action is not supported"}
        elif what == "bad id":
            error = {"type": "action_request_validation_exception",
                     "reason": f"_id must be a string of 1 to {MAX_ES_ID_BYTES} bytes"}
        elif what == "not an object":
            error = {"type": "document_parsing_exception",
                     "reason": "the document is not a JSON object"}
        else:
            error = {"type": "document_parsing_exception",
                     "reason": _first_reason([reasons[what]])}
        out.append({name: {"_index": target, "_id": shown_id, "status": 400, "error": error}})
    took = int((time.monotonic() - started) * 1000)
    return _es({"took": took, "errors": errors, "items": out})


MAX_ES_ID_BYTES = 512  # Elasticsearch's own limit
