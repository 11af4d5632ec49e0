"""The operator's cross-tenant sweep over a snapshot (`cursor`).

`cursor=start` fixes a snapshot: the highest id assigned at that moment.
Each page returns entries with ids after the cursor's position and at most
the snapshot's high-water id, so entries written after the sweep began never
appear in it. The cursor carries (high-water id, position, start time),
base64url-encoded and signed with HMAC-SHA256 under a server secret; an
altered cursor is refused.

A snapshot is gone when it is older than LOGSVC_CURSOR_TTL_S, or when
retention (or a clear) removed rows the sweep still had to return: the
`prune_log` table records the id ranges removed and when.
"""
import base64
import hashlib
import hmac

import orjson

from logsvc.entry import now_ms

from . import db, query
from .models import PruneLog
from .query import InvalidParameter

# Paging parameters that a sweep decides itself.
_EXCLUSIVE = ("last", "after_id", "offset", "order")


class BadCursor(ValueError):
    pass


class SnapshotExpired(Exception):
    pass


def check_sweep(params, enabled):
    """Refuse a sweep that the settings or the other parameters rule out:
    the cross-tenant cursor is off unless LOGSVC_ADMIN_FANOUT is set, and a
    sweep pages by itself."""
    if not enabled:
        raise InvalidParameter("cursor", "the cross-tenant cursor is disabled "
                                          "(LOGSVC_ADMIN_FANOUT=false)")
    if any(name in params for name in _EXCLUSIVE):
        raise InvalidParameter("cursor", "it cannot be combined with last, afterId, "
                                          "offset or order")


def page(cursor, filters, page_size, include_request_body, include_response_body,
         secret, ttl_s):
    """(entries, next cursor or None) for one page of the sweep."""
    if cursor == "start":  # a snapshot taken now: its first page is never late
        state = {"h": db.call(query.high_water), "a": 0, "t": now_ms()}
    else:
        state = decode(cursor, secret)
        if now_ms() - state["t"] > ttl_s * 1000 or db.call(_lost_rows, state):
            raise SnapshotExpired()
    result = query.list_entries(filters, query.Page(
        limit=page_size, after_id=state["a"], max_id=state["h"],
        include_request_body=include_request_body,
        include_response_body=include_response_body))
    entries = result["entries"]
    if len(entries) < page_size:
        return entries, None
    return entries, encode({**state, "a": entries[-1]["id"]}, secret)


def encode(state, secret):
    payload = base64.urlsafe_b64encode(orjson.dumps(state)).rstrip(b"=")
    return (payload + b"." + _sign(payload, secret)).decode()


def decode(cursor, secret):
    try:
        payload, signature = cursor.encode("ascii").split(b".")
    except (UnicodeEncodeError, ValueError):
        raise BadCursor("Invalid query parameter 'cursor': not a cursor of this server") from None
    if not hmac.compare_digest(signature, _sign(payload, secret)):
        raise BadCursor("Invalid query parameter 'cursor': not a cursor of this server")
    state = orjson.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))
    return state


def _sign(payload, secret):
    digest = hmac.new(secret.encode(), payload, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=")


def _lost_rows(state):
    return PruneLog.select().where(
        (PruneLog.ts_ms >= state["t"]) & (PruneLog.max_id > state["a"])
        & (PruneLog.min_id <= state["h"])).exists()
