"""Turn existing access logs into entries: nginx/Apache combined format,
HAProxy's `option httplog`, Caddy's JSON access log and Traefik's JSON
access log.

`parse_line(line, fmt)` returns an entry (kind `response`, source `edge`)
or None for a line it cannot read; `fmt` is "auto" (decided per line),
"nginx", "haproxy", "caddy" or "traefik".
"""
import re
import time
from datetime import datetime

import orjson

_COMBINED = re.compile(
    r'^(?P<ip>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]+)\] "(?P<request>[^"]*)" '
    r'(?P<status>\d{3}) (?P<bytes>\d+|-)(?: "(?P<referer>[^"]*)" "(?P<agent>[^"]*)")?'
    r'(?P<rest>.*)$')
# nginx's $request_time (seconds, millisecond resolution) after the combined
# fields: `... "agent" 0.123` or `... rt=0.123` / `request_time=0.123`.
_REQUEST_TIME = re.compile(r'(?:^|\s)(?:rt=|request_time=)?"?(\d+\.\d{1,6})"?(?:\s|$)')


def parse_line(line, fmt="auto"):
    line = line.strip()
    if not line:
        return None
    if fmt == "auto":
        fmt = "json" if line.startswith("{") else (
            "haproxy" if _HAPROXY.match(line) else "nginx")
    try:
        if fmt == "nginx":
            return _combined(line)
        if fmt == "haproxy":
            return _haproxy(line)
        record = orjson.loads(line)
        if not isinstance(record, dict):
            return None
        if fmt == "caddy" or (fmt == "json" and "request" in record):
            return _caddy(record)
        if fmt == "traefik" or (fmt == "json" and "RequestMethod" in record):
            return _traefik(record)
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
        # (A field of another type than the format's, a number out of range.)
        return None
    return None


def _combined(line):
    match = _COMBINED.match(line)
    if not match:
        return None
    method, _, rest = match["request"].partition(" ")
    url = rest.rsplit(" ", 1)[0] if " HTTP/" in rest else rest
    when = datetime.strptime(match["time"], "%d/%b/%Y:%H:%M:%S %z")
    data = {"bytesOut": 0 if match["bytes"] == "-" else int(match["bytes"])}
    if match["agent"]:
        data["userAgent"] = match["agent"]
    if match["referer"] and match["referer"] != "-":
        data["referer"] = match["referer"]
    timed = _REQUEST_TIME.search(match["rest"] or "")
    return _entry(int(when.timestamp() * 1000), method or None, url or None, match["ip"],
                  int(match["status"]), data,
                  round(float(timed[1]) * 1000, 3) if timed else None)


# HAProxy's httplog: client:port [accept date] frontend backend/server
# TR/Tw/Tc/Tr/Ta status bytes ... "request" (the timers in ms, -1 when the
# step did not happen; the last is the total).
_HAPROXY = re.compile(
    r'^(?P<ip>[0-9A-Fa-f.:]+):\d+ \[(?P<time>\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d(?:\.\d+)?)\] '
    r'(?P<frontend>\S+) (?P<backend>\S+) (?P<timers>-?\d+/-?\d+/-?\d+/-?\d+/\+?-?\d+) '
    r'(?P<status>-?\d+) \+?(?P<bytes>\d+) .*?"(?P<request>[^"]*)"\s*$')


def _haproxy(line):
    match = _HAPROXY.match(line)
    if not match:
        return None
    method, _, rest = match["request"].partition(" ")
    url = rest.rsplit(" ", 1)[0] if " HTTP/" in rest else rest
    stamp = match["time"]
    when = datetime.strptime(stamp, "%d/%b/%Y:%H:%M:%S.%f" if "." in stamp
                             else "%d/%b/%Y:%H:%M:%S")
    # HAProxy writes its host's local time, without an offset.
    ts_ms = int(time.mktime(when.timetuple()) * 1000) + when.microsecond // 1000
    total = int(match["timers"].rsplit("/", 1)[1].lstrip("+"))
    backend, _, server = match["backend"].partition("/")
    data = {"bytesOut": int(match["bytes"]), "frontend": match["frontend"],
            "backend": backend, "server": server or None}
    return _entry(ts_ms, method or None, url or None, match["ip"], int(match["status"]), data,
                  float(total) if total >= 0 else None)


def _caddy(record):
    request = record["request"]
    headers = request.get("headers") or {}
    agent = (headers.get("User-Agent") or [None])[0]
    data = {"bytesOut": record.get("size"), "bytesIn": record.get("bytes_read"),
            "host": request.get("host"), "userAgent": agent}
    duration = record.get("duration")  # seconds
    return _entry(int(float(record["ts"]) * 1000), request.get("method"), request.get("uri"),
                  request.get("client_ip") or request.get("remote_ip"), record.get("status"),
                  data, None if duration is None else round(float(duration) * 1000, 3))


def _traefik(record):
    started = datetime.fromisoformat(record["StartUTC"].replace("Z", "+00:00")[:32])
    data = {"bytesOut": record.get("DownstreamContentSize"),
            "bytesIn": record.get("RequestContentSize"),
            "host": record.get("RequestHost"), "userAgent": record.get("request_User-Agent"),
            "router": record.get("RouterName")}
    duration = record.get("Duration")  # nanoseconds
    entry = _entry(int(started.timestamp() * 1000), record.get("RequestMethod"),
                   record.get("RequestPath"), record.get("ClientHost"),
                   record.get("DownstreamStatus"), data,
                   None if duration is None else round(int(duration) / 1e6, 3))
    if record.get("ServiceName"):
        entry["serviceName"] = record["ServiceName"]
    return entry


def _entry(ts_ms, method, url, client_ip, status, data, duration_ms=None):
    status = status if isinstance(status, int) and 100 <= status <= 599 else None
    entry = {"kind": "response", "source": "edge", "tsMs": ts_ms, "method": method,
             "url": url, "clientIp": client_ip, "status": status,
             "data": {k: v for k, v in data.items() if v is not None}}
    if duration_ms is not None and 0 <= duration_ms <= 86_400_000:
        entry["durationMs"] = duration_ms
    return entry
