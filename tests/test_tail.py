"""The tailer and subscriptions as services, in one process."""
import time

import gevent
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logsvc.store import ingest, query, tail
from logsvc.store.filters import Filters, matches
from logsvc.testing import make_entry


def config_of(app):
    return app.extensions["logsvc"].config


def test_the_tailer_sees_writes_of_other_processes_without_being_told(app):
    tailer = tail.Tailer(100)
    _, subscription = tail.subscribe(tailer, Filters(), replay=0)
    ingest.ingest([make_entry(1, tsMs=None)], config_of(app))  # no notify(): like another worker
    started = time.monotonic()
    events = subscription.events(heartbeat_s=5)
    kind, batch = next(events)
    assert kind == "entries" and [e["id"] for e, _ in batch] == [1]
    assert time.monotonic() - started < tail.POLL_S * 4 + 0.5


def test_a_subscription_behind_the_ring_catches_up_from_the_database(app):
    tailer = tail.Tailer(ring_size=5)
    _, subscription = tail.subscribe(tailer, Filters(levels=("error",)), replay=0)
    for _ in range(10):
        ingest.ingest([make_entry(i, tsMs=None) for i in range(16)], config_of(app))
    gevent.sleep(0.3)
    assert len(tailer.ring[0]) <= 10  # the ring stays bounded
    seen = []
    for kind, batch in subscription.events(heartbeat_s=0.2):
        if kind == "heartbeat":
            break
        seen += [e["id"] for e, _ in batch]
    expected = [b * 16 + i + 1 for b in range(10) for i in range(16)
                if make_entry(i)["status"] in (500, 503)]
    assert seen == expected


filters = st.builds(
    Filters,
    project_id=st.sampled_from([None, "proj_1"]),
    container_id=st.sampled_from([None, "cnt_2"]),
    service_names=st.sampled_from([(), ("user-api",), ("user-api", "webhook-svc")]),
    levels=st.sampled_from([(), ("warn",), ("warn", "error")]),
    kinds=st.sampled_from([(), ("event",), ("request", "response")]),
    methods=st.sampled_from([(), ("GET",)]),
    sources=st.sampled_from([(), ("edge",)]),
    trace_id=st.sampled_from([None, "trace-3"]),
    status_ranges=st.sampled_from([(), ((500, 599),), ((404, 404), (200, 299))]),
    since=st.sampled_from([None, 1_800_000_020_000]),
    until=st.sampled_from([None, 1_800_000_040_000]),
    q=st.sampled_from([None, "ITEMS/1", "items/1*", "v1 -items/2*", '"n":3 OR "n":4']),
    client_ip=st.sampled_from([None, "10.0.0.3"]),
    routes=st.sampled_from([(), ("/v1/items/{id}",), ("/v1/items/3_x%", "/v2")]),
    min_duration_ms=st.sampled_from([None, 0.0, 10.5]),
    max_duration_ms=st.sampled_from([None, 10.5, 30.0]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(f=filters)
def test_the_in_memory_filter_agrees_with_the_sql_filter(store, f):
    if not store.page(limit=0)["total"]:
        store.ingest([make_entry(i, url=f"/v1/items/{i}_x%" if i % 4 else f"/v1/items/{i}",
                                 durationMs=None if i % 5 == 0 else i * 0.75)
                      for i in range(60)])
    every = query.entries_after(Filters(), 0, 1000)
    by_sql = [e["id"] for e in query.entries_after(f, 0, 1000)]
    assert [e["id"] for e in every if matches(f, e)] == by_sql


def test_subscribers_arriving_together_share_one_tailer_and_see_each_entry_once(app):
    tailer = tail.Tailer(100)
    opening = [gevent.spawn(tail.subscribe, tailer, Filters(), None, 0)
               for _ in range(20)]
    gevent.joinall(opening, raise_error=True)
    ingest.ingest([make_entry(i, tsMs=None) for i in range(5)], config_of(app))
    for greenlet in opening:
        seen = []
        for kind, batch in greenlet.value[1].events(heartbeat_s=0.3):
            if kind == "heartbeat":
                break
            seen += [e["id"] for e, _ in batch]
        assert seen == [1, 2, 3, 4, 5]


@pytest.mark.server
@pytest.mark.sqlite_only("PostgreSQL's workers wake each other with NOTIFY")
def test_an_entry_committed_by_another_worker_arrives_before_the_poll(tmp_path):
    """The workers ring each other's doorbell after a commit: with a poll of
    10 s, entries ingested through either worker reach a stream at once."""
    import requests
    import sseclient

    from logsvc.testing import ADMIN_TOKEN, INGEST, Server

    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    server = Server(tmp_path, workers=2, env={"LOGSVC_TAIL_POLL_S": "10"}).start()
    try:
        stream = requests.get(server.url + "/api/proxy-logs/_logs/stream",
                              params={"replay": 0}, headers=admin, stream=True, timeout=(5, 20))
        events = sseclient.SSEClient(stream).events()
        next(events)  # the (empty) replay: subscribed
        late = []
        for i in range(20):  # new connections: the kernel spreads them over both workers
            sent = time.monotonic()
            requests.post(server.url + INGEST, json={"url": f"/bell/{i}"},
                          headers={**admin, "Connection": "close"}, timeout=10)
            event = next(events)
            assert f'"url":"/bell/{i}"' in event.data
            late.append(time.monotonic() - sent)
        stream.close()
        assert max(late) < 2.0, late
    finally:
        server.stop()
