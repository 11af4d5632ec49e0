"""Live tail over Server-Sent Events and WebSocket.

Both transports open a `tail.Subscription` and only differ in framing:
SSE sends `id:`/`data:` frames, named `gap`, `reset` and `scope-destroyed`
events and `:` heartbeats; the WebSocket sends one JSON entry per text
message, control messages as JSON objects with an `event` key, and answers
`ping` with `pong`.
"""
import collections
import contextlib

import gevent
import gevent.lock
import orjson
from flask import Blueprint, Response, request
from flask_sock import ConnectionClosed, Sock
from marshmallow import ValidationError

from schemas.params import stream_params, websocket_params

from .. import auth, db, principals, query, store, tail
from ..limits import RateLimited
from . import query_args, reader, state
from .errors import ApiError, validation_message

blueprint = Blueprint("stream", __name__)
sock = Sock()

_open_streams = collections.Counter()  # per scope, in this process

WS_NO_TOKEN = 4001
WS_BAD_TOKEN = 4003
WS_BAD_REQUEST = 4000
WS_TOO_MANY = 4029


@blueprint.get("/api/proxy-logs/_logs/stream")
def sse():
    params = stream_params.load(query_args())
    caller = reader()
    header = request.headers.get("Last-Event-ID")
    if header is not None and "last_event_id" not in params:
        if not header.strip().isdigit():
            raise ApiError(400, "Invalid header 'Last-Event-ID': not an entry id")
        params["last_event_id"] = int(header.strip())
    subscription_args = _subscription_args(caller, params)
    slot = _stream_slot(caller)
    try:
        opening, subscription = tail.subscribe(*subscription_args)
    except tail.Reset:
        slot.close()
        return _sse_response(iter([b"retry: 2000\n\n", _named("reset")]))
    except BaseException:
        slot.close()
        raise
    frames = _sse_frames(opening, subscription, state().config.heartbeat_s, slot)
    return _sse_response(frames)


@blueprint.get("/api/ws-token")
def ws_token():
    caller = reader()
    auth.authorize(caller, auth.READ)
    return {"status": "success", "token": principals.issue_ws_token(caller)}


@sock.route("/api/ws/logs")
def ws_logs(ws):
    ticket = request.args.get("token")
    if not ticket:
        ws.close(WS_NO_TOKEN, "token required")
        return
    caller = principals.redeem_ws_token(ticket)
    if caller is None:
        ws.close(WS_BAD_TOKEN, "token invalid, expired or already used")
        return
    try:
        params = websocket_params.load(query_args())
        params.pop("token", None)
        if not caller.is_admin:
            state().limiter.hit(caller.scope_key)
        subscription_args = _subscription_args(caller, params)
        slot = _stream_slot(caller)
    except ValidationError as exc:
        ws.close(WS_BAD_REQUEST, validation_message(exc)[:120])
        return
    except auth.Forbidden as exc:
        ws.close(WS_BAD_TOKEN, str(exc)[:120])
        return
    except (RateLimited, ApiError) as exc:
        ws.close(WS_TOO_MANY, str(exc)[:120])
        return
    with contextlib.closing(slot):
        _ws_session(ws, subscription_args)


def _ws_session(ws, subscription_args):
    sending = gevent.lock.Semaphore()

    def send(text):
        with sending:
            ws.send(text)

    def answer_pings():
        try:
            while True:
                if ws.receive() == "ping":
                    send("pong")
        except ConnectionClosed:
            pass  # the client left; the sending loop notices and ends

    pinger = gevent.spawn(answer_pings)
    try:
        try:
            opening, subscription = tail.subscribe(*subscription_args)
            for kind, value in opening:
                if kind == "replay":
                    for item in value[0]:
                        send(orjson.dumps(item).decode())
                else:
                    send(orjson.dumps({"event": kind, **value}).decode())
            for kind, value in subscription.events(state().config.heartbeat_s):
                if not pinger:  # the client went away
                    return
                if kind == "entries":
                    for _, rendered in value:
                        send(rendered.decode())
                elif kind == "scope-destroyed":
                    send('{"event":"scope-destroyed"}')
                    ws.close(1000, "scope destroyed")
                    return
        except tail.Reset:
            send('{"event":"reset"}')
            ws.close(1000, "reset")
    finally:
        pinger.kill()


def _subscription_args(caller, params):
    """(tailer, filters, last id, replay, destroyed scope) for `caller`, or raise."""
    project_id, container_id = auth.authorize(
        caller, auth.READ, params.pop("project_id", None), params.pop("container_id", None))
    destroyed_scope = (project_id, container_id) if project_id and container_id else None
    if destroyed_scope and db.call(store.is_destroyed, *destroyed_scope):
        raise ApiError(410, "This container's scope was destroyed")
    last_event_id = params.pop("last_event_id", None)
    replay = params.pop("replay")
    filters = query.Filters(project_id=project_id, container_id=container_id, **params)
    return state().tailer, filters, last_event_id, replay, destroyed_scope


class _Slot:
    """One of the scope's concurrent streams in this process."""

    def __init__(self, key):
        self.key = key

    def close(self):
        if self.key is not None:
            _open_streams[self.key] -= 1
            if _open_streams[self.key] <= 0:
                del _open_streams[self.key]
            self.key = None


def _stream_slot(caller):
    if caller.is_admin:
        return _Slot(None)
    key = caller.scope_key
    if _open_streams[key] >= state().config.max_streams_per_scope:
        raise ApiError(429, "Too many open streams for this scope", {"Retry-After": "2"})
    _open_streams[key] += 1
    return _Slot(key)


def _sse_frames(opening, subscription, heartbeat_s, slot):
    try:
        yield b"retry: 2000\n\n"
        for kind, value in opening:
            if kind == "replay":
                entries, newest = value
                yield b"id: %d\ndata: %s\n\n" % (newest, orjson.dumps(entries))
            else:
                yield b"event: %s\ndata: %s\n\n" % (kind.encode(), orjson.dumps(value))
        try:
            for kind, value in subscription.events(heartbeat_s):
                if kind == "entries":
                    yield b"".join(b"id: %d\ndata: %s\n\n" % (entry["id"], rendered)
                                   for entry, rendered in value)
                elif kind == "heartbeat":
                    yield b":\n\n"
                else:
                    yield _named(kind)
                    return
        except tail.Reset:
            yield _named("reset")
    finally:
        slot.close()


def _named(kind):
    return b"event: %s\ndata: {}\n\n" % kind.encode()


def _sse_response(frames):
    return Response(frames, mimetype="text/event-stream", headers={
        "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

