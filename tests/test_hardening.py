"""Hostile input gets a clear 400 naming what is wrong, never a 500 and
never a half-stored request."""
import gzip
import os
import stat
import time

import orjson
import pytest

from logsvc.store import db
from logsvc.testing import ADMIN_TOKEN, INGEST, LOGS, Store, make_entry

STATS = LOGS + "/stats"
HISTOGRAM = STATS + "/histogram"
STREAM = "/api/proxy-logs/_logs/stream"
ADMIN_TOKENS = "/api/proxy-logs/_admin/tokens"


@pytest.mark.parametrize("path", [LOGS, STATS, HISTOGRAM])
@pytest.mark.parametrize("params, name", [
    ({"since": "999999999999999999999d"}, "since"),
    ({"until": "99999999999999999h"}, "until"),
    ({"since": "9999999999999999"}, "since"),  # past year 9999
    ({"status": ",".join(["503"] * 1000)}, "status"),
    ({"serviceName": ",".join(f"s{i}" for i in range(1000))}, "serviceName"),
])
def test_values_out_of_range_are_400_naming_the_parameter(store, path, params, name):
    response = store.get(path, **params)
    assert response.status_code == 400, response.json
    assert name in response.json["message"]


@pytest.mark.parametrize("header", ["²", "1" * 5000, "-3", "12a"])
def test_a_bad_last_event_id_is_400(store, header):
    response = store.client.get(STREAM, headers={**store.headers, "Last-Event-ID": header})
    assert response.status_code == 400 and "Last-Event-ID" in response.json["message"]


def test_an_offset_past_the_end_does_not_invent_a_total(store):
    store.ingest([make_entry(i) for i in range(3)])
    page = store.page(offset="999999999999999999")
    assert page["entries"] == [] and page["total"] == 3 and page["totalExact"] is True


def test_a_timestamp_past_the_documented_maximum_is_rejected(store):
    answer = store.ingest([make_entry(0, tsMs=None, tsIso="9999-12-31T23:59:59.999999-23:59"),
                           make_entry(1, tsMs=None, tsIso="9999-12-31T23:59:59.999Z")])
    assert [r["index"] for r in answer["rejected"]] == [0]
    assert "tsIso" in answer["rejected"][0]["errors"]


def post(store, body, encoding="gzip"):
    return store.client.post(INGEST, data=body, headers={
        **store.headers, "Content-Type": "application/x-ndjson", "Content-Encoding": encoding})


def test_every_gzip_member_is_read(store):
    first = gzip.compress(b'{"url": "/a"}\n')
    second = gzip.compress(b'{"url": "/b"}\n{"url": "/c"}\n')
    response = post(store, first + second)
    assert response.status_code == 200 and response.json["accepted"] == 3
    assert [e["url"] for e in store.page()["entries"]] == ["/a", "/b", "/c"]


@pytest.mark.parametrize("tail", [b"garbage", b"\x1f\x8b\x08\x00broken"])
def test_gzip_followed_by_anything_else_is_refused_whole(store, tail):
    response = post(store, gzip.compress(b'{"url": "/a"}\n') + tail)
    assert response.status_code == 400 and "gzip" in response.json["message"]
    assert store.page()["total"] == 0


def test_admin_json_nested_too_deep_is_400(store):
    body = "[" * 5000 + "]" * 5000
    response = store.client.post("/api/proxy-logs/_admin/tokens", data=body,
                                 content_type="application/json", headers=store.headers)
    assert response.status_code == 400


def test_every_answer_carries_security_headers(client, store):
    for response in (client.get("/"), client.get("/ui/app.js"), store.get(LOGS),
                     client.get("/healthz"), client.get("/nowhere")):
        response.close()
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        policy = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy


def test_the_data_dir_and_its_files_are_private(make_app, tmp_path):

    data_dir = tmp_path / "new"
    app = make_app(data_dir=data_dir, admin_token="")
    Store(app.test_client()).client.get("/healthz")
    assert stat.S_IMODE(os.stat(data_dir).st_mode) == 0o700
    names = {p.name for p in data_dir.iterdir()}
    assert ({"admin_token"} if db.is_postgres() else {"admin_token", "logs.db"}) <= names
    for path in data_dir.iterdir():
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path.name


def basic(username, password):
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


def test_failed_sign_ins_are_limited_per_address_and_per_user(make_app):

    app = make_app(auth_failures_per_min=3)
    store = Store(app.test_client())
    for name in ("ada", "bo"):
        response = store.client.post("/api/proxy-logs/_admin/users", headers=store.headers, json={
            "username": name, "password": "correct horse", "projectId": "proj_1"})
        assert response.status_code in (200, 201), response.json
    client = app.test_client()
    here = {"REMOTE_ADDR": "198.51.100.7"}
    for _ in range(3):
        assert client.get(LOGS, headers=basic("ada", "wrong"),
                          environ_base=here).status_code == 401
    refused = client.get(LOGS, headers=basic("ada", "correct horse"), environ_base=here)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert "failed sign-ins" in refused.json["message"]
    # The same user from elsewhere, and another user from this address: refused
    # too, before any password is checked.
    assert client.get(LOGS, headers=basic("ada", "correct horse"),
                      environ_base={"REMOTE_ADDR": "203.0.113.9"}).status_code == 429
    assert client.get(LOGS, headers=basic("bo", "correct horse"),
                      environ_base=here).status_code == 429
    # Others are not affected.
    assert client.get(LOGS, headers=basic("bo", "correct horse"),
                      environ_base={"REMOTE_ADDR": "203.0.113.9"}).status_code == 200
    assert store.get(LOGS).status_code == 200


def test_too_many_entries_in_one_request_is_413_and_stores_nothing(make_app):

    store = Store(make_app(max_entries_per_request=1000).test_client())
    body = b"\n".join(b'{"url": "/x"}' for _ in range(1001))
    for encoding, payload in (("identity", body), ("gzip", gzip.compress(body))):
        response = post(store, payload, encoding)
        assert response.status_code == 413
        assert "LOGSVC_MAX_ENTRIES_PER_REQUEST" in response.json["message"]
    response = store.client.post(INGEST, json=[{"url": "/x"}] * 1001, headers=store.headers)
    assert response.status_code == 413
    assert store.page()["total"] == 0
    assert post(store, body.rsplit(b"\n", 1)[0], "identity").json["accepted"] == 1000


def test_rejections_are_counted_but_only_the_first_thousand_listed(store):
    body = b"\n".join([b"1"] * 3000 + [b'{"url": "/ok"}'])
    answer = post(store, body, "identity").json
    assert answer["accepted"] == 1 and answer["rejectedCount"] == 3000
    assert len(answer["rejected"]) == 1000 and answer["rejected"][-1]["index"] == 999


@pytest.mark.sqlite_only("a table renamed under the running store stands for a store that fails")
def test_a_live_tail_answers_503_while_the_store_does_not_answer(app, store, tmp_path,
                                                                 monkeypatch):
    import sqlite3

    from logsvc.store import tail

    monkeypatch.setattr(tail, "START_TIMEOUT_S", 0.5)
    with sqlite3.connect(tmp_path / "logs.db") as conn:
        conn.execute("ALTER TABLE id_sequence RENAME TO id_sequence_away")
    response = store.get(STREAM)
    assert response.status_code == 503 and response.headers["Retry-After"] == "2"
    assert "live tail" in response.json["message"]
    with sqlite3.connect(tmp_path / "logs.db") as conn:
        conn.execute("ALTER TABLE id_sequence_away RENAME TO id_sequence")
    deadline = time.monotonic() + 5
    while True:  # it recovers by itself
        response = store.get(STREAM, replay="0")
        response.close()
        if response.status_code == 200:
            break
        assert response.status_code == 503 and time.monotonic() < deadline


def test_an_admin_session_ends_when_the_admin_token_changes(make_app):


    first = make_app().test_client()
    opened = first.post("/api/session", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert opened.status_code == 200
    assert first.get(LOGS).status_code == 200  # the cookie reads
    changed = make_app(admin_token="a-new-admin-token").test_client()
    changed.set_cookie("logsvc_session", first.get_cookie("logsvc_session").value)
    assert changed.get(LOGS).status_code == 401
    Store(changed)  # the new token works as before
    assert changed.get(LOGS, headers={"Authorization": "Bearer a-new-admin-token"}).status_code \
        == 200


def test_retention_forgets_expired_sessions_and_tickets(app, store):
    from logsvc.store import retention

    store.client.post("/api/session", headers=store.headers)
    store.client.get("/api/ws-token", headers=store.headers)
    counts = lambda: db.call(lambda: db.execute(
        "SELECT (SELECT count(*) FROM session), (SELECT count(*) FROM ws_token)").fetchone())
    assert counts() == (1, 1)
    config = app.extensions["logsvc"].config
    retention.prune(config, now=int(time.time() * 1000) + 13 * 3_600_000)  # past both expiries
    assert counts() == (0, 0)


def test_a_read_only_store_serves_reads_and_refuses_writes(make_app, engine, monkeypatch):
    writer = Store(make_app().test_client())
    writer.ingest([make_entry(i, projectId="proj_a") for i in range(3)])
    made = writer.client.post(ADMIN_TOKENS, headers=writer.headers, json={
        "name": "reader", "projectId": "proj_a", "capabilities": {"logs": True}})
    scoped = {"Authorization": f"Bearer {made.json['token']}"}
    if engine == "postgresql":
        # A store that refuses writes by itself (a standby, a read-only
        # role): found at start, with no setting.
        monkeypatch.setenv("LOGSVC_DATABASE_URL", os.environ["LOGSVC_DATABASE_URL"]
                           + "%20-cdefault_transaction_read_only%3Don")
        reader = make_app()
    else:
        reader = make_app(read_only=True)
    store = Store(reader.test_client())

    health = store.client.get("/healthz")
    assert health.status_code == 200
    assert health.json["status"] == "read-only" and health.json["writable"] is False

    assert [e["id"] for e in store.page()["entries"]] == [1, 2, 3]
    assert store.page(STATS)["total"] == 3
    # A scoped reader is rate limited as before: the budgets are counted
    # in memory while the store takes no writes.
    response = store.client.get(LOGS, headers=scoped)
    assert response.status_code == 200 and len(response.json["entries"]) == 3

    for refused in (
        store.client.post(INGEST, json=[make_entry(9)], headers=store.headers),
        store.client.post(ADMIN_TOKENS, headers=store.headers, json={
            "name": "x", "projectId": "proj_a", "capabilities": {"logs": True}}),
        store.client.post("/api/session", headers=scoped),
    ):
        assert refused.status_code == 503, refused.json
        assert refused.headers["Retry-After"] == "30"
        assert "read-only" in refused.json["message"]
    assert store.page()["total"] == 3


@pytest.mark.postgres_only("PostgreSQL's session settings")
def test_postgresql_sessions_plan_no_parallel_workers_and_keep_the_urls_own_options(make_app):
    writer = Store(make_app().test_client())
    writer.ingest([make_entry(i) for i in range(2)])
    # A read-only process (LOGSVC_READ_ONLY) still reads the schema its URL
    # names in `options` (the test's own search_path).
    reader = make_app(read_only=True)
    assert Store(reader.test_client()).page()["total"] == 2
    with db.using(reader.extensions["logsvc"].store):
        settings = dict(db.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN "
            "('max_parallel_workers_per_gather', 'default_transaction_read_only')").fetchall())
        (path,) = db.execute("SHOW search_path").fetchone()
    assert settings == {"max_parallel_workers_per_gather": "0",
                        "default_transaction_read_only": "on"}
    assert path == os.environ["LOGSVC_DATABASE_URL"].rsplit("search_path%3D", 1)[1]


def keyed(store, entries, key, headers=None):
    return store.client.post(INGEST, json=entries, headers={
        **(headers or store.headers), "Idempotency-Key": key})


def test_a_retried_batch_with_its_idempotency_key_is_stored_once(store):
    batch = [make_entry(i) for i in range(3)] + [{"tsMs": "soon"}]
    first = keyed(store, batch, "batch-0001")
    assert first.status_code == 200 and "Idempotent-Replayed" not in first.headers
    again = keyed(store, batch, "batch-0001")
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json == first.json and first.json["accepted"] == 3
    assert store.page()["total"] == 3
    # A new key is a new batch.
    assert keyed(store, batch, "batch-0002").json["firstId"] == 4
    assert store.page()["total"] == 6


def test_an_idempotency_key_reused_for_another_body_is_422(store):
    assert keyed(store, [make_entry(0)], "k1").status_code == 200
    response = keyed(store, [make_entry(1)], "k1")
    assert response.status_code == 422 and "Idempotency-Key" in response.json["message"]
    assert store.page()["total"] == 1


@pytest.mark.parametrize("key", ["", "with space", "x" * 256, "naïve"])
def test_a_malformed_idempotency_key_is_400(store, key):
    response = keyed(store, [make_entry(0)], key)
    assert response.status_code == 400 and "Idempotency-Key" in response.json["message"]
    assert store.page()["total"] == 0


def test_idempotency_keys_belong_to_the_writers_scope(store):
    made = store.client.post(ADMIN_TOKENS, headers=store.headers, json={
        "name": "w", "projectId": "proj_w", "capabilities": {"logs": True, "ingest": True}})
    writer = {"Authorization": f"Bearer {made.json['token']}"}
    batch = [make_entry(0, projectId="proj_w")]
    assert keyed(store, batch, "same").json["firstId"] == 1
    theirs = keyed(store, batch, "same", writer)
    assert theirs.status_code == 200 and "Idempotent-Replayed" not in theirs.headers
    assert theirs.json["firstId"] == 2


def test_a_key_is_forgotten_after_its_window(make_app):
    store = Store(make_app(idempotency_window_s=1).test_client())
    assert keyed(store, [make_entry(0)], "k").json["firstId"] == 1
    time.sleep(1.1)
    assert keyed(store, [make_entry(0)], "k").json["firstId"] == 2


def test_concurrent_retries_across_workers_store_the_batch_once(server):
    import concurrent.futures

    import requests

    body = orjson.dumps([make_entry(i) for i in range(50)])
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json",
               "Idempotency-Key": "shipper-batch-77"}

    def send(_):
        return requests.post(server.url + INGEST, data=body, headers=headers, timeout=30)

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(send, range(24)))
    assert {a.status_code for a in answers} == {200}
    assert len({(a.json()["firstId"], a.json()["lastId"]) for a in answers}) == 1
    assert sum("Idempotent-Replayed" not in a.headers for a in answers) == 1
    page = requests.get(server.url + LOGS, params={"limit": 1}, headers=headers, timeout=10).json()
    assert page["total"] == 50


def raw_exchange(server, data, wait_s=5.0):
    """Send `data` on a fresh connection; return all that comes back
    until the server closes it (or `wait_s` passes)."""
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=wait_s) as sock:
        sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            pass
        return received


def json_error(received):
    head, _, body = received.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"application/json" in head, head
    answer = orjson.loads(body)
    assert answer["statusCode"] == status and answer["message"]
    return status, answer


@pytest.mark.sqlite_only("the HTTP layer does not depend on the engine")
def test_errors_the_server_answers_before_the_app_are_json(tmp_path):
    from logsvc.testing import Server

    with Server(tmp_path, workers=1).start() as server:
        too_long = b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        assert json_error(raw_exchange(server, too_long))[0] == 414
        huge_header = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 100_000 + b"\r\n\r\n"
        assert json_error(raw_exchange(server, huge_header))[0] in (400, 431)
        bad_length = b"POST /api/proxy-logs/_ingest HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"
        assert json_error(raw_exchange(server, bad_length))[0] == 400
        bad_chunk = (b"POST /api/proxy-logs/_ingest HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer " + ADMIN_TOKEN.encode() + b"\r\n"
                     b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"zz\r\n{}\r\n0\r\n\r\n")
        status, answer = json_error(raw_exchange(server, bad_chunk))
        assert status == 400, answer


@pytest.mark.sqlite_only("the HTTP layer does not depend on the engine")
def test_a_connection_that_never_finishes_its_headers_is_cut(tmp_path):
    from logsvc.testing import Server

    with Server(tmp_path, workers=1, env={"LOGSVC_HEADER_TIMEOUT_S": "1"}).start() as server:
        started = time.monotonic()
        received = raw_exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ", wait_s=10)
        assert received == b"" and time.monotonic() - started < 5
