"""Retention by age and by row cap, one process at a time."""
from logsvc import db, retention
from logsvc.entry import now_ms
from tests.conftest import make_entry


def config_of(app, **changes):
    return app.extensions["logsvc"].config.replace(**changes)


def test_entries_older_than_the_retention_period_are_removed(app, store):
    now = now_ms()
    store.ingest([make_entry(i, tsMs=now - i * 3_600_000) for i in range(10)])
    removed = retention.prune(config_of(app, retention_days=4 / 24), now=now, batch=3)
    assert removed == 5
    assert [e["tsMs"] for e in store.page()["entries"]] == [now - i * 3_600_000 for i in range(5)]
    assert store.page("/api/proxy-logs/_logs/stats")["total"] == 5


def test_the_row_cap_removes_the_oldest_ids_first(app, store):
    store.ingest([make_entry(i) for i in range(25)])
    retention.prune(config_of(app, max_rows=10), batch=4)
    page = store.page()
    assert [e["id"] for e in page["entries"]] == list(range(16, 26))
    assert page["total"] == 10


def test_bodies_go_with_their_entries(app, store):
    store.ingest([make_entry(i, requestBody="x") for i in range(5)])
    retention.prune(config_of(app, max_rows=2))
    (n,) = db.call(lambda: db.database.execute_sql("SELECT count(*) FROM entry_body").fetchone())
    assert n == 2


def test_ids_are_never_reused_after_the_newest_rows_are_pruned(app, store):
    store.ingest([make_entry(i) for i in range(5)])
    retention.prune(config_of(app, max_rows=0))
    assert store.ingest([make_entry(9)])["firstId"] == 6


def test_only_one_process_holds_the_retention_lease(app):
    assert db.call(retention.take_lease, "retention", "host-a:1", 60)
    assert not db.call(retention.take_lease, "retention", "host-b:2", 60)
    assert db.call(retention.take_lease, "retention", "host-a:1", 60)  # renewal


def test_an_expired_lease_passes_to_another_process(app):
    assert db.call(retention.take_lease, "retention", "host-a:1", -1)
    assert db.call(retention.take_lease, "retention", "host-b:2", 60)
