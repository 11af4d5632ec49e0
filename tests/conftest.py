import functools
import gzip
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import requests

from app import create_app

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "test-admin-token"
LOGS = "/api/proxy-logs/_logs"
INGEST = "/api/proxy-logs/_ingest"


# The whole suite runs on both engines. PostgreSQL is the server at
# LOGSVC_TEST_POSTGRES_URL (default: the local one, database `test`); each
# test gets a schema of its own, dropped afterwards.
POSTGRES_URL = os.environ.get("LOGSVC_TEST_POSTGRES_URL",
                              "postgresql://postgres@127.0.0.1:5432/test")


def _postgres_reason():
    try:
        import psycopg2

        psycopg2.connect(POSTGRES_URL, connect_timeout=3).close()
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        return f"no PostgreSQL reachable at {POSTGRES_URL}: {str(exc).strip()}"
    return None


postgres_missing = functools.cache(_postgres_reason)


def postgres_schema_url(schema):
    separator = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"


@pytest.fixture(autouse=True, params=["sqlite", "postgresql"])
def engine(request, monkeypatch):
    """Which store the test runs on; on PostgreSQL, LOGSVC_DATABASE_URL names
    a fresh schema for the app factory and for every server it starts."""
    if request.param == "sqlite":
        if request.node.get_closest_marker("postgres_only"):
            pytest.skip(request.node.get_closest_marker("postgres_only").args[0])
        monkeypatch.delenv("LOGSVC_DATABASE_URL", raising=False)
        yield "sqlite"
        return
    if request.node.get_closest_marker("sqlite_only"):
        pytest.skip(request.node.get_closest_marker("sqlite_only").args[0])
    reason = postgres_missing()
    if reason:
        pytest.skip(reason)
    import psycopg2

    schema = f"t_{os.getpid()}_{time.monotonic_ns()}"
    def run(statement):
        conn = psycopg2.connect(POSTGRES_URL)
        conn.autocommit = True
        try:
            with conn.cursor() as cursor:
                cursor.execute("SET lock_timeout = '20s'")
                cursor.execute(statement)
        finally:
            conn.close()

    run(f"CREATE SCHEMA {schema}")
    monkeypatch.setenv("LOGSVC_DATABASE_URL", postgres_schema_url(schema))
    yield "postgresql"
    run(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def app(tmp_path):
    return create_app({"data_dir": tmp_path, "admin_token": ADMIN_TOKEN})


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def admin():
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class Store:
    """Writes entries and reads pages through the HTTP API as the operator."""

    def __init__(self, client):
        self.client = client
        self.headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def ingest(self, entries, **kwargs):
        response = self.client.post(INGEST, data=orjson.dumps(entries),
                                    content_type="application/json",
                                    headers=self.headers, **kwargs)
        assert response.status_code == 200, response.json
        return response.json

    def get(self, path=LOGS, **params):
        return self.client.get(path, query_string=params, headers=self.headers)

    def page(self, path=LOGS, **params):
        response = self.get(path, **params)
        assert response.status_code == 200, response.json
        return response.json


@pytest.fixture
def store(client):
    return Store(client)


def make_entry(i, **overrides):
    """A varied, valid entry; `i` picks its attributes deterministically."""
    status = (200, 201, 302, 404, 429, 500, 503, None)[i % 8]
    entry = {
        "kind": ("request", "response", "event")[i % 3],
        "projectId": f"proj_{i % 3}",
        "containerId": f"cnt_{i % 5}",
        "serviceName": ("user-api", "billing-api", "webhook-svc")[i % 3],
        "method": ("GET", "POST", "DELETE")[i % 3],
        "url": f"/v1/items/{i}",
        "clientIp": f"10.0.0.{i % 7}",
        "status": status,
        "source": ("backend", "edge")[i % 2],
        "tsMs": 1_800_000_000_000 + i * 1000,
        "traceId": f"trace-{i // 2}",
        "data": {"n": i},
    }
    entry.update(overrides)
    return entry


def gz(data):
    return gzip.compress(data)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A real gunicorn with gevent workers on a loopback port."""

    def __init__(self, data_dir, workers=2, env=None, port=None):
        self.data_dir = data_dir
        self.workers = workers
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = env or {}
        self.proc = None
        self.log = Path(data_dir) / "gunicorn.log"

    def start(self):
        # A short heartbeat lets streams notice closed clients, so that
        # stopping the server does not wait for them.
        env = dict(os.environ, LOGSVC_DATA_DIR=str(self.data_dir), LOGSVC_PORT=str(self.port),
                   LOGSVC_HOST="127.0.0.1", LOGSVC_WORKERS=str(self.workers),
                   LOGSVC_ADMIN_TOKEN=ADMIN_TOKEN, LOGSVC_HEARTBEAT_S="1",
                   GUNICORN_CMD_ARGS="--graceful-timeout 1")
        env.update(self.extra_env)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.log.read_text()[-2000:]}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"gunicorn did not start: {self.log.read_text()[-2000:]}")

    def kill(self):
        """SIGKILL the whole process group: master and workers, no cleanup."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def worker_pids(self):
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return sorted(int(pid) for pid in out.stdout.split())


@pytest.fixture
def server(tmp_path):
    instance = Server(tmp_path).start()
    yield instance
    instance.stop()
