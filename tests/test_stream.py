"""Live tail through a real gunicorn with two gevent workers, read with
clients nobody here wrote (sseclient-py, websocket-client)."""
import os
import sqlite3
import struct
import threading
import time

import pytest
import requests
import sseclient
import websocket

from logsvc.testing import ADMIN_TOKEN, INGEST, LOGS, Server, make_entry

pytestmark = pytest.mark.server  # real gunicorn servers

STREAM = LOGS + "/stream"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


_opened = []


@pytest.fixture(autouse=True)
def close_connections():
    """Streams and sockets opened by a test are closed after it."""
    yield
    while _opened:
        opened = _opened.pop()
        try:
            opened.close()
        except OSError:
            pass  # the server closed it first
        if isinstance(opened, websocket.WebSocket):
            opened.shutdown()


def connect(url):
    ws = websocket.create_connection(url, timeout=10)
    _opened.append(ws)
    return ws


def ingest(server, entries, headers=ADMIN):
    response = requests.post(server.url + INGEST, json=entries, timeout=30,
                             headers={**headers, "Connection": "close"})
    assert response.status_code == 200, response.text
    return response.json()


def events(server, headers=ADMIN, **params):
    response = requests.get(server.url + STREAM, params=params, stream=True,
                            headers={**headers, "Connection": "close"}, timeout=(5, 20))
    _opened.append(response)
    assert response.status_code == 200, response.text
    return response, sseclient.SSEClient(response).events()


def take(stream, n):
    """The next `n` live entries (as dicts) from an sseclient event stream."""
    import json
    got = []
    while len(got) < n:
        event = next(stream)
        assert event.event == "message", event.event
        payload = json.loads(event.data)
        assert int(event.id) == payload["id"]
        got.append(payload)
    return got


def entries(n, **overrides):
    return [make_entry(i, tsMs=None, url=f"/e/{i}", **overrides) for i in range(n)]


@pytest.fixture
def fast_server(tmp_path):
    instance = Server(tmp_path, env={"LOGSVC_HEARTBEAT_S": "0.5"}).start()
    yield instance
    instance.stop()


def test_the_stream_starts_with_retry_and_a_replay_frame_then_live_frames(fast_server):
    ingest(fast_server, entries(5))
    response, stream = events(fast_server, replay=3)
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    first = next(stream)
    import json
    replay = json.loads(first.data)
    assert [e["id"] for e in replay] == [3, 4, 5] and first.id == "5"
    ingest(fast_server, entries(2))
    assert [e["id"] for e in take(stream, 2)] == [6, 7]
    response.close()


def test_the_stream_opens_with_a_retry_hint(fast_server):
    response = requests.get(fast_server.url + STREAM, stream=True, headers=ADMIN,
                            timeout=(5, 5))
    _opened.append(response)
    assert next(response.iter_lines()) == b"retry: 2000"
    response.close()


def test_heartbeats_arrive_while_idle(fast_server):
    response = requests.get(fast_server.url + STREAM, params={"replay": 0}, stream=True,
                            headers=ADMIN, timeout=(5, 5))
    _opened.append(response)
    start = time.monotonic()
    lines = response.iter_lines()
    seen = []
    while time.monotonic() - start < 2.5:
        seen.append(next(lines))
        if seen.count(b":") >= 3:
            break
    response.close()
    assert seen.count(b":") >= 3


@pytest.mark.parametrize("how", ["header", "parameter"])
def test_resume_inside_the_ring_misses_and_repeats_nothing(fast_server, how):
    ingest(fast_server, entries(3))
    response, stream = events(fast_server, replay=0)
    next(stream)  # the position frame
    ingest(fast_server, entries(4))
    got = take(stream, 2)
    response.close()
    ingest(fast_server, entries(5))
    last = str(got[-1]["id"])
    headers = {**ADMIN, "Last-Event-ID": last} if how == "header" else ADMIN
    params = {} if how == "header" else {"lastEventId": last}
    response, stream = events(fast_server, headers=headers, **params)
    assert [e["id"] for e in take(stream, 7)] == list(range(6, 13))
    response.close()


def test_resume_beyond_the_ring_reads_the_database(tmp_path):
    server = Server(tmp_path, env={"LOGSVC_RING_SIZE": "10"}).start()
    try:
        ingest(server, entries(2))
        for _ in range(6):
            ingest(server, entries(50))
        response, stream = events(server, headers={**ADMIN, "Last-Event-ID": "1"})
        assert [e["id"] for e in take(stream, 301)] == list(range(2, 303))
        response.close()
    finally:
        server.stop()


def test_a_restart_is_not_a_reset(tmp_path):
    server = Server(tmp_path).start()
    ingest(server, entries(5))
    server.stop()
    server = Server(tmp_path).start()
    try:
        ingest(server, entries(2))
        response, stream = events(server, headers={**ADMIN, "Last-Event-ID": "4"})
        assert [e["id"] for e in take(stream, 3)] == [5, 6, 7]
        response.close()
    finally:
        server.stop()


def test_an_entry_reaches_subscribers_on_every_worker(fast_server):
    streams = [events(fast_server, replay=0) for _ in range(8)]
    for _, stream in streams:
        next(stream)
    for _ in range(3):  # fresh connections: ingests land on either worker
        ingest(fast_server, entries(2))
    for response, stream in streams:
        assert [e["id"] for e in take(stream, 6)] == list(range(1, 7))
        response.close()


def test_a_slow_reader_twenty_thousand_behind_gets_everything_while_a_fast_one_keeps_up(tmp_path):
    server = Server(tmp_path, env={"LOGSVC_RING_SIZE": "1000"}).start()
    try:
        slow_response, slow = events(server, replay=0)
        next(slow)
        fast_response, fast = events(server, replay=0)
        next(fast)
        fast_ids = []
        reader = threading.Thread(target=lambda: fast_ids.extend(
            e["id"] for e in take(fast, 20_000)))
        reader.start()
        for _ in range(20):
            ingest(server, entries(1000))
        reader.join(timeout=120)
        assert fast_ids == list(range(1, 20_001))
        assert [e["id"] for e in take(slow, 20_000)] == list(range(1, 20_001))
        slow_response.close()
        fast_response.close()
    finally:
        server.stop()


def hold_the_write_lock(engine, tmp_path):
    """Another process's open write transaction: ingest waits behind it.
    Returns a function that ends it."""
    if engine == "sqlite":
        holder = sqlite3.connect(tmp_path / "logs.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
    else:
        import psycopg2

        holder = psycopg2.connect(os.environ["LOGSVC_DATABASE_URL"])
        with holder.cursor() as cursor:
            cursor.execute("UPDATE id_sequence SET last_id = last_id WHERE name = 'entry'")
    _opened.append(holder)
    return holder.rollback


def test_a_blocked_database_call_does_not_freeze_other_streams(tmp_path, engine):
    server = Server(tmp_path, env={"LOGSVC_HEARTBEAT_S": "0.2"}, workers=1).start()
    try:
        response = requests.get(server.url + STREAM, params={"replay": 0}, stream=True,
                                headers=ADMIN, timeout=(5, 5))
        _opened.append(response)
        lines = response.iter_lines()
        next(lines)
        release = hold_the_write_lock(engine, tmp_path)  # ingest now waits
        writer = threading.Thread(target=ingest, args=(server, entries(1)))
        writer.start()
        stamps = []
        start = time.monotonic()
        while time.monotonic() - start < 1.5:
            if next(lines) == b":":
                stamps.append(time.monotonic())
        release()
        writer.join(timeout=30)
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        assert len(stamps) >= 5 and max(gaps) < 0.6, gaps
        response.close()
    finally:
        server.stop()


def test_a_clear_resets_open_streams_and_old_positions(fast_server):
    ingest(fast_server, entries(3))
    response, stream = events(fast_server, replay=0)
    next(stream)
    requests.post(fast_server.url + "/api/proxy-logs/_admin/clear", headers=ADMIN)
    assert next(stream).event == "reset"
    with pytest.raises(StopIteration):
        next(stream)
    response, stream = events(fast_server, headers={**ADMIN, "Last-Event-ID": "2"})
    assert next(stream).event == "reset"


def test_an_id_ahead_of_the_store_is_a_reset(fast_server):
    ingest(fast_server, entries(3))
    _, stream = events(fast_server, headers={**ADMIN, "Last-Event-ID": "1000"})
    assert next(stream).event == "reset"


def test_a_gap_is_announced_when_retention_removed_entries(tmp_path):
    server = Server(tmp_path, env={"LOGSVC_MAX_ROWS": "20"}).start()
    try:
        ingest(server, entries(50))
        requests.post(server.url + "/api/proxy-logs/_admin/prune", headers=ADMIN)
        response, stream = events(server, headers={**ADMIN, "Last-Event-ID": "5"})
        gap = next(stream)
        assert gap.event == "gap"
        import json
        assert json.loads(gap.data) == {"fromId": 6, "toId": 30}
        assert [e["id"] for e in take(stream, 20)] == list(range(31, 51))
        response.close()
    finally:
        server.stop()


@pytest.mark.parametrize("how", ["admin-api", "ingested-event"])
def test_a_destroyed_container_ends_its_streams_and_refuses_reconnects(fast_server, how):
    ingest(fast_server, entries(5))
    scope = {"projectId": "proj_1", "containerId": "cnt_1"}
    response, stream = events(fast_server, replay=0, **scope)
    next(stream)
    other_response, other = events(fast_server, replay=0, projectId="proj_1",
                                   containerId="cnt_2")
    next(other)
    if how == "admin-api":
        requests.post(fast_server.url + "/api/proxy-logs/_admin/scopes/proj_1/cnt_1/destroy",
                      headers=ADMIN)
    else:
        ingest(fast_server, [{"kind": "event", **scope, "data": {"event": "scope-destroyed"}}])
    event = next(stream)
    while event.event == "message":
        event = next(stream)
    assert event.event == "scope-destroyed"
    with pytest.raises(StopIteration):
        next(stream)
    ingest(fast_server, [make_entry(0, tsMs=None, projectId="proj_1", containerId="cnt_2")])
    assert take(other, 1)[0]["containerId"] == "cnt_2"
    other_response.close()
    if how == "admin-api":
        again = requests.get(fast_server.url + STREAM, params=scope, headers=ADMIN)
        assert again.status_code == 410 and again.json()["statusCode"] == 410


def test_streams_are_scoped_to_the_caller(fast_server):
    token = requests.post(fast_server.url + "/api/proxy-logs/_admin/tokens", headers=ADMIN,
                          json={"name": "t", "projectId": "proj_1"}, timeout=10).json()["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    response, stream = events(fast_server, headers=bearer, replay=0)
    next(stream)
    ingest(fast_server, entries(9))
    assert {e["projectId"] for e in take(stream, 3)} == {"proj_1"}
    response.close()
    foreign = requests.get(fast_server.url + STREAM, params={"projectId": "proj_2"},
                           headers=bearer)
    assert foreign.status_code == 403
    assert requests.get(fast_server.url + STREAM, timeout=10).status_code == 401


def test_stream_filters_are_honoured(fast_server):
    response, stream = events(fast_server, replay=0, level="warn,error", kind="request",
                              serviceName="user-api,webhook-svc", status="4xx,5xx")
    next(stream)
    ingest(fast_server, [make_entry(i, tsMs=None) for i in range(60)])
    got = take(stream, 4)
    want = [i + 1 for i in range(60) if (lambda e: e["kind"] == "request"
            and e["serviceName"] != "billing-api" and e["status"] in (404, 429, 500, 503))(
            make_entry(i))][:4]
    assert [e["id"] for e in got] == want
    response.close()


@pytest.mark.parametrize("params, headers, name", [
    ({"level": "loud"}, {}, "level"), ({"replay": "-1"}, {}, "replay"),
    ({"lastEventId": "x"}, {}, "lastEventId"), ({}, {"Last-Event-ID": "abc"}, "Last-Event-ID"),
    ({"since": "1h"}, {}, "since"),
])
def test_bad_stream_parameters_are_400(fast_server, params, headers, name):
    response = requests.get(fast_server.url + STREAM, params=params,
                            headers={**ADMIN, **headers})
    assert response.status_code == 400 and name in response.json()["message"]


def test_concurrent_streams_per_scope_are_capped(tmp_path):
    server = Server(tmp_path, workers=1, env={"LOGSVC_MAX_STREAMS_PER_SCOPE": "2"}).start()
    try:
        token = requests.post(server.url + "/api/proxy-logs/_admin/tokens", headers=ADMIN,
                              json={"name": "t", "projectId": "p"}, timeout=10).json()["token"]
        bearer = {"Authorization": f"Bearer {token}"}
        open_ = [events(server, headers=bearer, replay=0) for _ in range(2)]
        third = requests.get(server.url + STREAM, headers=bearer)
        assert third.status_code == 429 and third.headers["Retry-After"] == "2"
        open_[0][0].close()
        time.sleep(2.5)  # the server notices at its next heartbeat (1 s here)
        response, _ = events(server, headers=bearer, replay=0)
        response.close()
    finally:
        server.stop()


def test_a_scopes_stream_cap_holds_on_the_host_however_the_workers_fill(tmp_path):
    server = Server(tmp_path, workers=2, env={"LOGSVC_MAX_STREAMS_PER_SCOPE": "3"}).start()
    try:
        token = requests.post(server.url + "/api/proxy-logs/_admin/tokens", headers=ADMIN,
                              json={"name": "t", "projectId": "p"}, timeout=10).json()["token"]
        bearer = {"Authorization": f"Bearer {token}"}
        opened = [events(server, headers=bearer, replay=0) for _ in range(3)]
        # Whichever worker each landed on, a fourth is refused on both.
        for _ in range(6):
            more = requests.get(server.url + STREAM, headers={**bearer, "Connection": "close"},
                                timeout=10)
            assert more.status_code == 429, more.text
            assert "LOGSVC_MAX_STREAMS_PER_SCOPE" in more.json()["message"]
        opened[0][0].close()
        time.sleep(2.5)  # the worker notices the hangup
        response, _ = events(server, headers=bearer, replay=0)
        response.close()
        for response, _ in opened[1:]:
            response.close()
    finally:
        server.stop()


def test_a_stream_beyond_what_a_worker_holds_gets_a_429_not_silence(tmp_path):
    server = Server(tmp_path, workers=1, env={"LOGSVC_MAX_STREAMS_PER_WORKER": "3"}).start()
    try:
        held = [events(server, headers=ADMIN, replay=0) for _ in range(3)]  # the operator's too
        refused = requests.get(server.url + STREAM, headers={**ADMIN, "Connection": "close"},
                               timeout=10)
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "2"
        assert "LOGSVC_MAX_STREAMS_PER_WORKER" in refused.json()["message"]
        ticket = requests.get(server.url + "/api/ws-token", headers=ADMIN,
                              timeout=10).json()["token"]
        assert close_code(connect(ws_url(server, token=ticket))) == 4029
        for response, _ in held:
            response.close()
    finally:
        server.stop()


# --- WebSocket ---------------------------------------------------------------------

def ws_url(server, **params):
    from urllib.parse import urlencode
    return server.url.replace("http://", "ws://") + "/api/ws/logs?" + urlencode(params)


def ticket(server, headers=ADMIN):
    response = requests.get(server.url + "/api/ws-token", headers=headers)
    assert response.json()["status"] == "success"
    return response.json()["token"]


def close_code(ws):
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return struct.unpack("!H", data[:2])[0]


def test_websocket_replays_then_streams_one_json_entry_per_message(fast_server):
    import json
    ingest(fast_server, entries(4))
    ws = connect(ws_url(fast_server, token=ticket(fast_server), replay=2))
    assert [json.loads(ws.recv())["id"] for _ in range(2)] == [3, 4]  # the subscription is open
    ws.send("ping")
    assert ws.recv() == "pong"
    ingest(fast_server, entries(2))
    assert [json.loads(ws.recv())["id"] for _ in range(2)] == [5, 6]
    ws.close()


def test_a_pong_comes_after_the_replay_and_means_the_tail_is_live(fast_server):
    import json
    ingest(fast_server, entries(3))
    ws = connect(ws_url(fast_server, token=ticket(fast_server), replay=2))
    ws.send("ping")  # at once: answered once the tail is subscribed
    replayed = [json.loads(ws.recv())["id"] for _ in range(2)]
    assert (replayed, ws.recv()) == ([2, 3], "pong")
    ingest(fast_server, entries(1))
    assert json.loads(ws.recv())["id"] == 4
    ws.close()
    # Without a replay the pong comes first, and what is written after it arrives.
    ws = connect(ws_url(fast_server, token=ticket(fast_server), replay=0))
    ws.send("ping")
    assert ws.recv() == "pong"
    ingest(fast_server, entries(1))
    assert json.loads(ws.recv())["id"] == 5
    ws.close()


def test_websocket_resumes_from_last_event_id(fast_server):
    import json
    ingest(fast_server, entries(6))
    ws = connect(ws_url(fast_server, token=ticket(fast_server), lastEventId=3))
    assert [json.loads(ws.recv())["id"] for _ in range(3)] == [4, 5, 6]
    ws.close()


def test_websocket_close_codes(fast_server):
    ws = connect(ws_url(fast_server))
    assert close_code(ws) == 4001
    for bad in ("made-up", ""):
        if bad:
            ws = connect(ws_url(fast_server, token=bad))
            assert close_code(ws) == 4003
    used = ticket(fast_server)
    first = connect(ws_url(fast_server, token=used))
    first.send("ping")
    assert first.recv() == "pong"  # the first connection holds the ticket by now
    first.close()
    ws = connect(ws_url(fast_server, token=used))
    assert close_code(ws) == 4003


def test_websocket_is_scoped_to_the_ticket_holder(fast_server):
    import json
    token = requests.post(fast_server.url + "/api/proxy-logs/_admin/tokens", headers=ADMIN,
                          json={"name": "t", "projectId": "proj_2"}, timeout=10).json()["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    ws = connect(ws_url(fast_server, token=ticket(fast_server, bearer), lastEventId=0))
    ingest(fast_server, entries(9))
    assert {json.loads(ws.recv())["projectId"] for _ in range(3)} == {"proj_2"}
    ws.close()
    ws = connect(ws_url(fast_server, token=ticket(fast_server, bearer),
                                            projectId="proj_1"))
    assert close_code(ws) == 4003


def test_websocket_tells_of_a_reset(fast_server):
    import json
    last = ingest(fast_server, entries(2))["lastId"]
    ws = connect(ws_url(fast_server, token=ticket(fast_server), lastEventId=last))
    requests.post(fast_server.url + "/api/proxy-logs/_admin/clear", headers=ADMIN)
    assert json.loads(ws.recv()) == {"event": "reset"}
    assert close_code(ws) == 1000


def test_many_streams_opening_at_once_on_a_fresh_worker_all_open(tmp_path):
    """Every database thread connects at the same moment: none may stall
    (peewee's connect lock must be a real lock, not gevent's)."""
    server = Server(tmp_path, workers=1).start()
    try:
        opened, failures = [], []

        def open_one(n):
            try:
                response = requests.get(server.url + STREAM, stream=True, timeout=(5, 20),
                                        params={"replay": 0, "containerId": f"c{n}"},
                                        headers={**ADMIN, "Connection": "close"})
                _opened.append(response)
                next(response.iter_lines())
                opened.append(n)
            except Exception as exc:  # noqa: BLE001 - reported below
                failures.append(repr(exc))

        threads = [threading.Thread(target=open_one, args=(n,)) for n in range(60)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not failures and len(opened) == 60, failures[:3]
    finally:
        server.stop()


def new_token(server, **scope):
    answer = requests.post(server.url + "/api/proxy-logs/_admin/tokens", headers=ADMIN,
                           json={"name": "t", "projectId": "proj_1", **scope}, timeout=10).json()
    return answer["id"], {"Authorization": f"Bearer {answer['token']}"}


def revoke(server, token_id):
    response = requests.delete(f"{server.url}/api/proxy-logs/_admin/tokens/{token_id}",
                               headers=ADMIN, timeout=10)
    assert response.status_code in (200, 204), response.text


def test_a_revoked_token_ends_its_open_streams_and_its_tickets(fast_server):
    """The credential is asked again at least every heartbeat (0.5 s here)."""
    import json
    token_id, bearer = new_token(fast_server)
    response, stream = events(fast_server, headers=bearer, replay=0)
    next(stream)
    ws = connect(ws_url(fast_server, token=ticket(fast_server, bearer), replay=0))
    ws.send("ping")  # the answer says the tail is open: the revocation comes after
    while ws.recv() != "pong":
        pass
    unused = ticket(fast_server, bearer)
    revoke(fast_server, token_id)
    ingest(fast_server, entries(3))  # a busy stream is asked too, not only an idle one
    for event in stream:
        if event.event == "access-revoked":
            assert json.loads(event.data)["reason"] == "the token was revoked"
            break
    with pytest.raises(StopIteration):
        next(stream)
    while json.loads(ws.recv()).get("event") != "access-revoked":
        pass
    assert close_code(ws) == 4003
    late = connect(ws_url(fast_server, token=unused))
    assert close_code(late) == 4003


def test_a_removed_users_stream_ends(fast_server):
    import base64
    requests.post(fast_server.url + "/api/proxy-logs/_admin/users", headers=ADMIN, timeout=10,
                  json={"username": "ada", "password": "correct horse", "projectId": "proj_1"})
    basic = {"Authorization": "Basic " + base64.b64encode(b"ada:correct horse").decode()}
    response, stream = events(fast_server, headers=basic, replay=0)
    next(stream)
    requests.delete(fast_server.url + "/api/proxy-logs/_admin/users/ada", headers=ADMIN,
                    timeout=10)
    assert [e.event for e in stream][-1] == "access-revoked"


def test_ending_an_operators_session_ends_its_stream_and_its_websocket(fast_server):
    import json
    browser = requests.Session()
    assert browser.post(fast_server.url + "/api/session", headers=ADMIN,
                        timeout=10).status_code == 200
    cookie = "logsvc_session=" + browser.cookies["logsvc_session"]
    response, stream = events(fast_server, headers={"Cookie": cookie}, replay=0)
    next(stream)
    issued = browser.get(fast_server.url + "/api/ws-token", timeout=10).json()["token"]
    ws = connect(ws_url(fast_server, token=issued, replay=0))
    ws.send("ping")  # the answer says the tail is open: the session ends after
    while ws.recv() != "pong":
        pass
    unused = browser.get(fast_server.url + "/api/ws-token", timeout=10).json()["token"]
    assert browser.delete(fast_server.url + "/api/session", timeout=10).status_code == 200
    for event in stream:
        if event.event == "access-revoked":
            assert json.loads(event.data)["reason"] == "the session has ended"
            break
    else:
        pytest.fail("the stream went on")
    while json.loads(ws.recv()).get("event") != "access-revoked":
        pass
    assert close_code(ws) == 4003
    assert close_code(connect(ws_url(fast_server, token=unused))) == 4003


def test_a_websocket_on_a_containers_host_carries_only_that_container(tmp_path):
    import json
    server = Server(tmp_path, env={
        "LOGSVC_SCOPE_HOST": "{containerId}.{projectId}.logs.example.com"}).start()
    try:
        ingest(server, [make_entry(i, projectId=f"proj_{i % 2}", containerId=f"cnt_{i % 3}",
                                   tsMs=None) for i in range(12)])
        issued = ticket(server)  # the operator's, asked on the plain host
        ws = websocket.create_connection(ws_url(server, token=issued, replay=20), timeout=10,
                                         host="cnt_1.proj_0.logs.example.com.")
        _opened.append(ws)
        seen = [json.loads(ws.recv()) for _ in range(2)]
        assert {(e["projectId"], e["containerId"]) for e in seen} == {("proj_0", "cnt_1")}
        ws.settimeout(1.5)
        with pytest.raises(websocket.WebSocketTimeoutException):
            ws.recv()  # i = 4 and 10 were all: nothing of another scope follows
    finally:
        server.stop()


def test_a_closed_stream_gives_its_slot_back_at_once(tmp_path):
    """One worker, one stream per scope, heartbeats every 15 s: a client
    reconnecting right after it hung up is not refused."""
    server = Server(tmp_path, workers=1, env={"LOGSVC_MAX_STREAMS_PER_SCOPE": "1",
                                              "LOGSVC_HEARTBEAT_S": "15"}).start()
    try:
        _, bearer = new_token(server)
        for _ in range(5):
            # Each stream is opened once the one before was hung up: within
            # 3 s, the time the worker takes to see the hangup (a 429 until
            # then), far less than the 15 s of a heartbeat.
            deadline = time.monotonic() + 3
            while True:
                response = requests.get(server.url + STREAM, params={"replay": 0},
                                        stream=True, timeout=(5, 20),
                                        headers={**bearer, "Connection": "close"})
                if response.status_code == 200:
                    break
                response.close()
                assert response.status_code == 429 and time.monotonic() < deadline
            next(sseclient.SSEClient(response).events())
            response.close()
    finally:
        server.stop()
