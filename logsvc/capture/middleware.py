"""Capture request/response entries from any WSGI application.

    from logsvc.capture import CaptureMiddleware, HttpSink
    app = CaptureMiddleware(app, HttpSink("http://logs:8080", token="lst_…"),
                            service_name="user-api", project_id="proj_a")

For each call the middleware records a `request` and a `response` entry
(method, url, status, client IP, duration, bytes in and out, user agent,
labels, bodies within the cap and content-type rules) sharing one traceId:
taken from `traceparent` or `X-Request-Id`, or generated, and passed on to
the application (as `X-Request-Id` in its environ) and to the client (as an
`X-Request-Id` response header). `Authorization`, `Cookie`, `Set-Cookie`
and any configured headers are redacted. Both entries are handed to the
sink when the response has been sent (or the client went away), so a
streaming response still streams chunk by chunk.

Sinks (see sinks.py) never slow or break the application: `submit` only appends to a
bounded queue (full: the entry is dropped and counted in `dropped`), and a
background thread sends batches, retrying with backoff while the store is
unreachable.
"""
import re
import time
import uuid

from logsvc.entry import cap_body, now_ms

REDACTED = "[redacted]"
ALWAYS_REDACTED = ("authorization", "cookie", "set-cookie", "proxy-authorization")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


class CaptureMiddleware:
    def __init__(self, app, sink, service_name=None, project_id=None, container_id=None,
                 source="backend", trusted_proxies=(), redact_headers=(),
                 max_body_bytes=65536, labels=None):
        self.app = app
        self.sink = sink
        self.defaults = {"serviceName": service_name, "projectId": project_id,
                         "containerId": container_id}
        self.source = source
        self.trusted = set(trusted_proxies)
        self.redacted = set(ALWAYS_REDACTED) | {h.lower() for h in redact_headers}
        self.max_body_bytes = max_body_bytes
        self.labels = labels  # environ -> {"serviceName": ..., ...} overriding the defaults

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        ts_ms = now_ms()
        trace_id = self._trace_id(environ)
        environ["HTTP_X_REQUEST_ID"] = trace_id
        body_in = _Tee(environ.get("wsgi.input"), self.max_body_bytes)
        environ["wsgi.input"] = body_in
        record = _Call(self, environ, trace_id, ts_ms, started, body_in)

        def capture_start(status, headers, exc_info=None):
            record.status = int(status.split(" ", 1)[0])
            record.response_headers = headers
            headers = list(headers) + [("X-Request-Id", trace_id)]
            return start_response(status, headers, exc_info)

        try:
            chunks = self.app(environ, capture_start)
        except Exception as exc:
            record.error = exc
            record.finish()
            raise
        return _Body(chunks, record)

    def _trace_id(self, environ):
        match = _TRACEPARENT.match(environ.get("HTTP_TRACEPARENT", "").strip().lower())
        if match:
            return match.group(1)
        given = environ.get("HTTP_X_REQUEST_ID", "").strip()
        if given and len(given) <= 128:
            return given
        return str(uuid.uuid4()) if self.source == "edge" else uuid.uuid4().hex

    def client_ip(self, environ):
        """The peer, or with a trusted proxy in front, the nearest address in
        X-Forwarded-For that is not one of the trusted proxies."""
        peer = environ.get("REMOTE_ADDR")
        if peer not in self.trusted:
            return peer
        hops = [h.strip() for h in environ.get("HTTP_X_FORWARDED_FOR", "").split(",") if h.strip()]
        for hop in reversed(hops):
            if hop not in self.trusted:
                return hop
        return peer

    def headers_of(self, pairs):
        return {name: (REDACTED if name.lower() in self.redacted else value)
                for name, value in pairs}


class _Call:
    """What is known about one call until it is recorded."""

    def __init__(self, middleware, environ, trace_id, ts_ms, started, body_in):
        self.middleware = middleware
        self.environ = environ
        self.trace_id = trace_id
        self.ts_ms = ts_ms
        self.started = started
        self.body_in = body_in
        self.status = None
        self.response_headers = []
        self.bytes_out = 0
        self.body_out = bytearray()
        self.error = None
        self.done = False

    def finish(self):
        if self.done:
            return
        self.done = True
        m, environ = self.middleware, self.environ
        labels = dict(m.defaults)
        if m.labels:
            labels.update({k: v for k, v in m.labels(environ).items() if v})
        labels = {k: v for k, v in labels.items() if v}
        url = environ.get("PATH_INFO", "") or "/"
        if environ.get("QUERY_STRING"):
            url += "?" + environ["QUERY_STRING"]
        request_headers = m.headers_of(
            (k[5:].replace("_", "-").title(), v) for k, v in environ.items()
            if k.startswith("HTTP_"))
        common = {"traceId": self.trace_id, "method": environ.get("REQUEST_METHOD"),
                  "url": url, "clientIp": m.client_ip(environ), "source": m.source, **labels}
        request_type = environ.get("CONTENT_TYPE")
        request_body, cut_in = cap_body(_text(self.body_in.head), request_type,
                                        m.max_body_bytes)
        request = {**common, "kind": "request", "tsMs": self.ts_ms,
                   "requestBody": request_body or None,
                   "bodyTruncated": cut_in or self.body_in.total > m.max_body_bytes,
                   "data": {"bytesIn": self.body_in.total,
                            "userAgent": environ.get("HTTP_USER_AGENT"),
                            "requestHeaders": request_headers}}
        if request_type:
            request["requestContentType"] = request_type
        response_type = _header(self.response_headers, "content-type")
        response_body, cut_out = cap_body(_text(bytes(self.body_out)), response_type,
                                          m.max_body_bytes)
        status = self.status if self.error is None else (self.status or 500)
        response = {**common, "kind": "response", "tsMs": now_ms(), "status": status,
                    "durationMs": round((time.perf_counter() - self.started) * 1000, 3),
                    "responseBody": response_body or None,
                    "bodyTruncated": cut_out or self.bytes_out > m.max_body_bytes,
                    "data": {"bytesOut": self.bytes_out,
                             "responseHeaders": m.headers_of(self.response_headers)}}
        if response_type:
            response["responseContentType"] = response_type
        if self.error is not None:
            response["level"] = "error"
            response["data"]["error"] = f"{type(self.error).__name__}: {self.error}"
        m.sink.submit(request)
        m.sink.submit(response)


class _Body:
    """The application's response, passed through chunk by chunk."""

    def __init__(self, chunks, record):
        self.chunks = chunks
        self.record = record

    def __iter__(self):
        record = self.record
        limit = record.middleware.max_body_bytes + 1
        try:
            for chunk in self.chunks:
                record.bytes_out += len(chunk)
                if len(record.body_out) < limit:
                    record.body_out += chunk[:limit - len(record.body_out)]
                yield chunk
        except Exception as exc:
            record.error = exc
            raise

    def close(self):
        try:
            if hasattr(self.chunks, "close"):
                self.chunks.close()
        finally:
            self.record.finish()


class _Tee:
    """wsgi.input that keeps the first bytes the application reads."""

    def __init__(self, stream, keep):
        self.stream = stream
        self.keep = keep + 1
        self.head = b""
        self.total = 0

    def _seen(self, data):
        self.total += len(data)
        if len(self.head) < self.keep:
            self.head += data[:self.keep - len(self.head)]
        return data

    def read(self, *args):
        return self._seen(self.stream.read(*args)) if self.stream else b""

    def readline(self, *args):
        return self._seen(self.stream.readline(*args)) if self.stream else b""

    def readlines(self, *args):
        return [self._seen(line) for line in self.stream.readlines(*args)] if self.stream else []

    def __iter__(self):
        while True:
            line = self.readline()
            if not line:
                return
            yield line


def _text(data):
    return data.decode("utf-8", "replace") if data else None


def _header(headers, name):
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


# --- sinks ---------------------------------------------------------------------
