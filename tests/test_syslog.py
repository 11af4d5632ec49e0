"""Syslog: RFC 5424 and 3164 messages over UDP and TCP (octet-counted and
newline-framed) become entries of LOGSVC_SYSLOG_PROJECT; nginx's and
HAProxy's own access logs over syslog, from the real daemons, become calls
with method, url, status, client and duration; one listener per host
whatever the number of workers, taken over when its process ends."""
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest
import requests

from logsvc.capture.syslog import entry_of, frames
from logsvc.testing import ADMIN_TOKEN, LOGS, Server, free_port

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
NOW = 1_796_300_000_000


def test_an_rfc5424_message_with_structured_data():
    entry = entry_of(b'<165>1 2026-12-03T14:00:00.250Z web-3 billing 4242 ID47 '
                     b'[exampleSDID@32473 iut="3" eventSource="App\\"lication"] '
                     b'\xef\xbb\xbfcard declined for order 42', "edge", NOW)
    assert entry["projectId"] == "edge"
    assert (entry["containerId"], entry["serviceName"]) == ("billing", "billing")
    assert (entry["kind"], entry["level"], entry["tsMs"]) == ("event", "info", 1_796_306_400_250)
    assert entry["data"] == {"host": "web-3", "facility": 20, "severity": 5, "procid": "4242",
                             "msgid": "ID47", "message": "card declined for order 42",
                             "structuredData": {"exampleSDID@32473": {
                                 "iut": "3", "eventSource": 'App"lication'}}}


def test_an_rfc3164_message_with_and_without_its_host():
    with_host = entry_of(b"<11>Dec  3 14:00:00 db-1 postgres[77]: could not fsync", "p", NOW)
    assert with_host["containerId"] == "postgres" and with_host["level"] == "error"
    assert with_host["data"] == {"host": "db-1", "facility": 1, "severity": 3, "procid": "77",
                                 "message": "could not fsync"}
    local = time.localtime(with_host["tsMs"] / 1000)
    assert (local.tm_mon, local.tm_mday, local.tm_hour) == (12, 3, 14)
    bare = entry_of(b"<12>Dec  3 14:00:00 cron: disk 91% full", "p", NOW)
    assert bare["containerId"] == "cron" and bare["level"] == "warn"
    assert "host" not in bare["data"] and bare["data"]["message"] == "disk 91% full"
    assert entry_of(b"no priority here", "p", NOW) is None


def test_access_log_lines_become_calls():
    nginx = entry_of(b'<190>Dec  3 14:00:00 edge-1 nginx: 203.0.113.9 - - '
                     b'[03/Dec/2026:14:00:00 +0000] "POST /v1/pay?retry=1 HTTP/1.1" 502 157 "-" '
                     b'"curl/8.5" rt=0.052', "edge", NOW)
    assert {k: nginx[k] for k in ("kind", "method", "url", "status", "clientIp", "durationMs",
                                  "tsMs", "containerId")} == {
        "kind": "response", "method": "POST", "url": "/v1/pay?retry=1", "status": 502,
        "clientIp": "203.0.113.9", "durationMs": 52.0, "tsMs": 1_796_306_400_000,
        "containerId": "nginx"}
    assert nginx["data"]["host"] == "edge-1" and nginx["data"]["userAgent"] == "curl/8.5"
    haproxy = entry_of(b'<134>Dec  3 14:00:00 haproxy[99]: 10.0.1.2:33317 '
                       b'[03/Dec/2026:14:00:00.655] http-in app/srv1 10/0/30/69/109 200 2750 '
                       b'- - ---- 1/1/1/1/0 0/0 "GET /index.html HTTP/1.1"', "edge", NOW)
    assert {k: haproxy[k] for k in ("method", "url", "status", "clientIp", "durationMs",
                                    "containerId")} == {
        "method": "GET", "url": "/index.html", "status": 200, "clientIp": "10.0.1.2",
        "durationMs": 109.0, "containerId": "haproxy"}
    assert haproxy["data"]["backend"] == "app" and haproxy["data"]["server"] == "srv1"


def test_a_json_body_of_no_known_access_log_format_is_kept_as_a_message():
    # "request" as a string is not Caddy's log (an object there).
    found = entry_of(b'<190>nginx: {"status": 500, "request": "POST /pay HTTP/1.1"}', "edge", NOW)
    assert found["kind"] == "event"
    assert found["data"]["message"].strip() == '{"status": 500, "request": "POST /pay HTTP/1.1"}'


def test_tcp_framing_octet_counted_and_newline_ended():
    one, two = b"<13>1 - - a - - - first", b"<13>1 - - a - - - second\nline"
    found, rest = frames(b"%d %s%d %s" % (len(one), one, len(two), two) + b"<13>third\n<13>fo")
    assert found == [one, two, b"<13>third"] and rest == b"<13>fo"
    found, rest = frames(b"30 <13>1 - - a - - - cut")
    assert found == [] and rest == b"30 <13>1 - - a - - - cut"


# --- listeners ------------------------------------------------------------------

def entries(server, **params):
    response = requests.get(server.url + LOGS, params={"projectId": "edge", "limit": 200,
                                                       **params}, headers=ADMIN, timeout=10)
    return response.json()["entries"]


def wait_for(fn, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        found = fn()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


@pytest.fixture
def listening(tmp_path):
    udp, tcp = free_port(), free_port()
    server = Server(tmp_path, env={"LOGSVC_SYSLOG_UDP": f"127.0.0.1:{udp}",
                                   "LOGSVC_SYSLOG_TCP": f"127.0.0.1:{tcp}",
                                   "LOGSVC_SYSLOG_PROJECT": "edge"}).start()
    server.udp, server.tcp = udp, tcp
    lock = tmp_path / "syslog.lock"
    assert wait_for(lambda: lock.exists() and lock.read_text().strip().isdigit())
    yield server
    server.stop()


@pytest.mark.server
@pytest.mark.sqlite_only("the listener is the same on both stores")
def test_udp_and_tcp_messages_are_stored_by_one_listener(listening):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for i in range(20):
            udp.sendto(b"<14>1 - host app - - - udp %d" % i, ("127.0.0.1", listening.udp))
    with socket.create_connection(("127.0.0.1", listening.tcp)) as tcp:
        counted = b"<14>1 - host app - - - counted"
        tcp.sendall(b"%d %s" % (len(counted), counted) + b"<14>Dec  3 14:00:00 h app: lined\n")
    found = wait_for(lambda: len(entries(listening)) >= 22 and entries(listening))
    messages = sorted(e["data"]["message"] for e in found)
    assert messages == sorted([f"udp {i}" for i in range(20)] + ["counted", "lined"])
    # One process of the two holds the listeners.
    holder = int((listening.data_dir / "syslog.lock").read_text())
    assert holder in listening.worker_pids()


@pytest.mark.server
@pytest.mark.sqlite_only("the listener is the same on both stores")
def test_another_worker_takes_the_listener_over(listening):
    holder = int((listening.data_dir / "syslog.lock").read_text())
    os.kill(holder, signal.SIGKILL)

    def stored():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(b"<14>1 - host app - - - after", ("127.0.0.1", listening.udp))
        time.sleep(0.3)
        return entries(listening, q="after")
    assert wait_for(stored, timeout=30)
    assert int((listening.data_dir / "syslog.lock").read_text()) != holder


@pytest.mark.server
@pytest.mark.sqlite_only("the listener is the same on both stores")
def test_nginx_sends_its_access_log_over_syslog(listening, tmp_path):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        pytest.skip("nginx is not installed (.ci/run installs Debian's)")
    port = free_port()
    conf = tmp_path / "nginx.conf"
    for path in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / path).mkdir()
    conf.write_text(f"""
user root;
daemon off;
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log;
events {{}}
http {{
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
    log_format timed '$remote_addr - $remote_user [$time_local] "$request" $status '
                     '$body_bytes_sent "$http_referer" "$http_user_agent" rt=$request_time';
    access_log syslog:server=127.0.0.1:{listening.udp},tag=nginx timed;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "hello\\n"; }}
        location /missing {{ return 404; }}
    }}
}}
""")
    daemon = subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: _answers(f"http://127.0.0.1:{port}/"), timeout=10)
        requests.get(f"http://127.0.0.1:{port}/missing?from=test", timeout=5,
                     headers={"User-Agent": "syslog-test"})
        found = wait_for(lambda: [e for e in entries(listening)
                                  if e["url"] == "/missing?from=test"])
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)
    [call] = found
    assert (call["kind"], call["method"], call["status"], call["clientIp"]) == (
        "response", "GET", 404, "127.0.0.1")
    assert call["containerId"] == "nginx" and call["durationMs"] is not None
    assert call["data"]["userAgent"] == "syslog-test"


@pytest.mark.server
@pytest.mark.sqlite_only("the listener is the same on both stores")
def test_haproxy_sends_its_httplog_over_syslog(listening, tmp_path):
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not os.path.exists(haproxy):
        pytest.skip("haproxy is not installed (.ci/run installs Debian's)")
    port = free_port()
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(f"""
global
    log 127.0.0.1:{listening.udp} local0
defaults
    mode http
    log global
    option httplog
    timeout connect 5s
    timeout client 10s
    timeout server 10s
frontend web
    bind 127.0.0.1:{port}
    default_backend logsvc
backend logsvc
    server one 127.0.0.1:{listening.port}
""")
    daemon = subprocess.Popen([haproxy, "-f", str(conf), "-db"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), timeout=10)
        requests.get(f"http://127.0.0.1:{port}/healthz?via=haproxy", timeout=5)
        found = wait_for(lambda: [e for e in entries(listening)
                                  if e["url"] == "/healthz?via=haproxy"])
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)
    [call] = found
    assert (call["method"], call["status"], call["clientIp"]) == ("GET", 200, "127.0.0.1")
    assert call["containerId"] == "haproxy" and call["durationMs"] >= 0
    assert call["data"]["backend"] == "logsvc"


def _answers(url):
    try:
        return requests.get(url, timeout=1).status_code < 500
    except requests.ConnectionError:
        return False
