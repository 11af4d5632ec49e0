"""A deadline for request bodies, so that a client trickling its body
cannot hold a connection (and a worker's greenlet) for as long as it likes.

gunicorn cuts a connection that is slow to send its request head
(LOGSVC_HEADER_TIMEOUT_S); nothing bounds the body. `BodyDeadline` reads
the body before the application does, the way Apache's mod_reqtimeout
does: the client has LOGSVC_HEADER_TIMEOUT_S seconds to start, and each
LOGSVC_BODY_MIN_RATE bytes it sends buys it one more second. A client too
slow for that gets a 408 and the connection is closed. A body over
LOGSVC_MAX_REQUEST_BYTES is left to the application's own 413.

Only under gevent: a threaded server (waitress, mod_wsgi) has timeouts of
its own and a thread per request.
"""
import io
import socket
import time

import gevent

from . import errors

_CHUNK = 64 * 1024


class BodyDeadline:
    """Registered as the application's first `before_request`: it returns
    before the view runs, so an open stream's greenlet holds no frame of
    it (a WSGI middleware would stay on every stream's stack)."""

    def __init__(self, first_s, min_rate, max_bytes):
        self.first_s = first_s
        self.min_rate = min_rate
        self.max_bytes = max_bytes

    def __call__(self):
        from flask import request

        environ = request.environ
        length = environ.get("CONTENT_LENGTH")
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        try:
            size = int(length) if length else None
        except ValueError:
            size = None
        if (size is None and not chunked) or size == 0 or (size or 0) > self.max_bytes:
            return None
        body = self._read(environ["wsgi.input"], size)
        if body is None:
            sock = environ.get("gunicorn.socket")
            if sock is not None:
                try:  # the rest of the body is never read: end the connection
                    sock.shutdown(socket.SHUT_RD)
                except OSError:
                    pass
            return errors.error_response(
                408, f"The request body arrived too slowly (under {self.min_rate} bytes a "
                     "second; LOGSVC_BODY_MIN_RATE)", {"Connection": "close"})
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        return None

    def _read(self, stream, size):
        """The body, or None when it did not come in time. Reads at most
        max_bytes + 1 bytes, so that the application still sees an
        oversized chunked body as such."""
        deadline = time.monotonic() + self.first_s
        chunks, got = [], 0
        limit = self.max_bytes + 1 if size is None else size
        while got < limit:
            try:
                with gevent.Timeout(max(deadline - time.monotonic(), 0.001)):
                    chunk = stream.read(min(_CHUNK, limit - got))
            except gevent.Timeout:
                return None
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
            deadline += len(chunk) / self.min_rate
        return b"".join(chunks)
