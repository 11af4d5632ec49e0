"""Grafana's Loki data source reads logsvc: the requests it sends for the
health check, Explore (both directions), the label browser, logs volume,
"show context", dashboard panels and the live tail, answered in Loki's
shapes; LogQL's selectors, line and label filters and metric queries; a
credential never sees another scope through any of them."""
import time

import orjson
import pytest

from logsvc.testing import ADMIN_TOKEN, INGEST, Store

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
T0 = 1_800_000_000_000  # a whole hour
NS = 1_000_000
API = "/loki/api/v1"


def corpus():
    """120 entries, one every 30 s over an hour: two projects, errors on
    /v1/pay, durations growing with i."""
    out = []
    for i in range(120):
        project = "shop" if i % 4 else "blog"
        failing = i % 5 == 0
        out.append({
            "kind": "response", "projectId": project, "containerId": f"web-{i % 2 + 1}",
            "serviceName": "checkout" if project == "shop" else "cms",
            "level": "error" if failing else ("warn" if i % 7 == 0 else "info"),
            "method": "POST" if failing else "GET",
            "url": f"/v1/pay/{i}" if failing else f"/v1/items/{i}",
            "status": 502 if failing else 200, "durationMs": float(10 + i),
            "source": "backend", "tsMs": T0 + i * 30_000, "traceId": f"t-{i}",
            "data": {"message": f"card declined for order {i}" if failing else f"served {i}",
                     "user": {"id": i, "plan": "pro" if i % 3 == 0 else "free"}},
        })
    return out


@pytest.fixture
def loaded(client):
    Store(client).ingest(corpus())
    return client


def get(client, path, headers=ADMIN, status=200, **params):
    response = client.get(API + path, query_string=params, headers=headers)
    assert response.status_code == status, response.data
    return response.json


def logs(client, query, headers=ADMIN, **params):
    params = {"start": str(T0 * NS), "end": str((T0 + 3_600_000) * NS), "limit": "1000",
              **params}
    found = get(client, "/query_range", headers=headers, query=query, **params)
    assert found["status"] == "success" and found["data"]["resultType"] == "streams"
    lines = [(int(ts), line, stream["stream"]) for stream in found["data"]["result"]
             for ts, line in stream["values"]]
    # Grafana merges the streams by time.
    return sorted(lines, key=lambda item: item[0],
                  reverse=params.get("direction", "backward") == "backward")


def numbers(lines):
    """The corpus index of each line (its trace id t-<i>)."""
    return [int(line.split("trace=t-")[1].split()[0]) for _, line, _ in lines]


def matrix(client, query, step="60000ms", headers=ADMIN, **params):
    params = {"start": str(T0 * NS), "end": str((T0 + 3_600_000) * NS), "step": step,
              **params}
    found = get(client, "/query_range", headers=headers, query=query, **params)
    assert found["data"]["resultType"] == "matrix"
    return {tuple(sorted(series["metric"].items())): {t: v for t, v in series["values"]}
            for series in found["data"]["result"]}


def token(client, project, container=None):
    body = {"name": "grafana", "projectId": project, "containerId": container,
            "capabilities": {"logs": True}}
    made = client.post("/api/proxy-logs/_admin/tokens", json=body, headers=ADMIN)
    assert made.status_code == 201, made.json
    return {"Authorization": f"Bearer {made.json['token']}"}


# --- the data source's own requests -------------------------------------------

def test_save_and_test_gets_two_from_vector_one_plus_vector_one(client):
    # What the health check sends: an instant query at 4 s after the epoch.
    found = get(client, "/query", query="vector(1)+vector(1)", time=str(4 * 10**9))
    assert found == {"status": "success", "data": {
        "resultType": "vector", "result": [{"metric": {}, "value": [4000000000, "2"]}],
        "stats": {}}}  # ten digits or fewer are seconds, as Loki reads them
    form = client.post(API + "/query", data={"query": "vector(1)+vector(1)", "time": "4"},
                       headers=ADMIN)
    assert form.json["data"]["result"][0]["value"] == [4, "2"]


def test_explore_backward_gives_the_newest_lines_first_with_their_labels(loaded):
    lines = logs(loaded, '{projectId="shop"}', direction="backward", limit="5",
                 step="60000ms")
    assert numbers(lines) == [119, 118, 117, 115, 114]
    ts, line, stream = lines[0]
    assert ts == (T0 + 119 * 30_000) * NS
    assert stream == {"projectId": "shop", "containerId": "web-2", "serviceName": "checkout",
                      "level": "warn", "kind": "response", "method": "GET", "status": "200",
                      "source": "backend", "route": "/v1/items/{id}"}
    # The line: the text form, then data as JSON.
    assert " GET /v1/items/119 200 129ms checkout shop/web-2 " in line
    assert line.endswith('{"message":"served 119","user":{"id":119,"plan":"free"}}')


def test_explore_forward_starts_at_start_and_end_is_exclusive(loaded):
    lines = logs(loaded, '{projectId="shop"}', direction="forward", limit="3",
                 start=str((T0 + 60_000) * NS))
    assert numbers(lines) == [2, 3, 5]
    bounded = logs(loaded, '{projectId="blog"}', start=str(T0 * NS),
                   end=str((T0 + 240_000) * NS))
    assert sorted(numbers(bounded)) == [0, 4]  # 8 lies on the end: outside
    # RFC 3339 and seconds work as well as nanoseconds.
    assert sorted(numbers(logs(loaded, '{projectId="blog"}', start="2027-01-15T08:00:00Z",
                               end=str((T0 + 240_000) // 1000)))) == [0, 4]


def test_the_label_browser_lists_labels_and_values_of_the_range(loaded):
    window = {"start": str(T0 * NS), "end": str((T0 + 3_600_000) * NS)}
    assert get(loaded, "/labels", **window)["data"] == [
        "projectId", "containerId", "serviceName", "level", "kind", "method", "status",
        "source", "route"]
    assert get(loaded, "/label/level/values", **window)["data"] == ["error", "info", "warn"]
    assert get(loaded, "/label/route/values", **window)["data"] == [
        "/v1/items/{id}", "/v1/pay/{id}"]
    # Narrowed by a selector, as the browser does once a label is picked.
    assert get(loaded, "/label/serviceName/values", query='{projectId="blog"}',
               **window)["data"] == ["cms"]
    assert get(loaded, "/label/status/values", query='{level="error"}',
               **window)["data"] == ["502"]
    assert get(loaded, "/label/job/values", **window)["data"] == []
    found = get(loaded, "/series", **{"match[]": '{projectId="blog", level="error"}'},
                **window)["data"]
    assert {s["containerId"] for s in found} == {"web-1"} and len(found) == 1
    # Outside the range there is nothing.
    assert get(loaded, "/label/level/values", start=str((T0 - 7_200_000) * NS),
               end=str((T0 - 3_600_000) * NS))["data"] == []


def test_a_label_some_entries_lack_is_listed_and_a_check_looks_past_the_first_sets(client):
    # The first entry has no method and no status; a label is listed when
    # any entry of the range has it.
    store = Store(client)
    store.ingest([{"kind": "event", "projectId": "aa", "url": "/tick", "tsMs": T0 + i}
                  for i in range(60)])
    store.ingest([{"kind": "response", "projectId": "zz", "method": "GET", "status": 200,
                   "url": "/v1/x", "tsMs": T0 + 1_000}])
    window = {"start": str(T0 * NS), "end": str((T0 + 3_600_000) * NS)}
    assert {"method", "status"} <= set(get(client, "/labels", **window)["data"])
    # A selector the index cannot narrow (checked set by set): the sixty
    # entries of `aa` sort first and fail it; `zz`'s labels are still found.
    found = get(client, "/labels", query='{projectId!~"a+"} != "nothing"', **window)["data"]
    assert {"projectId", "method", "status"} <= set(found)
    assert get(client, "/label/method/values", query='{projectId!~"a+"} != "nothing"',
               **window)["data"] == ["GET"]


def test_the_label_browser_and_metrics_answer_the_same_once_the_entries_are_sealed(make_app):
    from logsvc.store import db, segments

    app = make_app(hot_rows=0, segment_rows=16, rate_limit_per_min=0)
    client = app.test_client()
    Store(client).ingest(corpus())
    window = {"start": str(T0 * NS), "end": str((T0 + 3_600_000) * NS)}
    asked = [("/labels", {}), ("/labels", {"query": '{projectId="blog"} |= "declined"'}),
             *((f"/label/{label}/values", {}) for label in ("method", "status", "route",
                                                           "containerId")),
             ("/label/status/values", {"query": '{level="error"}'}),
             ("/label/method/values", {"query": '{projectId=~"sh.*"} != "declined"'}),
             ("/series", {"match[]": '{level=~"error|warn"}'})]
    asked += [("/query_range", {"query": query, "step": step}) for query, step in (
        ('sum by (method) (count_over_time({projectId=~".+"}[5m]))', "300"),
        ('quantile_over_time(0.9, {projectId="shop"} | unwrap durationMs [10m])', "600"),
        ('sum by (level, status) (sum_over_time({projectId=~".+"} | unwrap durationMs [1h]))',
         "3600"),
        ('avg_over_time({projectId="blog"} | unwrap durationMs [5m])', "60"),
        ('max by (route) (max_over_time({level!="info"} | unwrap durationMs [1h]))', "3600"),
        ('min_over_time({projectId="shop"} | unwrap durationMs [30m])', "1800"),
        ('sum(rate({projectId="shop", level="error"}[2m]))', "120"))]
    before = [get(client, path, **window, **params)["data"] for path, params in asked]
    assert all(found["result"] for found in before[-7:])
    with db.using(app.extensions["logsvc"].store):
        while db.call(segments.seal_once, 8, 16):
            pass
        assert db.call(segments.sealed_through) == 96  # six segments; the newest 24 hot
    after = [get(client, path, **window, **params)["data"] for path, params in asked]
    for (path, params), one, other in zip(asked, before, after):
        assert one == other, (path, params)


def test_logs_volume_matches_the_native_histogram(loaded):
    # Grafana's histogram above Explore.
    query = 'sum by (level, detected_level) (count_over_time({projectId="shop"} ' \
            '| drop __error__[1m]))'
    response = loaded.get(API + "/query_range", headers={**ADMIN, "X-Query-Tags":
                                                          "Source=logvolhist"},
                          query_string={"query": query, "start": str(T0 * NS),
                                        "end": str((T0 + 3_600_000) * NS), "step": "60000ms"})
    assert response.status_code == 200
    volume = {tuple(sorted(s["metric"].items())): dict(s["values"])
              for s in response.json["data"]["result"]}
    native = Store(loaded).page("/api/proxy-logs/_logs/stats/histogram", projectId="shop",
                                since=T0 - 60_000, until=T0 + 3_600_000, bucket="1m")
    for level in ("error", "warn", "info"):
        expected = {(b["tsMs"] + 60_000) // 1000: str(b["byLevel"][level])
                    for b in native["buckets"] if b["byLevel"].get(level)}
        assert volume[(("level", level),)] == expected
    assert sum(int(v) for series in volume.values() for v in series.values()) == 90


def test_show_context_reads_the_same_stream_before_and_after_a_line(loaded):
    # Grafana asks for the row's stream, backward up to the row and forward from it.
    row_ns = (T0 + 60 * 30_000) * NS
    selector = '{projectId="shop", containerId="web-1", level="info"}'
    before = logs(loaded, selector, direction="backward", limit="3",
                  start=str(row_ns - 7_200_000 * NS), end=str(row_ns))
    after = logs(loaded, selector, direction="forward", limit="3", start=str(row_ns),
                 end=str(row_ns + 7_200_000 * NS))
    assert numbers(before) == [58, 54, 46] and numbers(after) == [62, 66, 74]


# --- LogQL ---------------------------------------------------------------------

@pytest.mark.parametrize("query, expected", [
    ('{projectId="blog", level="error"}', [0, 20, 40, 60, 80, 100]),
    ('{projectId="blog", status=~"5.."}', [0, 20, 40, 60, 80, 100]),
    ('{projectId="blog", level!="info"}', [0, 20, 28, 40, 56, 60, 80, 84, 100, 112]),
    ('{projectId="blog", level!~"info|error"}', [28, 56, 84, 112]),
    ('{projectId="blog", route=~"/v1/pay/.*"}', [0, 20, 40, 60, 80, 100]),
    ('{projectId="blog", serviceName!~"c.s"}', []),
    ('{projectId="blog", job="x"}', []),
    ('{projectId="blog", job=""} |= "declined"', [0, 20, 40, 60, 80, 100]),
    ('{projectId="blog"} |= "card declined" != "order 40"', [0, 20, 60, 80, 100]),
    ('{projectId="blog"} != "served"', [0, 20, 40, 60, 80, 100]),
    ('{projectId="blog"} |~ "order [24]0\\\\b"', [20, 40]),
    ('{projectId="blog"} |~ `POST /v1/pay/(8|10)0 `', [80, 100]),
    ('{projectId="blog", level="error"} !~ "order (0|20)\\""', [40, 60, 80, 100]),
    ('{projectId="blog"} | status >= 500 | durationMs > 50', [60, 80, 100]),
    ('{projectId="blog"} | json | user_plan="pro" | user_id < 40', [0, 12, 24, 36]),
    ('{projectId="blog"} | json | drop __error__ | level=~"warn|error" | user_id >= 100',
     [100, 112]),
])
def test_selectors_line_and_label_filters(loaded, query, expected):
    assert sorted(numbers(logs(loaded, query))) == expected


def test_a_forward_page_checked_line_by_line_stops_at_the_limit(loaded):
    found = logs(loaded, '{projectId="shop"} |~ `served [0-9]*3"`', direction="forward",
                 limit="4")
    assert numbers(found) == [3, 13, 23, 33]


def test_metric_queries_over_the_counters_and_the_entries(loaded):
    rate = matrix(loaded, 'sum(rate({projectId="shop"}[10m]))', step="600")
    # 10-minute windows ending at each step: 15 of 20 entries are shop's.
    assert rate[()][(T0 + 600_000) // 1000] == "0.025"
    assert rate[()][(T0 + 3_600_000) // 1000] == "0.025"
    assert T0 // 1000 not in rate[()]  # an empty window has no point
    by_route = matrix(loaded, 'sum by (route) (count_over_time({projectId="shop"} '
                              '|= "declined" [30m]))', step="1800")
    assert by_route == {(("route", "/v1/pay/{id}"),): {(T0 + 1_800_000) // 1000: "9",
                                                      (T0 + 3_600_000) // 1000: "9"}}
    p95 = matrix(loaded, 'quantile_over_time(0.95, {projectId="blog"} | unwrap durationMs '
                         '[1h]) by (level)', step="3600")
    slowest = p95[(("level", "error"),)][(T0 + 3_600_000) // 1000]
    assert 109 <= float(slowest) <= 110  # 110 ms is the longest error; within the sketch's 1 %
    top = matrix(loaded, 'topk(1, sum by (containerId) (count_over_time({level="error"}[1h])))',
                 step="3600")
    assert top == {(("containerId", "web-1"),): {(T0 + 3_600_000) // 1000: "12"}}  # a tie: by labels
    ratio = matrix(loaded, 'sum(count_over_time({projectId="shop", level="error"}[1h])) / '
                           'sum(count_over_time({projectId="shop"}[1h]))', step="3600")
    assert ratio == {(): {(T0 + 3_600_000) // 1000: "0.2"}}
    averaged = matrix(loaded, 'avg_over_time({projectId="blog", level="warn"} '
                              '| unwrap durationMs [1h])', step="3600")
    [(labels, points)] = averaged.items()
    assert dict(labels)["level"] == "warn" and points == {(T0 + 3_600_000) // 1000: "80"}
    counted = matrix(loaded, 'count(count_over_time({projectId="shop"}[1h]))', step="3600")
    assert counted[()][(T0 + 3_600_000) // 1000] == "6"  # streams: 2 containers × 3 levels


def test_bytes_are_the_lines_bytes(loaded):
    lines = logs(loaded, '{projectId="blog", level="error"}')
    found = matrix(loaded, 'sum(bytes_over_time({projectId="blog", level="error"}[1h]))',
                   step="3600")
    assert found[()][(T0 + 3_600_000) // 1000] == str(sum(len(line.encode())
                                                         for _, line, _ in lines))


def test_an_instant_metric_query_is_a_vector(loaded):
    found = get(loaded, "/query", query='sum by (level) (count_over_time({projectId="blog"}'
                                        '[1h]))', time=str((T0 + 3_600_000) * NS))
    values = {s["metric"]["level"]: s["value"] for s in found["data"]["result"]}
    assert values == {"error": [1_800_003_600, "6"], "warn": [1_800_003_600, "4"],
                      "info": [1_800_003_600, "20"]}


@pytest.mark.parametrize("params, names", [
    ({"query": '{projectId="shop"} | logfmt'}, "logfmt is not supported"),
    ({"query": '{projectId="shop"} | line_format "{{.url}}"'}, "line_format is not supported"),
    ({"query": 'histogram_quantile(0.9, {a="b"})'}, "'histogram_quantile' is not supported"),
    ({"query": '{projectId="shop"'}, "parse error"),
    ({"query": '{projectId="shop"} |~ "("'}, "invalid regular expression"),
    ({"query": 'rate({projectId="shop"}[5x])'}, "invalid range"),
    ({"query": 'sum(rate({a="b"}[1m]))', "step": "0"}, "'step'"),
    ({"query": 'sum(rate({a="b"}[1m]))', "step": "1ms"}, "'step'"),
    ({"query": '{a="b"}', "limit": "5001"}, "'limit'"),
    ({"query": '{a="b"}', "direction": "sideways"}, "'direction'"),
    ({"query": '{a="b"}', "start": "yesterday"}, "'start'"),
    ({}, "'query'"),
])
def test_what_is_not_supported_or_malformed_is_a_400_that_says_so(loaded, params, names):
    found = get(loaded, "/query_range", status=400, **params)
    assert names in found["message"], found  # Grafana shows `message`


def test_a_sum_of_series_is_rounded_once_whatever_order_they_come_in(client):
    # Ten series of 0.1 ms each: added one by one in floating point they
    # make 0.9999999999999999 (and another order may make another number).
    Store(client).ingest([{"kind": "event", "projectId": "p", "serviceName": f"s{i}",
                           "url": "/x", "durationMs": 0.1, "tsMs": T0 + 1_000}
                          for i in range(10)])
    # (An average per series is not added up by the store: the series are.)
    found = matrix(client, 'sum(avg_over_time({projectId="p"} | unwrap durationMs [1h]))',
                   step="3600")
    assert found == {(): {(T0 + 3_600_000) // 1000: "1"}}
    average = matrix(client, 'avg(avg_over_time({projectId="p"} | unwrap durationMs [1h]))',
                     step="3600")
    assert average == {(): {(T0 + 3_600_000) // 1000: "0.1"}}


@pytest.mark.parametrize("path", ["/query_range", "/query", "/labels", "/label/level/values",
                                  "/series", "/index/stats"])
@pytest.mark.parametrize("name, value", [
    ("start", "9" * 30), ("end", "-" + "9" * 25), ("end", "9" * 12 + ".5"),
    ("start", "9999-12-31T00:00:00Z"), ("time", "9" * 20)])
def test_a_time_beyond_what_nanoseconds_hold_is_a_400_naming_it(loaded, path, name, value):
    params = {"query": '{projectId="shop"}', "match[]": '{projectId="shop"}', name: value}
    response = loaded.get(API + path, query_string=params, headers=ADMIN)
    if (name == "time") != (path == "/query"):
        assert response.status_code == 200  # a parameter the endpoint does not take
        return
    assert response.status_code == 400, response.data
    assert f"'{name}'" in response.json["message"] and "out of range" in response.json["message"]


# --- access ----------------------------------------------------------------------

def test_a_credential_sees_its_own_scope_only_through_every_endpoint(loaded):
    blog = token(loaded, "blog")
    window = {"start": str(T0 * NS), "end": str((T0 + 3_600_000) * NS)}
    assert {s["projectId"] for _, _, s in logs(loaded, "{}", headers=blog)} == {"blog"}
    assert logs(loaded, '{projectId="shop"}', headers=blog) == []
    assert get(loaded, "/label/projectId/values", headers=blog, **window)["data"] == ["blog"]
    assert get(loaded, "/label/serviceName/values", headers=blog, **window)["data"] == ["cms"]
    assert {s["projectId"] for s in get(loaded, "/series", headers=blog,
                                        **{"match[]": "{}"}, **window)["data"]} == {"blog"}
    volume = matrix(loaded, 'sum(count_over_time({projectId=~".*"}[1h]))', step="3600",
                    headers=blog)
    assert volume[()][(T0 + 3_600_000) // 1000] == "30"
    # X-Scope-OrgID narrows the operator, and may only name the caller's own project.
    org = {**ADMIN, "X-Scope-OrgID": "shop"}
    assert get(loaded, "/label/projectId/values", headers=org, **window)["data"] == ["shop"]
    assert get(loaded, "/label/projectId/values", headers={**blog, "X-Scope-OrgID": "blog"},
               **window)["data"] == ["blog"]
    get(loaded, "/labels", headers={**blog, "X-Scope-OrgID": "shop"}, status=403)
    get(loaded, "/labels", headers={}, status=401)
    one = token(loaded, "shop", "web-2")
    assert {s["containerId"] for _, _, s in logs(loaded, '{projectId="shop"}', headers=one)} \
        == {"web-2"}


def test_grafana_basic_auth_with_a_user_reads(loaded):
    made = loaded.post("/api/proxy-logs/_admin/users", headers=ADMIN, json={
        "username": "grafana", "password": "a long grafana secret", "projectId": "blog",
        "capabilities": {"logs": True}})
    assert made.status_code == 201, made.json
    import base64
    basic = {"Authorization": "Basic " + base64.b64encode(
        b"grafana:a long grafana secret").decode()}
    assert get(loaded, "/label/projectId/values", headers=basic, start=str(T0 * NS),
               end=str((T0 + 3_600_000) * NS))["data"] == ["blog"]


# --- the live tail -------------------------------------------------------------------

@pytest.mark.server
def test_the_live_tail_sends_every_matching_entry_once_in_loki_frames(server):
    from urllib.parse import urlencode

    import requests
    import websocket

    def ingest(items):
        response = requests.post(server.url + INGEST, json=items, timeout=30,
                                 headers={**ADMIN, "Connection": "close"})
        assert response.status_code == 200, response.text

    now = int(time.time() * 1000)
    ingest([{"kind": "event", "projectId": "shop", "level": "error", "tsMs": now - 1000,
             "data": {"message": f"old {i}"}} for i in range(3)])
    query = urlencode({"query": '{projectId="shop", level="error"} |~ `new [0-9]*[02468]"|old`',
                       "limit": "2", "start": str((now - 60_000) * NS)})
    # Grafana dials with the data source's own Authorization header.
    ws = websocket.create_connection(server.url.replace("http://", "ws://")
                                     + "/loki/api/v1/tail?" + query, header=ADMIN, timeout=10)
    try:
        first = orjson.loads(ws.recv())
        assert first["dropped_entries"] is None
        assert [line.split('"message":"')[1][:-2] for _, line in
                first["streams"][0]["values"]] == ["old 1", "old 2"]
        for batch in range(4):
            ingest([{"kind": "event", "projectId": "shop", "level": "error",
                     "data": {"message": f"new {batch * 10 + i}"}} for i in range(10)]
                   + [{"kind": "event", "projectId": "blog", "level": "error",
                       "data": {"message": "new 0"}}])
        seen = []
        while len(seen) < 20:
            frame = orjson.loads(ws.recv())
            for stream in frame["streams"]:
                assert stream["stream"]["projectId"] == "shop"
                seen.extend(int(line.rsplit(" ", 1)[1][:-2]) for _, line in stream["values"])
        assert seen == list(range(0, 40, 2))
    finally:
        ws.close()
        ws.shutdown()
    refused = websocket.create_connection(server.url.replace("http://", "ws://")
                                          + "/loki/api/v1/tail?query=%7B%7D", timeout=10)
    from logsvc.testing import close_code
    try:
        assert close_code(refused) == 4001  # no credentials
    finally:
        refused.shutdown()


# --- docs/grafana.md ---------------------------------------------------------------

def test_every_query_of_the_documented_dashboard_answers(loaded):
    from logsvc.testing import ROOT
    dashboard = orjson.loads((ROOT / "docs/grafana-dashboard.json").read_bytes())
    variable = dashboard["templating"]["list"][0]
    assert variable["query"]["label"] == "projectId"
    assert get(loaded, "/label/projectId/values", start=str(T0 * NS),
               end=str((T0 + 3_600_000) * NS))["data"] == ["blog", "shop"]
    for panel in dashboard["panels"]:
        [target] = panel["targets"]
        expr = target["expr"].replace("$project", "shop").replace("$__auto", "5m")
        if panel["type"] == "logs":
            lines = logs(loaded, expr, limit=str(target["maxLines"]))
            assert len(lines) == 90 and {s["projectId"] for _, _, s in lines} == {"shop"}
            continue
        found = matrix(loaded, expr, step="300000ms")
        assert found, panel["title"]
        if panel["title"] == "Error ratio":  # one in five of shop's calls fail
            assert all(0.1 < float(v) < 0.3 for v in found[()].values())


def test_the_documented_provisioning_is_a_loki_data_source():
    import re

    import yaml

    from logsvc.testing import ROOT
    text = (ROOT / "docs/grafana.md").read_text()
    [provisioning, header] = re.findall(r"```yaml\n(.*?)```", text, re.S)
    source = yaml.safe_load(provisioning)["datasources"][0]
    assert (source["type"], source["access"], source["url"]) == ("loki", "proxy",
                                                                 "http://logsvc:8080")
    assert source["basicAuth"] is True and "basicAuthPassword" in source["secureJsonData"]
    extra = yaml.safe_load(re.sub(r"^    ", "", header, flags=re.M))  # the same level
    assert extra["jsonData"]["httpHeaderName1"] == "Authorization"
    assert extra["secureJsonData"]["httpHeaderValue1"].startswith("Bearer ")
