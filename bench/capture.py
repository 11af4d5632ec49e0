"""Cost of capturing: the WSGI middleware per request, and the capturing
proxy's throughput, each beside its reference in one run.

    .venv/bin/python -m bench.capture [--calls 5000] [--requests 2000]

- Middleware: p50 time of one call of a small WSGI app, bare and wrapped in
  CaptureMiddleware (its HttpSink sending to a real logsvc meanwhile).
- Proxy: requests per second and MB/s through `python -m logsvc proxy`
  against the same upstream reached directly, 8 clients at once.
"""
import sys

if "--upstream-port" in sys.argv:  # the upstream process serves under gevent
    from gevent import monkey

    monkey.patch_all()

import argparse
import os
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from bench.common import ROOT, TOKEN, Server, free_port, p50

BODY = b'{"items": [1, 2, 3], "total": 3}'


def small_app(environ, start_response):
    environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(BODY)))])
    return [BODY]


def big_app(environ, start_response):
    if environ["PATH_INFO"] == "/big":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return (b"x" * 65536 for _ in range(16))  # 1 MiB
    return small_app(environ, start_response)


def call_times(app, calls):
    import io
    times = []
    for _ in range(calls):
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/items", "QUERY_STRING": "page=2",
                   "REMOTE_ADDR": "127.0.0.1", "HTTP_USER_AGENT": "bench",
                   "wsgi.input": io.BytesIO(b"")}
        start = time.perf_counter()
        body = app(environ, lambda status, headers, exc_info=None: None)
        for _ in body:
            pass
        if hasattr(body, "close"):
            body.close()
        times.append((time.perf_counter() - start) * 1e6)
    return times


def throughput(url, path, total, clients=8):
    sessions = [requests.Session() for _ in range(clients)]

    def fetch(i):
        return len(sessions[i % clients].get(url + path).content)

    with ThreadPoolExecutor(clients) as pool:
        start = time.perf_counter()
        size = sum(pool.map(fetch, range(total)))
        elapsed = time.perf_counter() - start
    return total / elapsed, size / elapsed / 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--upstream-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream_port:  # the upstream process
        from gevent.pywsgi import WSGIServer
        WSGIServer(("127.0.0.1", args.upstream_port), big_app, log=None).serve_forever()
    from logsvc.capture import CaptureMiddleware, HttpSink
    with tempfile.TemporaryDirectory() as data_dir:
        server = Server(data_dir)
        upstream_port, proxy_port = free_port(), free_port()
        upstream = subprocess.Popen([sys.executable, __file__, "--upstream-port",
                                     str(upstream_port)])
        env = dict(os.environ, LOGSVC_URL=server.url, LOGSVC_TOKEN=TOKEN)
        proxy = subprocess.Popen([sys.executable, "-m", "logsvc", "proxy", "--listen",
                                  f"127.0.0.1:{proxy_port}", "--upstream",
                                  f"http://127.0.0.1:{upstream_port}"], cwd=ROOT, env=env,
                                 stderr=subprocess.DEVNULL)
        try:
            sink = HttpSink(server.url, TOKEN)
            wrapped = CaptureMiddleware(small_app, sink, service_name="bench")
            call_times(small_app, 200), call_times(wrapped, 200)  # warm up
            bare, captured = p50(call_times(small_app, args.calls)), p50(
                call_times(wrapped, args.calls))
            sink.flush(30)
            print(f"middleware: p50 {captured:.1f} us per call wrapped, {bare:.1f} us bare "
                  f"(+{captured - bare:.1f} us); sent {sink.sent:,}, dropped {sink.dropped}")
            time.sleep(1)
            direct_url = f"http://127.0.0.1:{upstream_port}"
            proxy_url = f"http://127.0.0.1:{proxy_port}"
            for path, total in (("/items", args.requests), ("/big", max(50, args.requests // 20))):
                throughput(proxy_url, path, 20)
                d_rps, d_mbs = throughput(direct_url, path, total)
                p_rps, p_mbs = throughput(proxy_url, path, total)
                print(f"proxy {path}: {p_rps:,.0f} req/s, {p_mbs:.1f} MB/s through the proxy; "
                      f"direct {d_rps:,.0f} req/s, {d_mbs:.1f} MB/s; ratio {p_rps / d_rps:.2f}")
        finally:
            for process in (proxy, upstream):
                process.terminate()
                process.wait(timeout=10)
            server.stop()


if __name__ == "__main__":
    main()
