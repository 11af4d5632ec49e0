"""Retention by age and by row cap, one process at a time."""
import pytest

from logsvc.entry import now_ms
from logsvc.store import db, retention
from logsvc.testing import make_entry
from tests.test_stats import assert_stats, truth


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


# --- PostgreSQL: whole partitions ---------------------------------------------------

PARTITIONED = "entry is partitioned by id range on PostgreSQL only"




def stored_partitions():
    from logsvc.store import partitions

    return db.call(partitions.listed)


def count_and_oldest():
    return db.call(lambda: db.execute(
        "SELECT count(*), min(id) FROM entry").fetchone())


@pytest.mark.postgres_only(PARTITIONED)
def test_the_row_cap_drops_whole_partitions_and_keeps_the_counters_exact(make_app):
    from logsvc.testing import Store

    app = make_app(partition_rows=100)
    store = Store(app.test_client())
    for start in range(0, 350, 50):
        # The longest durations are in the partitions that go.
        store.ingest([make_entry(i, requestBody="b", durationMs=1000 - i)
                      for i in range(start, start + 50)])
    assert stored_partitions() == [0, 1, 2, 3]
    removed = retention.prune(config_of(app, max_rows=120), batch=7)
    assert removed == 230
    assert stored_partitions() == [2, 3]  # 1..100 and 101..200 went whole
    assert count_and_oldest() == (120, 231)
    stats = store.page("/api/proxy-logs/_logs/stats")
    assert stats["total"] == 120
    assert sum(stats["byLevel"].values()) == 120
    assert (stats["latency"]["count"], stats["latency"]["max"]) == (120, 1000 - 230)
    assert_stats(stats, truth())  # and percentiles, routes, exact as before
    (bodies,) = db.call(lambda: db.execute("SELECT count(*) FROM entry_body").fetchone())
    assert bodies == 120
    ranges = db.call(lambda: db.execute(
        "SELECT min_id, max_id FROM prune_log ORDER BY min_id").fetchall())
    assert ranges[:2] == [(1, 100), (101, 200)]


@pytest.mark.postgres_only(PARTITIONED)
def test_age_drops_every_expired_partition_but_the_one_being_filled(make_app):
    from logsvc.testing import Store

    app = make_app(partition_rows=100)
    store = Store(app.test_client())
    now = now_ms()
    store.ingest([make_entry(i, tsMs=now - 1000 + i) for i in range(250)])
    later = now + 8 * 86_400_000  # everything is older than the 7 days by then
    removed = retention.prune(config_of(app), now=later)
    assert removed == 250
    assert stored_partitions() == [2]  # 201..300 still takes new ids
    assert store.page("/api/proxy-logs/_logs/stats")["total"] == 0
    assert store.ingest([make_entry(1)])["firstId"] == 251


@pytest.mark.postgres_only(PARTITIONED)
def test_partitions_are_analyzed_when_new_and_again_when_they_grew(make_app):
    import time

    from logsvc.store import partitions
    from logsvc.testing import Store

    store = Store(make_app(partition_rows=5000).test_client())
    store.ingest([make_entry(i) for i in range(150)])
    assert sorted(db.call(partitions.analyze_stale)) == ["entry_body_p0", "entry_p0"]
    assert db.call(partitions.analyze_stale) == []
    store.ingest([make_entry(i) for i in range(150, 2200)])
    deadline = time.monotonic() + 5  # the statistics views lag a little
    analyzed = []
    while "entry_p0" not in analyzed and time.monotonic() < deadline:
        analyzed += db.call(partitions.analyze_stale)
        time.sleep(0.1)
    (tuples,) = db.call(lambda: db.execute(
        "SELECT reltuples FROM pg_class WHERE relname = 'entry_p0' "
        "AND relnamespace = current_schema()::regnamespace").fetchone())
    assert "entry_p0" in analyzed and tuples == 2200


def _fillfactors():
    return dict(db.call(lambda: db.execute(
        "SELECT relname, array_to_string(reloptions, ',') FROM pg_class "
        "WHERE relnamespace = current_schema()::regnamespace AND relname LIKE 'rollup%' "
        "AND relkind = 'r'").fetchall()))


@pytest.mark.postgres_only("PostgreSQL keeps old row versions until they are vacuumed")
def test_counters_rewritten_by_every_ingest_are_vacuumed_and_leave_room_in_their_pages(
        make_app):
    import time

    from logsvc.store import migrations, partitions
    from logsvc.testing import Store

    app = make_app(rate_limit_per_min=0)
    options = _fillfactors()
    # The all-time tiers leave half of each page for new row versions.
    assert options["rollup_total"] == options["rollup_route_class_total_all"] == \
        "fillfactor=50"
    assert not options["rollup_minute"] and not options["rollup_hour"]
    store = Store(app.test_client())
    for batch in range(60):  # every batch rewrites the scope's all-time rows
        store.ingest([make_entry(batch * 10 + i) for i in range(10)])

    def dead(table):
        return db.call(lambda: db.execute(
            "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = ? "
            "AND schemaname = current_schema()", (table,)).fetchone()[0])

    vacuumed, deadline = [], time.monotonic() + 10  # the statistics lag a little
    while "id_sequence" not in vacuumed and time.monotonic() < deadline:
        vacuumed += db.call(partitions.vacuum_updated)
        time.sleep(0.2)
    # Vacuumed: below the threshold it is chosen at (the statistics views
    # are updated a little later, under load a few seconds later, so not
    # necessarily zero yet).
    assert "id_sequence" in vacuumed
    deadline = time.monotonic() + 10
    while dead("id_sequence") > 50 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert dead("id_sequence") <= 50
    assert not any(name.startswith("entry") for name in vacuumed)
    assert "id_sequence" not in db.call(partitions.vacuum_updated)  # nothing left to do

    # A store of version 15 gains the setting when it is upgraded.
    db.call(lambda: db.execute("ALTER TABLE rollup_total RESET (fillfactor)"))
    db.call(lambda: db.execute("UPDATE meta SET value = '15' WHERE key = 'schema_version'"))
    db.call(migrations.create_schema)
    assert _fillfactors()["rollup_total"] == "fillfactor=50"
