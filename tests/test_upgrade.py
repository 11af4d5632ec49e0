"""A store written by the previous version opens in place: counters and
bodies answer exactly as before."""
import pytest
import zstandard

from logsvc.store import bodies, db, fulltext, lookup, migrations, models, names, retention, rollup
from logsvc.store.filters import Filters
from logsvc.testing import Store, make_entry

LOGS = "/api/proxy-logs/_logs"
STATS = LOGS + "/stats"
HISTOGRAM = STATS + "/histogram"
BASE = 1_800_000_000_000  # a whole hour
HOUR = 3_600_000
OLD_BODY = '{"kept": "as text by version 2", "tab": "\t", "slash": "\\\\"}' * 5


def make_old(version):
    """Mark the store as of `version`, without the watermark of the
    counting in the background (version 20's); its entries were counted
    first (`rollup.count_all`), as a store of that version counted each
    one as it stored it."""
    db.execute("DELETE FROM meta WHERE key = 'counted_through'")
    models.Meta.update(value=version).where(models.Meta.key == "schema_version").execute()

def latency_indexes():
    """`order=slowest`'s indexes (SQLite's keys end with the id anyway)."""
    suffix = "_id" if db.is_postgres() else ""
    return [f"entry_lat_bucket{suffix}", f"entry_project_id_lat_bucket{suffix}"]


def make_version_3():
    """Turn this store back into what version 3 wrote: no durations or
    routes (a duration stayed in `data`), no latency or route counters."""
    rollup.count_all()  # as the store of that version counted
    for table in ("rollup_five_minutes_all", "rollup_hour_all", "rollup_total_all",
                  "rollup_route_minute", "rollup_route_hour",
                  "rollup_route_total", "rollup_route_minute_all", "rollup_route_hour_all",
                  "rollup_route_total_all"):
        db.execute(f"DROP TABLE {table}")
    if db.is_postgres():
        db.execute("UPDATE entry SET data = jsonb_set(data::jsonb, '{durationMs}', "
                   "to_jsonb(duration_ms))::text WHERE duration_ms IS NOT NULL")
    else:
        db.execute("UPDATE entry SET data = json_set(data, '$.durationMs', duration_ms) "
                   "WHERE duration_ms IS NOT NULL")
    for index in latency_indexes():
        db.execute(f"DROP INDEX {index}")
    for column in ("duration_ms", "route", "lat_bucket"):
        db.execute(f"ALTER TABLE entry DROP COLUMN {column}")
    for table in ("rollup_minute", "rollup_hour", "rollup_total", "rollup_minute_all"):
        for column in ("lat", "lat_max"):
            db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    db.execute("DROP TABLE ingest_key")
    make_old("3")


def test_a_version_3_store_gains_durations_routes_and_their_counters(make_app):
    app = make_app()
    store = Store(app.test_client())
    entries = [make_entry(i, tsMs=BASE + i * 7 * 60_000 + i, durationMs=(i * 37) % 900 + 0.5)
               for i in range(60)]
    entries[5]["durationMs"] = None
    entries[6].update(durationMs=None, data={"durationMs": "slow"})  # stays in data only
    store.ingest(entries)
    questions = [(STATS, {}), (STATS, {"since": BASE + 1234, "until": BASE + 5 * HOUR + 17}),
                 (STATS, {"projectId": "proj_1", "since": BASE + HOUR, "until": BASE + 4 * HOUR}),
                 (STATS, {"projectId": "proj_2", "containerId": "cnt_2"}),
                 (HISTOGRAM, {"bucket": "1h", "since": BASE, "until": BASE + 8 * HOUR}),
                 (HISTOGRAM, {"bucket": "5m", "since": BASE, "until": BASE + 8 * HOUR,
                              "projectId": "proj_2"}),
                 (LOGS, {"order": "slowest", "limit": 10}),
                 (LOGS, {"route": "/v1/items/{id}", "minDurationMs": 300})]
    before = [store.page(path, **params) for path, params in questions]
    # A route counts calls: make_entry's request entries (a third) are not.
    assert before[0]["latency"]["count"] == 58 and before[0]["byRoute"][0]["total"] == 40
    db.call(make_version_3)
    app.extensions["logsvc"].store.close()

    store = Store(make_app().test_client())
    after = [store.page(path, **params) for path, params in questions]
    # Entries stored before keep their duration in `data` as well.
    for page in (before[-2], before[-1], after[-2], after[-1]):
        for item in page["entries"]:
            item["data"].pop("durationMs", None)
    assert after == before
    assert store.page(LOGS, limit=10)["entries"][6]["data"] == {"durationMs": "slow"}


def make_version_2():
    """Turn this store back into what version 2 wrote: no hourly or
    all-scopes counters, bodies as text only."""
    rollup.count_all()  # as the store of that version counted
    make_version_3()
    for table in ("rollup_hour", "rollup_minute_all"):
        db.execute(f"DROP TABLE {table}")
    db.execute("UPDATE entry_body SET response_body = ? WHERE entry_id = 3", (OLD_BODY,))
    for column in ("request_body_z", "response_body_z"):
        db.execute(f"ALTER TABLE entry_body DROP COLUMN {column}")
    for column in ("kind", "source"):
        db.execute(f"CREATE INDEX entry_{column}_id ON entry ({column}, id)")
    db.execute("DROP INDEX entry_project_id_id_container_id_level")
    db.execute("CREATE INDEX entry_project_id_container_id_id ON entry "
               "(project_id, container_id, id)")
    # No full-text index; on PostgreSQL, body rows only for entries with bodies.
    if db.is_postgres():
        db.execute("ALTER TABLE entry_body DROP COLUMN doc")
        db.execute("DELETE FROM entry_body WHERE request_body IS NULL AND response_body IS NULL")
    else:
        db.execute("DROP TABLE entry_fts")
    make_old("2")


def test_a_version_2_store_gains_hourly_counters_and_keeps_its_bodies(make_app):
    app = make_app()
    store = Store(app.test_client())
    entries = [make_entry(i, tsMs=BASE + i * 7 * 60_000 + i) for i in range(60)]
    entries[2]["responseBody"] = "short"
    store.ingest(entries)
    questions = [(STATS, {}), (STATS, {"since": BASE + 1234, "until": BASE + 5 * HOUR + 17}),
                 (STATS, {"projectId": "proj_1", "since": BASE + HOUR, "until": BASE + 4 * HOUR}),
                 (HISTOGRAM, {"bucket": "1h", "since": BASE, "until": BASE + 8 * HOUR}),
                 (HISTOGRAM, {"bucket": "5m", "since": BASE, "until": BASE + 8 * HOUR}),
                 (HISTOGRAM, {"bucket": "5m", "since": BASE, "until": BASE + 8 * HOUR,
                              "projectId": "proj_2", "containerId": "cnt_2"})]
    before = [store.page(path, **params) for path, params in questions]
    assert before[1]["total"] > 0 and before[3]["buckets"][2]["total"] > 0
    db.call(make_version_2)
    app.extensions["logsvc"].store.close()

    store = Store(make_app().test_client())
    assert [store.page(path, **params) for path, params in questions] == before
    page = store.page(LOGS, limit=3, includeResponseBody="true")
    assert page["entries"][2]["responseBody"] == OLD_BODY
    # What was stored before is found by full-text search: url, body, data.
    assert [e["id"] for e in store.page(LOGS, q='items/41 OR "version 2" OR "n":7')[
        "entries"]] == [3, 8, 42]
    # New bodies go to the compressed column again.
    store.ingest([make_entry(99, responseBody=OLD_BODY)])
    assert store.page(LOGS, order="desc", limit=1,
                      includeResponseBody="true")["entries"][0]["responseBody"] == OLD_BODY
    assert db.call(lambda: db.execute(
        "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()) == (
            str(migrations.SCHEMA_VERSION),)
    indexes = db.call(lambda: db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index'" if not db.is_postgres() else
        "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()").fetchall())
    names = {name for (name,) in indexes}
    assert "entry_project_id_id_container_id_level" in names
    assert "entry_project_id_id_container_id" not in names
    assert {"entry_kind_id", "entry_source_id", "entry_project_id_container_id_id"}.isdisjoint(names)


def test_the_migrate_command_upgrades_a_store_before_the_server_starts(make_app, tmp_path):
    from tests.test_admin import cli

    app = make_app()
    Store(app.test_client()).ingest([make_entry(i, durationMs=i + 0.5) for i in range(5)])
    db.call(make_version_3)
    app.extensions["logsvc"].store.close()
    done = cli(tmp_path, "migrate")
    assert done.returncode == 0, done.stderr
    assert f'"schemaVersion": {migrations.SCHEMA_VERSION}' in done.stdout
    make_app()  # opens the store again: already current
    assert db.call(lambda: db.execute(
        "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()) == (
            str(migrations.SCHEMA_VERSION),)
    assert db.call(lambda: db.database.table_exists("ingest_key"))
    assert db.call(lambda: db.execute(
        "SELECT count(*) FROM entry WHERE duration_ms IS NOT NULL").fetchone()) == (5,)


def make_version_5():
    """Turn this store back into what version 5 wrote: duration indexes;
    on SQLite, a full-text index with positions and b-trees of trace ids
    and client addresses."""
    rollup.count_all()  # as the store of that version counted
    for index in latency_indexes():
        db.execute(f"DROP INDEX {index}")
    db.execute("CREATE INDEX entry_duration_ms ON entry (duration_ms) "
               "WHERE duration_ms IS NOT NULL")
    if not db.is_postgres():
        for column in ("level", "service_name", "status", "method"):
            db.execute(f"DROP INDEX entry_{column}")
            db.execute(f"CREATE INDEX entry_{column}_id ON entry ({column}, id)")
        db.execute("DROP TABLE entry_keys")
        db.execute("CREATE INDEX entry_trace_id ON entry (trace_id)")
        db.execute("CREATE INDEX entry_client_ip_id ON entry (client_ip, id)")
        db.execute("DROP TABLE entry_fts")
        db.execute("CREATE VIRTUAL TABLE entry_fts USING fts5(doc, content='', "
                   "tokenize='unicode61 remove_diacritics 0')")
        fulltext.rebuild()
    make_old("5")


def test_a_version_5_store_gets_the_indexes_of_version_6(make_app):
    app = make_app()
    store = Store(app.test_client())
    store.ingest([make_entry(i, responseBody=f"order {i} shipped to warehouse {i % 4}",
                             durationMs=(i * 37) % 50 + 0.5) for i in range(40)])
    questions = ['"warehouse 3"', '"shipped order"', "order -warehouse", "items/7*",
                 '"order 12" OR "to warehouse 1"']
    before = [store.page(LOGS, q=q, limit=100) for q in questions]
    slowest = store.page(LOGS, order="slowest", projectId="proj_1", limit=5)
    assert [e["durationMs"] for e in slowest["entries"]] == sorted(
        ((i * 37) % 50 + 0.5 for i in range(40) if i % 3 == 1), reverse=True)[:5]
    assert [len(page["entries"]) for page in before] == [10, 0, 0, 1, 11]
    db.call(make_version_5)
    app.extensions["logsvc"].store.close()

    store = Store(make_app().test_client())
    assert [store.page(LOGS, q=q, limit=100) for q in questions] == before
    assert store.page(LOGS, order="slowest", projectId="proj_1", limit=5) == slowest
    if not db.is_postgres():
        (sql,) = db.call(lambda: db.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'entry_fts'").fetchone())
        assert "detail=none" in sql
        indexes = {name for (name,) in db.call(lambda: db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index'").fetchall())}
        assert {"entry_trace_id", "entry_client_ip_id", "entry_duration_ms",
                "entry_level_id", "entry_method_id"}.isdisjoint(indexes)
        assert {"entry_level", "entry_method", *latency_indexes()} <= indexes
    assert [e["id"] for e in store.page(LOGS, traceId="trace-3")["entries"]] == [7, 8]
    assert [e["id"] for e in store.page(LOGS, clientIp="10.0.0.3", limit=3)["entries"]] == [
        4, 11, 18]
    # Entries stored after the upgrade are found with those before.
    store.ingest([make_entry(99, responseBody="shipped to warehouse 3")])
    assert store.page(LOGS, q='"warehouse 3"')["total"] == 11


def make_version_8():
    """What version 8 wrote: no id bounds per minute, no five-minute route
    counters, a tenant index without the level."""
    rollup.count_all()  # as the store of that version counted
    db.execute("DROP TABLE rollup_route_five_minutes_all")
    db.execute("DROP INDEX entry_project_id_id_container_id_level")
    db.execute("CREATE INDEX entry_project_id_id_container_id ON entry "
               "(project_id, id, container_id)")
    for column in ("id_min", "id_max"):
        db.execute(f"ALTER TABLE rollup_minute_all DROP COLUMN {column}")
    make_old("8")


# A route's counters count calls: every entry but requests (rollup.summarize).
CALLS = f"kind NOT IN ('request', '{names.LETTERS['kind']['request']}')"


def test_a_version_8_store_gains_id_bounds_and_five_minute_routes(make_app):
    app = make_app()
    store = Store(app.test_client())
    # A day of entries, every fifth arriving 3 h late (its id among later ones).
    entries = [make_entry(i, tsMs=BASE + i * 97_000 - (3 * HOUR if i % 5 == 0 else 0),
                          durationMs=i % 40 + 1) for i in range(900)]
    for at in range(0, 600, 200):
        store.ingest(entries[at:at + 200])
    questions = [(STATS, {"since": BASE + 2 * HOUR + 17, "until": BASE + 9 * HOUR - 70_001}),
                 (STATS, {"since": BASE + 5 * HOUR + 1, "level": "error"}),
                 (LOGS, {"since": BASE + 3 * HOUR, "until": BASE + 4 * HOUR, "limit": 500,
                         "order": "desc"}),
                 (LOGS, {"since": BASE + HOUR, "until": BASE + 2 * HOUR, "status": "5xx",
                         "limit": 500}),
                 (LOGS, {"projectId": "proj_1", "level": "error", "order": "desc"})]
    before = [store.page(path, **params) for path, params in questions]
    assert before[0]["byRoute"] and before[2]["total"] > 0
    db.call(make_version_8)
    app.extensions["logsvc"].store.close()

    store = Store(make_app().test_client())
    assert [store.page(path, **params) for path, params in questions] == before
    assert before[-1]["total"] > 0
    indexes = db.call(lambda: {name for (name,) in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index'" if not db.is_postgres() else
        "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()").fetchall()})
    assert "entry_project_id_id_container_id_level" in indexes
    assert "entry_project_id_id_container_id" not in indexes
    store.ingest(entries[600:])

    def exact():
        return db.call(lambda: (
            db.execute("SELECT minute, id_min, id_max FROM rollup_minute_all "
                       "ORDER BY 1").fetchall(),
            db.execute("SELECT ts_ms / 60000, min(id), max(id) FROM entry GROUP BY 1 "
                       "ORDER BY 1").fetchall(),
            db.execute("SELECT five_minutes, route, n, coalesce(errors, 0) FROM "
                       "rollup_route_five_minutes_all ORDER BY 1, 2").fetchall(),
            db.execute("SELECT ts_ms / 300000, route, count(*), sum(CASE WHEN level IN "
                       "('error', 'e') THEN 1 ELSE 0 END) FROM entry "
                       f"WHERE route IS NOT NULL AND {CALLS} GROUP BY 1, 2 "
                       "ORDER BY 1, 2").fetchall(),
            db.execute("SELECT five_minutes, lat FROM rollup_route_five_minutes_all "
                       "ORDER BY 1").fetchall(),
            db.execute(f"SELECT ts_ms / 300000, lat_bucket, count(*) FROM entry WHERE {CALLS} "
                       "GROUP BY 1, 2").fetchall()))
    bounds, wanted_bounds, routes, wanted_routes, sketches, buckets = exact()
    assert bounds == wanted_bounds
    assert any(high - low > 100 for _, low, high in bounds)  # a late entry's minute
    assert routes == wanted_routes and len(routes) > 200
    want = {}
    for five, bucket, n in buckets:
        want.setdefault(five, {})[bucket] = n
    assert {five: rollup.sketch.loads(lat) for five, lat in sketches} == want
    # The upgraded store answers over old and new entries alike.
    assert store.page(STATS, since=BASE + 20 * HOUR)["total"] == sum(
        1 for e in entries if e["tsMs"] >= BASE + 20 * HOUR)


def make_version_7():
    """What version 7 wrote (SQLite): project, container, service, method
    and route names as text in the entries and the counters, and levels,
    kinds and sources as words."""
    rollup.count_all()  # as the store of that version counted
    make_version_8()
    if not db.is_postgres():
        numbered = dict(db.execute("SELECT code, name FROM stored_name").fetchall())
        for table, columns in names.CODED_COLUMNS.items():
            if not db.database.table_exists(table):  # added by a later version
                continue
            for column in columns:
                for code, name in numbered.items():
                    db.execute(f"UPDATE {table} SET {column} = ? WHERE {column} = ?",
                               (name, names.pack(code)))
        for column, letters in names.LETTERS.items():
            for word, letter in letters.items():
                db.execute(f"UPDATE entry SET {column} = ? WHERE {column} = ?", (word, letter))
        db.execute("DELETE FROM stored_name")
    make_old("7")


def test_a_version_7_store_numbers_its_names_and_keeps_its_counters(make_app):
    app = make_app()
    store = Store(app.test_client())
    entries = [make_entry(i, projectId=f"p{i % 3}", containerId=f"c{i % 2}" if i % 5 else None,
                          serviceName=f"svc-{i % 4}" if i % 7 else None,
                          tsMs=BASE + i * 60_000, durationMs=i % 30 + 1) for i in range(300)]
    store.ingest(entries[:200])
    db.call(make_version_7)
    app.extensions["logsvc"].store.close()
    if not db.is_postgres():  # made as version 7 left it
        assert db.call(lambda: db.execute(
            "SELECT count(*) FROM entry WHERE typeof(project_id) = 'text'").fetchone()) == (200,)

    store = Store(make_app().test_client())
    if not db.is_postgres():
        for table, columns in names.CODED_COLUMNS.items():
            for column in columns:  # every name is a number now ('' stays: "none")
                texts = f"SELECT count(*) FROM {table} WHERE typeof({column}) = 'text' " \
                        f"AND {column} <> ''"
                assert db.call(lambda sql=texts: db.execute(sql).fetchone()) == (0,), texts
        assert db.call(lambda: db.execute(
            "SELECT DISTINCT level FROM entry ORDER BY 1").fetchall()) == [
            (names.LETTERS["level"][level],) for level in sorted(
                {"info", "warn", "error"}, key=lambda w: names.LETTERS["level"][w])]
        # projects, containers, services, methods (make_entry's), one route
        assert db.call(lambda: db.execute("SELECT count(*) FROM stored_name").fetchone()) == (
            3 + 2 + 4 + 3 + 1,)
    store.ingest(entries[200:])
    # Rows from before and after the upgrade share their counters: one
    # all-time row per scope, summing both.
    if not db.is_postgres():
        (scopes,), = db.call(lambda: db.execute("SELECT count(*) FROM rollup_total").fetchall())
        assert scopes == len({(e["projectId"], e.get("containerId"), e.get("serviceName"))
                              for e in entries})
    stats = store.page(STATS)
    assert stats["total"] == 300
    assert stats["byProject"] == {"p0": 100, "p1": 100, "p2": 100}
    assert stats["byContainer"] == {
        c: sum(1 for i in range(300) if i % 5 and f"c{i % 2}" == c) for c in ("c0", "c1")}
    assert stats["byService"] == {
        s: sum(1 for i in range(300) if i % 7 and f"svc-{i % 4}" == s)
        for s in ("svc-0", "svc-1", "svc-2", "svc-3")}
    since = store.page(STATS, projectId="p1", containerId="c1", since=BASE + 90 * 60_000 + 17)
    assert since["total"] == sum(1 for i in range(91, 300) if i % 3 == 1 and i % 5 and i % 2)
    page = store.page(LOGS, projectId="p2", serviceName="svc-1,svc-3", order="asc", limit=500)
    want = [i for i in range(300) if i % 3 == 2 and i % 7 and i % 4 in (1, 3)]
    assert [e["tsMs"] for e in page["entries"]] == [BASE + i * 60_000 for i in want]
    assert {(e["projectId"], e["serviceName"]) for e in page["entries"]} == {
        ("p2", "svc-1"), ("p2", "svc-3")}
    assert page["total"] == len(want)
    assert store.page(LOGS, projectId="nobody")["total"] == 0
    errors = store.page(LOGS, level="error", kind="request,event", source="edge", limit=500)
    assert errors["total"] == len(errors["entries"]) > 0
    assert {(e["level"], e["kind"], e["source"]) for e in errors["entries"]} <= {
        ("error", "request", "edge"), ("error", "event", "edge")}
    assert errors["total"] == sum(
        1 for i, e in enumerate(entries) if i % 2 and i % 3 != 1 and
        (200, 201, 302, 404, 429, 500, 503, None)[i % 8] in (500, 503))
    posts = store.page(LOGS, method="POST", route="/v1/items/{id}", limit=500)["entries"]
    assert len(posts) == 100 and {(e["method"], e["route"]) for e in posts} == {
        ("POST", "/v1/items/{id}")}
    # A route counts calls: every entry but make_entry's requests (a third).
    assert [(r["route"], r["total"]) for r in stats["byRoute"]] == [("/v1/items/{id}", 200)]
    histogram = store.page(HISTOGRAM, projectId="p0", bucket="1h", since=BASE,
                           until=BASE + 5 * HOUR)
    assert [b["total"] for b in histogram["buckets"]] == [20] * 5


def make_version_6():
    """What version 6 wrote: dictionaries without a kind; on SQLite, trace
    ids and addresses as text, and names as text (version 7's); on
    PostgreSQL, its former sketch merge."""
    rollup.count_all()  # as the store of that version counted
    make_version_7()
    db.execute("ALTER TABLE body_dictionary DROP COLUMN kind")
    if db.is_postgres():
        db.execute("CREATE OR REPLACE FUNCTION logsvc_sketch_add(a text, b text) RETURNS text "
                   "LANGUAGE sql IMMUTABLE AS $$ SELECT coalesce(a, b) $$")
        for model in models.ROLLUP_MODELS:  # counts of 0 were zeros, never NULL
            table = model._meta.table_name
            if not db.database.table_exists(table):  # added by a later version
                continue
            for column in model._meta.sorted_field_names:
                if column in (*rollup.COUNT_COLUMNS, *rollup.ROUTE_COUNT_COLUMNS):
                    db.execute(f"UPDATE {table} SET {column} = coalesce({column}, 0)")
                    db.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET NOT NULL")
    else:
        rows = db.execute("SELECT id, trace_id, client_ip FROM entry").fetchall()
        db.executemany("UPDATE entry SET trace_id = ?, client_ip = ? WHERE id = ?", [
            (lookup.shown("trace_id", t), lookup.shown("client_ip", ip), i) for i, t, ip in rows])
    make_old("6")


def test_a_version_6_store_keeps_its_dictionary_and_finds_its_text_rows(make_app):
    app = make_app()
    store = Store(app.test_client())
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"

    def body(i):
        order = (f'{{"order": {{"id": {i}, "lines": [{{"sku": "SKU-{i % 7}", "quantity": {i % 3}}}]}}, '
                 f'"status": "{("paid", "open")[i % 2]}"}}')
        return f"[{order}, {order.replace('order', 'refund')}]"  # long enough to be compressed

    entries = [make_entry(i, traceId=trace if i % 2 else f"trace-{i}", clientIp="10.0.0.9",
                          responseBody=body(i), durationMs=i % 40 + 1)
               for i in range(bodies.TRAIN_SAMPLES + 10)]
    store.ingest(entries[:bodies.TRAIN_SAMPLES])
    store.ingest(entries[bodies.TRAIN_SAMPLES:])  # trained before this one
    (body_dict,), = db.call(lambda: db.execute("SELECT id FROM body_dictionary").fetchall())
    db.call(make_version_6)
    app.extensions["logsvc"].store.close()

    store = Store(make_app().test_client())
    assert db.call(lambda: db.execute("SELECT id, kind FROM body_dictionary").fetchall()) == [
        (body_dict, "body")]
    if db.is_postgres():
        (language,), = db.call(lambda: db.execute(
            "SELECT l.lanname FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang "
            "WHERE p.proname = 'logsvc_sketch_add' "
            "AND p.pronamespace = current_schema()::regnamespace").fetchall())
        assert language == "plpgsql"
    store.ingest([make_entry(i, traceId=trace, clientIp="10.0.0.9", responseBody=body(i),
                             durationMs=i % 40 + 1) for i in range(1000, 1010)])
    # Rows of either form are found, and show what was sent.
    page = store.page(LOGS, traceId=trace, limit=1000, includeResponseBody="true")
    assert page["total"] == (bodies.TRAIN_SAMPLES + 10) // 2 + 10
    assert sorted((e["traceId"], e["clientIp"], e["responseBody"]) for e in page["entries"]) == [
        (trace, "10.0.0.9", body(i)) for i in sorted([*range(1, bodies.TRAIN_SAMPLES + 10, 2),
                                                       *range(1000, 1010)], key=body)]
    assert store.page(LOGS, clientIp="10.0.0.9", limit=1)["total"] == bodies.TRAIN_SAMPLES + 20
    # New bodies still use the store's dictionary; the counters still add up.
    (last,), = db.call(lambda: db.execute(
        "SELECT response_body_z FROM entry_body ORDER BY entry_id DESC LIMIT 1").fetchall())
    assert zstandard.get_frame_parameters(bytes(last)).dict_id == body_dict
    stats = store.page(STATS)
    assert stats["latency"]["count"] == bodies.TRAIN_SAMPLES + 20
    assert stats["latency"]["max"] == 40
    # The counters (zeros before the upgrade, NULLs after on PostgreSQL)
    # still equal a GROUP BY over the entries.
    by_level, calls, errors = db.call(lambda: (
        {names.unlettered("level", level): n for level, n in db.execute(
            "SELECT level, count(*) FROM entry GROUP BY level").fetchall()},
        db.execute(f"SELECT count(*) FROM entry WHERE {CALLS}").fetchone()[0],
        db.execute("SELECT count(*) FROM entry WHERE level IN ('error', 'e') "
                   f"AND {CALLS}").fetchone()[0]))
    assert stats["total"] == bodies.TRAIN_SAMPLES + 20 and stats["byLevel"] == by_level
    assert [(r["route"], r["total"], r["errors"]) for r in stats["byRoute"]] == [
        ("/v1/items/{id}", calls, errors)]
    assert errors > 0
    if db.is_postgres():  # zeros written since are NULL; those before stay
        db.call(rollup.count_all)  # (a scope's minutes: counted in the background)
        nulls, zeros = db.call(lambda: db.execute(
            "SELECT count(*) FILTER (WHERE level_debug IS NULL), "
            "count(*) FILTER (WHERE level_debug = 0) FROM rollup_minute").fetchone())
        assert nulls > 0 and zeros > 0


# What version 9 made PostgreSQL merge sketches with: both walked pair by
# pair, the result written piece by piece.
_V9_SKETCH_ADD = """
CREATE OR REPLACE FUNCTION logsvc_sketch_add(a text, b text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
  x bigint[]; y bigint[]; i int := 1; j int := 1; nx int; ny int;
  k bigint; n bigint; out text := '';
BEGIN
  IF a IS NULL OR a = '' THEN RETURN nullif(b, ''); END IF;
  IF b IS NULL OR b = '' THEN RETURN a; END IF;
  x := string_to_array(btrim(a, '[] '), ',')::bigint[];
  y := string_to_array(btrim(b, '[] '), ',')::bigint[];
  nx := coalesce(array_length(x, 1), 0);
  ny := coalesce(array_length(y, 1), 0);
  WHILE i < nx OR j < ny LOOP
    IF j >= ny OR (i < nx AND x[i] < y[j]) THEN
      k := x[i]; n := x[i + 1]; i := i + 2;
    ELSIF i >= nx OR y[j] < x[i] THEN
      k := y[j]; n := y[j + 1]; j := j + 2;
    ELSE
      k := x[i]; n := x[i + 1] + y[j + 1]; i := i + 2; j := j + 2;
    END IF;
    IF n <> 0 THEN out := out || ',' || k || ',' || n; END IF;
  END LOOP;
  RETURN CASE WHEN out = '' THEN NULL ELSE '[' || substr(out, 2) || ']' END;
END
$$
"""


def test_a_version_9_store_on_postgresql_gets_the_faster_sketch_merge(make_app, engine):
    if engine != "postgresql":
        pytest.skip("SQLite merges sketches with the Python function it registers")
    app = make_app()
    store = Store(app.test_client())
    store.ingest([make_entry(i, durationMs=i % 40 + 1) for i in range(300)])
    before = store.page(STATS)

    def make_version_9():
        rollup.count_all()  # as the store of that version counted
        db.execute(_V9_SKETCH_ADD)
        make_old("9")

    def source():
        (text,) = db.execute("SELECT prosrc FROM pg_proc WHERE proname = 'logsvc_sketch_add' "
                             "AND pronamespace = current_schema()::regnamespace").fetchone()
        return text

    db.call(make_version_9)
    assert "pairs int" not in db.call(source)
    app.extensions["logsvc"].store.close()

    store = Store(make_app().test_client())
    assert db.call(source) in migrations._PG_SKETCH_ADD and "pairs int" in db.call(source)
    assert store.page(STATS) == before
    # The counters go on adding up with the new merge.
    store.ingest([make_entry(i, durationMs=i % 40 + 1) for i in range(300, 600)])
    latency = store.page(STATS)["latency"]
    assert latency["count"] == 600 and latency["max"] == 40


def test_a_version_10_store_counts_its_entries_by_level_and_status_class(make_app):
    app = make_app()
    store = Store(app.test_client())
    entries = [make_entry(i, tsMs=BASE + i * 97_000, durationMs=(i * 7) % 300 + 1,
                          level=("info", "warn", "error")[i % 7 % 3]) for i in range(400)]
    store.ingest(entries[:300])
    questions = [{"level": "error"}, {"status": "5xx", "projectId": "proj_1"},
                 {"level": "warn,error", "since": BASE + 2 * HOUR + 17,
                  "until": BASE + 6 * HOUR - 70_001}]
    before = [store.page(STATS, **params) for params in questions]
    assert all(answer["total"] > 0 for answer in before)

    def make_version_10():
        rollup.count_all()  # as the store of that version counted
        for table in rollup.CLASS_TABLES:
            db.execute(f"DROP TABLE {table}")
        make_old("10")

    db.call(make_version_10)
    app.extensions["logsvc"].store.close()

    store = Store(make_app().test_client())
    # The same answers, now from the counters by class, which equal a count
    # of the entries.
    assert [store.page(STATS, **params) for params in questions] == before
    store.ingest(entries[300:])

    def by_class():
        db.call(rollup.count_all)
        return db.call(lambda: (
            db.execute("SELECT level, status_class, CAST(SUM(n) AS BIGINT) "
                       "FROM rollup_class_total GROUP BY 1, 2 ORDER BY 1, 2").fetchall(),
            db.execute("SELECT level, CASE WHEN status BETWEEN 100 AND 599 THEN status / 100 "
                       "ELSE 0 END, count(*) FROM entry GROUP BY 1, 2 ORDER BY 1, 2").fetchall()))
    counted, wanted = by_class()
    assert counted == wanted and len(counted) > 3
    errors = store.page(LOGS, level="error", limit=5000)["entries"]
    stats = store.page(STATS, level="error")
    assert stats["total"] == len(errors) > 0
    assert stats["latency"]["max"] == max(e["durationMs"] for e in errors)


def test_a_version_11_store_gives_its_indexed_entries_their_projects_and_containers(make_app):
    app = make_app()
    store = Store(app.test_client())
    entries = [make_entry(i, projectId=f"proj_{i % 3}", containerId=f"cnt_{i % 5}",
                          responseBody=f"order {i} shipped") for i in range(300)]
    store.ingest(entries[:200])

    def make_version_11():
        rollup.count_all()  # as the store of that version counted
        if not db.is_postgres():  # the index of version 11: documents alone
            fulltext.clear_sqlite()
            fulltext.rebuild()
        make_old("11")

    db.call(make_version_11)
    app.extensions["logsvc"].store.close()

    app = make_app()
    store = Store(app.test_client())
    store.ingest(entries[200:])

    def found(**params):
        page = store.page(**params, limit=5000)
        assert page["totalExact"] and page["total"] == len(page["entries"])
        return [e["id"] for e in page["entries"]]

    def wanted(project, container=None, low=0):
        return [i + 1 for i in range(low, 300) if f"proj_{i % 3}" == project
                and container in (None, f"cnt_{i % 5}")]

    assert found(q="shipped", projectId="proj_1") == wanted("proj_1")
    assert found(q="order", projectId="proj_2", containerId="cnt_4") == wanted("proj_2", "cnt_4")
    assert found(q="shipped", projectId="nobody") == []
    if not db.is_postgres():
        # The index alone holds each entry's project and container.
        scope = db.call(lambda: fulltext.scope_of(
            Filters(project_id="proj_1", container_id="cnt_2")))
        assert db.call(lambda: fulltext.indexed("shipped", cap=1000, scope=scope)) == len(
            wanted("proj_1", "cnt_2"))
    # Deleting entries takes their scope words out too.
    retention.prune(app.extensions["logsvc"].config.replace(max_rows=120), batch=50)
    assert found(q="shipped", projectId="proj_1") == wanted("proj_1", low=180)
    if not db.is_postgres():
        db.call(lambda: db.execute(
            "INSERT INTO entry_fts (entry_fts, rank) VALUES ('integrity-check', 0)"))
        assert db.call(lambda: fulltext.indexed("shipped", cap=1000, scope=scope)) == len(
            wanted("proj_1", "cnt_2", low=180))


def test_a_version_16_store_counts_its_entries_per_container_and_per_service(make_app):
    app = make_app()
    store = Store(app.test_client())
    entries = [make_entry(i, tsMs=BASE + i * 97_000, containerId=f"gw_{i % 4}",
                          serviceName=("a", "b", "c")[i % 3], level=("info", "error")[i % 5 % 2],
                          durationMs=i % 50 + 1) for i in range(400)]
    store.ingest(entries[:300])
    questions = [{}, {"since": BASE + HOUR + 17, "until": BASE + 6 * HOUR - 70_001},
                 {"level": "error"}, {"status": "2xx", "since": BASE + 2 * HOUR}]
    before = [store.page(STATS, **params) for params in questions]
    assert all(len(answer["byService"]) == 3 for answer in before)
    tables = [table for tiers in (*(t for t, _ in rollup.KEY_TIERS.values()),
                                  *rollup.CLASS_KEY_TIERS.values())
              for table in tiers.values() if table != "rollup_minute"]
    assert len(tables) == 9

    def make_version_16():
        rollup.count_all()  # as the store of that version counted
        for table in tables:
            db.execute(f"DROP TABLE {table}")
        make_old("16")

    db.call(make_version_16)
    app.extensions["logsvc"].store.close()

    store = Store(make_app().test_client())
    # The same answers, now from the counters per container and service.
    assert [store.page(STATS, **params) for params in questions] == before
    store.ingest(entries[300:])

    def counted():
        return db.call(lambda: (
            db.execute("SELECT service_name, n FROM rollup_service_total_all "
                       "ORDER BY 1").fetchall(),
            db.execute("SELECT service_name, count(*) FROM entry GROUP BY 1 ORDER BY 1")
            .fetchall()))
    mine, wanted = counted()
    assert mine == wanted and sum(n for _, n in mine) == 400
    assert store.page(STATS)["byContainer"] == {f"gw_{i}": 100 for i in range(4)}


@pytest.mark.postgres_only("the processes that open a new PostgreSQL store take turns through a lock")
def test_processes_that_waited_while_the_store_was_created_leave_it_as_made(tmp_path):
    """Several processes open a new store at once, beside processes
    creating the stores of other schemas (the lock is the database's): all
    find no store, then take turns. The first creates it; those after it
    must find it made and change nothing. (They once redid its DDL, taking
    locks on `entry` and then asking for `id_sequence`'s row: a deadlock
    with the first ingest, which creates a partition of `entry` while
    holding that row.)"""
    import os
    import subprocess
    import sys
    import time

    import psycopg2

    from logsvc.testing import ROOT

    url = os.environ["LOGSVC_DATABASE_URL"]
    schema = url.rsplit("search_path%3D", 1)[1]
    others = [f"{schema}_other{n}" for n in range(2)]
    holder = psycopg2.connect(url)
    holder.autocommit = True
    cursor = holder.cursor()
    for other in others:
        cursor.execute(f"CREATE SCHEMA {other}")

    def opening(name):
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOGSVC_")}
        env["LOGSVC_DATABASE_URL"] = url.replace(f"search_path%3D{schema}",
                                                 f"search_path%3D{name}")
        env["LOGSVC_DATA_DIR"] = str(tmp_path / name)
        return subprocess.Popen([sys.executable, "-m", "logsvc", "migrate"], cwd=ROOT,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    def waiting():
        cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                       "AND NOT granted AND objid = %s", (migrations._SCHEMA_LOCK,))
        return cursor.fetchone()[0]

    cursor.execute(f"SELECT pg_advisory_lock({migrations._SCHEMA_LOCK})")
    processes = []
    try:
        for name in (schema, *others, schema, schema):
            processes.append(opening(name))
            deadline = time.monotonic() + 60
            while waiting() < len(processes):  # in line, having found no store
                assert time.monotonic() < deadline, "the process did not wait for the lock"
                time.sleep(0.05)
    finally:
        cursor.execute(f"SELECT pg_advisory_unlock({migrations._SCHEMA_LOCK})")
    try:
        for process in processes:
            _, err = process.communicate(timeout=60)
            assert process.returncode == 0, err
        # What the first made in its one transaction (the function merging
        # sketches, the partition size) is as it made it: those after it
        # replaced nothing.
        cursor.execute("SELECT xmin::text FROM pg_proc WHERE proname = 'logsvc_sketch_add' "
                       "AND pronamespace = current_schema()::regnamespace")
        (function_made_by,) = cursor.fetchone()
        cursor.execute("SELECT xmin::text FROM meta WHERE key = 'partition_rows'")
        assert cursor.fetchone() == (function_made_by,)
        cursor.execute("SELECT value FROM meta WHERE key = 'schema_version'")
        assert cursor.fetchone() == (str(migrations.SCHEMA_VERSION),)
    finally:
        for other in others:
            cursor.execute(f"DROP SCHEMA {other} CASCADE")
        holder.close()
