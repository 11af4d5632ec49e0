"""Syslog messages as entries: RFC 5424 and RFC 3164 (BSD), and the two
framings of syslog over TCP (RFC 6587: octet counting, newline ended).

`entry_of(message, project_id)` gives the entry of one message:
- an access-log line (nginx's `access_log syslog:` with the combined
  format, `$request_time` appended bare or as `rt=`; HAProxy's `option
  httplog`) is read by the importer's parsers: method, url, status,
  client address, duration, the line's own time;
- any other message is an event whose `data.message` is the text, its
  level from the syslog severity (emergency to error: error; warning: warn;
  notice and informational: info; debug: debug).

The entry's projectId is the listener's project, its containerId and
serviceName the message's APP-NAME (RFC 3164's tag); the host, facility,
severity, process id, message id and structured data go into `data`.
"""
import re
import time
from datetime import UTC, datetime

from .importer import parse_line

MAX_MESSAGE = 64 * 1024
_SEVERITY_LEVEL = ("error", "error", "error", "error", "warn", "info", "info", "debug")
_PRI = re.compile(rb"<(\d{1,3})>")
_RFC5424 = re.compile(r"^1 (\S+) (\S+) (\S+) (\S+) (\S+) ")
_BSD_TIME = re.compile(r"^([A-Z][a-z]{2}) ([ \d]\d) (\d\d):(\d\d):(\d\d) ")
_ISO_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\S+) ")
_TAG = re.compile(r"^([^\s\[:]{1,128})(?:\[([^\]]{0,128})\])?:? ?")
_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug",
                                       "Sep", "Oct", "Nov", "Dec"), 1)}


def entry_of(message, project_id, now_ms=None):
    """The entry of one syslog message (bytes), or None when it has no
    `<PRI>` (not syslog)."""
    message = message[:MAX_MESSAGE]
    found = _PRI.match(message)
    if found is None or int(found[1]) > 191:
        return None
    priority = int(found[1])
    text = message[found.end():].decode("utf-8", "replace").rstrip("\r\n\x00")
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    header = _rfc5424(text) or _rfc3164(text, now_ms)
    ts_ms, host, app, procid, msgid, structured, body = header
    body = body.lstrip("\ufeff")
    data = {"host": host, "facility": priority // 8, "severity": priority % 8,
            "procid": procid, "msgid": msgid}
    if structured:
        data["structuredData"] = structured
    access = parse_line(body, "auto") if body[:1] != "{" else None
    if access is not None:
        entry = access
        entry["data"] = {**data, **entry["data"]}
    else:
        entry = {"kind": "event", "tsMs": ts_ms or now_ms,
                 "level": _SEVERITY_LEVEL[priority % 8], "data": {**data, "message": body}}
    entry["data"] = {k: v for k, v in entry["data"].items() if v not in (None, "-")}
    entry["projectId"] = project_id
    if app:
        entry["containerId"] = entry["serviceName"] = app
    return entry


def _rfc5424(text):
    found = _RFC5424.match(text)
    if found is None:
        return None
    stamp, host, app, procid, msgid = (None if v == "-" else v for v in found.groups())
    rest = text[found.end():]
    structured, rest = _structured(rest)
    ts_ms = None
    if stamp:
        try:
            ts_ms = int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000)
        except ValueError:
            ts_ms = None
    return ts_ms, host, app, procid, msgid, structured, rest[1:] if rest[:1] == " " else rest


def _structured(rest):
    """({sd-id: {name: value}}, what follows) of RFC 5424's STRUCTURED-DATA."""
    if rest.startswith("-"):
        return {}, rest[1:]
    found, at = {}, 0
    while at < len(rest) and rest[at] == "[":
        end = at + 1
        while end < len(rest) and rest[end] != "]":
            if rest[end] == '"':  # a quoted value: \" \\ \] are escapes
                end += 1
                while end < len(rest) and rest[end] != '"':
                    end += 2 if rest[end] == "\\" else 1
            end += 1
        element = rest[at + 1:end]
        name, _, params = element.partition(" ")
        found[name] = {key: re.sub(r'\\(["\\\]])', r"\1", value) for key, value in
                       re.findall(r'(\S+?)="((?:[^"\\]|\\.)*)"', params)}
        at = end + 1
    return found, rest[at:]


def _rfc3164(text, now_ms):
    ts_ms = None
    found = _BSD_TIME.match(text)
    if found:
        month, day, hour, minute, second = found.groups()
        now = time.localtime(now_ms / 1000)
        year = now.tm_year - (1 if _MONTHS[month] > now.tm_mon + 1 else 0)
        ts_ms = int(time.mktime((year, _MONTHS[month], int(day), int(hour), int(minute),
                                 int(second), 0, 0, -1)) * 1000)
        text = text[found.end():]
    else:
        found = _ISO_TIME.match(text)
        if found:
            try:
                when = datetime.fromisoformat(found[1].replace("Z", "+00:00"))
                if when.tzinfo is None:
                    when = when.replace(tzinfo=UTC)
                ts_ms = int(when.timestamp() * 1000)
                text = text[found.end():]
            except ValueError:
                pass
    host = None
    first, _, after = text.partition(" ")
    # A host name, unless the first word is already the tag (`nginx:`,
    # `haproxy[42]:`), as senders that leave the host out write it.
    if first and not first.endswith(":") and "[" not in first and after:
        host, text = first, after
    tag = _TAG.match(text)
    app = procid = None
    if tag and (tag.group(0).rstrip().endswith(":") or tag[2] is not None):
        app, procid = tag[1], tag[2]
        text = text[tag.end():]
    return ts_ms, host, app, procid, None, {}, text


def frames(buffer):
    """(messages, rest) of a TCP stream's `buffer`: octet-counted frames
    (`<length> <message>`) and newline-ended ones, as RFC 6587 has them."""
    out, at = [], 0
    while at < len(buffer):
        counted = re.match(rb"(\d{1,6}) ", buffer[at:at + 8])
        if counted and buffer[at:at + 1] != b"<":
            length = int(counted[1])
            start = at + counted.end()
            if len(buffer) - start < length:
                break
            out.append(buffer[start:start + length])
            at = start + length
            continue
        end = buffer.find(b"\n", at)
        if end < 0:
            if len(buffer) - at > MAX_MESSAGE:  # no newline in sight: cut
                out.append(buffer[at:at + MAX_MESSAGE])
                at += MAX_MESSAGE
                continue
            break
        if end > at:
            out.append(buffer[at:end])
        at = end + 1
    return out, buffer[at:]
