"""Capture at the source: the WSGI middleware, the capturing proxy, the
access-log importer, and the payloads log shippers send."""
import gzip
import hashlib
import json
import os
import subprocess
import sys
import time

import flask
import orjson
import pytest
import requests
from werkzeug.test import Client

from logsvc.capture import CaptureMiddleware, HttpSink
from logsvc.capture.importer import parse_line
from logsvc.testing import ADMIN_TOKEN, INGEST, LOGS, ROOT, free_port


class Client(Client):
    """werkzeug's test client, reading each answer whole (so the WSGI
    iterable is closed and the middleware records the call)."""

    def __init__(self, app):
        super().__init__(app, use_cookies=False)

    def open(self, *args, **kwargs):
        kwargs.setdefault("buffered", True)
        return super().open(*args, **kwargs)


class ListSink:
    """Keeps what it is given, like a sink that always succeeds."""

    def __init__(self):
        self.entries = []

    def submit(self, entry):
        self.entries.append(entry)


def flask_app():
    app = flask.Flask("captured")

    @app.post("/items")
    def create():
        return {"got": flask.request.get_json(), "trace": flask.request.headers["X-Request-Id"]}, 201

    @app.get("/secret")
    def secret():
        response = flask.make_response("ok")
        response.set_cookie("session", "s3cr3t")
        return response

    @app.get("/boom")
    def boom():
        raise RuntimeError("broken")

    return app


def test_the_middleware_records_a_request_and_a_response_per_call():
    sink = ListSink()
    app = CaptureMiddleware(flask_app(), sink, service_name="shop", project_id="p1",
                            container_id="c1")
    client = Client(app)
    response = client.post("/items?x=1", json={"name": "ada"},
                           headers={"User-Agent": "pytest/9", "Authorization": "Bearer t0k"})
    assert response.status_code == 201
    request, answer = sink.entries
    assert (request["kind"], answer["kind"]) == ("request", "response")
    assert request["traceId"] == answer["traceId"] == response.headers["X-Request-Id"]
    assert response.get_json()["trace"] == request["traceId"]  # passed on to the app
    assert request["url"] == "/items?x=1" and request["method"] == "POST"
    assert (request["serviceName"], request["projectId"], request["containerId"]) == (
        "shop", "p1", "c1")
    assert json.loads(request["requestBody"]) == {"name": "ada"}
    assert request["data"]["bytesIn"] == len(b'{"name": "ada"}')
    assert request["data"]["userAgent"] == "pytest/9"
    assert request["data"]["requestHeaders"]["Authorization"] == "[redacted]"
    assert answer["status"] == 201 and answer["durationMs"] >= 0
    assert "durationMs" not in answer["data"]
    assert json.loads(answer["responseBody"])["got"] == {"name": "ada"}
    assert answer["data"]["bytesOut"] == len(response.data)


def test_cookies_and_configured_headers_are_redacted():
    sink = ListSink()
    client = Client(CaptureMiddleware(flask_app(), sink, redact_headers=["X-Api-Key"]))
    client.get("/secret", headers={"Cookie": "a=b", "X-Api-Key": "k", "X-Other": "fine"})
    request, answer = sink.entries
    headers = request["data"]["requestHeaders"]
    assert headers["Cookie"] == headers["X-Api-Key"] == "[redacted]"
    assert headers["X-Other"] == "fine"
    assert dict(answer["data"]["responseHeaders"])["Set-Cookie"] == "[redacted]"
    assert "s3cr3t" not in json.dumps(sink.entries)


@pytest.mark.parametrize("headers, expected", [
    ({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
     "4bf92f3577b34da6a3ce929d0e0e4736"),
    ({"X-Request-Id": "req-123"}, "req-123"),
])
def test_the_trace_id_comes_from_the_caller_when_given(headers, expected):
    sink = ListSink()
    Client(CaptureMiddleware(flask_app(), sink)).post("/items", json={}, headers=headers)
    assert {e["traceId"] for e in sink.entries} == {expected}


def test_the_client_ip_honours_only_trusted_proxies():
    sink = ListSink()
    app = CaptureMiddleware(flask_app(), sink, trusted_proxies=["10.0.0.1", "10.0.0.2"])
    forwarded = {"X-Forwarded-For": "198.51.100.7, 203.0.113.9, 10.0.0.2"}
    Client(app).get("/secret", headers=forwarded, environ_base={"REMOTE_ADDR": "10.0.0.1"})
    Client(app).get("/secret", headers=forwarded, environ_base={"REMOTE_ADDR": "192.0.2.1"})
    assert [e["clientIp"] for e in sink.entries[::2]] == ["203.0.113.9", "192.0.2.1"]


def test_bodies_follow_the_cap_and_content_type_rules():
    sink = ListSink()

    def app(environ, start_response):
        environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "image/png")])
        return [b"\x89PNG" * 100]

    Client(CaptureMiddleware(app, sink, max_body_bytes=10)).post("/up", data="z" * 50)
    request, answer = sink.entries
    assert request["requestBody"] == "z" * 10 and request["bodyTruncated"] is True
    assert answer["responseBody"] is None and answer["bodyTruncated"] is True
    assert answer["data"]["bytesOut"] == 400


def test_a_plain_wsgi_app_that_streams_still_streams():
    sink = ListSink()
    produced = []

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])

        def chunks():
            for i in range(3):
                produced.append(i)
                yield b"chunk %d\n" % i
        return chunks()

    body = CaptureMiddleware(app, sink)({"REQUEST_METHOD": "GET", "PATH_INFO": "/s",
                                         "wsgi.input": None}, lambda *a: None)
    iterator = iter(body)
    assert next(iterator) == b"chunk 0\n" and produced == [0]  # not buffered
    assert list(iterator) == [b"chunk 1\n", b"chunk 2\n"]
    assert sink.entries == []  # recorded once the response is done
    body.close()
    assert sink.entries[1]["data"]["bytesOut"] == 24


def test_an_exception_in_the_app_is_recorded_and_still_raised():
    sink = ListSink()
    app = flask_app()
    app.testing = False
    Client(CaptureMiddleware(app, sink)).get("/boom")
    assert sink.entries[1]["status"] == 500


def test_the_app_keeps_serving_when_logsvc_is_unreachable():
    sink = HttpSink(f"http://127.0.0.1:{free_port()}", "t", max_queue=10)
    client = Client(CaptureMiddleware(flask_app(), sink))
    started = time.monotonic()
    for _ in range(50):
        assert client.post("/items", json={}).status_code == 201
    assert time.monotonic() - started < 5
    assert sink.dropped >= 80  # 100 entries, at most 10 queued


@pytest.mark.server
def test_the_sink_retries_until_logsvc_comes_up(tmp_path):
    from logsvc.testing import Server
    port = free_port()
    sink = HttpSink(f"http://127.0.0.1:{port}", ADMIN_TOKEN, flush_s=0.1, max_backoff_s=0.5)
    Client(CaptureMiddleware(flask_app(), sink, project_id="late")).post("/items", json={})
    time.sleep(0.5)  # nothing listens yet: the batch waits
    server = Server(tmp_path, port=port).start()
    try:
        assert sink.flush(timeout=15)
        page = requests.get(server.url + LOGS, params={"projectId": "late"},
                            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
        assert page.json()["total"] == 2
    finally:
        server.stop()


def answer_losing_proxy(target_port, lose=1):
    """A loopback TCP proxy to logsvc that passes each request on but, for
    the first `lose` connections, hangs up instead of passing the answer
    back: the store took the batch, the sender never learns it."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    lost = [0]

    def relay(conn):
        with conn, socket.create_connection(("127.0.0.1", target_port)) as upstream:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            while len(body) < length:
                body += conn.recv(65536)
            upstream.sendall(head.replace(b"keep-alive", b"close") + b"\r\n\r\n" + body)
            answer = b""
            while chunk := upstream.recv(65536):
                answer += chunk
            if lost[0] < lose:
                lost[0] += 1
                return  # the answer is lost
            conn.sendall(answer)

    def serve():
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=relay, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1], lost


def test_a_batch_whose_answer_was_lost_is_stored_once(server):
    port, lost = answer_losing_proxy(server.port)
    sink = HttpSink(f"http://127.0.0.1:{port}", ADMIN_TOKEN, flush_s=0.05, max_backoff_s=0.2)
    for i in range(5):
        sink.submit({"kind": "event", "projectId": "retried", "data": {"n": i}})
    assert sink.flush(timeout=15)
    assert lost[0] == 1 and sink.sent == 5
    page = requests.get(server.url + LOGS, params={"projectId": "retried"},
                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
    assert page.json()["total"] == 5


def test_the_sink_counts_what_logsvc_refuses(server, caplog):
    sink = HttpSink(server.url, "not-a-token", flush_s=0.05)
    Client(CaptureMiddleware(flask_app(), sink)).post("/items", json={})
    assert sink.flush(timeout=10)
    assert sink.refused == 2 and sink.sent == 2
    assert "logsvc refused 2 captured entries (401)" in caplog.text
    good = HttpSink(server.url, ADMIN_TOKEN, flush_s=0.05)
    good.submit({"kind": "nope"})
    good.submit({"kind": "event"})
    assert good.flush(timeout=10)
    assert good.refused == 1
    assert "not-a-token" not in caplog.text


# --- the capturing proxy -----------------------------------------------------------

@pytest.fixture
def edge(server):
    upstream_port, proxy_port = free_port(), free_port()
    upstream = subprocess.Popen([sys.executable, str(ROOT / "tests" / "upstream.py"),
                                 str(upstream_port)], cwd=ROOT)
    # The upstream first: on a loaded machine it can start after the proxy,
    # whose first requests would then be answered 502 without reaching it.
    for _ in range(300):
        try:
            requests.get(f"http://127.0.0.1:{upstream_port}/nothing", timeout=1)
            break
        except requests.ConnectionError:
            time.sleep(0.1)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LOGSVC_") or k == "LOGSVC_DATABASE_URL"}
    env.update(LOGSVC_URL=server.url, LOGSVC_TOKEN=ADMIN_TOKEN)
    proxy = subprocess.Popen([sys.executable, "-m", "logsvc", "proxy", "--listen",
                              f"127.0.0.1:{proxy_port}", "--upstream",
                              f"http://127.0.0.1:{upstream_port}", "--service", "edge-svc",
                              "--project", "edge"], cwd=ROOT, env=env,
                             stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{proxy_port}"
    for _ in range(100):
        try:
            requests.get(url + "/nothing", timeout=1)
            break
        except requests.ConnectionError:
            time.sleep(0.1)
    yield url, server, upstream
    for process in (proxy, upstream):
        process.terminate()
        process.wait(timeout=10)


def entries_of(server, until=bool, **params):
    """The proxy's entries matching `params`, once `until(entries)` holds
    (its sink ships them in the background) or after 20 s."""
    deadline = time.monotonic() + 20
    while True:
        page = requests.get(server.url + LOGS, params={"projectId": "edge", "limit": 100,
                                                       **params},
                            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10).json()
        if until(page["entries"]) or time.monotonic() > deadline:
            return page["entries"]
        time.sleep(0.2)


def test_the_proxy_streams_five_megabytes_both_ways_and_records_them(edge):
    url, server, _ = edge
    payload = os.urandom(5 * 1024 * 1024)
    echoed = requests.post(url + "/echo", data=iter([payload[i:i + 65536] for i in
                                                     range(0, len(payload), 65536)]),
                           timeout=30)
    assert echoed.status_code == 201
    assert echoed.headers["X-Digest"] == hashlib.sha256(payload).hexdigest()
    assert echoed.content == payload
    big = requests.get(url + "/big", stream=True, timeout=30)
    assert sum(len(c) for c in big.iter_content(65536)) == 80 * 65536
    responses = entries_of(server, kind="response", status="2xx",
                           until=lambda found: {"/echo", "/big"} <= {e["url"] for e in found})
    assert {(e["url"], e["status"], e["source"], e["serviceName"]) for e in responses} >= {
        ("/echo", 201, "edge", "edge-svc"), ("/big", 200, "edge", "edge-svc")}
    by_url = {e["url"]: e for e in responses}
    assert by_url["/big"]["data"]["bytesOut"] == 80 * 65536
    assert by_url["/echo"]["data"]["bytesOut"] == len(payload)


def test_an_upstream_that_dies_mid_response_is_an_error_event(edge):
    url, server, upstream = edge
    try:
        received = len(requests.get(url + "/dies", timeout=30).content)
    except requests.RequestException:  # the body ended before its Content-Length
        received = None
    assert received is None or received < 100000
    upstream.wait(timeout=30)  # a loaded machine: it once took more than 10 s
    down = requests.get(url + "/echo", timeout=10)
    assert down.status_code == 502
    deadline = time.monotonic() + 10
    while len(events := entries_of(server, kind="event")) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sorted(e["data"]["message"].split(":")[0] for e in events) == [
        "upstream response broke off", "upstream unreachable"]
    assert {e["level"] for e in events} == {"error"}
    assert {e["data"]["event"] for e in events} == {"upstream-error"}
    assert {e["status"] for e in events} == {502}


# --- the importer ----------------------------------------------------------------

NGINX = ('203.0.113.7 - - [12/Jun/2024:14:33:54 +0000] "POST /v1/users?x=1 HTTP/1.1" 201 '
         '318 "https://example.org/" "curl/8.5"')
CADDY = json.dumps({"level": "info", "ts": 1718202834.5, "logger": "http.log.access",
                    "request": {"remote_ip": "198.51.100.4", "client_ip": "198.51.100.4",
                                "method": "GET", "host": "shop.example", "uri": "/cart",
                                "headers": {"User-Agent": ["Mozilla/5.0"]}},
                    "bytes_read": 0, "duration": 0.0123, "size": 5120, "status": 404})
TRAEFIK = json.dumps({"ClientHost": "192.0.2.9", "DownstreamStatus": 502,
                      "Duration": 2500000, "RequestMethod": "PUT", "RequestPath": "/api/x",
                      "RequestHost": "api.example", "StartUTC": "2024-06-12T14:33:54.25Z",
                      "DownstreamContentSize": 11, "RequestContentSize": 3,
                      "ServiceName": "api@docker", "request_User-Agent": "Go-http-client"})


@pytest.mark.parametrize("line, expected", [
    (NGINX, {"tsMs": 1718202834000, "method": "POST", "url": "/v1/users?x=1",
             "clientIp": "203.0.113.7", "status": 201}),
    (NGINX + " 0.052", {"status": 201, "durationMs": 52}),
    (NGINX + ' rt=1.250 uct="0.001" urt="1.249"', {"status": 201, "durationMs": 1250}),
    (CADDY, {"tsMs": 1718202834500, "method": "GET", "url": "/cart",
             "clientIp": "198.51.100.4", "status": 404, "durationMs": 12.3}),
    (TRAEFIK, {"tsMs": 1718202834250, "method": "PUT", "url": "/api/x",
               "clientIp": "192.0.2.9", "status": 502, "serviceName": "api@docker",
               "durationMs": 2.5}),
])
def test_access_log_lines_become_entries(line, expected):
    entry = parse_line(line)
    assert {k: entry.get(k) for k in expected} == expected
    if line == NGINX:  # the combined format has no duration
        assert "durationMs" not in entry
    assert entry["kind"] == "response" and entry["source"] == "edge"


def test_unreadable_lines_are_skipped():
    assert parse_line("garbage") is None and parse_line("{not json") is None
    assert parse_line('{"a": 1}') is None and parse_line("") is None
    # JSON that looks like Caddy's or Traefik's with a field of another type
    # or out of range: not theirs, and the import goes on.
    for line in ('{"request": "GET / HTTP/1.1", "ts": 1}',
                 '{"RequestMethod": "GET", "StartUTC": 5}',
                 '{"RequestMethod": "GET", "StartUTC": "2024-06-12T14:33:54Z", "Duration": 1e400}'):
        assert parse_line(line) is None, line


def test_the_import_command_sends_a_file_with_progress(server, tmp_path):
    from logsvc.entry import now_ms
    recent = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now_ms() / 1000 - 60))
    lines = [NGINX.replace("12/Jun/2024:14:33:54 +0000", recent)] * 25 + ["garbage"]
    path = tmp_path / "access.log"
    path.write_text("\n".join(lines))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LOGSVC_") or k == "LOGSVC_DATABASE_URL"}
    env.update(LOGSVC_URL=server.url, LOGSVC_TOKEN=ADMIN_TOKEN)
    done = subprocess.run([sys.executable, "-m", "logsvc", "import", str(path), "--service",
                           "nginx", "--batch", "10"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"accepted": 25, "rejected": 0, "unreadable": 1}
    assert "bytes" in done.stderr
    stats = requests.get(server.url + LOGS + "/stats", timeout=10,
                         headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
    assert stats["byService"] == {"nginx": 25}


# --- what log shippers send ---------------------------------------------------------

def test_vector_http_sink_payloads_are_accepted(client, admin):
    # Vector `http` sink, codec json + newline_delimited framing: NDJSON with no
    # trailing newline, gzip when compression = "gzip"; its health check is a HEAD.
    assert client.head(INGEST).status_code == 200
    events = [{"message": "GET /", "timestamp": "2026-11-22T01:02:03.456Z", "host": "web-1",
               "kind": "request", "status": 200, "url": "/"} for _ in range(3)]
    body = gzip.compress(b"\n".join(orjson.dumps(e) for e in events))
    response = client.post(INGEST, data=body, headers={**admin, "Content-Encoding": "gzip",
                                                       "Content-Type": "application/x-ndjson"})
    assert response.status_code == 200 and response.json["accepted"] in (0, 3)


def test_fluent_bit_json_lines_payloads_are_accepted(client, admin):
    # Fluent Bit `http` output, format json_lines, json_date_key timestamp,
    # json_date_format double: one object a line, epoch seconds as a float.
    now = time.time()
    lines = [{"timestamp": now, "log": "hello", "kind": "event", "level": "info"},
             {"timestamp": now + 0.25, "log": "world", "kind": "event", "level": "warn"}]
    body = b"\n".join(orjson.dumps(line) for line in lines) + b"\n"
    response = client.post(INGEST, data=body, headers={**admin,
                                                       "Content-Type": "application/json"})
    assert response.json["accepted"] == 2
    stored = client.get(LOGS, headers=admin).json["entries"]
    assert [e["data"]["log"] for e in stored] == ["hello", "world"]
    assert stored[1]["tsMs"] - stored[0]["tsMs"] == 250


def test_a_json_array_batch_is_accepted(client, admin):
    response = client.post(INGEST, json=[{"kind": "event"}, {"kind": "event"}], headers=admin)
    assert response.json["accepted"] == 2


def test_the_local_sink_writes_into_the_store_of_this_host(tmp_path, make_app):
    from logsvc.capture import LocalSink
    from logsvc.config import Config
    config = Config.from_env().replace(data_dir=tmp_path, admin_token=ADMIN_TOKEN)
    sink = LocalSink(config, flush_s=0.05)
    Client(CaptureMiddleware(flask_app(), sink, project_id="here")).post("/items", json={})
    assert sink.flush(timeout=10) and sink.sent == 2
    sink.store.close()
    client = make_app().test_client()
    page = client.get(LOGS, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json
    assert [e["kind"] for e in page["entries"]] == ["request", "response"]
    assert {e["projectId"] for e in page["entries"]} == {"here"}


def test_the_demo_shows_live_traffic_within_seconds(tmp_path):
    port, proxy_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LOGSVC_") or k == "LOGSVC_DATABASE_URL"}
    env.update(LOGSVC_DATA_DIR=str(tmp_path), LOGSVC_PORT=str(port))
    with subprocess.Popen([sys.executable, "-m", "logsvc", "demo", "--proxy-port",
                           str(proxy_port)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True) as demo:
        try:
            assert f"127.0.0.1:{port}" in demo.stdout.readline()
            token = (tmp_path / "admin_token").read_text().strip()
            deadline = time.monotonic() + 20
            stats = {}
            while time.monotonic() < deadline and len(stats.get("byService", {})) < 2:
                time.sleep(0.5)
                stats = requests.get(f"http://127.0.0.1:{port}{LOGS}/stats", timeout=10,
                                     headers={"Authorization": f"Bearer {token}"}).json()
            assert stats["byKind"]["request"] > 0 and stats["bySource"] == {"edge": stats["total"]}
            assert len(stats["byService"]) >= 2
        finally:
            demo.terminate()
            demo.wait(timeout=10)
            demo.stdout.close()


def test_the_demos_slow_route_answers_slowly_and_well():
    from logsvc import demo

    answered = []
    started = time.monotonic()
    body = demo._upstream({"PATH_INFO": "/slow", "REQUEST_METHOD": "GET"},
                          lambda status, headers: answered.append(status))
    assert answered == ["200 OK"] and b"".join(body)
    assert time.monotonic() - started >= 0.3
