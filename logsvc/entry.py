"""What a log entry is: its vocabulary, derived fields and rendering.

The marshmallow schemas in `schemas/entries.py` describe the entry at the
HTTP boundary; the ingest and query hot paths use the functions here
directly so they do not pay marshmallow's per-row cost. Both call the same
rules (`promote_level`, `cap_body`, `iso_from_ms`), and tests pin that the
fast paths produce exactly what the schemas produce.
"""
import re
import time
import uuid
from datetime import UTC, datetime, timedelta

import orjson

KINDS = ("request", "response", "event")
LEVELS = ("debug", "info", "warn", "error")
SOURCES = ("backend", "edge")
LEVEL_RANK = {name: rank for rank, name in enumerate(LEVELS)}
LEVEL_ALIASES = {"warning": "warn", "err": "error", "fatal": "error",
                 "critical": "error", "trace": "debug"}
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
EXCLUDED_CONTENT_PREFIXES = ("image/", "video/", "audio/", "font/")
EXCLUDED_CONTENT_TYPES = ("application/octet-stream",)
DEFAULT_PROJECT = "default"

# Columns of `entry` in the order the fast paths read and write them.
COLUMNS = ("id", "trace_id", "ts_ms", "kind", "level", "project_id",
           "container_id", "service_name", "method", "url", "client_ip",
           "status", "source", "data", "has_body", "body_truncated",
           "duration_ms", "route")
MAX_DURATION_MS = 86_400_000
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
MAX_ROUTE = 256


def promote_level(level, status):
    """A 5xx status makes an entry an error, a 4xx at least a warning."""
    if status is not None:
        if 500 <= status <= 599:
            return "error"
        if 400 <= status <= 499 and LEVEL_RANK[level] < LEVEL_RANK["warn"]:
            return "warn"
    return level


def default_level(status):
    return promote_level("info", status)


def status_class(status):
    if status is None or not 100 <= status <= 599:
        return ""
    return f"{status // 100}xx"


def new_trace_id(source):
    """UUID for edge entries, 32 hex digits for backend hops."""
    trace = uuid.uuid4()
    return str(trace) if source == "edge" else trace.hex


def is_excluded_content_type(content_type):
    if not content_type:
        return False
    base = content_type.split(";", 1)[0].strip().lower()
    return base.startswith(EXCLUDED_CONTENT_PREFIXES) or base in EXCLUDED_CONTENT_TYPES


def cap_body(body, content_type, max_bytes):
    """Return (body to store or None, truncated?)."""
    if body is None:
        return None, False
    if is_excluded_content_type(content_type):
        return None, True
    if "\x00" in body:
        # NUL cannot be stored in a PostgreSQL text column; both engines
        # store the same body, with U+FFFD in its place.
        body = body.replace("\x00", "\ufffd")
    encoded = body.encode("utf-8", "surrogatepass")
    if len(encoded) <= max_bytes:
        return body, False
    return encoded[:max_bytes].decode("utf-8", "ignore"), True


def now_ms():
    return time.time_ns() // 1_000_000


def iso_from_ms(ms):
    seconds, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def row_to_dict(row, bodies=None):
    """An `entry` row (a tuple in COLUMNS order) as the API's JSON object.

    `bodies` is None when no body was asked for, else a tuple
    (request_body or None, response_body or None, include_request,
    include_response).
    """
    (id_, trace_id, ts_ms, kind, level, project_id, container_id,
     service_name, method, url, client_ip, status, source, data,
     _has_body, body_truncated, duration_ms, route) = row
    out = {
        "id": id_, "traceId": trace_id, "tsMs": ts_ms, "tsIso": iso_from_ms(ts_ms),
        "kind": kind, "level": level, "projectId": project_id,
        "containerId": container_id, "serviceName": service_name,
        "method": method, "url": url, "clientIp": client_ip, "status": status,
        "source": source, "durationMs": _number(duration_ms), "route": route,
        "data": data,
    }
    if bodies is not None:
        request_body, response_body, with_request, with_response = bodies
        if with_request:
            out["requestBody"] = request_body
        if with_response:
            out["responseBody"] = response_body
        out["bodyTruncated"] = bool(body_truncated)
    return out


def _number(value):
    """A float that holds a whole number as an int (12, not 12.0)."""
    if value is None or not value.is_integer():
        return value
    return int(value)


# --- Routes ------------------------------------------------------------------
# A route is the url's path with the query string dropped and each id-like
# segment replaced by `{id}`, so `/v1/users/8812?x=1` and `/v1/users/9` are
# both `/v1/users/{id}`. Id-like: only digits; a UUID; 16 or more hex
# digits; or 16 or more letters, digits, `-` and `_` with at least one digit
# and one letter (opaque tokens such as `ord_9fKq2xLm3Np7`). Anything else
# (`v1`, `users`, `me`, `2fa`) is kept.

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_LONG_HEX = re.compile(r"[0-9a-fA-F]{16,}")
_TOKEN = re.compile(r"(?=[\w-]*\d)(?=[\w-]*[A-Za-z])[\w-]{16,}", re.ASCII)


def _id_like(segment):
    if segment.isascii() and segment.isdigit():
        return True
    # A UUID, a hex id or a token has 16 characters or more: most segments
    # (`v1`, `users`) are decided without a pattern.
    return len(segment) >= 16 and bool(
        _UUID.fullmatch(segment) or _LONG_HEX.fullmatch(segment) or _TOKEN.fullmatch(segment))


def derive_route(url):
    """The route of `url` (None when it has no path)."""
    if not url:
        return None
    path = url.split("?", 1)[0].split("#", 1)[0]
    if "://" in path[:16]:  # an absolute url: drop the scheme and host
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    if not path:
        return None
    route = "/".join("{id}" if _id_like(s) else s for s in path.split("/"))
    return route[:MAX_ROUTE]


def text_line(entry):
    """One human-readable line for `format=text` (and Loki's lines)."""
    status, duration = entry["status"], entry.get("durationMs")
    level, kind, container = entry["level"], entry["kind"], entry["containerId"]
    return (f"{entry['tsIso']} {_LEVEL_TEXT.get(level) or f'{level.upper():<5}'} "
            f"{_KIND_TEXT.get(kind) or f'{kind:<8}'} {entry['method'] or '-'} "
            f"{entry['url'] or '-'} {'-' if status is None else status} "
            f"{'-' if duration is None else f'{duration}ms'} {entry['serviceName'] or '-'} "
            f"{entry['projectId']}{'/' + container if container else ''} "
            f"trace={entry['traceId']} id={entry['id']}")


_LEVEL_TEXT = {level: f"{level.upper():<5}" for level in LEVELS}
_KIND_TEXT = {kind: f"{kind:<8}" for kind in KINDS}


# --- Coercion of ingested fields ------------------------------------------
# Each coercer takes a decoded JSON value and returns the stored value or
# raises ValueError with a message for the caller. The ingest fast path and
# the marshmallow schema (schemas/entries.py) both call these.

def _text(max_len, lower=False, upper=False):
    def coerce(value):
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError("Not a valid string.")
        if not value or len(value) > max_len:
            raise ValueError(f"Length must be between 1 and {max_len}.")
        if "\x00" in value:
            raise ValueError("Must not contain NUL characters.")
        if lower:
            return value.lower()
        if upper:
            return value.upper()
        return value
    return coerce


def _choice(allowed, aliases=None):
    def coerce(value):
        if not isinstance(value, str):
            raise ValueError("Not a valid string.")
        lowered = value.lower()
        if aliases:
            lowered = aliases.get(lowered, lowered)
        if lowered not in allowed:
            raise ValueError(f"Must be one of: {', '.join(allowed)}.")
        return lowered
    return coerce


def coerce_status(value):
    if value is None:
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if type(value) is not int:
        raise ValueError("Not a valid integer.")
    if not 100 <= value <= 599:
        raise ValueError("Must be between 100 and 599.")
    return value


def coerce_ts_ms(value):
    if type(value) is not int:
        raise ValueError("Not a valid integer (epoch milliseconds).")
    if not 0 <= value <= MAX_TS_MS:
        raise ValueError("Out of range.")
    return value


# Prometheus-style durations (`5m`, `1h30m`, `60000ms`, `1w`): what LogQL's
# ranges and steps and the since/until of a search are written in.
_DURATION_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
                   "w": 604_800_000, "y": 31_536_000_000}
_DURATION = re.compile(r"(?:[0-9]+(?:ms|s|m|h|d|w|y))+")
_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h|d|w|y)")


def parse_duration_ms(text):
    """A Prometheus-style duration in ms; ValueError if `text` is not one."""
    if not _DURATION.fullmatch(text):
        raise ValueError(f"not a duration: {text!r}")
    return sum(int(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(text))


def coerce_iso(value):
    if not isinstance(value, str):
        raise ValueError("Not a valid ISO-8601 date-time.")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("Not a valid ISO-8601 date-time.") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        ms = (parsed - _EPOCH) // _ONE_MS
    except OverflowError:
        raise ValueError("Out of range.") from None
    if not 0 <= ms <= MAX_TS_MS:
        raise ValueError("Out of range.")
    return ms


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


def coerce_timestamp(value):
    """`timestamp`: an ISO-8601 string, or epoch seconds as a number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not 0 <= value <= 253_402_300_799:
            raise ValueError("Out of range.")
        return int(round(value * 1000))
    return coerce_iso(value)


def coerce_data(value):
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("Not a valid JSON object.")
    return value


def coerce_body(value):
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        try:
            return orjson.dumps(value).decode()
        except TypeError as exc:
            raise ValueError(f"Not storable as JSON ({exc}).") from None
    raise ValueError("Not a valid string or JSON value.")


def coerce_bool(value):
    if type(value) is not bool:
        raise ValueError("Not a valid boolean.")
    return value


def coerce_duration(value):
    """Milliseconds: a number from 0 to a day (24 h)."""
    if type(value) not in (int, float):
        raise ValueError("Not a valid number (milliseconds).")
    if not 0 <= value <= MAX_DURATION_MS:  # also refuses NaN
        raise ValueError(f"Must be between 0 and {MAX_DURATION_MS}.")
    return float(value)


def coerce_ignored(value):
    return None


# input name -> (key in the normalized entry, coercer)
INPUT_FIELDS = {
    "traceId": ("trace_id", _text(128)),
    "tsMs": ("ts_ms", coerce_ts_ms),
    "tsIso": ("ts_iso", coerce_iso),
    "timestamp": ("timestamp", coerce_timestamp),
    "kind": ("kind", _choice(KINDS)),
    "level": ("level", _choice(LEVELS, LEVEL_ALIASES)),
    "projectId": ("project_id", _text(128)),
    "containerId": ("container_id", _text(128)),
    "serviceName": ("service_name", _text(128)),
    "method": ("method", _text(16, upper=True)),
    "url": ("url", _text(8192)),
    "clientIp": ("client_ip", _text(64)),
    "status": ("status", coerce_status),
    "source": ("source", _choice(SOURCES)),
    "data": ("data", coerce_data),
    "requestBody": ("request_body", coerce_body),
    "responseBody": ("response_body", coerce_body),
    "requestContentType": ("request_content_type", _text(256)),
    "responseContentType": ("response_content_type", _text(256)),
    "bodyTruncated": ("body_truncated", coerce_bool),
    "durationMs": ("duration_ms", coerce_duration),
    "route": ("route", _text(MAX_ROUTE)),
    "id": ("id", coerce_ignored),
}


class InvalidEntry(ValueError):
    """An entry whose fields are each valid but which cannot be stored."""

    def __init__(self, errors):
        super().__init__(errors)
        self.errors = errors


def finish(fields, extra, max_body_bytes, now=None):
    """Complete a coerced entry: defaults, promotion, bodies, `data`.

    `fields` maps normalized keys (the first item of INPUT_FIELDS values) to
    coerced values; `extra` holds the unknown input fields, which go into
    `data`, stored as JSON text. Returns the dict that ingest stores once it
    has settled the scope (`project_id` is None when the entry names none).
    Raises InvalidEntry when `data` cannot be stored as JSON.
    """
    source = fields.get("source") or "backend"
    status = fields.get("status")
    level = fields.get("level")
    level = promote_level(level, status) if level else default_level(status)
    ts_ms = fields.get("ts_ms")
    if ts_ms is None:
        ts_ms = fields.get("ts_iso")
    if ts_ms is None:
        ts_ms = fields.get("timestamp")
    if ts_ms is None:
        ts_ms = now_ms() if now is None else now
    data = dict(fields.get("data") or {})
    data.update(extra)
    duration = fields.get("duration_ms")
    if duration is None and "durationMs" in data:
        # Shippers and the first capture clients put it in `data`: lifted
        # into the field when it is a valid duration, else left where it is.
        try:
            duration = coerce_duration(data["durationMs"])
        except ValueError:
            pass
        else:
            del data["durationMs"]
    request_type = fields.get("request_content_type")
    response_type = fields.get("response_content_type")
    if request_type:
        data["requestContentType"] = request_type
    if response_type:
        data["responseContentType"] = response_type
    try:
        data_json = orjson.dumps(data).decode()
    except TypeError as exc:
        raise InvalidEntry({"data": [f"Not storable as JSON ({exc})."]}) from None
    request_body, cut_request = cap_body(fields.get("request_body"), request_type, max_body_bytes)
    response_body, cut_response = cap_body(fields.get("response_body"), response_type, max_body_bytes)
    return {
        "trace_id": fields.get("trace_id") or new_trace_id(source),
        "ts_ms": ts_ms,
        "kind": fields.get("kind") or "event",
        "level": level,
        "project_id": fields.get("project_id"),
        "container_id": fields.get("container_id"),
        "service_name": fields.get("service_name"),
        "method": fields.get("method"),
        "url": fields.get("url"),
        "client_ip": fields.get("client_ip"),
        "status": status,
        "source": source,
        "data": data_json,
        "request_body": request_body,
        "response_body": response_body,
        "body_truncated": bool(fields.get("body_truncated")) or cut_request or cut_response,
        "duration_ms": duration,
        "route": fields.get("route") or derive_route(fields.get("url")),
    }
