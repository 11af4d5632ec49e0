"""End to end through real servers: gunicorn with two gevent workers, a crash
in the middle of ingest, and the embedded `python app.py`."""
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest
import requests

from logsvc.testing import ADMIN_TOKEN, INGEST, LOGS, ROOT, Server, free_port, make_entry

pytestmark = pytest.mark.server  # real gunicorn servers

HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def post_batch(url, entries):
    body = b"\n".join(orjson.dumps(e) for e in entries)
    response = requests.post(url + INGEST, data=body, timeout=30, headers={
        **HEADERS, "Content-Type": "application/x-ndjson", "Connection": "close"})
    response.raise_for_status()
    return response.json()


def test_two_gevent_workers_share_one_store(server):
    assert len(server.worker_pids()) == 2
    batches = [[make_entry(b * 10 + i, url=f"/b{b}/{i}") for i in range(10)] for b in range(20)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda batch: post_batch(server.url, batch), batches))
    assert sum(r["accepted"] for r in results) == 200
    ranges = sorted((r["firstId"], r["lastId"]) for r in results)
    assert ranges == [(1 + 10 * k, 10 + 10 * k) for k in range(20)]  # no id twice
    for _ in range(6):  # fresh connections land on either worker
        page = requests.get(server.url + LOGS, params={"limit": 5000}, timeout=10,
                            headers={**HEADERS, "Connection": "close"}).json()
        assert page["total"] == 200 and len(page["entries"]) == 200
        stats = requests.get(server.url + LOGS + "/stats", timeout=10,
                             headers={**HEADERS, "Connection": "close"}).json()
        assert stats["total"] == 200


def test_every_acknowledged_entry_survives_a_kill_9(tmp_path):
    server = Server(tmp_path).start()
    acknowledged = []
    failures = []
    stop = threading.Event()

    def writer(n):
        batch_no = 0
        while not stop.is_set():
            batch = [make_entry(i, url=f"/w{n}/b{batch_no}/{i}", tsMs=None) for i in range(50)]
            try:
                result = post_batch(server.url, batch)
            except requests.RequestException:
                failures.append(batch_no)
                return
            assert result["accepted"] == 50
            acknowledged.extend(e["url"] for e in batch)
            batch_no += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while len(acknowledged) < 400 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.kill()  # with requests in flight
    stop.set()
    for thread in threads:
        thread.join()
    assert len(acknowledged) >= 200, "the writers should have been acknowledged before the kill"

    restarted = Server(tmp_path).start()
    try:
        stored = set()
        cursor = 0
        while True:
            page = requests.get(restarted.url + LOGS, params={"afterId": cursor, "limit": 5000},
                                headers=HEADERS, timeout=30).json()
            if not page["entries"]:
                break
            stored.update(e["url"] for e in page["entries"])
            cursor = page["nextAfterId"]
        assert set(acknowledged) <= stored
        # Nothing half-stored: every batch is either whole or absent.
        per_batch = {}
        for url in stored:
            key = url.rsplit("/", 1)[0]
            per_batch[key] = per_batch.get(key, 0) + 1
        assert set(per_batch.values()) == {50}
        stats = requests.get(restarted.url + LOGS + "/stats", headers=HEADERS, timeout=10).json()
        assert stats["total"] == len(stored)
    finally:
        restarted.stop()


def test_python_app_py_prints_a_working_curl_line(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LOGSVC_") or k == "LOGSVC_DATABASE_URL"}
    env.update(LOGSVC_DATA_DIR=str(tmp_path / "data"), LOGSVC_PORT=str(port))
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        assert f"http://127.0.0.1:{port}" in lines[0]
        match = re.search(r"curl -H 'Authorization: Bearer (\S+)' '(\S+)'", lines[1])
        assert match, lines
        token, url = match.groups()
        assert token == (tmp_path / "data" / "admin_token").read_text().strip()
        requests.post(f"http://127.0.0.1:{port}{INGEST}", json={"kind": "event", "url": "/hi"},
                      headers={"Authorization": f"Bearer {token}"}, timeout=10)
        response = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert response.status_code == 200 and "/hi" in response.text
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


def test_workers_prune_in_the_background(tmp_path):
    server = Server(tmp_path, env={"LOGSVC_MAX_ROWS": "30", "LOGSVC_PRUNE_INTERVAL_S": "0.2"})
    server.start()
    try:
        post_batch(server.url, [make_entry(i, tsMs=None) for i in range(100)])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            page = requests.get(server.url + LOGS, params={"limit": 5000}, headers=HEADERS,
                                timeout=10).json()
            if page["total"] == 30:
                break
            time.sleep(0.2)
        assert [e["id"] for e in page["entries"]] == list(range(71, 101))
    finally:
        server.stop()
