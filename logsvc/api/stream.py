"""Live tail over Server-Sent Events and WebSocket.

Both transports open a `tail.Subscription` and only differ in framing:
SSE sends `id:`/`data:` frames, named `gap`, `reset` and `scope-destroyed`
events and `:` heartbeats; the WebSocket sends one JSON entry per text
message, control messages as JSON objects with an `event` key, and answers
`ping` with `pong`.

What an open stream holds, idle: the request's greenlet (its saved stack:
gunicorn's handler, its loop over the frames generator, which waits on its
scope's event in a plain call, `Subscription.next_event`: each generator
resumed from another is a level of C stack saved with the greenlet, so the
response is handed to the server as it is, without werkzeug's wrappers),
the connection's socket and buffers, the WSGI environ and the request's
caller, the subscription (its filters, scope key and position: nothing
queued, see store/tail.py), its slot, and, under gevent, an event-loop
watcher that notices the client hanging up (not a greenlet). Measured with
bench/tail.py (10,000 idle SSE streams on two workers): about 18 KiB a
stream once heartbeats have run (15 KiB before the first; 21 KiB when it
waited in nested generators), every heartbeat within 0.01 s of its period.
Of the Python objects (tracemalloc, one worker, 1,000 streams added):
the greenlet's saved stack 4.2 KB; gunicorn's connection, parser, request,
environ and response 4.8 KB; the greenlet and the socket 1.7 KB; logsvc's
own (the frames generator, the filters, the subscription, its slot and
guard, the hangup watcher, the wait's timer) 2.6 KB. The rest is the C
side of the event loop's watchers and the allocator's pages.
"""
import contextlib
import re
import socket
import threading

import orjson
from flask import Blueprint, Response, request
from flask_sock import ConnectionClosed, Sock
from marshmallow import ValidationError

from logsvc import runtime
from logsvc.access import credentials
from logsvc.access.limits import RateLimited
from logsvc.access.principal import READ, Forbidden, authorize
from logsvc.store import tail
from logsvc.store.filters import Filters
from schemas.params import stream_params, websocket_params

from . import query_args, reader, session_cookie, state
from .errors import ApiError, error_response, validation_message
from .tailing import (
    WS_BAD_REQUEST,
    WS_BAD_TOKEN,
    WS_NO_TOKEN,
    WS_SCOPE_DESTROYED,
    WS_TOO_MANY,
    Guard,
    take_slot,
)

blueprint = Blueprint("stream", __name__)
sock = Sock()

def _guard(found):
    return Guard(found, state().config.heartbeat_s, session_cookie())


@blueprint.get("/api/proxy-logs/_logs/stream")
def sse():
    params = stream_params.load(query_args(stream_params))
    found = reader()
    header = request.headers.get("Last-Event-ID")
    if header is not None and "last_event_id" not in params:
        if not re.fullmatch(r"[0-9]{1,18}", header.strip()):
            raise ApiError(400, "Invalid header 'Last-Event-ID': not an entry id")
        params["last_event_id"] = int(header.strip())
    subscription_args = _subscription_args(found, params)
    slot = _slot(found)
    try:
        opening, subscription = tail.subscribe(*subscription_args)
    except tail.Reset:
        slot.close()
        return _sse_response(iter([b"retry: 2000\n\n", _named("reset")]))
    except BaseException:
        slot.close()
        raise
    watcher = _release_on_hangup(request.environ.get("gunicorn.socket"), slot)
    frames = _sse_frames(opening, subscription, state().config.heartbeat_s, slot, _guard(found),
                         watcher)
    return _sse_response(frames)


def _release_on_hangup(sock, slot):
    """Give the stream's slot back as soon as its client hangs up, rather
    than when the next heartbeat fails to write (up to LOGSVC_HEARTBEAT_S
    later), so that a client reconnecting at once is not refused. Needs the
    connection's socket, which gunicorn passes in the environ; under gevent
    only (with threads, the next heartbeat finds the hangup). A watcher of
    the event loop, not a greenlet: an idle stream holds no second stack."""
    if sock is None or not runtime.cooperative():
        return None
    return _HangupWatch(sock, slot)


class _HangupWatch:
    """Calls slot.close() (in a greenlet of its own) when `sock` is closed
    by its peer; kill() stops watching."""

    def __init__(self, sock, slot):
        import gevent

        self.sock, self.slot = sock, slot
        loop = gevent.get_hub().loop
        self.io = loop.io(sock.fileno(), 1)  # readable
        self.timer = loop.timer(1.0)
        self.io.start(self._readable)

    def _readable(self):
        try:
            data = self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except (OSError, ValueError):  # the connection is gone
            data = b""
        self.io.stop()
        if data:  # it sent something; an SSE client has nothing to say: look again in 1 s
            self.timer.start(self._again)
            return
        runtime.spawn(self.slot.close)  # the client closed its end (off the event loop)

    def _again(self):
        self.io.start(self._readable)

    def kill(self):
        self.io.stop()
        self.timer.stop()
        self.io.close()
        self.timer.close()


@blueprint.get("/api/ws-token")
def ws_token():
    found = reader()
    authorize(found, READ)
    return {"status": "success",
            "token": credentials.issue_ws_token(found, session_cookie())}


WS_PATH = "/api/ws/logs"


@sock.route(WS_PATH)
def ws_logs(ws):
    ticket = request.args.get("token")
    if not ticket:
        ws.close(WS_NO_TOKEN, "token required")
        return
    found, session = credentials.redeem_ws_ticket(ticket)
    if found is None:
        ws.close(WS_BAD_TOKEN, "token invalid, expired or already used")
        return
    try:
        params = websocket_params.load(query_args(websocket_params))
        params.pop("token", None)
        found = reader(found)  # the host's narrowing (LOGSVC_SCOPE_HOST) applies
        subscription_args = _subscription_args(found, params)
        slot = _slot(found)
    except ValidationError as exc:
        ws.close(WS_BAD_REQUEST, validation_message(exc)[:120])
        return
    except Forbidden as exc:
        ws.close(WS_BAD_TOKEN, str(exc)[:120])
        return
    except (RateLimited, ApiError) as exc:
        ws.close(WS_TOO_MANY, str(exc)[:120])
        return
    with contextlib.closing(slot):
        _ws_session(ws, subscription_args, Guard(found, state().config.heartbeat_s,
                                                 session_digest=session))


def websocket_unsupported():
    """Before the WebSocket route: a clear answer when the WSGI server
    gives no access to the connection's socket (waitress, mod_wsgi), which
    a WebSocket needs; the SSE stream works under every server."""
    environ = request.environ
    if request.path == WS_PATH and environ.get("HTTP_SEC_WEBSOCKET_KEY") \
            and environ.get("HTTP_SEC_WEBSOCKET_VERSION", "").strip() != "13":
        # RFC 6455, 4.4: a version the server does not speak is answered
        # with the one it does.
        return error_response(426, "Only WebSocket version 13 is supported "
                                   "(header 'Sec-WebSocket-Version')",
                              {"Sec-WebSocket-Version": "13"})
    if request.path != WS_PATH or any(key in environ for key in _SOCKET_KEYS) \
            or environ.get("SERVER_SOFTWARE", "").startswith("gevent"):
        return None
    server = environ.get("SERVER_SOFTWARE", "this WSGI server").split("/")[0] or "this WSGI server"
    return error_response(501, f"The WebSocket tail is not available under {server}: it needs "
                               "access to the connection (gunicorn, with gevent or gthread "
                               "workers, or python -m logsvc serve). The SSE stream "
                               "/api/proxy-logs/_logs/stream works everywhere.")


_SOCKET_KEYS = ("werkzeug.socket", "gunicorn.socket", "eventlet.input")


def _ws_session(ws, subscription_args, guard):
    sending = threading.Lock()

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

    pinger = None
    try:
        try:
            opening, subscription = tail.subscribe(*subscription_args)
            for kind, value in opening:
                if kind == "replay":
                    for item in value[0]:
                        send(orjson.dumps(item).decode())
                else:
                    send(orjson.dumps({"event": kind, **value}).decode())
            # Pings are answered from here on, so a `pong` tells the client
            # that the tail is live: whatever is committed after it arrives.
            pinger = runtime.spawn(answer_pings, name="logsvc-ws-pings")
            for kind, value in subscription.events(state().config.heartbeat_s):
                if not runtime.alive(pinger):  # the client went away
                    return
                reason = guard.revoked()
                if reason:
                    send(orjson.dumps({"event": "access-revoked", "reason": reason}).decode())
                    ws.close(WS_BAD_TOKEN, "access revoked")
                    return
                if kind == "entries":
                    for _, rendered in value:
                        send(rendered.decode())
                elif kind == "scope-destroyed":
                    raise tail.ScopeDestroyed()
        except tail.ScopeDestroyed:
            send('{"event":"scope-destroyed"}')
            ws.close(WS_SCOPE_DESTROYED, "scope destroyed")
        except tail.Reset:
            send('{"event":"reset"}')
            ws.close(1000, "reset")
        except tail.StoreUnavailable as exc:
            ws.close(1011, str(exc)[:120])
    finally:
        if pinger is not None:
            runtime.kill(pinger)


def _subscription_args(found, params):
    """(tailer, filters, last id, replay) for `found`, or raise."""
    project_id, container_id = authorize(
        found, READ, params.pop("project_id", None), params.pop("container_id", None))
    last_event_id = params.pop("last_event_id", None)
    replay = params.pop("replay")
    filters = Filters(project_id=project_id, container_id=container_id, **params)
    return state().tailer, filters, last_event_id, replay


def _slot(found):
    return take_slot(state().streams, found)


def _sse_frames(opening, subscription, heartbeat_s, slot, guard, watcher=None):
    try:
        yield b"retry: 2000\n\n"
        for kind, value in opening:
            if kind == "replay":
                entries, newest = value
                yield b"id: %d\ndata: %s\n\n" % (newest, orjson.dumps(entries))
            else:
                yield b"event: %s\ndata: %s\n\n" % (kind.encode(), orjson.dumps(value))
        opening = None  # the replayed entries are not kept while the stream waits
        try:
            while True:
                kind, value = subscription.next_event(heartbeat_s)
                reason = guard.revoked()
                if reason:
                    yield b"event: access-revoked\ndata: %s\n\n" % orjson.dumps(
                        {"reason": reason})
                    return
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
        runtime.kill(watcher)
        slot.close()


def _named(kind):
    return b"event: %s\ndata: {}\n\n" % kind.encode()


def _sse_response(frames):
    # Passed through to the server as it is (bytes already): without
    # werkzeug's encoding generator and closing wrapper, an idle stream
    # holds two generators and their stack levels less. The server closes
    # `frames` when the client goes, which runs its `finally`.
    return Response(frames, mimetype="text/event-stream", direct_passthrough=True, headers={
        "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

