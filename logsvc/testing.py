"""What the tests and the benchmarks share: a real gunicorn on a loopback
port, a client-side view of the store, and varied entries.

    from logsvc.testing import Server, make_entry
    with Server(tmp_path).start() as server:
        requests.post(server.url + INGEST, json=[make_entry(1)], headers=server.headers)
"""
import gzip
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import orjson
import requests

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "test-admin-token"
LOGS = "/api/proxy-logs/_logs"
INGEST = "/api/proxy-logs/_ingest"


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
    """A real gunicorn (`gunicorn -c gunicorn.conf.py wsgi:app`, gevent
    workers) on a loopback port, with its log in `<data_dir>/gunicorn.log`.
    `env` adds or overrides LOGSVC_* settings. `kind="gthread"` runs
    gunicorn's threaded workers instead, `kind="waitress"` waitress (one
    process, 16 threads)."""

    def __init__(self, data_dir, workers=2, env=None, port=None, token=ADMIN_TOKEN, kind="gevent"):
        self.data_dir = data_dir
        self.token = token
        self.headers = {"Authorization": f"Bearer {token}"}
        self.workers = workers
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = env or {}
        self.proc = None
        self.log = Path(data_dir) / "gunicorn.log"
        self.kind = kind  # gevent (gunicorn.conf.py as is), gthread, or waitress

    def command(self):
        if self.kind == "waitress":
            return [sys.executable, "-m", "waitress", "--threads=16", "--channel-timeout=300",
                    f"--listen=127.0.0.1:{self.port}", "wsgi:app"]
        argv = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"]
        if self.kind == "gthread":
            argv += ["-k", "gthread", "--threads", "16"]
        return argv + ["wsgi:app"]

    # Every server started in this process, in order (the tests' conftest
    # stops those a failed test left running).
    started = []

    def start(self):
        Server.started.append(self)
        # A short heartbeat lets streams notice closed clients, so that
        # stopping the server does not wait for them.
        env = dict(os.environ, LOGSVC_DATA_DIR=str(self.data_dir), LOGSVC_PORT=str(self.port),
                   LOGSVC_HOST="127.0.0.1", LOGSVC_WORKERS=str(self.workers),
                   LOGSVC_ADMIN_TOKEN=self.token, LOGSVC_HEARTBEAT_S="1",
                   GUNICORN_CMD_ARGS="--graceful-timeout 1")
        env.update(self.extra_env)
        Path(self.data_dir).mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
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

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def worker_pids(self):
        """The gunicorn workers' pids (not the sealing process's)."""
        return sorted(pid for pid in self._children() if not self._is_sealer(pid))

    def sealer_pid(self):
        """The sealing process's pid (logsvc/sealer.py), or None."""
        return next((pid for pid in self._children() if self._is_sealer(pid)), None)

    def _children(self):
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(pid) for pid in out.stdout.split()]

    @staticmethod
    def _is_sealer(pid):
        try:  # its command line: python -m logsvc.sealer
            return b"logsvc.sealer" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False


def close_code(ws):
    """The close code a websocket-client connection receives."""
    import websocket

    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return struct.unpack("!H", data[:2])[0]
