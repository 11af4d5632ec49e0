"""Durations and routes: the fields, their filters, `order=slowest`, and
percentiles from the counters measured against exact ones."""
import math
import random

import pytest

from logsvc.entry import derive_route
from logsvc.store import db, retention, sketch
from logsvc.testing import make_entry

LOGS = "/api/proxy-logs/_logs"
STATS = LOGS + "/stats"
HISTOGRAM = STATS + "/histogram"
BASE = 1_800_000_000_000  # a whole hour
HOUR = 3_600_000


@pytest.mark.parametrize("url, route", [
    ("/v1/users/8812", "/v1/users/{id}"),
    ("/v1/users/8812/orders?page=2#top", "/v1/users/{id}/orders"),
    ("/v1/files/550e8400-e29b-41d4-a716-446655440000", "/v1/files/{id}"),
    ("/blobs/9f86d081884c7d659a2feaa0c55ad015", "/blobs/{id}"),
    ("/v1/orders/ord_9fKq2xLm3Np7Qw", "/v1/orders/{id}"),
    ("https://api.example.com/v2/teams/12/members", "/v2/teams/{id}/members"),
    ("/v1/me", "/v1/me"), ("/2fa/setup", "/2fa/setup"), ("/", "/"),
    ("/health-check-endpoint", "/health-check-endpoint"),
])
def test_the_route_rule(url, route):
    assert derive_route(url) == route


def test_duration_and_route_are_fields_of_an_entry(store):
    store.ingest([
        make_entry(0, durationMs=12.5),
        make_entry(1, data={"durationMs": 40, "userAgent": "curl"}),  # lifted from data
        make_entry(2, data={"durationMs": "slow"}),  # not a number: stays in data
        make_entry(3, route="/v1/items/:id", durationMs=0),  # its own route is kept
        make_entry(4, url=None),
    ])
    entries = store.page()["entries"]
    assert [(e["durationMs"], e["route"]) for e in entries] == [
        (12.5, "/v1/items/{id}"), (40, "/v1/items/{id}"), (None, "/v1/items/{id}"),
        (0, "/v1/items/:id"), (None, None)]
    assert entries[1]["data"] == {"userAgent": "curl"}
    assert entries[2]["data"] == {"durationMs": "slow"}


@pytest.mark.parametrize("value", [-1, 86_400_001, "12", True, float("inf")])
def test_a_bad_duration_is_rejected_naming_it(store, value):
    entry = make_entry(0, durationMs=value)
    body = ('[{"durationMs": 1e999}]' if value == float("inf") else None)
    response = store.client.post("/api/proxy-logs/_ingest", headers=store.headers,
                                 json=None if body else [entry], data=body,
                                 content_type="application/json")
    rejected = response.json["rejected"] if response.status_code == 200 else None
    if rejected is not None:
        assert rejected[0]["errors"].keys() == {"durationMs"}
    else:  # 1e999 is not JSON orjson takes: the request is refused whole
        assert response.status_code == 400
    assert store.page()["total"] == 0


def test_duration_and_route_filters(store):
    store.ingest([make_entry(i, url=f"/v1/{'users' if i % 2 else 'teams'}/{i}",
                             durationMs=None if i == 0 else i * 10.0) for i in range(12)])
    ids = lambda **params: [e["id"] for e in store.page(**params)["entries"]]
    assert ids(minDurationMs=50, maxDurationMs="80.5") == [6, 7, 8, 9]
    assert ids(route="/v1/users/{id}", minDurationMs=70) == [8, 10, 12]
    assert ids(route="/v1/users/{id},/v1/teams/{id}", maxDurationMs=20) == [2, 3]
    assert store.page(minDurationMs=0)["total"] == 11


@pytest.mark.parametrize("params, name", [
    ({"minDurationMs": "abc"}, "minDurationMs"), ({"maxDurationMs": "-3"}, "maxDurationMs"),
    ({"maxDurationMs": "1e3"}, "maxDurationMs"), ({"minDurationMs": "99999999"}, "minDurationMs"),
    ({"minDurationMs": "5", "maxDurationMs": "4"}, "minDurationMs"),
    ({"order": "fastest"}, "order"), ({"order": "slowest", "afterId": "3"}, "order"),
    ({"route": ""}, "route"),
])
def test_bad_latency_parameters_are_400_naming_them(store, params, name):
    response = store.get(LOGS, **params)
    assert response.status_code == 400 and name in response.json["message"]


def test_slowest_lists_longest_first_with_stable_pages(store):
    durations = [None, 5, 50, 5, 700, 50, 0.25, None, 50, 9000]
    store.ingest([make_entry(i, durationMs=d) for i, d in enumerate(durations)])
    pages = [store.page(order="slowest", limit=3, offset=offset) for offset in (0, 3, 6)]
    listed = [(e["durationMs"], e["id"]) for page in pages for e in page["entries"]]
    assert listed == [(9000, 10), (700, 5), (50, 9), (50, 6), (50, 3), (5, 4), (5, 2),
                      (0.25, 7)]
    assert pages[0]["total"] == 8
    assert [e["id"] for e in store.page(order="slowest", level="error")["entries"]] == [6, 7]


def lognormal(rng, n):
    return [round(math.exp(rng.gauss(3.5, 1.2)), 3) for _ in range(n)]


def bimodal(rng, n):  # a cache: fast hits, slow misses
    return [round(rng.uniform(0.2, 2.0), 3) if rng.random() < 0.8 else
            round(rng.uniform(800, 2500), 1) for _ in range(n)]


def exact(values, p):
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def assert_near(got, values):
    for p in (50, 90, 95, 99):
        want = exact(values, p)
        assert abs(got[f"p{p}"] - want) <= 0.01 * want + 0.0015, (p, got, want)
    assert got["max"] == max(values) and got["count"] == len(values)


@pytest.mark.parametrize("shape", [lognormal, bimodal])
def test_percentiles_are_within_one_percent_also_after_retention(app, store, shape):
    rng = random.Random(shape.__name__)
    values = shape(rng, 3000)
    store.ingest([make_entry(i, tsMs=BASE + i * 1000, durationMs=d, url=f"/v1/{'abc'[i % 3]}/x",
                             projectId="p", containerId="c", status=200, kind="response")
                  for i, d in enumerate(values)])
    assert_near(store.page(STATS)["latency"], values)
    assert_near(store.page(STATS, projectId="p", since=BASE + 1_234_567)["latency"],
                values[1235:])
    routes = {r["route"]: r for r in store.page(STATS, projectId="p")["byRoute"]}
    for k in range(3):
        mine = values[k::3]
        route = routes[f"/v1/{'abc'[k]}/x"]
        assert route["total"] == len(mine)
        for p in (50, 95, 99):
            assert abs(route[f"p{p}"] - exact(mine, p)) <= 0.01 * exact(mine, p) + 0.0015
    # Retention removes the oldest 1,700 (and with them, perhaps, the longest).
    config = app.extensions["logsvc"].config.replace(max_rows=1300)
    retention.prune(config)
    kept = values[1700:]
    assert_near(store.page(STATS)["latency"], kept)
    assert_near(store.page(STATS, projectId="p", containerId="c")["latency"], kept)
    hour = store.page(HISTOGRAM, bucket="1h", since=BASE, until=BASE + 3_600_000)["buckets"][0]
    for p in (50, 95):
        assert abs(hour[f"p{p}"] - exact(kept[:1900], p)) <= 0.01 * exact(kept[:1900], p)


def test_the_engine_merges_sketches_as_python_does(app):
    """The upsert's merge (SQLite: sketch.merge_stored; PostgreSQL: its own
    function) adds bucket by bucket and drops buckets that cancel out."""
    rng = random.Random(7)
    cases = [("[1,1]", "[1,-1]"), (None, "[2,2]"), ("[2,2]", None), (None, None),
             ("[0,4]", "[0,1,1271,9]")]
    for _ in range(200):
        a = {rng.randrange(0, 60): rng.randint(1, 9) for _ in range(rng.randrange(0, 8))}
        b = {k: -n for k, n in a.items() if rng.random() < 0.5}
        b.update({rng.randrange(0, 60): rng.randint(1, 9) for _ in range(rng.randrange(0, 8))})
        cases.append((sketch.dumps(a), sketch.dumps({k: n for k, n in b.items() if n})))
    with app.app_context():
        got = db.call(lambda: [db.database.execute_sql(
            "SELECT logsvc_sketch_add(%s, %s)" if db.is_postgres() else
            "SELECT logsvc_sketch_add(?, ?)", case).fetchone()[0] for case in cases])
    assert got == [sketch.merge_stored(a, b) for a, b in cases]
    assert got[0] is None and got[1] == got[2] == "[2,2]"


def test_route_table_counts_calls_and_errors(store):
    # As the capture middleware sends them: a call is a request entry and its
    # response, which carries the status and the duration; a proxy's failed
    # call is one error event.
    entries = []
    for i in range(8):
        entries.append(make_entry(i, kind="request", url=f"/v1/users/{i}", status=None,
                                  durationMs=None, level="info"))
        entries.append(make_entry(i, kind="response", url=f"/v1/users/{i}",
                                  status=(200, 503)[i % 4 == 0], durationMs=i))
    entries.append(make_entry(8, kind="request", url="/v1/teams/1", status=None,
                              durationMs=None, level="info"))
    entries.append(make_entry(8, kind="event", url="/v1/teams/1", status=None,
                              durationMs=None, level="error"))
    store.ingest(entries)
    for params in ({}, {"serviceName": "user-api,billing-api,webhook-svc"}):  # counters, entries
        by_route = store.page(STATS, **params)["byRoute"]
        assert [(r["route"], r["total"], r["errors"], r["timed"], r["errorRate"])
                for r in by_route] == [("/v1/users/{id}", 8, 2, 8, 0.25),
                                       ("/v1/teams/{id}", 1, 1, 0, 1.0)]  # not 50 %
        assert by_route[1]["p95"] is None
    assert store.page(STATS)["latency"]["count"] == 8
    # Asked for, request entries are counted.
    requests = store.page(STATS, kind="request")["byRoute"]
    assert [(r["route"], r["total"]) for r in requests] == [("/v1/users/{id}", 8),
                                                            ("/v1/teams/{id}", 1)]

@pytest.mark.parametrize("params", [
    {},  # every scope's counters
    {"projectId": "p"},  # a project's
    {"projectId": "p", "since": str(BASE + 30_000)},  # minutes counted from the entries
    {"level": "info"},  # the counters by class
    {"serviceName": "user-api,billing-api,webhook-svc"},  # counted from the entries
])
def test_percentiles_stay_within_the_exact_shortest_and_longest_call(store, params):
    # A call that took 38.5 ms lies in a bucket whose middle is 38.611: a
    # route of one call shows 38.5 at every percentile, and no percentile
    # of a route or of the whole falls outside its calls' exact extremes.
    calls = {"/v1/one": [38.5], "/v1/two": [100.0, 100.9],
             "/v1/many": [round(3 + 0.37 * i, 3) for i in range(40)]}
    entries, i = [], 0
    for url, durations in calls.items():
        for duration in durations:
            entries.append(make_entry(i, tsMs=BASE + 60_000 + i * 1000, url=url,
                                      projectId="p", durationMs=duration, kind="response",
                                      status=200, level="info"))
            i += 1
    store.ingest(entries)
    found = store.page(STATS, **params)
    routes = {r["route"]: r for r in found["byRoute"]}
    assert [routes["/v1/one"][f"p{p}"] for p in (50, 95, 99)] == [38.5, 38.5, 38.5]
    for url, durations in calls.items():
        for p in (50, 95, 99):
            assert min(durations) <= routes[url][f"p{p}"] <= max(durations), (url, p)
    everything = [d for durations in calls.values() for d in durations]
    for p in (50, 90, 95, 99):
        assert min(everything) <= found["latency"][f"p{p}"] <= max(everything), p
    # Sorted by a percentile, the shown rows are in the order of their values.
    by_p95 = store.page(STATS, sort="p95", **params)["byRoute"]
    assert [r["route"] for r in by_p95] == ["/v1/two", "/v1/one", "/v1/many"]


def test_with_many_timed_entries_the_extremes_come_through_the_latency_index(store):
    # Past stats.SCANNED_EXTREMES timed entries, a route's extremes are
    # read through the latency bucket index rather than by a scan.
    from logsvc.store.stats import SCANNED_EXTREMES

    rng = random.Random(3)
    busy = [round(rng.uniform(1, 400), 3) for _ in range(SCANNED_EXTREMES + 500)]
    entries = [make_entry(i, tsMs=BASE + i * 10, url="/v1/busy", durationMs=d,
                          kind="response", status=200) for i, d in enumerate(busy)]
    for at, (url, duration) in enumerate([("/v1/one", 38.5), ("/v1/two", 100.5),
                                          ("/v1/two", 100.6)]):
        entries.append(make_entry(len(entries), tsMs=BASE + at, url=url, durationMs=duration,
                                  kind="response", status=200))
    for start in range(0, len(entries), 5000):
        store.ingest(entries[start:start + 5000])
    for params in ({}, {"since": str(BASE - 1)}, {"sort": "p95"}):
        routes = {r["route"]: r for r in store.page(STATS, **params)["byRoute"]}
        assert [routes["/v1/one"][f"p{p}"] for p in (50, 95, 99)] == [38.5] * 3, params
        assert all(100.5 <= routes["/v1/two"][f"p{p}"] <= 100.6 for p in (50, 95, 99))
        assert min(busy) <= routes["/v1/busy"]["p50"] <= routes["/v1/busy"]["p99"] <= max(busy)


def test_the_shortest_call_bounds_a_percentile_from_the_counters(store):
    # Three calls in one latency bucket (98.91 to 100.89 ms share it): the
    # bucket's middle is below the shortest, so every percentile is that
    # shortest.
    store.ingest([make_entry(i, tsMs=BASE + i * 1000, url="/v1/x", durationMs=d,
                             kind="response", status=200)
                  for i, d in enumerate([100.5, 100.6, 100.7])])
    assert sketch.bucket_of(100.5) == sketch.bucket_of(100.7)
    assert sketch.value_of(sketch.bucket_of(100.5)) < 100.5
    latency = store.page(STATS)["latency"]
    route = store.page(STATS)["byRoute"][0]
    assert latency["p50"] == route["p50"] == 100.5
    assert latency["p99"] == route["p99"] == 100.5


def test_slowest_pages_count_their_entries_exactly_from_the_counters(store, app):
    from logsvc.store.query import COUNT_CAP

    # More timed entries than a page's count is capped at, one in nine
    # without a duration, over four hours and two tenants.
    n = COUNT_CAP + 2_000
    entries = [make_entry(i, projectId=f"p{i % 2}", tsMs=BASE + i * 1_300,
                          durationMs=None if i % 9 == 0 else i % 500 + 1) for i in range(n)]
    for at in range(0, n, 4_000):
        store.ingest(entries[at:at + 4_000])

    def timed(project=None, since=None, until=None):
        return sum(1 for e in entries if e["durationMs"] is not None
                   and (project is None or e["projectId"] == project)
                   and (since is None or e["tsMs"] >= since)
                   and (until is None or e["tsMs"] < until))

    for params in ({}, {"projectId": "p1"}, {"since": BASE + 1_234_567},
                   {"projectId": "p0", "since": BASE + HOUR + 17, "until": BASE + 3 * HOUR - 5}):
        page = store.page(order="slowest", limit=5, **params)
        assert (page["total"], page["totalExact"]) == (
            timed(params.get("projectId"), params.get("since"), params.get("until")), True)
    assert timed() > COUNT_CAP
    # Retention subtracts what it removes: still exact.
    retention.prune(app.extensions["logsvc"].config.replace(max_rows=5_000, retention_days=0))
    left = store.page(LOGS, limit=1, order="asc")["entries"][0]["id"]
    entries = entries[left - 1:]
    page = store.page(order="slowest", limit=5, projectId="p1")
    assert (page["total"], page["totalExact"]) == (timed("p1"), True)


def test_postgresql_stages_counter_rows_in_tables_that_stay_empty(app, store, engine):
    """PostgreSQL writes the counter rows of a tier that a batch adds many
    rows to (more than rollup.INLINE_ROWS) through a temporary table of the
    tier's shape, and those of the other tiers with their values in the
    statement; no vacuum visits a temporary table, so it is emptied to
    nothing after each batch, not left holding dead rows. Both ways count
    the same."""
    if engine != "postgresql":
        pytest.skip("SQLite writes the counter rows straight into their tiers")
    from logsvc.store import rollup

    many = rollup.INLINE_ROWS + 100
    # Each entry in a minute of its own, 80 containers: the batch adds an
    # entry's row to the minutes of every scope (staged), a row or a few to
    # the tiers of all time (in the statement). (A scope's tiers are
    # counted in the background, rollup.count_pending, the same way.)
    store.ingest([make_entry(i, durationMs=i % 40 + 1, url=f"/v1/users/{i}",
                             containerId=f"cnt_{i % 80}", tsMs=1_800_000_000_000 + i * 60_000)
                  for i in range(many)])
    store.ingest([make_entry(i, containerId=f"cnt_{i % 80}", tsMs=1_800_000_000_000 + i * 60_000)
                  for i in range(many, many + 100)])
    # this connection's own temporary tables: other tests running beside
    # this one stage their counters in tables of the same names
    sizes = db.call(lambda: db.execute(
        "SELECT relname, pg_relation_size(oid) FROM pg_class "
        "WHERE relname LIKE 'rollup_%_staged' AND relnamespace = pg_my_temp_schema()").fetchall())
    staged = {name for name, _ in sizes}
    assert "rollup_minute_all_staged" in staged
    assert "rollup_total_all_staged" not in staged
    assert all(size == 0 for _, size in sizes), sizes
    stats = store.page(STATS)
    total = many + 100
    assert stats["total"] == total
    assert sum(stats["byContainer"].values()) == total and len(stats["byContainer"]) == 80
    assert sum(stats["byLevel"].values()) == sum(stats["byKind"].values()) == total
    # The minutes staged: each minute of the first batch holds its entry.
    histogram = store.page(HISTOGRAM, bucket="1m", since=1_800_000_000_000,
                           until=1_800_000_000_000 + 300 * 60_000)
    assert [bucket["total"] for bucket in histogram["buckets"]] == [1] * 300
