"""The SQLite write-ahead log stays bounded under sustained ingest while
live tails and readers are attached (they keep SQLite's own checkpoint
from ever restarting the log) and the background seals what ingest wrote."""
import contextlib
import os
import random
import sqlite3
import threading
import time

import orjson
import pytest
import requests

from logsvc.store import db
from logsvc.testing import INGEST, LOGS, Server, gz, make_entry

STREAM = LOGS + "/stream"
BATCHES, PER_BATCH, WRITERS, TAILS = 60, 5_000, 4, 10
WAL_LIMIT = 64 * 1024 * 1024
BODY = orjson.dumps({"items": [{"id": n, "name": f"item {n}", "ok": True} for n in range(40)]}).decode()


def batch(number, now_ms):
    """A batch like a proxy's: random trace ids, so that every batch
    touches pages all over the trace index (what makes the log grow)."""
    first = number * PER_BATCH
    rng = random.Random(number)
    entries = [make_entry(first + i, projectId=f"proj_{(first + i) % 10}",
                          traceId=f"{rng.getrandbits(128):032x}",
                          tsMs=now_ms - 3_600_000 + (first + i) // 100,
                          responseBody=BODY if i % 2 else None)
               for i in range(PER_BATCH)]
    return gz(b"\n".join(orjson.dumps(e) for e in entries))


@pytest.mark.sqlite_only("PostgreSQL keeps its own write-ahead log")
def test_wal_stays_under_64_mb_with_tails_and_readers_attached(tmp_path):
    wal = tmp_path / "logs.db-wal"
    now_ms = int(time.time() * 1000)
    # The sealer looks every second: its seals (two of them here) run
    # while the writers write or after them, as they do on a busy store.
    def segment_count():
        with contextlib.closing(sqlite3.connect(tmp_path / "logs.db")) as conn:
            return conn.execute("SELECT count(*) FROM segment").fetchone()[0]

    with Server(tmp_path, workers=2, env={"LOGSVC_SEAL_INTERVAL_S": "1"}).start() as server:
        done, written = threading.Event(), threading.Event()
        largest, errors, tail_counts = [0], [], [0] * TAILS

        def watch_wal():
            while not done.is_set():
                try:
                    largest[0] = max(largest[0], os.path.getsize(wal))
                except OSError:
                    pass
                time.sleep(0.02)

        def tail(n):
            try:
                with requests.get(server.url + STREAM, headers=server.headers, stream=True,
                                  params={"projectId": f"proj_{n}", "replay": 0},
                                  timeout=(5, 10)) as response:
                    response.raise_for_status()
                    for line in response.iter_lines():
                        if line.startswith(b"data: {") and b'"traceId"' in line:
                            tail_counts[n] += 1
                        if done.is_set():
                            return
            except Exception as exc:  # noqa: BLE001 - reported by the assertion
                if not done.is_set():
                    errors.append(f"tail {n}: {exc!r}")

        def read_loop(params):
            while not done.is_set() and not written.is_set():
                response = requests.get(server.url + LOGS, headers=server.headers,
                                        params=params, timeout=30)
                if response.status_code != 200:
                    errors.append(f"read: {response.status_code}")

        def write(numbers):
            for number in numbers:
                response = requests.post(
                    server.url + INGEST, data=batch(number, now_ms), timeout=120,
                    headers={**server.headers, "Content-Type": "application/x-ndjson",
                             "Content-Encoding": "gzip"})
                if response.status_code != 200 or response.json()["accepted"] != PER_BATCH:
                    errors.append(f"ingest: {response.status_code} {response.text[:200]}")

        background = [threading.Thread(target=watch_wal)]
        background += [threading.Thread(target=tail, args=(n,)) for n in range(TAILS)]
        background += [threading.Thread(target=read_loop, args=(params,)) for params in
                       ({"level": "error", "order": "desc", "limit": 200},
                        {"projectId": "proj_3", "order": "desc", "limit": 200})]
        for thread in background:
            thread.start()
        time.sleep(1)  # the tails are open before the first write
        writers = [threading.Thread(target=write, args=(range(w, BATCHES, WRITERS),))
                   for w in range(WRITERS)]
        for thread in writers:
            thread.start()
        for thread in writers:
            thread.join()
        # The readers stop with the writers: the sealer, which yields the
        # processor to requests, finishes its rounds in the time they leave.
        written.set()
        deadline = time.monotonic() + 30
        while sum(tail_counts) < BATCHES * PER_BATCH and time.monotonic() < deadline:
            time.sleep(0.2)
        # The sealer may still be on its rounds (a loaded machine): the log
        # stays watched until it has sealed what it will.
        while segment_count() < 2 and time.monotonic() < deadline + 120:
            time.sleep(0.2)
        done.set()
        for thread in background:
            thread.join(timeout=15)
        stats = requests.get(server.url + "/api/proxy-logs/_logs/stats",
                             headers=server.headers, timeout=30).json()

    assert not errors, errors[:5]
    assert stats["total"] == BATCHES * PER_BATCH
    assert segment_count() >= 2
    # Every tail saw every entry of its project: the checkpoints lose nothing.
    assert tail_counts == [BATCHES * PER_BATCH // TAILS] * TAILS
    assert largest[0] <= WAL_LIMIT, f"WAL reached {largest[0] / 2**20:.0f} MB"


@pytest.mark.sqlite_only("PostgreSQL keeps its own write-ahead log")
def test_an_idle_log_is_given_back_while_a_tail_stays_open(tmp_path):
    wal = tmp_path / "logs.db-wal"
    now_ms = int(time.time() * 1000)
    seen, opened = [], threading.Event()
    with Server(tmp_path, workers=2, env={"LOGSVC_WAL_IDLE_S": "1"}).start() as server:
        def tail():
            with requests.get(server.url + STREAM, headers=server.headers, stream=True,
                              params={"replay": 0}, timeout=(5, 30)) as response:
                opened.set()
                for line in response.iter_lines():
                    if line.startswith(b"data: {") and b'"traceId"' in line:
                        seen.append(orjson.loads(line[len(b"data: "):])["id"])
                    if len(seen) == 2 * PER_BATCH:
                        return

        def ingest(number):
            response = requests.post(
                server.url + INGEST, data=batch(number, now_ms), timeout=60,
                headers={**server.headers, "Content-Type": "application/x-ndjson",
                         "Content-Encoding": "gzip"})
            assert response.status_code == 200 and response.json()["accepted"] == PER_BATCH

        reader = threading.Thread(target=tail)
        reader.start()
        assert opened.wait(10)
        ingest(0)
        written = os.path.getsize(wal)
        deadline = time.monotonic() + 20
        while os.path.getsize(wal) and time.monotonic() < deadline:
            time.sleep(0.1)
        trimmed = os.path.getsize(wal)
        ingest(1)  # the log starts again; the tail still gets everything
        reader.join(timeout=30)
        total = requests.get(server.url + LOGS + "/stats", headers=server.headers,
                             timeout=30).json()["total"]

    assert written > 1024 * 1024  # the batch went through the log
    assert trimmed == 0
    assert total == 2 * PER_BATCH
    assert len(seen) == len(set(seen)) == 2 * PER_BATCH


@pytest.mark.sqlite_only("PostgreSQL's writers queue for their row locks in order")
def test_a_waiting_writer_gets_in_between_another_writers_transactions(make_app):
    """A thread writing transaction after transaction (as the background's
    seal and the pages it gives back do) lets a writer that waits for the
    write lock go first, instead of leaving it the microseconds between
    two of its transactions (SQLite's busy handler alone looked every
    100 ms and found the lock taken each time)."""
    store = make_app().extensions["logsvc"].store
    events, lock = [], threading.Lock()
    holding = threading.Event()

    def note(event):
        with lock:
            events.append(event)

    def steps():
        with db.using(store):
            for n in range(15):
                with db.database.atomic():
                    db.execute("INSERT INTO meta (key, value) VALUES (?, 'x')", (f"turn-a{n}",))
                    if n == 2:
                        holding.set()  # the other writer starts waiting now
                    time.sleep(0.04)  # the write lock held, as a seal's step holds it
                note(f"a{n}")

    def one_write():
        holding.wait(10)
        with db.using(store), db.database.atomic():
            db.execute("INSERT INTO meta (key, value) VALUES ('turn-b', 'x')")
        note("b")

    threads = [threading.Thread(target=steps), threading.Thread(target=one_write)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(events) == sorted(["b", *(f"a{n}" for n in range(15))])
    # It waited for the transaction it found (and perhaps one more), not
    # for all of them.
    assert events.index("b") <= events.index("a4"), events
