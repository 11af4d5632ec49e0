"""The deploy guide, tested: real nginx (Debian's, which .ci/run installs)
started from the configuration in docs/deploy.md, terminating TLS in front
of gunicorn with the /logs/ prefix stripped. Ingest, the SSE tail, the
WebSocket tail, the web UI and its files, and a browser session all go
through it."""
import json
import re
import shutil
import ssl
import subprocess
import threading
import time

import pytest
import requests
import sseclient
import urllib3
import websocket

from logsvc.testing import ADMIN_TOKEN, ROOT, Server, free_port, make_entry

pytestmark = [pytest.mark.server,
              pytest.mark.sqlite_only("the proxy in front does not depend on the engine")]

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def site_from_the_guide():
    text = (ROOT / "docs" / "deploy.md").read_text()
    (site,) = re.findall(r"```nginx\n(.*?)```", text, re.S)
    return site


@pytest.fixture
def proxied(tmp_path):
    if not shutil.which(NGINX):
        pytest.skip("nginx is not installed (.ci/run installs Debian's)")
    server = Server(tmp_path / "data", env={"LOGSVC_TRUSTED_PROXIES": "127.0.0.1",
                                            "LOGSVC_HEARTBEAT_S": "1"}).start()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    port = free_port()
    site = (site_from_the_guide()
            .replace("server 127.0.0.1:8080;", f"server 127.0.0.1:{server.port};")
            .replace("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
            .replace("/etc/ssl/certs/logs.example.com.pem", str(cert))
            .replace("/etc/ssl/private/logs.example.com.key", str(key)))
    for path in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / path).mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""
user root;
daemon off;
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
{site}
}}
""")
    nginx = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(tmp_path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    base = f"https://127.0.0.1:{port}/logs"
    deadline = time.monotonic() + 10
    while True:
        try:
            requests.get(base + "/healthz", verify=False, timeout=1)
            break
        except requests.ConnectionError:
            if nginx.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start: {(tmp_path / 'error.log').read_text()}") from None
            time.sleep(0.1)
    yield base, server
    nginx.terminate()
    nginx.wait(timeout=10)
    server.stop()


@pytest.fixture(autouse=True)
def quiet_tls_warnings():
    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)


def ingest(base, n, start=0):
    response = requests.post(base + "/api/proxy-logs/_ingest", verify=False, timeout=10,
                             headers=ADMIN,
                             json=[make_entry(i, tsMs=None) for i in range(start, start + n)])
    assert response.status_code == 200, response.text
    return response.json()


def test_ingest_the_ui_and_a_session_through_nginx(proxied):
    base, _ = proxied
    assert ingest(base, 3)["accepted"] == 3
    page = requests.get(base + "/", verify=False, timeout=5)
    assert page.status_code == 200 and '<base href="/logs/">' in page.text
    for asset in ("ui/app.js", "ui/app.css"):
        assert requests.get(f"{base}/{asset}", verify=False, timeout=5).status_code == 200
    browser = requests.Session()
    browser.verify = False
    browser.trust_env = False  # REQUESTS_CA_BUNDLE would turn verification back on
    opened = browser.post(base + "/api/session", headers=ADMIN, timeout=5)
    cookie = opened.headers["Set-Cookie"]
    assert "Secure" in cookie and "Path=/logs/" in cookie  # HTTPS at the proxy
    listed = browser.get(base + "/api/proxy-logs/_logs", timeout=5)
    assert listed.status_code == 200 and listed.json()["total"] == 3
    document = browser.get(base + "/api/proxy-logs/openapi.json", timeout=5).json()
    assert document["servers"] == [{"url": "/logs"}]


def test_the_sse_tail_arrives_through_nginx_unbuffered(proxied):
    base, _ = proxied
    response = requests.get(base + "/api/proxy-logs/_logs/stream", params={"replay": 0},
                            headers=ADMIN, stream=True, verify=False, timeout=(5, 10))
    assert response.status_code == 200
    got = []

    def read():
        for event in sseclient.SSEClient(response).events():
            if event.event == "message" and event.data.startswith("{"):
                got.append(json.loads(event.data)["id"])
                if len(got) == 3:
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.5)
    started = time.monotonic()
    ingest(base, 3)
    reader.join(timeout=10)
    response.close()
    assert got == [1, 2, 3] and time.monotonic() - started < 5


def test_the_websocket_tail_upgrades_through_nginx(proxied):
    base, _ = proxied
    ticket = requests.get(base + "/api/ws-token", headers=ADMIN, verify=False,
                          timeout=5).json()["token"]
    url = base.replace("https://", "wss://") + f"/api/ws/logs?replay=0&token={ticket}"
    ws = websocket.create_connection(url, timeout=10, sslopt={"cert_reqs": ssl.CERT_NONE})
    try:
        ws.send("ping")
        assert ws.recv() == "pong"
        ingest(base, 2)
        assert [json.loads(ws.recv())["id"] for _ in range(2)] == [1, 2]
    finally:
        ws.close()


def test_the_web_ui_signs_in_and_follows_live_through_nginx(proxied):
    from types import SimpleNamespace

    from tests.test_ui import CHROMEDRIVER, CHROMIUM, chromium, row_ids, sign_in, state, wait

    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (installed by .ci/run)")
    base, _ = proxied
    ingest(base, 2)
    browser = chromium("--ignore-certificate-errors")
    try:
        sign_in(browser, SimpleNamespace(url=base))  # the page at /logs/, its calls under it
        wait(lambda: state(browser) == "live")  # the WebSocket, upgraded by nginx
        wait(lambda: row_ids(browser) == [2, 1])
        ingest(base, 3, start=2)
        wait(lambda: row_ids(browser) == [5, 4, 3, 2, 1])
    finally:
        browser.quit()
