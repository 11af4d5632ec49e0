"""Two hosts over one store: two gunicorn servers, each with two gevent
workers and a data directory of its own, on different ports.

On PostgreSQL both use the test's schema; on SQLite both name one database
file with `sqlite:///` (hosts sharing a disk). What must hold is the same:
an entry written through one host reaches live tails on the other, and with
many writers on both hosts every tail sees every id exactly once, in order.
"""
import json
import os
import random
import threading
import time

import pytest
import requests
import sseclient
import websocket

from logsvc.testing import ADMIN_TOKEN, INGEST, LOGS, Server, close_code, make_entry

pytestmark = pytest.mark.server  # real gunicorn servers

STREAM = LOGS + "/stream"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def two_hosts(tmp_path, engine, **settings):
    env = {"LOGSVC_ADMIN_FANOUT": "true", "LOGSVC_RATE_LIMIT_PER_MIN": "6", **settings}
    if engine == "sqlite":
        env["LOGSVC_DATABASE_URL"] = f"sqlite:///{tmp_path / 'shared.db'}"
    started = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            started.append(Server(tmp_path / name, env=env).start())
    except Exception:
        for server in started:
            server.stop()
        raise
    return started


@pytest.fixture
def hosts(tmp_path, engine):
    started = two_hosts(tmp_path, engine)
    yield started
    for server in started:
        server.stop()


def post(server, entries, headers=ADMIN):
    response = requests.post(server.url + INGEST, json=entries, timeout=60,
                             headers={**headers, "Connection": "close"})
    assert response.status_code == 200, response.text
    return response.json()


def subscribe(server, **params):
    response = requests.get(server.url + STREAM, params=params, stream=True, timeout=(5, 30),
                            headers={**ADMIN, "Connection": "close"})
    assert response.status_code == 200, response.text
    stream = sseclient.SSEClient(response).events()
    assert json.loads(next(stream).data) == []  # the (empty) replay frame: subscribed
    return response, stream


def test_an_entry_ingested_on_one_host_reaches_subscribers_on_the_other(hosts):
    a, b = hosts
    response, stream = subscribe(b, replay=0)
    try:
        started = time.monotonic()
        written = post(a, [make_entry(1, tsMs=None, url="/from/a")])
        event = next(stream)
        while event.event != "message":
            event = next(stream)
        assert json.loads(event.data)["url"] == "/from/a"
        assert int(event.id) == written["firstId"]
        assert time.monotonic() - started < 5
    finally:
        response.close()


@pytest.mark.postgres_only("on SQLite the poll is what crosses processes")
def test_on_postgresql_other_hosts_are_woken_by_notify_not_by_the_poll(tmp_path, engine):
    a, b = two_hosts(tmp_path, engine, LOGSVC_TAIL_POLL_S="60")
    try:
        response, stream = subscribe(b, replay=0)
        try:
            for n in range(3):
                started = time.monotonic()
                post(a, [make_entry(n, tsMs=None, url=f"/woken/{n}")])
                event = next(stream)
                while event.event != "message":
                    event = next(stream)
                assert json.loads(event.data)["url"] == f"/woken/{n}"
                assert time.monotonic() - started < 5  # far inside the 60 s poll
        finally:
            response.close()
    finally:
        a.stop()
        b.stop()


def test_eight_writers_on_two_hosts_and_four_tails_see_every_id_once_in_order(hosts):
    a, b = hosts
    tails = {}

    def tail(name, server):
        seen = tails[name] = []
        response, stream = subscribe(server, replay=0)
        ready.release()
        try:
            for event in stream:
                if event.event != "message":
                    seen.append(event.event)  # a gap or reset would be a failure
                    continue
                seen.append(int(event.id))
                if seen[-1] >= stop_at[0]:
                    return
        finally:
            response.close()

    stop_at = [float("inf")]
    ready = threading.Semaphore(0)
    readers = [threading.Thread(target=tail, args=(f"{host}{n}", server), daemon=True)
               for n in (1, 2) for host, server in (("a", a), ("b", b))]
    for reader in readers:
        reader.start()
    for _ in readers:
        assert ready.acquire(timeout=30)

    written = []
    failures = []

    def write(server, seed):
        rng = random.Random(seed)
        try:
            for _ in range(25):
                batch = [make_entry(rng.randrange(1000), tsMs=None)
                         for _ in range(rng.randrange(1, 40))]
                result = post(server, batch)
                assert result["lastId"] - result["firstId"] + 1 == len(batch)
                written.extend(range(result["firstId"], result["lastId"] + 1))
        except Exception as exc:  # noqa: BLE001 - reported by the test below
            failures.append(exc)

    writers = [threading.Thread(target=write, args=(server, seed))
               for seed, server in enumerate([a, b] * 4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
    assert not failures, failures
    # A last entry after all others tells each tail that it has seen everything.
    stop_at[0] = max(written) + 1
    final = post(a, [make_entry(0, tsMs=None, url="/last")])["firstId"]
    written.append(final)
    for reader in readers:
        reader.join(timeout=60)
    expected = sorted(written)
    assert len(expected) == len(set(expected)) > 800
    for name, seen in tails.items():
        assert seen == expected, (name, len(seen), len(expected))


def test_a_cursor_begun_on_one_host_continues_on_the_other(hosts):
    a, b = hosts
    post(a, [make_entry(i, tsMs=None) for i in range(12)])
    seen = []
    cursor, turn = "start", 0
    while cursor:
        server = (a, b)[turn % 2]
        response = requests.get(server.url + LOGS, params={"cursor": cursor, "limit": 5},
                                headers=ADMIN)
        assert response.status_code == 200, response.text
        lines = [json.loads(line) for line in response.text.splitlines()]
        seen += [entry["id"] for entry in lines[:-1]]
        cursor, turn = lines[-1]["nextCursor"], turn + 1
    assert seen == list(range(1, 13)) and turn == 3


def test_a_websocket_ticket_from_one_host_is_good_once_on_either(hosts):
    a, b = hosts
    post(a, [make_entry(3, tsMs=None, url="/before")])
    ticket = requests.get(a.url + "/api/ws-token", headers=ADMIN).json()["token"]
    url = b.url.replace("http://", "ws://") + f"/api/ws/logs?token={ticket}&replay=1"
    ws = websocket.create_connection(url, timeout=10)
    try:
        assert json.loads(ws.recv())["url"] == "/before"  # replayed: subscribed
        post(a, [make_entry(3, tsMs=None, url="/over/ws")])
        assert json.loads(ws.recv())["url"] == "/over/ws"
    finally:
        ws.close()
        ws.shutdown()
    again = a.url.replace("http://", "ws://") + f"/api/ws/logs?token={ticket}&replay=1"
    ws = websocket.create_connection(again, timeout=10)
    try:
        assert close_code(ws) == 4003  # a used ticket is a bad ticket
    finally:
        ws.close()
        ws.shutdown()


@pytest.mark.postgres_only("on SQLite each host keeps its own rate limit file")
def test_the_rate_limit_is_one_budget_across_hosts(hosts):
    a, b = hosts
    token = requests.post(a.url + "/api/proxy-logs/_admin/tokens", headers=ADMIN, json={
        "name": "dash", "projectId": "proj_1", "capabilities": {"logs": True}}).json()["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    statuses = [requests.get((a, b)[i % 2].url + LOGS, headers=bearer).status_code
                for i in range(8)]
    assert statuses == [200] * 6 + [429] * 2


def test_counters_and_metrics_agree_on_both_hosts(hosts):
    a, b = hosts
    post(a, [make_entry(i, tsMs=None) for i in range(7)])
    post(b, [make_entry(i, tsMs=None) for i in range(5)])
    for server in (a, b):
        stats = requests.get(server.url + LOGS + "/stats", headers=ADMIN).json()
        assert stats["total"] == 12
        metrics = requests.get(server.url + "/metrics", headers=ADMIN).text
        assert "logsvc_last_entry_id 12.0" in metrics


@pytest.mark.postgres_only("a PostgreSQL connection is what is lost here")
def test_a_worker_reconnects_after_its_database_connections_are_killed(hosts):
    import psycopg2

    a, _ = hosts
    post(a, [make_entry(1, tsMs=None)])
    admin = psycopg2.connect(os.environ["LOGSVC_DATABASE_URL"])
    admin.autocommit = True
    with admin.cursor() as cursor:
        # This test's servers' connections only (conftest names them after
        # the schema), not those of the tests running beside it.
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE pid <> pg_backend_pid() AND datname = current_database() "
                       "AND application_name = current_setting('application_name')")
        assert cursor.rowcount and cursor.fetchall().count((True,)) >= 1
    admin.close()
    # A lost connection fails the one call that finds it (503, retry), then
    # its thread connects again: at most one failure per database thread.
    statuses = [requests.get(a.url + LOGS, headers=ADMIN).status_code for _ in range(60)]
    assert set(statuses) <= {200, 503}
    assert statuses.count(503) <= 2 * 8 + 2 and statuses[-1] == 200
    for _ in range(20):
        response = requests.post(a.url + INGEST, json=[make_entry(2, tsMs=None)], headers=ADMIN)
        if response.status_code != 503:
            break
    assert response.status_code == 200 and response.json()["firstId"] == 2


def _connections():
    """This test's servers' open connections (conftest names them after
    the schema), the asking one aside."""
    import psycopg2

    admin = psycopg2.connect(os.environ["LOGSVC_DATABASE_URL"])
    try:
        with admin.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                           "AND datname = current_database() "
                           "AND application_name = current_setting('application_name')")
            return cursor.fetchone()[0]
    finally:
        admin.close()


@pytest.mark.postgres_only("what is counted is PostgreSQL's clients")
def test_a_worker_idle_between_bursts_keeps_its_connections(tmp_path):
    # gevent's thread pool let a database thread idle for 5 s go, and the
    # next burst started another, which opened a connection more; the
    # one of the thread that had gone stayed open. Bursts with pauses
    # longer than that ran a server out of PostgreSQL's clients.
    server = Server(tmp_path, workers=1, env={"LOGSVC_DB_THREADS": "4",
                                              "LOGSVC_HOT_ROWS": "0"}).start()

    def burst(n):
        def ask():
            for _ in range(5):
                assert requests.get(server.url + LOGS, headers=ADMIN).status_code == 200
        post(server, [make_entry(n, tsMs=None)])
        askers = [threading.Thread(target=ask) for _ in range(8)]
        for asker in askers:
            asker.start()
        for asker in askers:
            asker.join()

    burst(1)
    after_first = _connections()
    for n in range(2, 5):
        time.sleep(6.5)
        burst(n)
    assert _connections() <= after_first
    server.stop()
