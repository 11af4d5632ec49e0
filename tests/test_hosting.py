"""logsvc under every kind of WSGI server: gunicorn's gevent workers (the
default), gunicorn's threaded workers (gthread), and waitress (a threaded
pure-WSGI server), each with several live streams open at once."""
import json
import threading
import time

import pytest
import requests
import sseclient
import websocket

from logsvc.testing import ADMIN_TOKEN, INGEST, LOGS, Server, make_entry

pytestmark = [pytest.mark.server,
              pytest.mark.sqlite_only("how requests are served does not depend on the engine")]

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
STREAM = LOGS + "/stream"
KINDS = ["gevent", "gthread", "waitress"]


@pytest.fixture(params=KINDS)
def hosted(request, tmp_path):
    server = Server(tmp_path, kind=request.param, env={"LOGSVC_HEARTBEAT_S": "0.5"}).start()
    yield server
    server.stop()


def ingest(server, entries):
    response = requests.post(server.url + INGEST, json=entries, headers=ADMIN, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def follow(server, want, seen, **params):
    """Read one SSE stream until it has `want` live entries (kept in `seen`)."""
    response = requests.get(server.url + STREAM, params={"replay": 0, **params}, headers=ADMIN,
                            stream=True, timeout=(5, 20))
    assert response.status_code == 200, response.text
    with response:
        for event in sseclient.SSEClient(response).events():
            if event.event == "message" and event.data.startswith("{"):
                seen.append(json.loads(event.data)["id"])
                if len(seen) >= want:
                    return


def test_concurrent_streams_get_every_entry_once_in_order(hosted):
    streams = 6
    seen = [[] for _ in range(streams)]
    readers = [threading.Thread(target=follow, args=(hosted, 200, seen[i]), daemon=True)
               for i in range(streams)]
    for reader in readers:
        reader.start()
    time.sleep(1.0)  # every stream is open before the first entry
    for batch in range(4):
        ingest(hosted, [make_entry(i, tsMs=None, url=f"/b{batch}/{i}") for i in range(50)])
    for reader in readers:
        reader.join(timeout=30)
    assert all(ids == list(range(1, 201)) for ids in seen), [len(ids) for ids in seen]


def test_heartbeats_and_a_gap_free_resume(hosted):
    ingest(hosted, [make_entry(i, tsMs=None) for i in range(5)])
    response = requests.get(hosted.url + STREAM, params={"replay": 0}, headers=ADMIN,
                            stream=True, timeout=(5, 5))
    with response:
        started, beats = time.monotonic(), 0
        for line in response.iter_lines():
            beats += line == b":"
            if beats == 3:
                break
        assert time.monotonic() - started < 4  # three beats of 0.5 s, on time
    ingest(hosted, [make_entry(i, tsMs=None) for i in range(5)])
    seen = []
    follow(hosted, 7, seen, lastEventId=3)
    assert seen == list(range(4, 11))


def test_queries_go_on_while_streams_are_open(hosted):
    seen = [[] for _ in range(4)]
    readers = [threading.Thread(target=follow, args=(hosted, 40, ids), daemon=True)
               for ids in seen]
    for reader in readers:
        reader.start()
    time.sleep(1.0)
    ingest(hosted, [make_entry(i, tsMs=None) for i in range(20)])
    for _ in range(10):
        page = requests.get(hosted.url + LOGS, params={"limit": 5}, headers=ADMIN, timeout=5)
        assert page.status_code == 200 and page.json()["total"] == 20
    stats = requests.get(hosted.url + LOGS + "/stats", headers=ADMIN, timeout=5).json()
    assert stats["total"] == 20
    ingest(hosted, [make_entry(i, tsMs=None) for i in range(20)])
    for reader in readers:
        reader.join(timeout=20)
    assert all(ids == list(range(1, 41)) for ids in seen)


def ws_ticket(server):
    return requests.get(server.url + "/api/ws-token", headers=ADMIN, timeout=5).json()["token"]


def test_the_websocket_works_where_the_server_allows_it_and_says_so_where_not(hosted):
    url = hosted.url.replace("http://", "ws://") + "/api/ws/logs?replay=0&token="
    if hosted.kind == "waitress":
        response = requests.get(hosted.url + "/api/ws/logs", params={"token": "x"}, timeout=5,
                                headers={"Connection": "Upgrade", "Upgrade": "websocket",
                                         "Sec-WebSocket-Version": "13",
                                         "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        assert response.status_code == 501
        assert "WebSocket" in response.json()["message"] and "SSE" in response.json()["message"]
        return
    ws = websocket.create_connection(url + ws_ticket(hosted), timeout=10)
    try:
        ws.send("ping")
        assert ws.recv() == "pong"
        ingest(hosted, [make_entry(i, tsMs=None) for i in range(3)])
        assert [json.loads(ws.recv())["id"] for _ in range(3)] == [1, 2, 3]
    finally:
        ws.close()
