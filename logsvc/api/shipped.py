"""What log shippers send, as entries: OTLP log records, Elasticsearch
bulk documents, Loki push streams.

Each reader turns one protocol's payload into entries in the ingest shape
(`_ingest`'s JSON), to be validated and stored by the same ingest as any
other entry: the caller's scope, limits and rules apply to each. A field
the entry has (method, url, status, client address, duration, trace id,
service, project, container, level) is taken from the names the protocol's
conventions give it; everything else goes to `data`.

Scope: a scoped credential's entries take its project (and container); the
operator's name theirs with an attribute, label or field `projectId`
(`containerId`; OpenTelemetry's and ECS's `container.id` too), else they go
to the project `default`, as any entry that names none.
"""
import base64
import datetime
import math

from logsvc.entry import LEVELS

MAX_DATA_KEYS = 200

# OpenTelemetry severity numbers (1-24) by the level they fall in.
_SEVERITY = {range(1, 9): "debug", range(9, 13): "info", range(13, 17): "warn",
             range(17, 25): "error"}
_LEVEL_OF_NUMBER = {number: level for span, level in _SEVERITY.items() for number in span}
_LEVEL_WORDS = {"trace": "debug", "debug": "debug", "info": "info", "information": "info",
                "notice": "info", "warn": "warn", "warning": "warn", "error": "error",
                "err": "error", "fatal": "error", "critical": "error", "crit": "error",
                "alert": "error", "emerg": "error", "emergency": "error", "panic": "error"}

# Names that set an entry field, in the order they are looked for.
_FIELDS = {
    "projectId": ("projectId", "logsvc.project_id", "project.id"),
    "containerId": ("containerId", "container.id", "logsvc.container_id"),
    "serviceName": ("serviceName", "service.name", "service"),
    "method": ("method", "http.request.method", "http.method"),
    "url": ("url", "url.full", "url.original", "http.url", "http.target"),
    "status": ("status", "http.response.status_code", "http.status_code"),
    "clientIp": ("clientIp", "client.address", "client.ip", "source.ip", "source.address",
                 "net.peer.ip", "http.client_ip"),
    "traceId": ("traceId", "trace.id", "trace_id", "traceid"),
    "route": ("route", "http.route"),
    "kind": ("kind",),
}


# name -> (the field it sets, its place among that field's names)
_FIELD_OF = {name: (field, rank) for field, names in _FIELDS.items()
             for rank, name in enumerate(names)}


# Names of a duration, with what turns their unit into milliseconds.
_DURATIONS = (("durationMs", 1), ("duration_ms", 1), ("http.duration_ms", 1),
              ("event.duration", 1e-6), ("http.server.request.duration", 1000),
              ("duration", 1000))


def _number(value):
    """A duration's number: an int or a float, or a string that spells one
    (Loki's structured metadata and syslog's structured data are strings);
    None for anything else, which then stays in `data`."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str) and value and len(value) <= 32:
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def level_of(word):
    if not isinstance(word, str):
        return None
    return _LEVEL_WORDS.get(word.strip().lower())


def _flat(value, prefix="", out=None):
    """A nested object as dotted keys (ECS documents nest `http.request.method`)."""
    out = {} if out is None else out
    for key, inner in value.items():
        if isinstance(inner, dict):
            _flat(inner, f"{prefix}{key}.", out)
        else:
            out[f"{prefix}{key}"] = inner
    return out


def entry_from(attributes, message=None, ts_ms=None, level=None, trace_id=None,
               duration_ms=None):
    """An entry (ingest shape) of flat attributes and what the protocol
    gives beside them."""
    remaining = dict(attributes)
    # Each attribute is looked up once: the field it names, and how early
    # its name comes among that field's names (the earliest present wins).
    chosen = {}
    for name, value in attributes.items():
        named = _FIELD_OF.get(name)
        if named is not None and value is not None and value != "":
            field, rank = named
            if field not in chosen or rank < chosen[field][0]:
                chosen[field] = (rank, name)
    item = {field: remaining.pop(name) for field, (_, name) in chosen.items()}
    path = remaining.pop("url.path", None)
    if "url" not in item and path is not None:
        query = remaining.pop("url.query", None)
        item["url"] = f"{path}?{query}" if query else path
    if isinstance(item.get("status"), str) and item["status"].isdigit():
        item["status"] = int(item["status"])
    for name in ("level", "log.level", "severity", "severity_text", "loglevel"):
        if name in remaining:
            found = level_of(remaining[name])
            if found is not None:
                remaining.pop(name)
                level = level or found
                break
    if level in LEVELS:
        item["level"] = level
    if trace_id and "traceId" not in item:
        item["traceId"] = trace_id
    for name, scale in _DURATIONS:
        if name in remaining:
            number = _number(remaining[name])
            if number is not None:
                remaining.pop(name)
                duration_ms = number * scale
                break
    if duration_ms is not None:
        item["durationMs"] = duration_ms
    if ts_ms is not None:
        item["tsMs"] = ts_ms
    item.setdefault("kind", "response" if "status" in item else "event")
    data = {}
    if message is not None:
        data["message"] = message
    for key, value in list(remaining.items())[:MAX_DATA_KEYS]:
        data[key] = value
    if data:
        item["data"] = data
    return item


# --- OpenTelemetry (OTLP/HTTP logs) -------------------------------------------------

def _any_value(value):
    """An OTLP AnyValue (its JSON mapping) as a plain value."""
    if not isinstance(value, dict):
        return value
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in value:
            return value[key]
    if "intValue" in value:
        try:
            return int(value["intValue"])
        except (TypeError, ValueError):
            return value["intValue"]
    if "bytesValue" in value:
        return value["bytesValue"]
    if "arrayValue" in value:
        return [_any_value(v) for v in _list(_object(value["arrayValue"], "arrayValue")
                                              .get("values"), "arrayValue.values")]
    if "kvlistValue" in value:
        return _attributes(_object(value["kvlistValue"], "kvlistValue").get("values"))
    return None


def _object(value, what):
    """`value` as an object of the request ({} for none); ValueError if it
    is something else (a body of the wrong shape is the sender's error)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be an object")
    return value


def _list(value, what):
    """`value` as a list of the request ([] for none), as `_object`."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{what} must be a list")
    return value


def _attributes(items):
    out = {}
    for item in _list(items, "attributes"):
        try:
            # Most attributes are strings: read without a call.
            key, value = item["key"], item["value"]["stringValue"]
        except (KeyError, TypeError):
            if not isinstance(item, dict) or not isinstance(key := item.get("key"), str):
                continue
            value = _any_value(item.get("value"))
        else:
            if type(key) is not str:
                continue
        out[key] = value
    return out


def _nanos_to_ms(value):
    try:
        nanos = int(value)
    except (TypeError, ValueError):
        return None
    return nanos // 1_000_000 if nanos >= 1_000_000 else None


def otlp_entries(request):
    """The entries of an ExportLogsServiceRequest in its JSON mapping (the
    protobuf form is turned into it first, see `otlp_from_protobuf`)."""
    if not isinstance(request, dict):
        raise ValueError("the body must be an ExportLogsServiceRequest object")
    entries = []
    for resource_logs in _list(request.get("resourceLogs"), "resourceLogs"):
        resource_logs = _object(resource_logs, "each of resourceLogs")
        resource = _attributes(_object(resource_logs.get("resource"), "resource")
                               .get("attributes"))
        for scope_logs in _list(resource_logs.get("scopeLogs"), "scopeLogs"):
            records = _object(scope_logs, "each of scopeLogs").get("logRecords")
            for record in _list(records, "logRecords"):
                if not isinstance(record, dict):
                    raise ValueError("logRecords must hold objects")
                attributes = {**resource, **_attributes(record.get("attributes"))}
                number = record.get("severityNumber")
                level = _LEVEL_OF_NUMBER.get(number) if type(number) is int else None
                level = level or level_of(record.get("severityText"))
                trace = record.get("traceId") or None
                body = _any_value(record.get("body")) if "body" in record else None
                ts = _nanos_to_ms(record.get("timeUnixNano")) or \
                    _nanos_to_ms(record.get("observedTimeUnixNano"))
                entries.append(entry_from(attributes, message=body, ts_ms=ts, level=level,
                                          trace_id=trace))
    return entries


def otlp_protobuf_entries(body):
    """The entries of an ExportLogsServiceRequest in protobuf, read from
    the message itself (as `otlp_entries` reads its JSON mapping)."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
        ExportLogsServiceRequest,
    )

    message = parsed(ExportLogsServiceRequest, body)
    entries = []
    for resource_logs in message.resource_logs:
        resource = _pb_attributes(resource_logs.resource.attributes)
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                attributes = {**resource, **_pb_attributes(record.attributes)}
                level = _LEVEL_OF_NUMBER.get(record.severity_number) or \
                    level_of(record.severity_text)
                body = _pb_value(record.body) if record.HasField("body") else None
                ts = _nanos_to_ms(record.time_unix_nano) or \
                    _nanos_to_ms(record.observed_time_unix_nano)
                entries.append(entry_from(attributes, message=body, ts_ms=ts, level=level,
                                          trace_id=record.trace_id.hex() or None))
    return entries


def parsed(kind, body):
    """A protobuf message of class `kind` read from `body`; ValueError if
    it is not one."""
    from google.protobuf.message import DecodeError

    message = kind()
    try:
        message.ParseFromString(body)
    except DecodeError as exc:
        raise ValueError(f"the body is not a {kind.DESCRIPTOR.name} in protobuf") from exc
    return message


def _pb_value(value):
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_pb_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _pb_attributes(value.kvlist_value.values)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return getattr(value, kind)


def _pb_attributes(items):
    return {item.key: _pb_value(item.value) for item in items}


def otlp_response_protobuf(rejected, message):
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
        ExportLogsServiceResponse,
    )

    response = ExportLogsServiceResponse()
    if rejected:
        response.partial_success.rejected_log_records = rejected
        response.partial_success.error_message = message
    return response.SerializeToString()


# --- Elasticsearch bulk -------------------------------------------------------------

def es_timestamp(value):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return int(parsed.timestamp() * 1000)


def es_entry(document):
    """An entry of an ECS-style document."""
    flat = _flat(document)
    ts = es_timestamp(flat.pop("@timestamp", None))
    message = flat.pop("message", None)
    return entry_from(flat, message=message, ts_ms=ts)


# --- Loki push ----------------------------------------------------------------------

def loki_entries(request):
    """The entries of a Loki push request (JSON): each line of a stream,
    its labels and structured metadata as attributes."""
    if not isinstance(request, dict) or not isinstance(request.get("streams"), list):
        raise ValueError("the body must be an object with a list of streams")
    entries = []
    for stream in request["streams"]:
        if not isinstance(stream, dict) or not isinstance(stream.get("values"), list):
            raise ValueError("each stream needs its labels (stream) and values")
        labels = stream.get("stream") or {}
        if not isinstance(labels, dict):
            raise ValueError("a stream's labels must be an object")
        for value in stream["values"]:
            if not isinstance(value, list) or len(value) < 2:
                raise ValueError("a value is [timestamp in ns, line] or [ns, line, metadata]")
            metadata = value[2] if len(value) > 2 and isinstance(value[2], dict) else {}
            entries.append(entry_from({**labels, **metadata}, message=value[1],
                                      ts_ms=_nanos_to_ms(value[0])))
    return entries
