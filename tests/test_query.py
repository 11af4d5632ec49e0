"""GET /api/proxy-logs/_logs: filters, paging modes, formats, bad input."""
import orjson
import pytest

from logsvc import entry as domain
from logsvc.store import db, query, retention, rollup
from logsvc.testing import LOGS, Store, make_entry
from schemas.entries import entries_schema

N = 60


@pytest.fixture
def filled(store):
    store.ingest([make_entry(i) for i in range(N)])
    return store


def ids(page):
    return [e["id"] for e in page["entries"]]


def expected_ids(predicate):
    return [i + 1 for i in range(N) if predicate(make_entry(i))]


# --- the reference's quirks, fixed ----------------------------------------------

def test_level_accepts_a_comma_separated_union(filled):
    page = filled.page(level="warn,error")
    assert ids(page) == expected_ids(lambda e: e["status"] in (404, 429, 500, 503))
    assert page["total"] == len(ids(page)) and page["totalExact"] is True


@pytest.mark.parametrize("params, predicate", [
    ({"level": "warn,error", "serviceName": "billing-api"},
     lambda e: e["status"] in (404, 429, 500, 503) and e["serviceName"] == "billing-api"),
    ({"status": "2xx,5xx", "serviceName": "user-api"},
     lambda e: e["status"] in (200, 201, 500, 503) and e["serviceName"] == "user-api"),
    ({"kind": "request,event"}, lambda e: e["kind"] != "response")])
def test_a_total_of_several_values_counts_each_where_a_counter_row_lacks_one(
        filled, params, predicate):
    # A page of one: the total is the counters' alone, not the page's length.
    # Most counter rows hold one level, class or kind of the two (PostgreSQL
    # keeps the other's count as NULL).
    wanted = len(expected_ids(predicate))
    for paging in ({"limit": 1}, {"last": 1}, {"limit": 1, "offset": 5, "order": "desc"}):
        page = filled.page(**params, **paging)
        assert (page["total"], page["totalExact"]) == (wanted, True), paging


def test_repeated_level_parameters_are_a_union_too(filled):
    assert filled.page(level=["warn", "error"])["total"] == filled.page(level="warn,error")["total"]


SINGLE_VALUES = {"projectId": ["proj_0", "proj_1"], "containerId": ["cnt_0", "cnt_1"],
                 "since": ["1h", "2h"]}


@pytest.mark.parametrize("path, name, values", [
    *((path, name, values) for path in (LOGS, LOGS + "/stats", LOGS + "/stats/histogram")
      for name, values in SINGLE_VALUES.items()),
    (LOGS, "traceId", ["a", "b"])])
def test_a_single_value_parameter_given_twice_is_a_400_naming_it(filled, path, name, values):
    # Not a search for a project called "proj_0,proj_1" that silently finds nothing.
    response = filled.get(path, **{name: values})
    assert response.status_code == 400
    assert response.json["message"] == (f"Invalid query parameter '{name}': "
                                         "Given 2 times; it takes one value.")
    assert filled.get(path, **{name: values[0]}).status_code == 200


def test_repeated_q_needs_every_term(filled):
    both = filled.page(q=["items", "7"])["total"]
    assert 0 < both == filled.page(q="items 7")["total"] < filled.page(q="items")["total"]


def test_service_name_is_honoured(filled):
    assert ids(filled.page(serviceName="billing-api")) == expected_ids(
        lambda e: e["serviceName"] == "billing-api")


@pytest.mark.parametrize("params", [{}, {"last": 5}, {"afterId": 3},
                                    {"last": 5, "includeRequestBody": "true"},
                                    {"afterId": 3, "includeResponseBody": "true"}])
def test_every_paging_mode_answers_the_same_shape_with_real_ids(filled, params):
    page = filled.page(**params)
    assert {"entries", "total", "totalExact", "limit", "offset"} <= set(page)
    assert all(e["id"] > 0 for e in page["entries"])


# --- paging -----------------------------------------------------------------------

def test_last_returns_the_newest_matching_entries_oldest_first(filled):
    page = filled.page(last=4, kind="event")
    want = expected_ids(lambda e: e["kind"] == "event")[-4:]
    assert ids(page) == want
    assert page["nextAfterId"] == want[-1]


def test_after_id_returns_larger_ids_ascending_and_the_next_cursor(filled):
    page = filled.page(afterId=10, limit=5)
    assert ids(page) == [11, 12, 13, 14, 15]
    assert page["nextAfterId"] == 15


def test_after_id_past_the_end_keeps_the_cursor_for_polling(filled):
    page = filled.page(afterId=N + 100)
    assert page["entries"] == [] and page["nextAfterId"] == N + 100


def test_an_after_id_sweep_sees_every_entry_exactly_once(filled):
    seen, cursor = [], 0
    while True:
        page = filled.page(afterId=cursor, limit=7, projectId="proj_1")
        if not page["entries"]:
            break
        seen += ids(page)
        cursor = page["nextAfterId"]
    assert seen == expected_ids(lambda e: e["projectId"] == "proj_1")


def test_an_offset_sweep_sees_every_entry_exactly_once(filled):
    seen, offset = [], 0
    while True:
        page = filled.page(limit=9, offset=offset, level="info,warn")
        if not page["entries"]:
            break
        seen += ids(page)
        offset += len(page["entries"])
    assert seen == expected_ids(lambda e: e["status"] not in (500, 503))


def test_order_desc_returns_newest_first(filled):
    assert ids(filled.page(order="desc", limit=3)) == [N, N - 1, N - 2]


def test_limit_zero_answers_only_the_total(filled):
    page = filled.page(limit=0, kind="request")
    assert page["entries"] == [] and page["total"] == N // 3


def test_a_capped_total_is_flagged_as_a_lower_bound(filled, monkeypatch):
    monkeypatch.setattr(query, "COUNT_CAP", 3)
    page = filled.page(limit=2, method="GET")  # method is not a counter dimension
    assert page["totalExact"] is False
    assert page["total"] == 2 + 3
    exact = filled.page(limit=2, method="GET", q="/v1/items/1*")
    assert exact["totalExact"] is True


def test_a_time_range_total_comes_from_the_counters_exactly(store, monkeypatch):
    """Beyond the count cap, a total with since/until is still exact: whole
    hours and minutes come from the counters, partial minutes from entries."""
    monkeypatch.setattr(query, "COUNT_CAP", 3)
    base = 1_800_000_000_000  # a whole hour
    store.ingest([make_entry(i, tsMs=base + i * 61_000 + i) for i in range(300)])
    since, until = base + 90_000, base + 4 * 3_600_000 + 30_000
    wanted = [i for i in range(300) if since <= base + i * 61_000 + i < until and i % 8 in (5, 6)]
    page = store.page(limit=1, level="error", since=since, until=until)
    assert (page["total"], page["totalExact"]) == (len(wanted), True)
    # Whole minutes only: the counters alone answer, even with no entry left
    # (once counted: the background's part of them done now).
    db.call(rollup.count_all)
    db.call(lambda: db.execute("DELETE FROM entry"))
    page = store.page(limit=0, since=base + 60_000, until=base + 2 * 3_600_000)
    assert (page["total"], page["totalExact"]) == (118, True)


# --- filters ---------------------------------------------------------------------

@pytest.mark.parametrize("params, predicate", [
    ({"projectId": "proj_2"}, lambda e: e["projectId"] == "proj_2"),
    ({"containerId": "cnt_3"}, lambda e: e["containerId"] == "cnt_3"),
    ({"projectId": "proj_1", "containerId": "cnt_1"},
     lambda e: (e["projectId"], e["containerId"]) == ("proj_1", "cnt_1")),
    ({"kind": "response"}, lambda e: e["kind"] == "response"),
    ({"kind": "request,event"}, lambda e: e["kind"] != "response"),
    ({"method": "post"}, lambda e: e["method"] == "POST"),
    ({"source": "edge"}, lambda e: e["source"] == "edge"),
    ({"traceId": "trace-7"}, lambda e: e["traceId"] == "trace-7"),
    ({"clientIp": "10.0.0.3"}, lambda e: e["clientIp"] == "10.0.0.3"),
    ({"status": "503"}, lambda e: e["status"] == 503),
    ({"status": "5xx"}, lambda e: e["status"] in (500, 503)),
    ({"status": "400-499"}, lambda e: e["status"] in (404, 429)),
    ({"status": "2xx,302"}, lambda e: e["status"] in (200, 201, 302)),
    ({"q": "ITEMS/1"}, lambda e: e["url"] == "/v1/items/1"),
    ({"q": "items/1*"}, lambda e: e["url"].startswith("/v1/items/1")),
    ({"q": '"n":7'}, lambda e: e["data"]["n"] == 7),  # data is searched too
    ({"q": "items/7 OR items/9"}, lambda e: e["url"] in ("/v1/items/7", "/v1/items/9")),
    ({"q": "items -items/1*"}, lambda e: not e["url"].startswith("/v1/items/1")),
    ({"q": "v1 NOT items/2*", "kind": "event"},
     lambda e: e["kind"] == "event" and not e["url"].startswith("/v1/items/2")),
    ({"since": 1_800_000_010_000}, lambda e: e["tsMs"] >= 1_800_000_010_000),
    ({"until": "2027-01-15T08:00:20Z"}, lambda e: e["tsMs"] < 1_800_000_020_000),
    ({"since": 1_800_000_010_000, "until": 1_800_000_020_000},
     lambda e: 1_800_000_010_000 <= e["tsMs"] < 1_800_000_020_000),
    ({"serviceName": "user-api,webhook-svc", "level": "error"},
     lambda e: e["serviceName"] != "billing-api" and e["status"] in (500, 503)),
])
def test_each_filter_selects_exactly_its_entries(filled, params, predicate):
    page = filled.page(**params)
    assert ids(page) == expected_ids(predicate)
    assert page["total"] == len(ids(page)) and page["totalExact"] is True


def test_since_accepts_a_duration_back_from_now(store):
    now = domain.now_ms()
    store.ingest([make_entry(0, tsMs=now - 3_600_000), make_entry(1, tsMs=now - 60_000)])
    assert ids(store.page(since="5m")) == [2]
    # As Loki and Prometheus write durations; `now` for an end.
    assert ids(store.page(since="1h30m")) == [1, 2] and ids(store.page(since="2m30s")) == [2]
    assert ids(store.page(since="1w", until="now")) == [1, 2]
    assert ids(store.page(since="1w", until="59m")) == [1]
    for wrong in ("1.5h", "-5m", "1h-30m", "h", "5 m"):
        response = store.get(since=wrong)
        assert response.status_code == 400 and "'since'" in response.json["message"], wrong


# --- formats ---------------------------------------------------------------------

def test_ndjson_format_is_one_entry_a_line_with_the_total_in_headers(filled):
    response = filled.get(format="ndjson", limit=3)
    assert response.mimetype == "application/x-ndjson"
    lines = response.data.decode().splitlines()
    assert [orjson.loads(line)["id"] for line in lines] == [1, 2, 3]
    assert response.headers["X-Total-Count"] == str(N)


def test_text_format_is_one_readable_line_per_entry(filled):
    response = filled.get(format="text", last=1)
    assert response.mimetype == "text/plain"
    line = response.data.decode()
    assert line.endswith("\n") and line.count("\n") == 1
    assert f"id={N}" in line and "/v1/items/59" in line and "WARN" in line


def test_the_fast_rendering_matches_the_entry_schema(filled):
    filled.ingest([make_entry(0, requestBody="a", responseBody=None)])
    page = filled.page(includeRequestBody="true", includeResponseBody="true", last=3)
    stored = page["entries"]
    assert entries_schema.dump(stored) == stored


# --- bad input -------------------------------------------------------------------

@pytest.mark.parametrize("params, name", [
    ({"limit": "-1"}, "limit"), ({"limit": "5001"}, "limit"), ({"limit": "ten"}, "limit"),
    ({"limit": "1.5"}, "limit"), ({"offset": "-3"}, "offset"), ({"last": "0"}, "last"),
    ({"last": "x"}, "last"), ({"afterId": "-1"}, "afterId"), ({"afterId": "1e3"}, "afterId"),
    ({"level": "fatal"}, "level"), ({"level": "warn,"}, "level"), ({"kind": "trace"}, "kind"),
    ({"source": "cdn"}, "source"), ({"order": "up"}, "order"), ({"format": "xml"}, "format"),
    ({"status": "600x"}, "status"), ({"status": "599-500"}, "status"),
    ({"since": "yesterday"}, "since"), ({"until": "2024-13-01"}, "until"),
    ({"since": "2000", "until": "1000"}, "since"), ({"includeRequestBody": "maybe"},
                                                    "includeRequestBody"),
    ({"projectId": ""}, "projectId"), ({"traceId": "x" * 200}, "traceId"),
    ({"levle": "error"}, "levle"), ({"last": "5", "afterId": "3"}, "last"),
    ({"last": "5", "offset": "3"}, "offset"), ({"afterId": "5", "order": "desc"}, "order"),
    ({"last": "5", "order": "asc"}, "order"),
    ({"q": "%"}, "q"), ({"q": '"unclosed'}, "q"), ({"q": "-only -negative"}, "q"),
    ({"q": "a OR -b"}, "q"), ({"q": " ".join("w" * 17)}, "q"), ({"q": "x" * 1025}, "q"),
])
def test_bad_parameters_are_a_400_naming_the_parameter(filled, params, name):
    response = filled.get(**params)
    assert response.status_code == 400
    assert set(response.json) == {"statusCode", "error", "message"}
    assert f"'{name}'" in response.json["message"]


def test_cursor_is_refused_while_fanout_is_disabled(filled):
    response = filled.get(cursor="start")
    assert response.status_code == 400
    assert "cursor" in response.json["message"]


def test_delete_on_logs_is_405_in_the_error_shape(client, admin):
    response = client.delete(LOGS, headers=admin)
    assert response.status_code == 405
    assert response.json == {"statusCode": 405, "error": "Method Not Allowed",
                             "message": "Method not allowed on this endpoint"}
    assert "GET" in response.headers["Allow"]


@pytest.mark.parametrize("path", ["/config", "/health", "/export", "/db/main", "/db/x/y"])
def test_reference_internal_paths_are_404(client, admin, path):
    response = client.get(LOGS + path, headers=admin)
    assert response.status_code == 404
    assert response.json["statusCode"] == 404


def test_trace_ids_that_share_their_last_characters_stay_apart(store):
    """SQLite's lookup index holds the ids' last letters and digits: ids
    alike there (or shorter than that, or with none) are still told apart
    whole."""
    tail = "0123456789abcdef"
    ids = [f"a{tail}", f"b{tail}", tail, "é" + tail[-11:], "x", f"a{tail}", "--", "-",
           tail.upper()]
    store.ingest([make_entry(i, traceId=trace) for i, trace in enumerate(ids)])
    for trace in set(ids):
        page = store.page(traceId=trace, order="desc")
        assert [e["id"] for e in page["entries"]] == [
            i + 1 for i in reversed(range(len(ids))) if ids[i] == trace]
        assert page["total"] == ids.count(trace)
    assert store.page(traceId=tail[-12:])["entries"] == []


def test_trace_ids_and_addresses_are_stored_compactly_and_shown_as_sent(store):
    traces = ["4bf92f3577b34da6a3ce929d0e0e4736", "4BF92F3577B34DA6A3CE929D0E0E4736", "abc",
              "00ff", "trace-1", "4bf92f3577b34da6a3ce929d0e0e4736"]
    addresses = ["10.0.0.1", "2001:db8::1", "2001:DB8::1", "fe80::1%eth0", "010.000.000.001",
                 "unix-socket"]
    store.ingest([make_entry(i, traceId=t, clientIp=ip)
                  for i, (t, ip) in enumerate(zip(traces, addresses))])
    shown = sorted(store.page(limit=10)["entries"], key=lambda e: e["id"])
    assert [(e["traceId"], e["clientIp"]) for e in shown] == list(zip(traces, addresses))
    if not db.is_postgres():
        rows = db.call(lambda: db.execute(
            "SELECT typeof(trace_id), typeof(client_ip) FROM entry ORDER BY id").fetchall())
        assert rows == [("blob", "blob"), ("text", "blob"), ("text", "text"), ("blob", "text"),
                        ("text", "text"), ("blob", "text")]
        # A row written before schema 7 holds both as text: found alike.
        db.call(lambda: db.execute("UPDATE entry SET trace_id = ?, client_ip = ? WHERE id = 1",
                                   (traces[0], addresses[0])))
    for value in set(traces):
        assert [e["id"] for e in store.page(traceId=value)["entries"]] == [
            i + 1 for i, t in enumerate(traces) if t == value], value
    for value in set(addresses):
        page = store.page(clientIp=value)["entries"]
        assert [(e["id"], e["clientIp"]) for e in page] == [
            (i + 1, value) for i, ip in enumerate(addresses) if ip == value], value


def test_client_addresses_are_found_exactly_and_leave_the_index_with_their_entries(
        make_app):
    app = make_app(max_rows=6, retention_days=0)
    store = Store(app.test_client())
    addresses = ["10.0.0.1", "10.0.0.10", "2001:db8::1", "2001:DB8::1", "::ffff:10.0.0.1",
                 "unix-socket", "10.0.0.1", "fe80::1%eth0", "010.000.000.001"]
    store.ingest([make_entry(i, clientIp=ip) for i, ip in enumerate(addresses)])
    for ip in set(addresses):
        page = store.page(clientIp=ip)
        assert [e["id"] for e in page["entries"]] == [
            i + 1 for i, other in enumerate(addresses) if other == ip], ip
    retention.prune(app.extensions["logsvc"].config)  # keeps the newest 6
    assert [e["id"] for e in store.page(clientIp="10.0.0.1")["entries"]] == [7]
    if not db.is_postgres():  # nothing of the removed entries stays indexed
        left = db.call(lambda: db.execute(
            "SELECT rowid FROM entry_keys WHERE entry_keys MATCH ? ORDER BY rowid",
            ('"i0a000001"',)).fetchall())
        assert left == [(7,)]


def test_around_gives_an_entrys_context_in_its_container(store):
    store.ingest([make_entry(i, containerId=f"cnt_{i % 2}", projectId="proj_1", tsMs=None)
                  for i in range(60)])
    page = store.page(around=31, containerId="cnt_0", limit=3)
    # Entry 31 is of cnt_0 (i = 30): three of its container's before, three after.
    assert [e["id"] for e in page["entries"]] == [25, 27, 29, 31, 33, 35, 37]
    assert page["aroundId"] == 31 and page["total"] == 30
    # An entry of another container is no part of the context asked for.
    assert [e["id"] for e in store.page(around=32, containerId="cnt_0",
                                        limit=2)["entries"]] == [29, 31, 33, 35]
    edge = store.page(around=1, limit=2, includeResponseBody="true")["entries"]
    assert [e["id"] for e in edge] == [1, 2, 3] and "responseBody" in edge[0]


@pytest.mark.parametrize("other", [{"last": "5"}, {"afterId": "3"}, {"offset": "2"},
                                   {"order": "desc"}])
def test_around_takes_no_other_paging(store, other):
    response = store.get(around=5, **other)
    assert response.status_code == 400 and "'around'" in response.json["message"]
