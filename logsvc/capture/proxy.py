"""A capturing reverse proxy: forwards every request to one upstream and
records it with the capture middleware (`source: edge`).

    python -m logsvc proxy --listen 127.0.0.1:8081 --upstream http://127.0.0.1:5000

Request and response bodies stream through in both directions (chunks as
they come, never the whole body in memory). When the upstream cannot be
reached the client gets a 502 (504 on a timeout) and an `event` entry with
level `error` is recorded; when it dies in the middle of a response, the
client's response ends early and the same kind of event is recorded.
"""
import time

import requests

from .middleware import CaptureMiddleware

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailers", "transfer-encoding", "upgrade", "host", "content-length"}
CHUNK = 64 * 1024


class ReverseProxy:
    """The forwarding WSGI application (wrap it with CaptureMiddleware)."""

    def __init__(self, upstream, sink, timeout=30.0, labels=None):
        self.upstream = upstream.rstrip("/")
        self.sink = sink
        self.timeout = timeout
        self.labels = labels or {}
        self.session = requests.Session()

    def __call__(self, environ, start_response):
        environ["logsvc.proxy_started"] = time.perf_counter()
        url = self.upstream + (environ.get("PATH_INFO") or "/")
        if environ.get("QUERY_STRING"):
            url += "?" + environ["QUERY_STRING"]
        headers = {k[5:].replace("_", "-").title(): v for k, v in environ.items()
                   if k.startswith("HTTP_") and k[5:].replace("_", "-").lower() not in HOP_BY_HOP}
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        forwarded = environ.get("HTTP_X_FORWARDED_FOR")
        peer = environ.get("REMOTE_ADDR", "")
        headers["X-Forwarded-For"] = f"{forwarded}, {peer}" if forwarded else peer
        body = None
        length = environ.get("CONTENT_LENGTH")
        if length and length.isdigit() and int(length) > 0:
            body = _Sized(environ["wsgi.input"], int(length))
        elif environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
            body = _stream(environ["wsgi.input"])
        try:
            upstream = self.session.request(environ["REQUEST_METHOD"], url, data=body,
                                            headers=headers, stream=True,
                                            allow_redirects=False, timeout=self.timeout)
        except requests.Timeout as exc:
            return self._failed(environ, start_response, 504, exc)
        except requests.RequestException as exc:
            return self._failed(environ, start_response, 502, exc)
        status = f"{upstream.status_code} {upstream.reason or ''}".strip()
        start_response(status, [(k, v) for k, v in upstream.raw.headers.items()
                                if k.lower() not in HOP_BY_HOP])
        return self._relay(environ, upstream)

    def _relay(self, environ, upstream):
        try:
            for chunk in upstream.raw.stream(CHUNK, decode_content=False):
                if chunk:
                    yield chunk
        except Exception as exc:  # noqa: BLE001 - the upstream died mid-response
            self._event(environ, 502, f"upstream response broke off: {exc}")
        finally:
            upstream.close()

    def _failed(self, environ, start_response, status, exc):
        message = "upstream timed out" if status == 504 else "upstream unreachable"
        self._event(environ, status, f"{message}: {exc}")
        start_response(f"{status} {'Gateway Timeout' if status == 504 else 'Bad Gateway'}",
                       [("Content-Type", "application/json")])
        return [b'{"error": "%s"}' % message.encode()]

    def _event(self, environ, status, message):
        self.sink.submit({"kind": "event", "level": "error", "source": "edge",
                          "status": status, "method": environ.get("REQUEST_METHOD"),
                          "url": environ.get("PATH_INFO"), "traceId":
                          environ.get("HTTP_X_REQUEST_ID"), **self.labels,
                          "durationMs": round((time.perf_counter() - environ.get(
                              "logsvc.proxy_started", time.perf_counter())) * 1000, 3),
                          "data": {"event": "upstream-error", "upstream": self.upstream,
                                   "message": message[:500]}})


def build(upstream, sink, service_name=None, project_id=None, container_id=None,
          trusted_proxies=(), max_body_bytes=65536, timeout=30.0, labels=None):
    """The capturing proxy as one WSGI application."""
    fixed = {k: v for k, v in (("serviceName", service_name), ("projectId", project_id),
                               ("containerId", container_id)) if v}
    proxy = ReverseProxy(upstream, sink, timeout=timeout, labels=fixed)
    return CaptureMiddleware(proxy, sink, service_name=service_name, project_id=project_id,
                             container_id=container_id, source="edge",
                             trusted_proxies=trusted_proxies, max_body_bytes=max_body_bytes,
                             labels=labels)


def serve(listen, app):
    from gevent.pywsgi import WSGIServer

    host, _, port = listen.rpartition(":")
    server = WSGIServer((host or "127.0.0.1", int(port)), app, log=None)
    server.serve_forever()


class _Sized:
    """A request body of known length, read as the upstream connection takes
    it (requests sends it with that Content-Length, unchunked)."""

    def __init__(self, wsgi_input, length):
        self.wsgi_input = wsgi_input
        self.remaining = length
        self.length = length

    def __len__(self):
        return self.length

    def read(self, size=CHUNK):
        if self.remaining <= 0:
            return b""
        chunk = self.wsgi_input.read(min(size if size and size > 0 else CHUNK, self.remaining))
        self.remaining -= len(chunk)
        return chunk


def _stream(wsgi_input):
    """A chunked request body, relayed chunk by chunk."""
    while True:
        chunk = wsgi_input.read(CHUNK)
        if not chunk:
            return
        yield chunk
