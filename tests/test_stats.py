"""Stats and histogram: served from counters that always equal a GROUP BY."""
import math
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logsvc.entry import status_class
from logsvc.server import create_app
from logsvc.store import db, horizon, retention, rollup
from logsvc.store.names import LETTERS
from logsvc.testing import ADMIN_TOKEN, Store, make_entry

STATS = "/api/proxy-logs/_logs/stats"
HISTOGRAM = STATS + "/histogram"
BASE = 1_800_000_000_000  # a whole hour
HOUR = 3_600_000


def truth(project_id=None, container_id=None, since=None, until=None, levels=None,
          statuses=None):
    """The stats computed by brute force over every stored row; `latency`
    and `byRoute` hold exact values (see assert_stats). `levels`, `statuses`:
    the levels and status classes (`5xx`) to keep (None: all)."""
    rows = db.call(lambda: list(db.database.execute_sql(
        "SELECT project_id, container_id, service_name, level, kind, status, source, ts_ms, "
        "duration_ms, route FROM entry")))
    # SQLite stores names as the big-endian bytes of their number in stored_name.
    numbered = dict(db.call(lambda: list(db.database.execute_sql(
        "SELECT code, name FROM stored_name"))))
    def name(value):
        return numbered[int.from_bytes(value, "big")] if isinstance(value, bytes) else value
    # ... and levels, kinds and sources as letters.
    words = {column: {letter: word for word, letter in letters.items()}
             for column, letters in LETTERS.items()} if not db.is_postgres() else {}
    def word(column, value):
        return words[column][value] if words else value
    rows = [(name(p), name(c), name(s), word("level", level), word("kind", kind), status,
             word("source", source), *rest, name(route))
            for p, c, s, level, kind, status, source, *rest, route in rows]
    counts = {name: Counter() for name in
              ("byProject", "byContainer", "byService", "byLevel", "byKind", "byStatus",
               "bySource")}
    total = 0
    durations = []
    routes = {}
    for (project, container, service, level, kind, status, source, ts, duration,
         route) in rows:
        if project_id is not None and project != project_id:
            continue
        if container_id is not None and container != container_id:
            continue
        if (since is not None and ts < since) or (until is not None and ts >= until):
            continue
        if levels is not None and level not in levels:
            continue
        if statuses is not None and status_class(status) not in statuses:
            continue
        total += 1
        for name, value in (("byProject", project), ("byContainer", container),
                            ("byService", service), ("byLevel", level), ("byKind", kind),
                            ("byStatus", status_class(status)), ("bySource", source)):
            if value:
                counts[name][value] += 1
        if duration is not None:
            durations.append(duration)
        if route is not None and kind != "request":  # a route counts calls
            calls = routes.setdefault(route, [0, 0, []])
            calls[0] += 1
            calls[1] += level == "error"
            if duration is not None:
                calls[2].append(duration)
    latency = {"count": len(durations), "max": max(durations) if durations else None,
               **{f"p{p}": exact_percentile(durations, p) for p in (50, 90, 95, 99)}}
    by_route = [{"route": route, "total": n, "errors": errors, "timed": len(timed),
                 **{f"p{p}": exact_percentile(timed, p) for p in (50, 95, 99)}}
                for route, (n, errors, timed) in
                sorted(routes.items(), key=lambda item: (-item[1][0], item[0]))][:20]
    return {"total": total, **{k: dict(v) for k, v in counts.items()},
            "latency": latency, "byRoute": by_route}


def exact_percentile(values, p):
    """Nearest rank: the ceil(p/100 * n)-th smallest."""
    if not values:
        return None
    return sorted(values)[max(1, math.ceil(p / 100 * len(values))) - 1]


def near(got, exact):
    """Within the counters' 1 % (and the answer's rounding to a microsecond)."""
    if exact is None:
        return got is None
    return got is not None and abs(got - exact) <= 0.01 * exact + 0.0015


def assert_stats(got, want):
    """Counts, calls, errors and max exactly; percentiles within 1 %."""
    got, want = dict(got), dict(want)
    got_latency, want_latency = got.pop("latency"), want.pop("latency")
    got_routes, want_routes = got.pop("byRoute"), want.pop("byRoute")
    assert got == want
    assert got_latency["count"] == want_latency["count"]
    assert got_latency["max"] == want_latency["max"]
    for p in (50, 90, 95, 99):
        assert near(got_latency[f"p{p}"], want_latency[f"p{p}"]), (p, got_latency, want_latency)
    assert [{k: r[k] for k in ("route", "total", "errors", "timed")} for r in got_routes] == [
        {k: r[k] for k in ("route", "total", "errors", "timed")} for r in want_routes]
    for mine, exact in zip(got_routes, want_routes):
        for p in (50, 95, 99):
            assert near(mine[f"p{p}"], exact[f"p{p}"]), (p, mine, exact)


durations = st.one_of(st.none(), st.integers(0, 3), st.floats(0, 86_400_000),
                      st.floats(0.5, 2000).map(lambda d: round(d, 1)))
entries = st.lists(st.builds(
    lambda i, ts, status, level, container, duration, url, service: make_entry(
        i, tsMs=BASE + ts, status=status, level=level, containerId=container,
        durationMs=duration, url=url, serviceName=service),
    st.integers(0, 50), st.one_of(st.integers(0, 10 * 60_000), st.integers(0, 4 * HOUR)),
    st.sampled_from([None, 200, 404, 503]),
    st.sampled_from(["debug", "info", "warn", "error"]),
    st.sampled_from([None, "cnt_a", "cnt_b"]), durations,
    st.sampled_from([None, "/v1/a/1", "/v1/a/22?x=1", "/v1/b", "/v2/c/9/d"]),
    # Several services behind one container (a gateway's), or none.
    st.sampled_from([None, "user-api", "billing-api", "webhook-svc"])),
    min_size=1, max_size=40)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batches=st.lists(entries, min_size=1, max_size=3), max_rows=st.integers(0, 60),
       window=st.tuples(st.integers(-1000, 11 * 60_000) | st.integers(-HOUR, 4 * HOUR),
                        st.integers(1, 11 * 60_000) | st.integers(1, 5 * HOUR)),
       bucket=st.sampled_from(["1m", "5m", "1h", "3h"]),
       scope=st.sampled_from([(None, None), ("proj_1", None), ("proj_2", "cnt_a")]),
       # A level or a status class: the counters by class (rollup.classed).
       classes=st.sampled_from([{}, {"level": "error"}, {"level": "warn,error"},
                                {"status": "5xx"}, {"status": "400-599", "level": "info"}]))
def test_stats_always_equal_a_full_group_by(tmp_path_factory, batches, max_rows, window, scope,
                                            bucket, classes):
    app = create_app({"data_dir": tmp_path_factory.mktemp("s"), "admin_token": ADMIN_TOKEN,
                      "retention_days": 0})
    store = Store(app.test_client())
    for batch in batches:
        store.ingest(batch)
    config = app.extensions["logsvc"].config.replace(max_rows=max_rows)
    retention.prune(config)
    project_id, container_id = scope
    params = {k: v for k, v in (("projectId", project_id), ("containerId", container_id)) if v}
    params.update(classes)
    kept = {"levels": classes["level"].split(",") if "level" in classes else None,
            "statuses": ["5xx"] if classes.get("status") == "5xx" else
                        ["4xx", "5xx"] if "status" in classes else None}
    assert_stats(store.page(STATS, **params), truth(project_id, container_id, **kept))
    since, length = BASE + window[0], window[1]
    ranged = store.page(STATS, since=since, until=since + length, **params)
    assert_stats(ranged, truth(project_id, container_id, since, since + length, **kept))
    histogram = store.page(HISTOGRAM, bucket=bucket, since=since, until=since + length, **params)
    for item in histogram["buckets"]:
        expected = truth(project_id, container_id, item["tsMs"], item["tsMs"] + histogram["bucketMs"],
                         **kept)
        assert (item["total"], item["byLevel"]) == (expected["total"], expected["byLevel"])
        for p in (50, 95):
            assert near(item[f"p{p}"], expected["latency"][f"p{p}"]), (item, expected)
    app.extensions["logsvc"].store.close()


@settings(max_examples=300, deadline=None)
@given(low=st.integers(0, 6 * HOUR), length=st.integers(1, 5 * HOUR),
       horizon=st.none() | st.integers(0, 8 * HOUR), open_end=st.booleans())
def test_signed_spans_count_every_moment_of_the_range_once(low, length, horizon, open_end):
    """Added and subtracted spans together cover [low, high) exactly once
    and nothing outside it, whichever plan is cheapest."""
    low += BASE
    high = rollup._WHOLE if open_end else low + length
    spans = rollup.signed_spans(low, high, None if horizon is None else BASE + horizon)

    def bounds(unit, start, end):
        return (start, end) if unit is None else (start * unit, end * unit)

    moments = {low - 1, low, low + 1, high - 1, high, high + 1}
    for unit, start, end, _ in spans:
        a, b = bounds(unit, start, end)
        moments |= {a - 1, a, b - 1, b}
    for t in moments:
        covered = sum(sign for unit, start, end, sign in spans
                      if bounds(unit, start, end)[0] <= t < bounds(unit, start, end)[1])
        assert covered == (1 if low <= t < high else 0), (t, spans)


def test_stats_take_an_hour_and_subtract_what_lies_outside_the_range(store):
    """since at minute 10 reads the hour and takes its first 10 minutes
    away (50 minutes would be added the other way round): still exact."""
    store.ingest([make_entry(i, tsMs=BASE + i * 97_003,
                             durationMs=i % 40) for i in range(200)])
    since, until = BASE + 10 * 60_000 + 123, BASE + 3 * HOUR + 10 * 60_000 + 7
    # Beside the edges: in the part of a minute subtracted, and just inside.
    store.ingest([make_entry(i, tsMs=ts, level="error") for i, ts in enumerate(
        (since - 100, since - 1, since, since + 50, until - 1, until, until + 3))])
    assert any(sign < 0 for *_, sign in rollup.signed_spans(since, until))
    for scope in ({}, {"projectId": "proj_1"}, {"projectId": "proj_1", "containerId": "cnt_2"}):
        got = store.page(STATS, since=since, until=until, **scope)
        assert got["total"] > 0
        assert_stats(got, truth(scope.get("projectId"), scope.get("containerId"), since, until))
        page = store.page(since=since, until=until, level="error", limit=1, **scope)
        assert page["totalExact"] and page["total"] == got["byLevel"].get("error", 0)


def test_stats_without_a_scope_count_each_container_and_service_exactly(make_app):
    """Gateway containers in front of several services: what a question
    without a scope says per project, container and service (read from the
    counters per container and per service) equals a count of the entries,
    over any range, by level or status class, and after retention."""
    app = make_app(retention_days=0)
    store = Store(app.test_client())
    services = ("user-api", "billing-api", "webhook-svc", "search", None)
    store.ingest([make_entry(i, tsMs=BASE + i * 61_789 % (5 * HOUR), projectId=f"proj_{i % 3}",
                             containerId=f"gw_{i % 4}", serviceName=services[i * 7 % 5],
                             level=("info", "warn", "error")[i % 7 % 3],
                             status=(200, 404, 503, None)[i % 11 % 4]) for i in range(600)])
    windows = [(None, None), (BASE, BASE + 3 * HOUR), (BASE + 17, BASE + 4 * HOUR - 70_001),
               (BASE + HOUR + 1_000, BASE + 5 * HOUR + 1), (BASE - HOUR, None),
               (None, BASE + 2 * HOUR + 59_999)]
    classes = [({}, {}), ({"level": "error"}, {"levels": ["error"]}),
               ({"status": "5xx"}, {"statuses": ["5xx"]})]
    keys = ("total", "byProject", "byContainer", "byService", "byLevel", "byStatus")

    def check():
        checked = 0
        for since, until in windows:
            for params, kept in classes:
                ranged = {k: v for k, v in (("since", since), ("until", until)) if v is not None}
                got, want = store.page(STATS, **ranged, **params), truth(None, None, since, until,
                                                                         **kept)
                assert {k: got[k] for k in keys} == {k: want[k] for k in keys}, (ranged, params)
                checked += len(got["byService"]) > 2 and len(got["byContainer"]) > 2
        assert checked > 10

    check()
    config = app.extensions["logsvc"].config
    assert retention.prune(config.replace(max_rows=450)) == 150
    check()
    assert retention.prune(config.replace(max_rows=200)) == 250
    check()


def test_a_large_batch_summed_in_columns_is_counted_exactly(make_app):
    """A batch of COLUMNAR_ROWS entries or more is summed per tier with
    numpy, not by the loop that sums smaller ones: every
    breakdown, latency, route and minute it adds equals a count of the
    entries, and so after retention takes some away (a subtraction, by the
    loop) and small batches add more."""
    app = make_app(retention_days=0)
    store = Store(app.test_client())
    services = ("user-api", "billing-api", None, "search")
    containers = ("gw_0", "gw_1", None)
    urls = ("/v1/a/1", "/v1/b/22?x=1", None, "/v2/c/9/d")

    def entry(i):
        return make_entry(i, tsMs=BASE + i * 7_919 % (3 * HOUR), projectId=f"proj_{i % 3}",
                          containerId=containers[i % 3], serviceName=services[i * 7 % 4],
                          url=urls[i * 3 % 4], level=("info", "warn", "error", "debug")[i % 7 % 4],
                          status=(200, 404, 503, None, 302)[i % 11 % 5],
                          durationMs=(None, 0, 12.5, 3, 850.25, 40_000)[i % 13 % 6])

    batch = [entry(i) for i in range(rollup.COLUMNAR_ROWS + 500)]
    store.ingest(batch)
    windows = [(None, None), (BASE, BASE + HOUR), (BASE + 17, BASE + 2 * HOUR - 70_001),
               (BASE + HOUR + 1_000, None)]
    scopes = [(None, None), ("proj_1", None), ("proj_2", "gw_1")]

    def check():
        for since, until in windows:
            for project_id, container_id in scopes:
                for params, kept in (({}, {}), ({"level": "error"}, {"levels": ["error"]}),
                                     ({"status": "5xx"}, {"statuses": ["5xx"]})):
                    query = {k: v for k, v in (("since", since), ("until", until),
                                               ("projectId", project_id),
                                               ("containerId", container_id)) if v is not None}
                    assert_stats(store.page(STATS, **query, **params),
                                 truth(project_id, container_id, since, until, **kept))
        histogram = store.page(HISTOGRAM, bucket="1m", since=BASE, until=BASE + 30 * 60_000)
        for item in histogram["buckets"]:
            expected = truth(None, None, item["tsMs"], item["tsMs"] + 60_000)
            assert (item["total"], item["byLevel"]) == (expected["total"], expected["byLevel"])

    check()
    assert store.page(STATS)["total"] == len(batch)
    # The minute counters of each scope kept from an hour in (horizon.py):
    # a large batch's minutes below that floor are left out of them.
    with db.using(app.extensions["logsvc"].store):
        horizon.trim(1, now=BASE + 2 * HOUR)
        assert db.call(horizon.floor_ms) == BASE + HOUR
    more = [entry(i) for i in range(len(batch), 2 * len(batch))]
    store.ingest(more)
    check()
    assert store.page(STATS)["total"] == 2 * len(batch)
    assert retention.prune(app.extensions["logsvc"].config.replace(max_rows=1_000)) == \
        2 * len(batch) - 1_000
    check()
    store.ingest([entry(i) for i in range(2 * len(batch), 2 * len(batch) + 40)])
    check()


def test_names_with_quotes_percent_signs_and_backslashes_are_counted_exactly(store):
    """The counters of a batch's few rows go to PostgreSQL with their values
    written in the statement (rollup.INLINE_ROWS): a name with a quote, a
    percent sign, a backslash or a question mark is counted as sent."""
    services = ("o'brien-api", "50%-svc", "back\\slash", "what?svc", "naïve-svc")
    urls = ("/v1/it's/1", "/v1/100%25/2", "/v1/a%5Cb/3", "/v1/q?x=%s", "/v1/ünï/5")
    store.ingest([make_entry(i, serviceName=services[i % 5], url=urls[i % 5],
                             projectId="proj_0", containerId="cnt_0") for i in range(50)])
    stats = store.page(STATS)
    assert stats["byService"] == {name: 10 for name in services}
    assert sum(row["total"] for row in stats["byRoute"]) == sum(
        stats["byKind"][kind] for kind in ("response", "event"))
    scoped = store.page(STATS, projectId="proj_0", containerId="cnt_0")
    assert scoped["byService"] == stats["byService"]
    routes = {row["route"] for row in scoped["byRoute"]}
    assert routes == {row["route"] for row in stats["byRoute"]}
    assert any("'" in route for route in routes) and any("%" in route for route in routes)


def test_stats_has_every_breakdown(store):
    store.ingest([make_entry(i) for i in range(8)])
    stats = store.page(STATS)
    assert stats["total"] == 8
    assert stats["byStatus"] == {"2xx": 2, "3xx": 1, "4xx": 2, "5xx": 2}
    assert stats["byKind"] == {"request": 3, "response": 3, "event": 2}
    assert stats["bySource"] == {"backend": 4, "edge": 4}
    assert stats["byLevel"] == {"info": 4, "warn": 2, "error": 2}


def test_histogram_counts_per_bucket_and_level(store):
    store.ingest([make_entry(0, tsMs=BASE + 1000, status=503),
                  make_entry(1, tsMs=BASE + 2000, status=200),
                  make_entry(2, tsMs=BASE + 6 * 60_000, status=200)])
    result = store.page(HISTOGRAM, bucket="5m", since=BASE, until=BASE + 10 * 60_000)
    assert result["bucketMs"] == 300_000
    assert [(b["tsMs"], b["total"], b["byLevel"]) for b in result["buckets"]] == [
        (BASE, 2, {"error": 1, "info": 1}), (BASE + 300_000, 1, {"info": 1})]


@pytest.mark.parametrize("params, name", [
    ({"bucket": "7m"}, "bucket"), ({"since": "x"}, "since"),
    ({"since": str(BASE), "until": str(BASE - 1)}, "since"),
    ({"bucket": "1m", "since": "0", "until": str(BASE)}, "bucket"),
    ({"projectId": ""}, "projectId"), ({"nope": "1"}, "nope"),
])
def test_histogram_bad_parameters_are_400(store, params, name):
    response = store.get(HISTOGRAM, **params)
    assert response.status_code == 400 and name in response.json["message"]


@pytest.mark.parametrize("params", [{"since": "soon"}, {"containerId": "x" * 300},
                                    {"limit": "5"}, {"level": "fatal"}])
def test_stats_bad_parameters_are_400(store, params):
    assert store.get(STATS, **params).status_code == 400


def test_stats_cost_does_not_read_the_entry_table(store):
    store.ingest([make_entry(i) for i in range(20)])
    db.call(rollup.count_all)  # the background's part of the counters, done now
    db.call(lambda: db.database.execute_sql("DELETE FROM entry"))  # counters untouched
    assert store.page(STATS)["total"] == 20



@pytest.mark.parametrize("params", [{"level": "error"}, {"level": "info,warn"},
                                    {"status": "5xx"}, {"status": "400-599", "level": "warn"},
                                    {"level": "error", "projectId": "proj_1"}])
def test_stats_of_a_level_or_a_status_class_are_read_from_the_counters(store, params):
    store.ingest([make_entry(i, level=("info", "warn", "error")[i % 4 % 3]) for i in range(60)])
    before = store.page(STATS, **params)
    assert before["total"] > 0
    db.call(rollup.count_all)  # the background's part of the counters, done now
    db.call(lambda: db.database.execute_sql("DELETE FROM entry"))  # counters untouched
    after = store.page(STATS, **params)
    assert {k: after[k] for k in ("total", "byProject", "byLevel", "byStatus", "byKind")} == {
        k: before[k] for k in ("total", "byProject", "byLevel", "byStatus", "byKind")}


def summary_of(entries, requests=False):
    """What /stats should say about exactly these entries (API shape); a
    route counts calls, and request entries only when they are asked for
    (`requests`)."""
    counts = {name: Counter() for name in
              ("byProject", "byContainer", "byService", "byLevel", "byKind", "byStatus",
               "bySource")}
    durations, routes = [], {}
    for e in entries:
        for name, value in (("byProject", e["projectId"]), ("byContainer", e["containerId"]),
                            ("byService", e["serviceName"]), ("byLevel", e["level"]),
                            ("byKind", e["kind"]), ("byStatus", status_class(e["status"])),
                            ("bySource", e["source"])):
            if value:
                counts[name][value] += 1
        if e["durationMs"] is not None:
            durations.append(e["durationMs"])
        if e["route"] is not None and (requests or e["kind"] != "request"):
            calls = routes.setdefault(e["route"], [0, 0, []])
            calls[0] += 1
            calls[1] += e["level"] == "error"
            if e["durationMs"] is not None:
                calls[2].append(e["durationMs"])
    return {"total": len(entries), **{k: dict(v) for k, v in counts.items()},
            "latency": {"count": len(durations), "max": max(durations, default=None),
                        **{f"p{p}": exact_percentile(durations, p) for p in (50, 90, 95, 99)}},
            "byRoute": [{"route": r, "total": n, "errors": errors, "timed": len(timed),
                         **{f"p{p}": exact_percentile(timed, p) for p in (50, 95, 99)}}
                        for r, (n, errors, timed) in
                        sorted(routes.items(), key=lambda item: (-item[1][0], item[0]))][:20]}


@pytest.mark.parametrize("filters", [
    {"serviceName": "billing-api"}, {"level": "error,warn", "projectId": "proj_1"},
    {"route": "/v1/items/{id}"}, {"minDurationMs": "40", "maxDurationMs": "300"},
    {"q": "items"}, {"status": "5xx", "kind": "response"}, {"method": "GET", "since": str(BASE)},
    {"clientIp": "10.0.0.3", "containerId": "cnt_2"}, {"kind": "request"},
])
def test_stats_and_histogram_follow_every_filter(store, filters):
    store.ingest([make_entry(i, tsMs=BASE - 600_000 + i * 20_000, durationMs=(i * 29) % 500,
                             url=(f"/v1/items/{i}", f"/v2/teams/{i}/x", None)[i % 3])
                  for i in range(90)])
    matching = store.page(limit=5000, **filters)["entries"]
    assert 0 < len(matching) < 90
    requests = "request" in filters.get("kind", "")  # asked for: routes count them
    assert_stats(store.page(STATS, **filters), summary_of(matching, requests))
    filters.pop("since", None)
    matching = store.page(limit=5000, **filters)["entries"]
    histogram = store.page(HISTOGRAM, bucket="5m", since=BASE - 600_000, until=BASE + 1_800_000,
                           **filters)
    for item in histogram["buckets"]:
        inside = [e for e in matching if item["tsMs"] <= e["tsMs"] < item["tsMs"] + 300_000]
        assert item["total"] == len(inside)
        expected = summary_of(inside)["latency"]
        assert near(item["p95"], expected["p95"]) and near(item["p50"], expected["p50"])


@pytest.mark.parametrize("sort, expected", [
    ("total", ["/busy/{id}", "/failing/{id}", "/slow/{id}"]),
    ("p95", ["/slow/{id}", "/busy/{id}", "/failing/{id}"]),
    ("errorRate", ["/failing/{id}", "/busy/{id}", "/slow/{id}"]),
    ("errors", ["/failing/{id}", "/busy/{id}", "/slow/{id}"]),
    ("route", ["/busy/{id}", "/failing/{id}", "/slow/{id}"]),
])
def test_the_route_table_is_ranked_by_the_column_asked_for(store, sort, expected):
    made = make_entry
    entries = ([made(i, url=f"/busy/{i}", durationMs=10, status=200 if i % 10 else 500,
                     level="info" if i % 10 else "error") for i in range(30)]
               + [made(i, url=f"/slow/{i}", durationMs=900, status=200, level="info")
                  for i in range(5)]
               + [made(i, url=f"/failing/{i}", durationMs=None, status=503, level="error")
                  for i in range(8)])
    store.ingest(entries)
    rows = store.page(STATS, sort=sort, topRoutes=3)["byRoute"]
    assert [row["route"] for row in rows] == expected
    busy = next(row for row in rows if row["route"] == "/busy/{id}")
    assert busy["errorRate"] == 0.1


def test_an_unknown_route_sort_is_a_400_naming_it(store):
    response = store.get(STATS, sort="fastest")
    assert response.status_code == 400 and "'sort'" in response.json["message"]


def test_a_scopes_counters_are_counted_in_the_background_and_answer_the_same_before(make_app):
    # An ingest adds its entries to the tiers of every scope (`*_all`)
    # only; the tiers of each scope are counted in the background
    # (rollup.count_pending), and until then their readers add the entries
    # not yet counted from `entry` (rollup.source): every answer is the
    # same before, while part of them is counted, and after.
    app = make_app(rate_limit_per_min=0)
    store = Store(app.test_client())
    entries = [make_entry(i, tsMs=BASE + i * 37_000 + i % 7, durationMs=(i * 7) % 300 + 0.5,
                          level=("info", "warn", "error")[i * 5 % 7 % 3],
                          url=f"/v1/{('users', 'orders')[i % 2]}/{i}")
               for i in range(600)]
    store.ingest(entries[:400])
    store.ingest(entries[400:])
    span = {"since": str(BASE + 1_234_567), "until": str(BASE + 5 * HOUR + 89_999)}
    questions = [
        (STATS, {}), (STATS, {"projectId": "proj_1"}),
        (STATS, {"projectId": "proj_2", "containerId": "cnt_3"}),
        (STATS, {"projectId": "proj_0", **span}), (STATS, {"level": "error"}),
        (STATS, {"level": "error", "projectId": "proj_2"}),
        (STATS, {"status": "5xx", "projectId": "proj_0", **span}),
        (STATS, {"level": "warn,error", "projectId": "proj_1", "containerId": "cnt_1"}),
        (HISTOGRAM, {"bucket": "5m", "projectId": "proj_1", **span}),
        (HISTOGRAM, {"bucket": "1h", "level": "error", "projectId": "proj_0", **span}),
        ("/api/proxy-logs/_logs", {"projectId": "proj_2", "level": "error", "limit": "0"}),
        ("/api/proxy-logs/_logs", {"serviceName": "billing-api", "limit": "0", **span}),
        ("/api/proxy-logs/_logs", {"projectId": "proj_1", "minDurationMs": "0", "limit": "0"}),
    ]

    def answers():
        return [store.page(path, **params) for path, params in questions]

    def rows(table):
        return db.call(lambda: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    with db.using(app.extensions["logsvc"].store):
        assert db.call(rollup.counted_through) == 0
        assert rows("rollup_hour") == rows("rollup_class_total") == rows("rollup_route_hour") == 0
        assert rows("rollup_hour_all") > 0  # every scope's, by the ingest
        pending = answers()
        assert db.call(rollup.count_pending, None, 250) == 250
        partly = answers()
        db.call(rollup.count_all)
        assert db.call(rollup.counted_through) == 600
        counted = answers()
        assert rows("rollup_hour") > 0
        assert db.call(rollup.count_pending) == 0  # nothing left
    assert pending[0]["total"] == 600 and pending[1]["total"] == 200
    for (path, params), one, two, three in zip(questions, pending, partly, counted):
        assert one == two == three, (path, params)
    assert_stats(counted[1], truth(project_id="proj_1"))


def test_entries_removed_before_they_are_counted_leave_the_counters_exact(make_app):
    # Retention counts what it removes first: nothing is subtracted from a
    # scope's counters that they did not hold.
    app = make_app(rate_limit_per_min=0)
    store = Store(app.test_client())
    store.ingest([make_entry(i, durationMs=i % 50 + 1) for i in range(300)])
    handle = app.extensions["logsvc"].store
    with db.using(handle):
        assert db.call(rollup.count_pending, None, 100) == 100
        removed = retention.prune(app.extensions["logsvc"].config.replace(max_rows=120),
                                  batch=50)
        assert removed == 180
        assert db.call(rollup.counted_through) >= 180
        for project in ("proj_0", "proj_1", "proj_2"):
            assert_stats(store.page(STATS, projectId=project), truth(project_id=project))
        db.call(rollup.count_all)
        for project in ("proj_0", "proj_1", "proj_2"):
            assert_stats(store.page(STATS, projectId=project), truth(project_id=project))
        by_scope = dict(db.call(lambda: db.execute(
            "SELECT project_id || '/' || container_id || '/' || service_name, n "
            "FROM rollup_total").fetchall()))
        grouped = dict(db.call(lambda: db.execute(
            "SELECT project_id || '/' || coalesce(container_id, '') || '/' || "
            "coalesce(service_name, ''), count(*) FROM entry GROUP BY 1").fetchall()))
    assert by_scope == grouped and sum(grouped.values()) == 120
