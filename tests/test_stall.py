"""One tenant cannot stall the service: what a hostile caller with an
ordinary token could make a worker do is bounded (decompression, decoding,
search cost, body trickling, sign-in floods), and what is refused gets a
clear answer, never a 500."""
import base64
import gzip
import socket
import threading
import time

import pytest
import requests

from logsvc.access import credentials
from logsvc.access.limits import FailureLimiter, QueryGate, RateLimited
from logsvc.access.principal import scope_key
from logsvc.api.hosting import ScopeHost
from logsvc.store import fulltext, ingest
from logsvc.testing import ADMIN_TOKEN, INGEST, LOGS, make_entry
from tests.test_tenancy import JWT_SECRET, Tenants

STATS = LOGS + "/stats"
HISTOGRAM = STATS + "/histogram"


def post(store, body, encoding="gzip", content_type="application/x-ndjson"):
    return store.client.post(INGEST, data=body, headers={
        **store.headers, "Content-Type": content_type, "Content-Encoding": encoding})


# --- decompression and decoding ---------------------------------------------

def test_a_body_of_empty_gzip_members_is_refused_at_once(store):
    started = time.monotonic()
    response = post(store, gzip.compress(b"") * 419_430)  # 8 MiB
    assert response.status_code == 400
    assert "gzip members" in response.json["message"]
    assert store.page(limit=1)["total"] == 0
    # Linear: the whole body is looked at once, not once per member
    # (quadratic took seconds a MiB); this is no timing test, only a bound
    # far above the linear cost and far below the quadratic one.
    assert time.monotonic() - started < 20


def test_as_many_members_as_allowed_are_all_read(store):
    members = b"".join(gzip.compress(b'{"url": "/m/%d"}\n' % i)
                       for i in range(ingest.MAX_GZIP_MEMBERS))
    response = post(store, members)
    assert response.status_code == 200, response.json
    assert response.json["accepted"] == ingest.MAX_GZIP_MEMBERS
    response = post(store, members + gzip.compress(b'{"url": "/one-more"}\n'))
    assert response.status_code == 400 and "gzip members" in response.json["message"]


def test_members_longer_than_one_read_are_inflated_whole():
    big = b"".join(b'{"url": "/big/%d"}\n' % i for i in range(40_000))  # > 64 KiB compressed
    body = gzip.compress(big) + gzip.compress(b'{"url": "/tail"}\n') + b"\x00" * 10
    items = ingest.parse_payload(body, "application/x-ndjson", "gzip")
    assert len(items) == 40_001 and items[-1] == {"url": "/tail"}


@pytest.mark.parametrize("body, content_type", [
    (b"[" * 1_000_001 + b"]" * 1_000_001, "application/json"),
    (b"[" + b"{}," * 1_000_000 + b"{}]", "application/json"),
    (b"\n".join([b"[" * 100 + b"]" * 100] * 10_001), "application/x-ndjson"),
])
def test_a_body_that_would_decode_into_millions_of_objects_is_413(store, body, content_type):
    response = post(store, gzip.compress(body), content_type=content_type)
    assert response.status_code == 413
    assert "objects and arrays" in response.json["message"]
    assert store.page(limit=1)["total"] == 0


def test_nested_data_of_an_ordinary_size_is_taken(store):
    nested = {"a": [{"b": [1, 2, {"c": {"d": [3]}}]}] * 5}
    answer = store.ingest([make_entry(i, data=nested) for i in range(200)])
    assert answer["accepted"] == 200


# --- what a search may cost -------------------------------------------------

@pytest.mark.parametrize("path", [LOGS, STATS, HISTOGRAM])
@pytest.mark.parametrize("q, says", [
    (".".join(["v2"] * 340), "a term may have at most"),
    (".".join(["v2"] * (fulltext.MAX_PHRASE_WORDS + 1)), "a term may have at most"),
    (" ".join(".".join(["w"] * 20) for _ in range(4)), "words in all"),
])
def test_a_search_of_too_many_words_is_a_400_naming_q(store, path, q, says):
    response = store.get(path, q=q)
    assert response.status_code == 400, response.json
    assert "'q'" in response.json["message"] and says in response.json["message"]


def test_a_phrase_of_the_most_words_allowed_is_searched(store):
    words = [f"w{i}" for i in range(fulltext.MAX_PHRASE_WORDS)]
    store.ingest([make_entry(0, url="/" + "/".join(words)), make_entry(1, url="/" + words[0])])
    page = store.page(q="/".join(words))
    assert [e["url"] for e in page["entries"]] == ["/" + "/".join(words)]


def test_a_repeated_word_asks_the_index_for_it_once():
    assert fulltext.to_fts5(fulltext.parse("v2.v2.v2.v1")) == '("v2" AND "v1")'


@pytest.mark.parametrize("path", [LOGS, STATS, HISTOGRAM])
def test_a_letter_the_index_splits_on_is_searched_not_a_500(store, path):
    store.ingest([make_entry(0, url="/x/a\u19b0b"), make_entry(1, url="/x/a/b"),
                  make_entry(2, url="/x/b/a")])
    response = store.get(path, q="a\u19b0b")
    assert response.status_code == 200, response.json
    if path == LOGS:
        assert [e["url"] for e in response.json["entries"]] == ["/x/a\u19b0b"]
    else:
        assert "total" in response.json or "buckets" in response.json


def test_a_word_the_index_keeps_nothing_of_is_a_400(store):
    response = store.get(q="\u19b0")
    assert response.status_code == 400 and "'q'" in response.json["message"]


@pytest.fixture
def slow_store(make_app):
    """A store whose reads may take a millisecond, holding enough entries
    that a phrase search over all of them takes longer."""
    from logsvc.testing import Store

    app = make_app(query_timeout_s=0.001, rate_limit_per_min=0)
    store = Store(app.test_client())
    for start in range(0, 6000, 2000):
        store.ingest([make_entry(i, url=f"/v1/orders/{i}/lines", tsMs=None)
                      for i in range(start, start + 2000)])
    return store


@pytest.mark.parametrize("path", [LOGS, STATS, HISTOGRAM])
def test_a_query_past_its_time_limit_is_stopped_with_a_503(slow_store, path):
    response = slow_store.get(path, q='"orders lines" OR "lines orders"',
                              **({"limit": 500} if path == LOGS else {}))
    assert response.status_code == 503, response.json
    assert "LOGSVC_QUERY_TIMEOUT_S" in response.json["message"]
    assert response.headers["Retry-After"]
    # The connection that ran it is usable again, without the limit for
    # what is not a caller's query.
    assert slow_store.ingest([make_entry(1)])["accepted"] == 1
    assert slow_store.client.get("/healthz").status_code == 200


def test_a_scope_runs_at_most_its_share_of_queries_at_once():
    gate = QueryGate(per_scope=1, patience_s=0.2)
    inside, release = threading.Event(), threading.Event()

    def hold():
        with gate.turn("tenant-a"):
            inside.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(5)
    try:
        # The same scope waits, then is told.
        with pytest.raises(RateLimited) as refused, gate.turn("tenant-a"):
            pass
        assert "LOGSVC_QUERIES_PER_SCOPE" in str(refused.value)
        started = time.monotonic()
        with gate.turn("tenant-b"):  # another scope goes ahead at once
            assert time.monotonic() - started < 0.1
    finally:
        release.set()
        holder.join()
    with gate.turn("tenant-a"):  # and the turn was given back
        pass
    assert gate._gates == {}


# --- scopes, revocation, sessions, hosts ---------------------------------------

@pytest.mark.parametrize("one, other", [
    (("acme", None), ("acme", "*")),
    (("acme/prod", None), ("acme", "prod/*")),
    (("a/b", "c"), ("a", "b/c")),
])
def test_scope_keys_of_different_scopes_differ(one, other):
    assert scope_key(*one) != scope_key(*other)


@pytest.fixture
def tenants(make_app):
    from logsvc.testing import Store

    app = make_app(jwt_secret=JWT_SECRET, rate_limit_per_min=0)
    client = app.test_client()
    return Tenants(client, Store(client))


def test_an_idempotency_key_is_not_shared_by_two_scopes_of_one_text(tenants):
    everything, _ = tenants.token("acme", None, logs=True, ingest=True)
    star, _ = tenants.token("acme", "*", logs=True, ingest=True)
    body = b'{"kind": "event", "containerId": "*", "url": "/x"}'
    answers = []
    for headers in (everything, star):
        response = tenants.client.post(INGEST, data=body, headers={
            **headers, "Content-Type": "application/json", "Idempotency-Key": "k-1"})
        assert response.status_code == 200, response.json
        answers.append(response)
    assert "Idempotent-Replayed" not in answers[1].headers
    assert answers[0].json["firstId"] != answers[1].json["firstId"]


def test_a_user_made_again_in_another_project_loses_the_old_grant(tenants):
    tenants.user("proj_1", name="alice")
    found = credentials.principal_for_password("alice", "correct horse", {})
    assert credentials.revoked(found) is None
    assert tenants.client.delete("/api/proxy-logs/_admin/users/alice",
                                 headers=tenants.admin).status_code in (200, 204)
    tenants.user("proj_2", name="alice")
    assert credentials.revoked(found) == "the user's access was changed"


def test_ending_a_session_voids_its_websocket_tickets(tenants):
    headers, _ = tenants.token()
    client = tenants.client
    assert client.post("/api/session", headers=headers).status_code == 200
    kept = client.get("/api/ws-token").json["token"]
    used = client.get("/api/ws-token").json["token"]
    found, session = credentials.redeem_ws_ticket(used)
    assert found is not None and session is not None
    assert credentials.revoked(found, session_digest=session) is None
    assert client.delete("/api/session").status_code == 200
    assert credentials.redeem_ws_ticket(kept) == (None, None)
    assert credentials.revoked(found, session_digest=session) == "the session has ended"


def test_a_websocket_of_another_version_is_426(store):
    response = store.client.get("/api/ws/logs", headers={
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "8",
        "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode()})
    assert response.status_code == 426
    assert response.headers["Sec-WebSocket-Version"] == "13"
    assert "version 13" in response.json["message"]


@pytest.mark.parametrize("host", ["c1.p1.logs.example.com.", "c1.p1.logs.example.com.:8443",
                                  "C1.P1.LOGS.EXAMPLE.COM"])
def test_a_scope_host_is_matched_in_its_fully_qualified_form(host):
    assert ScopeHost("{containerId}.{projectId}.logs.example.com").match(host) == ("p1", "c1")


# --- sign-in floods -------------------------------------------------------------

def _basic(name, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


def test_wrong_passwords_from_elsewhere_do_not_lock_out_a_known_address(make_app):
    from logsvc.testing import Store

    app = make_app(auth_failures_per_min=5, rate_limit_per_min=0)
    client = app.test_client()
    Tenants(client, Store(client)).user("proj_1", name="alice")
    home = {"REMOTE_ADDR": "198.51.100.7"}
    assert client.get(LOGS, headers=_basic("alice", "correct horse"),
                      environ_base=home).status_code == 200
    for i in range(20):  # a flood from fifty other addresses
        client.get(LOGS, headers=_basic("alice", "guess"),
                   environ_base={"REMOTE_ADDR": f"203.0.113.{i}"})
    stranger = client.get(LOGS, headers=_basic("alice", "correct horse"),
                          environ_base={"REMOTE_ADDR": "192.0.2.99"})
    assert stranger.status_code == 429  # the name is limited for new places
    assert client.get(LOGS, headers=_basic("alice", "correct horse"),
                      environ_base=home).status_code == 200


def test_the_failure_limit_is_exact_under_concurrency(make_app, tmp_path):
    make_app()  # the store this process works on (PostgreSQL keeps the budgets)
    limiter = FailureLimiter(tmp_path, per_minute=5)
    counted = []

    def attempt():
        counted.append(limiter.reserve("client:203.0.113.9") == 0)

    threads = [threading.Thread(target=attempt) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counted.count(True) == 5
    limiter.refund("client:203.0.113.9")
    assert limiter.reserve("client:203.0.113.9") == 0
    assert limiter.reserve("client:203.0.113.9") > 0


# --- slow bodies, against a real server ------------------------------------------

def test_a_body_trickled_in_is_cut_with_a_408_while_others_are_served(tmp_path):
    from logsvc.testing import Server

    with Server(tmp_path, env={"LOGSVC_HEADER_TIMEOUT_S": "2",
                               "LOGSVC_BODY_MIN_RATE": "1000"}).start() as server:
        slow = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        slow.sendall(b"POST /api/proxy-logs/_ingest HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer " + ADMIN_TOKEN.encode() + b"\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
        started = time.monotonic()
        answer = b""
        try:
            while b"\r\n\r\n" not in answer:
                fast = requests.get(server.url + "/healthz", timeout=5)
                assert fast.status_code == 200
                slow.sendall(b" ")
                time.sleep(0.5)
                slow.settimeout(0.01)
                try:
                    answer += slow.recv(4096)
                except TimeoutError:
                    pass
                except ConnectionResetError:
                    break
                assert time.monotonic() - started < 20
        finally:
            slow.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"LOGSVC_BODY_MIN_RATE" in answer
        assert 1.5 < time.monotonic() - started < 10
        # An ordinary body goes through.
        response = requests.post(server.url + INGEST, json=[make_entry(0)], timeout=10,
                                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert response.status_code == 200 and response.json()["accepted"] == 1


def test_health_sees_a_store_that_takes_writes_again_without_waiting_for_one(app, store):
    held = app.extensions["logsvc"].store
    # What a write that found the disk full leaves behind.
    held.unwritable = "the store's disk is full"
    health = store.client.get("/healthz").json
    # The disk has room again: the health check's own write succeeds.
    assert health == {"status": "ok", "writable": True}
    assert held.unwritable is None
    assert store.ingest([make_entry(0)])["accepted"] == 1
