"""Sealed segments: older entries sealed into compact segments answer every
question exactly as they did while hot, across the boundary, through
retention, a clear, an upgrade and a kill in the middle of a seal."""
import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from logsvc.store import (
    db,
    fulltext,
    horizon,
    hotcolumns,
    migrations,
    partitions,
    retention,
    rollup,
    segments,
)
from logsvc.store.filters import Filters
from logsvc.testing import ADMIN_TOKEN, INGEST, LOGS, ROOT, Server, Store, make_entry

STATS = LOGS + "/stats"
HISTOGRAM = STATS + "/histogram"


def corpus(n, start=0):
    """Entries with bodies, words, traces, durations and a spread of scopes."""
    out = []
    for i in range(start, start + n):
        out.append(make_entry(
            i, tsMs=1_800_000_000_000 + i * 7_000,
            durationMs=None if i % 5 == 0 else (i * 37) % 900 + 0.5,
            responseBody=f"upstream word{i % 7} zanzibar{i % 3} reset" if i % 2 else None,
            requestBody=f'{{"user": "ada{i % 11}"}}' if i % 3 == 0 else None,
            clientIp=f"10.0.{i % 4}.{i % 9}"))
    return out


QUESTIONS = [
    (LOGS, {}), (LOGS, {"order": "desc"}), (LOGS, {"last": 17}),
    (LOGS, {"afterId": 50, "limit": 30}), (LOGS, {"offset": 140, "limit": 20}),
    (LOGS, {"order": "slowest", "limit": 50}), (LOGS, {"order": "desc", "offset": 300}),
    (LOGS, {"order": "slowest", "limit": 0}), (LOGS, {"limit": 0, "order": "desc"}),
    (LOGS, {"q": "word3"}), (LOGS, {"q": "word3", "order": "desc", "limit": 15}),
    (LOGS, {"q": "word3", "includeResponseBody": "true", "includeRequestBody": "true"}),
    (LOGS, {"q": "zanzibar1 OR word2"}), (LOGS, {"q": "zanz*", "order": "desc"}),
    (LOGS, {"q": "word3 -zanzibar1"}), (LOGS, {"q": "upstream word3 OR word2 zanz*"}),
    (LOGS, {"q": '"upstream word3"'}),
    (LOGS, {"q": "ada3"}), (LOGS, {"q": "word3", "last": 5}),
    (LOGS, {"q": "word1", "afterId": 100, "limit": 10}), (LOGS, {"q": "word1", "offset": 20}),
    (LOGS, {"q": "word4", "order": "slowest", "limit": 12}),
    (LOGS, {"q": "word5", "projectId": "proj_1", "level": "error,warn"}),
    (LOGS, {"traceId": "trace-10"}), (LOGS, {"clientIp": "10.0.3.3", "order": "desc"}),
    (LOGS, {"level": "error", "includeResponseBody": "true"}),
    (LOGS, {"serviceName": "user-api", "status": "5xx", "minDurationMs": "300"}),
    (LOGS, {"method": "GET,DELETE", "kind": "response,event", "source": "edge",
            "status": "200-299,500-599", "maxDurationMs": "700", "since": "1800000061000"}),
    (LOGS, {"q": "reset", "projectId": "proj_1", "containerId": "cnt_1", "order": "desc",
            "since": "1800000300000", "until": "1800002200000"}),
    (STATS, {"q": "zanzibar2", "projectId": "proj_2", "method": "DELETE"}),
    (STATS, {}), (STATS, {"q": "word3"}), (STATS, {"traceId": "trace-10"}),
    (STATS, {"level": "error", "since": "1800000100000", "until": "1800002000500"}),
    (STATS, {"projectId": "proj_2", "since": "1800000123456"}),
    (HISTOGRAM, {"since": "1800000000000", "until": "1800003000000", "bucket": "5m"}),
    (HISTOGRAM, {"q": "word3", "since": "1800000000000", "until": "1800003000000"}),
    # Partial minutes on both sides of the boundary: the counters' edges
    # are counted from the entries, sealed ones included.
    (LOGS, {"since": "1800000123456", "until": "1800001987654", "level": "error"}),
    (LOGS, {"projectId": "proj_1", "since": "1800000123456", "limit": 5}),
    (LOGS, {"containerId": "cnt_2", "projectId": "proj_2", "since": "1800000061000"}),
    (LOGS, {"afterId": 200, "limit": 100}), (LOGS, {"order": "slowest", "offset": 30}),
    (LOGS, {"minDurationMs": "800", "order": "desc"}), (LOGS, {"route": "/v1/items/:id"}),
    (LOGS, {"order": "slowest", "limit": 40, "projectId": "proj_1",
            "includeResponseBody": "true"}),
    (LOGS, {"order": "slowest", "limit": 25, "status": "5xx", "includeRequestBody": "true"}),
    (STATS, {"since": "1800000123456", "until": "1800002500001"}),
    (STATS, {"projectId": "proj_0", "containerId": "cnt_3", "since": "1800000123456"}),
    (STATS, {"status": "5xx", "since": "1800000061001", "until": "1800002000000"}),
    (STATS, {"minDurationMs": "100", "sort": "p95"}),
    (HISTOGRAM, {"since": "1800000123456", "until": "1800002345678", "bucket": "1m"}),
    (HISTOGRAM, {"level": "error", "since": "1800000123456", "until": "1800003000000",
                 "bucket": "5m"}),
    # Offsets on either side of the boundary, and across it, both ways:
    # the matches passed over are counted where they lie.
    (LOGS, {"offset": 250, "limit": 20}), (LOGS, {"offset": 100, "order": "desc", "limit": 60}),
    (LOGS, {"offset": 300, "order": "desc", "limit": 30}), (LOGS, {"offset": 399}),
    (LOGS, {"offset": 150, "order": "desc", "limit": 3}), (LOGS, {"limit": 3}),
    (LOGS, {"q": "word3", "offset": 20, "limit": 7}),
    (LOGS, {"q": "word3", "offset": 25, "order": "desc", "limit": 3}),
    (LOGS, {"level": "error", "offset": 40, "order": "desc", "limit": 9}),
    # Filters the counters do not keep: the sealed entries grouped in columns.
    (STATS, {"kind": "request", "method": "GET,DELETE"}),
    (STATS, {"method": "POST", "serviceName": "billing-api", "sort": "p95"}),
    (HISTOGRAM, {"method": "DELETE", "since": "1800000000000", "until": "1800003000000",
                 "bucket": "5m"}),
]


def answers(store):
    return [store.page(path, **params) for path, params in QUESTIONS]


def seal(app, hot_rows=100, segment_rows=64):
    with db.using(app.extensions["logsvc"].store):
        total = 0
        while n := db.call(segments.seal_once, hot_rows, segment_rows):
            total += n
        return total


@pytest.fixture
def sealed_app(make_app):
    return make_app(hot_rows=0, rate_limit_per_min=0)


def test_every_question_has_the_same_answer_once_older_entries_are_sealed(sealed_app):
    store = Store(sealed_app.test_client())
    store.ingest(corpus(400))
    before = answers(store)
    assert seal(sealed_app) == 256  # four segments of 64; the newest 144 stay hot
    with db.using(sealed_app.extensions["logsvc"].store):
        assert db.call(segments.sealed_through) == 256
        # The sealed entries' words, bodies and documents left `entry`.
        assert db.call(lambda: db.execute(
            "SELECT count(*) FROM entry_body WHERE entry_id <= 256").fetchone()[0]) == 0
    after = answers(store)
    for (path, params), one, other in zip(QUESTIONS, before, after):
        assert one == other, (path, params)


# Random stores and questions (a fixed seed): entries whose attributes vary
# independently, some out of time order, bodies and data of a few words.
_WORDS = ["alpha", "beta", "gamma", "reset", "timeout", "upstream", "ok", "déjà", "naïve", "x1",
          "x2", "foo_bar", "foo-bar", "Error", "ERROR", "café"]
_PROJECTS = ["p0"] * 10 + ["p1"] * 4 + ["p2", "p3", "p4", "p5"]


def _random_entry(rng, i):
    entry = {"kind": rng.choice(["request", "response", "event"]),
             "projectId": rng.choice(_PROJECTS), "containerId": f"c{rng.randrange(8)}",
             "url": "/" + "/".join(rng.choice([*_WORDS, str(rng.randrange(100))])
                                   for _ in range(rng.randrange(1, 4))),
             "source": rng.choice(["backend", "edge"]), "traceId": f"t{rng.randrange(300)}",
             "tsMs": 1_800_000_000_000 + (rng.randrange(3 * 3_600_000) if rng.random() < 0.9
                                          else i * 5_000)}
    for name, values, share in (
            ("serviceName", ["api", "billing", "web", "worker"], 0.8),
            ("method", ["GET", "POST", "PUT", "DELETE", "PATCH"], 0.8),
            ("status", [200, 201, 204, 301, 400, 404, 429, 500, 502, 503], 0.9),
            ("clientIp", [f"10.0.{a}.{b}" for a in range(3) for b in range(5)], 0.8),
            ("level", ["debug", "info", "warn", "error"], 0.3)):
        if rng.random() < share:
            entry[name] = rng.choice(values)
    if rng.random() < 0.8:
        entry["durationMs"] = round(rng.expovariate(1 / 200), 2)
    if rng.random() < 0.5:
        entry["responseBody"] = " ".join(rng.choices(_WORDS, k=rng.randrange(1, 8)))
    if rng.random() < 0.3:
        entry["requestBody"] = orjson.dumps({"user": rng.choice(_WORDS)}).decode()
    if rng.random() < 0.3:
        entry["data"] = {"k": rng.choice(_WORDS), "v": rng.randrange(5)}
    return entry


def _random_filters(rng, routes):
    f = {}
    some = lambda values, most=2: ",".join(rng.sample(values, rng.randrange(1, most + 1)))
    if rng.random() < 0.3:
        f["projectId"] = rng.choice(_PROJECTS)
        if rng.random() < 0.3:
            f["containerId"] = f"c{rng.randrange(8)}"
    for name, values, share in (("serviceName", ["api", "billing", "web", "worker"], 0.15),
                                ("level", ["debug", "info", "warn", "error"], 0.2),
                                ("kind", ["request", "response", "event"], 0.15),
                                ("method", ["GET", "POST", "PUT", "DELETE"], 0.15),
                                ("route", routes, 0.1)):
        if rng.random() < share:
            f[name] = some(values)
    if rng.random() < 0.2:
        f["status"] = rng.choice(["5xx", "2xx", "4xx,5xx", "200-299", "404", "500-503"])
    if rng.random() < 0.1:
        f["source"] = rng.choice(["backend", "edge"])
    if rng.random() < 0.25:
        words = [rng.choice([*_WORDS, "x*", "fo*", "ups*"]) for _ in range(rng.randrange(1, 3))]
        if rng.random() < 0.2:
            words[0] = f'"{words[0]} {rng.choice(_WORDS)}"'
        if len(words) > 1 and rng.random() < 0.3:
            words[-1] = "-" + words[-1]
        f["q"] = " ".join(words) if rng.random() < 0.8 else f"{words[0]} OR {rng.choice(_WORDS)}"
    if rng.random() < 0.08:
        f["traceId"] = f"t{rng.randrange(300)}"
    if rng.random() < 0.1:
        f["minDurationMs"] = rng.choice(["10", "100", "300"])
    if rng.random() < 0.3:
        since = 1_800_000_000_000 + rng.randrange(-600_000, 3 * 3_600_000)
        f["since"] = str(since)
        if rng.random() < 0.6:
            f["until"] = str(since + rng.randrange(1, 2 * 3_600_000))
    return f


def _random_question(rng, routes, n):
    f = _random_filters(rng, routes)
    kind = rng.random()
    if kind < 0.6:
        order = rng.choice([None, None, "desc", "slowest"])
        if order is None and rng.random() < 0.2:
            return LOGS, {**f, "last": rng.choice([1, 7, 50])}
        if rng.random() < 0.08:
            return LOGS, {**f, "around": rng.randrange(1, n + 1), "limit": rng.choice([1, 3])}
        page = {**f, "limit": rng.choice([0, 1, 5, 20, 100, 500])}
        if order:
            page["order"] = order
        if rng.random() < 0.3:
            page["offset"] = rng.randrange(400)
        elif order is None and rng.random() < 0.2:
            page["afterId"] = rng.randrange(n)
        return LOGS, page
    if kind < 0.85:
        return STATS, {**f, "topRoutes": rng.choice(["1", "3", "200"]),
                       "sort": rng.choice(["total", "p95", "errors"])}
    return HISTOGRAM, {"since": "1799999940000", "until": "1800010800000", **f,
                       "bucket": rng.choice(["1m", "5m", "1h"])}


def _every_id(store, params):
    """The ids of every match, paged by afterId and swept by the cursor."""
    paged, after = [], 0
    while True:
        page = store.page(LOGS, **params, afterId=after, limit=97)
        paged += [e["id"] for e in page["entries"]]
        if len(page["entries"]) < 97:
            break
        after = page["nextAfterId"]
    swept, cursor = [], "start"
    while cursor:
        lines = [orjson.loads(line) for line in
                 store.get(LOGS, **params, cursor=cursor, limit=101).data.splitlines()]
        swept += [line["id"] for line in lines[:-1]]
        cursor = lines[-1]["nextCursor"]
    return paged, swept


def test_random_questions_answer_the_same_once_sealed_and_merged(make_app):
    # Beside the questions above, a few hundred drawn at random over a
    # store of 2,000 random entries: every page, total, stats and
    # histogram as it was while every entry was hot.
    rng = random.Random(20261207)
    app = make_app(hot_rows=0, segment_rows=64, rate_limit_per_min=0, merge_segments=4,
                   sealed_count_rows=0,
                   admin_fanout=True)
    store = Store(app.test_client())
    n = 2_000
    entries = [_random_entry(rng, i) for i in range(n)]
    for at in range(0, n, 500):
        store.ingest(entries[at:at + 500])
    routes = [row["route"] for row in store.page(STATS, topRoutes=200)["byRoute"]]
    questions = [_random_question(rng, routes, n) for _ in range(300)]
    walks = [{k: v for k, v in _random_filters(rng, routes).items()
              if k != "minDurationMs"} for _ in range(12)]

    def answers():
        return ([store.get(path, **params).json for path, params in questions],
                [_every_id(store, params) for params in walks])

    before_pages, before_walks = answers()
    assert seal(app, hot_rows=120) == 1_856
    config = app.extensions["logsvc"].config
    with db.using(app.extensions["logsvc"].store):
        merged = 0
        while db.call(segments.merge_once, config.merge_rows, config.merge_bytes):
            merged += 1
    assert merged >= 5
    after_pages, after_walks = answers()
    for (path, params), one, other in zip(questions, before_pages, after_pages):
        assert one == other, (path, params)
    for params, (paged, swept), after in zip(walks, before_walks, after_walks):
        assert sorted(swept) == paged and (paged, swept) == after, params


def test_a_search_counts_its_sealed_total_within_a_page_share_of_work(make_app):
    app = make_app(hot_rows=0, rate_limit_per_min=0, sealed_count_rows=8)
    store = Store(app.test_client())
    store.ingest(corpus(400))
    # 49 segments of 8 entries: a page's count may decode 8 rows beyond
    # the segments its page read, far fewer than those that may match.
    assert seal(app, hot_rows=0, segment_rows=8) == 392  # the newest 8 stay hot
    matching = [e["id"] for e in store.page(LOGS, q="word3", limit=400)["entries"]]
    assert len(matching) == 29
    assert store.page(STATS, q="word3")["total"] == 29  # stats count every match
    # The newest two read the newest segments; the count goes on through
    # a few more and says its total is a lower bound.
    page = store.page(LOGS, q="word3", order="desc", limit=2)
    assert [e["id"] for e in page["entries"]] == matching[:-3:-1]
    assert page["totalExact"] is False
    assert 2 < page["total"] < 29
    # Each page is exact whatever its total says: paged through, every
    # match once.
    seen = []
    for offset in range(0, 30, 4):
        page = store.page(LOGS, q="word3", order="desc", limit=4, offset=offset)
        assert page["total"] >= offset + len(page["entries"])
        seen.extend(e["id"] for e in page["entries"])
    assert seen == matching[::-1]
    # A page that read every segment with a match counts them all.
    page = store.page(LOGS, q="word3", limit=100)
    assert (page["total"], page["totalExact"]) == (29, True)
    # A filter the counters answer stays exact however many segments hold it.
    page = store.page(LOGS, level="error", order="desc", limit=2)
    assert page["totalExact"] is True


@pytest.mark.parametrize("count_rows, expected", [(8, "lower bound"), (0, "exact")])
def test_a_common_words_total_counts_what_its_page_searched_of_a_large_segment(
        make_app, count_rows, expected):
    """A word half the entries hold in their url: the oldest page searches
    the first window of a segment whose 8,192 candidates hold it (the 4,096
    oldest of them), more than the page needs. The total counts the hot
    matches and that window; the segment's other candidates are searched
    only within the page's share of work (LOGSVC_SEALED_COUNT_ROWS; 0: all
    of them)."""
    app = make_app(hot_rows=0, rate_limit_per_min=0, sealed_count_rows=count_rows)
    store = Store(app.test_client())
    total = 16_384 + 100
    for start in range(0, total, 5_000):
        store.ingest([make_entry(i, url=f"/v1/{'common' if i % 2 == 0 else 'other'}/{i}",
                                 tsMs=1_800_000_000_000 + i)
                      for i in range(start, min(total, start + 5_000))])
    assert seal(app, hot_rows=0, segment_rows=16_384) == 16_384  # the newest 100 stay hot
    page = store.page(LOGS, q="common", limit=10)
    assert [e["id"] for e in page["entries"]] == list(range(1, 21, 2))  # oldest first
    if expected == "exact":
        assert (page["total"], page["totalExact"]) == (8_192 + 50, True)
    else:
        assert (page["total"], page["totalExact"]) == (50 + 4_096, False)
    # However a page's total was counted, stats count every match.
    assert store.page(STATS, q="common")["total"] == 8_192 + 50


# Stats the counters cannot answer: every filter the hot entries' table
# applies (hotcolumns.py), alone and together.
RAW_STATS = [
    {"method": "POST"}, {"method": "GET,DELETE", "projectId": "proj_1"},
    {"minDurationMs": "300"}, {"maxDurationMs": "200", "kind": "response,event"},
    {"serviceName": "billing-api", "source": "edge"}, {"route": "/v1/items/:id"},
    {"status": "500-599", "method": "DELETE"}, {"status": "200-299,404", "containerId": "cnt_2",
                                                "projectId": "proj_2", "method": "GET"},
    {"method": "GET", "since": "1800000700000", "until": "1800002100000"},
    {"kind": "request", "level": "info,error", "method": "POST,GET"},
]


def test_stats_of_the_hot_entries_from_a_workers_table_answer_as_entry_does(make_app):
    """Stats over filters the counters lack count the hot entries from the
    table a worker keeps of them (hotcolumns.py): the same answers as a
    worker that reads them from `entry` (LOGSVC_HOT_COLUMNS_ROWS=0), on the
    same store, as entries arrive, are sealed and are removed (a table that
    still held removed entries would count them)."""
    tabled = make_app(hot_rows=0, rate_limit_per_min=0)
    plain = make_app(hot_rows=0, rate_limit_per_min=0, hot_columns_rows=0)
    kept = tabled.extensions["logsvc"].store
    store, reader = Store(tabled.test_client()), Store(plain.test_client())
    store.ingest(corpus(300))
    assert seal(tabled, hot_rows=100, segment_rows=64) == 192  # 108 hot

    def same(hot):
        """The answers of both, and the hot entries the table held."""
        answers = [store.page(STATS, **question) for question in RAW_STATS]
        assert answers == [reader.page(STATS, **question) for question in RAW_STATS]
        assert kept.hot_columns.table.num_rows == hot
        assert plain.extensions["logsvc"].store.hot_columns is None
        return answers

    # The first question reads `entry`, and has the table made meanwhile.
    before = [store.page(STATS, **question) for question in RAW_STATS]
    deadline = time.monotonic() + 30
    while kept.hot_columns is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first = same(108)
    assert first == before and sum(a["total"] for a in first) > 0
    # New entries: the questions bring the table up to them; the round of
    # the background work, to what arrived since.
    store.ingest(corpus(40, start=300))
    assert [a["total"] for a in same(148)] != [a["total"] for a in first]
    store.ingest(corpus(10, start=340))
    with db.using(kept):
        db.call(hotcolumns.warm)
    assert kept.hot_columns.high == 350
    same(158)
    # Sealed meanwhile: the table's front is cut at the watermark.
    assert seal(tabled, hot_rows=50, segment_rows=64) == 64
    same(94)
    # Removed by retention: the table is made again.
    with db.using(kept):
        assert db.call(retention._delete_batch, "id <= ?", [270]) == 14
    same(80)


def parts():
    """SQLite: the segment parts stored, and those the segments name (at
    2 KB a part)."""
    kept = db.execute("SELECT count(*) FROM segment_part").fetchone()[0]
    wanted = sum((size + 2047) // 2048 for (size,) in db.execute(
        "SELECT bytes FROM segment").fetchall())
    return kept, wanted


@pytest.mark.sqlite_only("PostgreSQL keeps a segment's bytes in one bytea")
def test_segments_kept_in_small_parts_answer_as_while_hot_and_leave_no_part_behind(
        sealed_app, monkeypatch):
    # SQLite keeps a segment's bytes in parts: at 2 KB a part, every row
    # group's columns cross parts. The answers stay those of the hot rows,
    # through a merge, and the parts go with the segments they belong to.
    monkeypatch.setattr(segments, "PART_BYTES", 2048)
    store = Store(sealed_app.test_client())
    store.ingest(corpus(400))
    before = answers(store)
    assert seal(sealed_app) == 256
    with db.using(sealed_app.extensions["logsvc"].store):
        kept, wanted = db.call(parts)
        assert kept == wanted > 4 * 4  # four segments, each in several parts
    assert answers(store) == before
    assert merge(sealed_app, 256) == 256
    with db.using(sealed_app.extensions["logsvc"].store):
        kept, wanted = db.call(parts)
        assert kept == wanted and db.call(lambda: db.execute(
            "SELECT count(*) FROM segment").fetchone()[0]) == 1
    assert answers(store) == before
    assert store.client.post("/api/proxy-logs/_admin/clear",
                             headers=store.headers).status_code == 200
    with db.using(sealed_app.extensions["logsvc"].store):
        assert db.call(parts) == (0, 0)


def test_the_longest_of_a_level_is_found_in_the_row_group_that_holds_its_bucket(sealed_app):
    # Stats by level take their longest duration from the highest latency
    # bucket they count, reading only the row groups whose statistics hold
    # that bucket: here one row group (8 entries) holds nothing but it.
    def entry(i):
        slow = 16 <= i < 24
        return make_entry(i, projectId="proj_x", containerId="cnt_x", tsMs=1_800_000_000_000 + i,
                          level="error" if slow or i % 3 == 0 else "info",
                          durationMs=5000.0 + (i - 16) * 0.001 if slow else 10.0 + i)

    store = Store(sealed_app.test_client())
    store.ingest([entry(i) for i in range(200)])
    before = [store.page(STATS, level="error")["latency"]["max"],
              store.page(STATS, level="error", projectId="proj_x")["latency"]["max"]]
    assert before == [5000.007, 5000.007]
    assert seal(sealed_app, hot_rows=100, segment_rows=64) == 64
    assert [store.page(STATS, level="error")["latency"]["max"],
            store.page(STATS, level="error", projectId="proj_x")["latency"]["max"]] == before


@pytest.mark.postgres_only("PostgreSQL keeps the space of deleted segments in the table")
def test_the_space_a_merge_freed_is_given_back_and_the_answers_stay(sealed_app):
    store = Store(sealed_app.test_client())
    store.ingest(corpus(900))
    before = answers(store)
    assert seal(sealed_app, hot_rows=100, segment_rows=64) == 768
    assert merge(sealed_app, 768) == 704  # eleven segments of 64 into one

    def size():
        return db.execute("SELECT pg_total_relation_size('segment')").fetchone()[0]

    with db.using(sealed_app.extensions["logsvc"].store):
        merged = db.call(size)
        given = db.call(segments.reclaim, 0)
        assert given > 0 and db.call(size) == merged - given
        assert db.call(segments.reclaim) == 0  # less free than RECLAIM_MIN: left to seals
    segments._groups.clear()  # the rewritten table is read again
    assert answers(store) == before


def merge(app, merge_rows):
    with db.using(app.extensions["logsvc"].store):
        total = 0
        while n := db.call(segments.merge_once, merge_rows):
            total += n
        return total


def test_a_project_row_groups_are_found_by_bisection_as_by_looking_at_each(sealed_app):
    store = Store(sealed_app.test_client())
    store.ingest(corpus(900))
    assert seal(sealed_app, hot_rows=100, segment_rows=64) == 768
    assert merge(sealed_app, 320) == 640  # two segments of 320 (sorted as a whole), two of 64

    def check():
        checked = 0
        for segment_id, low, high in db.execute(
                "SELECT id, min_id, max_id FROM segment").fetchall():
            meta = {"id": segment_id, "min_id": low, "max_id": high}
            bounds = segments._layout(meta)[2]
            for project in ("proj_0", "proj_1", "proj_2", "proj_9", "a", "zz"):
                holding = [g for g, group in enumerate(bounds)
                           if group["project_id"][0] <= project <= group["project_id"][1]]
                assert list(segments._groups_of_project(meta, project)) == holding
                checked += bool(holding)
        return checked

    with db.using(sealed_app.extensions["logsvc"].store):
        assert db.call(check) >= 12  # three projects in each of four segments


def segment_rows_of(app):
    with db.using(app.extensions["logsvc"].store):
        return db.call(lambda: [row[0] for row in db.execute(
            "SELECT rows FROM segment ORDER BY min_id")])


def test_merged_segments_answer_every_question_as_the_segments_they_replace(sealed_app):
    store = Store(sealed_app.test_client())
    store.ingest(corpus(900))
    before = answers(store)
    assert seal(sealed_app, hot_rows=100, segment_rows=64) == 768
    assert segment_rows_of(sealed_app) == [64] * 12
    # Runs of five: two merged (each due at seven eighths of 320 rows);
    # the newest two segments wait for more.
    assert merge(sealed_app, 320) == 640
    assert segment_rows_of(sealed_app) == [320, 320, 64, 64]
    assert merge(sealed_app, 320) == 0  # a merged segment is merged no more
    after = answers(store)
    for (path, params), one, other in zip(QUESTIONS, before, after):
        assert one == other, (path, params)
    with db.using(sealed_app.extensions["logsvc"].store):
        # The merged segment's rows sorted by scope as a whole: each
        # project's rows in one run.
        table = db.call(lambda: segments._read_groups(
            {"id": db.execute("SELECT id FROM segment ORDER BY min_id").fetchone()[0],
             "min_id": 1, "max_id": 320}))
    projects = table["project_id"].to_pylist()
    assert len(projects) == 320
    runs = [p for i, p in enumerate(projects) if i == 0 or projects[i - 1] != p]
    assert runs == sorted(set(projects))


def test_warmed_small_columns_answer_as_row_groups_decoded_one_by_one(sealed_app, monkeypatch):
    store = Store(sealed_app.test_client())
    store.ingest(corpus(900))
    assert seal(sealed_app, hot_rows=100, segment_rows=64) == 768
    assert merge(sealed_app, 320) == 640
    cold = answers(store)
    handle = sealed_app.extensions["logsvc"].store

    def metas():
        return [{"id": i, "min_id": low, "max_id": high} for i, low, high in db.execute(
            "SELECT id, min_id, max_id FROM segment ORDER BY min_id").fetchall()]

    # Within its bytes, the newest segments first: here the newest alone.
    monkeypatch.setattr(segments, "WARM_BYTES", 64 * 64 + 1)
    with db.using(handle):
        db.call(segments.warm)
        warmed = db.call(lambda: [segments._warm_table(segments._key(m)) is not None
                                  for m in metas()])
    assert warmed == [False, False, False, True]
    monkeypatch.setattr(segments, "WARM_BYTES", 112 << 20)
    monkeypatch.setattr(segments, "WARM_GROUPS", 5)  # a few row groups a round
    with db.using(handle):
        rounds = 0
        while not all(db.call(lambda: [segments._warm_table(segments._key(m)) is not None
                                       for m in metas()])):
            db.call(segments.warm)
            rounds += 1
        assert rounds > 2
        warmed = db.call(lambda: [segments._warm_table(segments._key(m)) for m in metas()])
    assert all(table is not None for table in warmed)
    assert [table.num_rows for table in warmed] == [320, 320, 64, 64]
    assert set(warmed[0].column_names) == segments.WARM_COLUMNS
    for (path, params), one, other in zip(QUESTIONS, cold, answers(store)):
        assert one == other, (path, params)
    # A count over partial minutes of every scope (a window not asked
    # before) takes the warmed columns: no row group is decoded for it.
    every = store.page(LOGS, limit=1000)["entries"]
    assert len(every) == 900
    expected = sum(1 for e in every
                   if e["level"] == "error" and 1800000111111 <= e["tsMs"] < 1800004444444)
    segments._groups.clear()
    page = store.page(STATS, since="1800000111111", until="1800004444444", level="error")
    assert page["total"] == expected > 0
    assert segments._groups.held == 0
    # Merged away, a segment's warmed columns go at the next warming; the
    # merged one's are read over the rounds after.
    assert merge(sealed_app, 64 * 2) == 128
    with db.using(handle):
        db.call(segments.warm)
        keys = db.call(lambda: {segments._key(m) for m in metas()})
        assert len(keys) == 3 and set(segments._warm_tables) < keys
        for _ in range(10):
            db.call(segments.warm)
    assert set(segments._warm_tables) == keys
    # The codes of the names of segments merged away went with them.
    assert {key for key, _ in segments._warm_codes} <= keys


def test_stats_of_warm_segments_group_their_codes_and_answer_as_hot_rows(sealed_app):
    # Stats over filters the counters do not keep group a warm segment's
    # small columns as a whole with numpy (segments.matching_arrays): the
    # same answers as the hot rows gave, before a merge and after it (a
    # merged segment holds a time bucket's rows in many places, so that a
    # bucket's longest duration is the greatest of several).
    store = Store(sealed_app.test_client())
    store.ingest(corpus(400))
    asked = [(path, params) for path, params in QUESTIONS if path != LOGS] + [
        (STATS, {"method": "GET", "level": "warn,error", "maxDurationMs": "600"}),
        (STATS, {"source": "edge", "kind": "response", "sort": "p95"}),
        (HISTOGRAM, {"method": "GET,POST", "since": "1800000000000", "until": "1800003000000",
                     "bucket": "1h"}),
        (HISTOGRAM, {"kind": "request", "projectId": "proj_1", "since": "1800000000000",
                     "until": "1800003000000", "bucket": "5m"})]
    hot = [store.page(path, **params) for path, params in asked]
    assert seal(sealed_app) == 256
    handle = sealed_app.extensions["logsvc"].store
    for merged in (False, True):
        if merged:
            assert merge(sealed_app, 256) == 256
        with db.using(handle):
            for _ in range(10):
                db.call(segments.warm)
        segments._warm_codes.clear()
        for (path, params), one, other in zip(
                asked, hot, [store.page(path, **params) for path, params in asked]):
            assert one == other, (merged, path, params)
        # The method, kind and source were compared by their codes.
        assert {column for _, column in segments._warm_codes} >= {"method", "kind", "source"}


def test_segments_of_the_former_layout_are_read_and_merged_as_before(sealed_app):
    # Segments written by earlier versions have row groups of four Bloom
    # blocks (8,192 entries, blocks of 2,048); now a row group is a block.
    # A store keeps its old segments: they answer as the new ones do, and
    # merging them writes the new layout.
    import io

    import pyarrow.parquet as pq

    store = Store(sealed_app.test_client())
    store.ingest(corpus(900))
    before = answers(store)
    assert seal(sealed_app, hot_rows=100, segment_rows=64) == 768

    def former_layout():
        # Row groups of 32, and the bytes in the row as they were before
        # segments were kept in parts.
        for (segment_id,) in db.execute("SELECT id FROM segment").fetchall():
            out = io.BytesIO()
            pq.write_table(pq.read_table(io.BytesIO(segments.stored_bytes(segment_id))), out,
                           row_group_size=32, compression="zstd",
                           use_dictionary=segments._DICTIONARY)
            db.execute("UPDATE segment SET data = ?, bytes = ?, part_id = NULL, "
                       "part_bytes = NULL WHERE id = ?",
                       (out.getvalue(), len(out.getvalue()), segment_id))
        db.execute("DELETE FROM segment_part")

    def group_rows():
        return sorted({pq.ParquetFile(io.BytesIO(segments.stored_bytes(segment_id)))
                       .metadata.row_group(0).num_rows
                       for (segment_id,) in db.execute("SELECT id FROM segment").fetchall()})

    with db.using(sealed_app.extensions["logsvc"].store):
        db.call(former_layout)
        assert db.call(group_rows) == [32]  # four blocks of 8 (a 64-row segment's)
    assert answers(store) == before
    assert merge(sealed_app, 320) == 640
    with db.using(sealed_app.extensions["logsvc"].store):
        assert db.call(group_rows) == [32, 40]  # the merged: a block each
    assert answers(store) == before
    # The segments left in their rows (SQLite) are moved into parts by the
    # background work, while this process remembers where they were.
    with db.using(sealed_app.extensions["logsvc"].store):
        in_rows = "SELECT count(*) FROM segment WHERE part_id IS NULL"
        postgres = db.is_postgres()
        assert db.call(lambda: db.execute(in_rows).fetchone()[0]) == (4 if postgres else 2)
        moved = 0
        while n := db.call(segments.split_once):
            moved += n
        assert db.call(lambda: db.execute(in_rows).fetchone()[0]) == (4 if postgres else 0)
        assert (moved > 0) != postgres  # PostgreSQL keeps a segment in one bytea
    segments._groups.clear()  # decoded columns: the files are read again
    assert answers(store) == before


def test_a_search_that_skips_the_bodies_of_a_block_finds_what_it_found_while_hot(sealed_app):
    # Each block of a segment has a Bloom filter of its urls, data and
    # trace ids and one of its bodies: a block whose bodies hold none of
    # the words searched is read without them. A phrase may still run from
    # a url into `data` only where no word of a body lies between, so rows
    # that the rest does not decide are read with their bodies.
    def entry(i):
        block = i // 8  # one scope: a segment's blocks are 8 consecutive entries
        body = None if i % 2 == 0 else ("zulu yankee" if block % 2 == 0 else "note omega zulu")
        return make_entry(i, projectId="proj_x", containerId="cnt_x", url=f"/shop/alpha{i % 3}",
                          data={"note": "omega"}, responseBody=body)

    store = Store(sealed_app.test_client())
    store.ingest([entry(i) for i in range(300)])
    searches = ['"alpha0 note"', '"alpha1 note omega"', "omega", "zulu", '"zulu yankee"',
                '"yankee note"', "alpha2 -zulu", '"shop alpha0" OR "omega zulu"',
                'omega -"alpha0 note"', "alpha0 -yankee", '"note omega" alpha1']
    questions = [(path, {"q": q, **extra}) for q in searches
                 for path, extra in ((LOGS, {"limit": 500}), (STATS, {}))]
    before = [store.page(path, **params) for path, params in questions]
    # Between url and data, a body's words part the phrase (entry 3), or
    # start it (entry 9).
    found = {e["id"] - 1 for e in before[0]["entries"]}
    assert found == {i for i in range(300) if i % 3 == 0 and (i % 2 == 0 or i // 8 % 2)}
    assert seal(sealed_app, hot_rows=40, segment_rows=64) == 256
    with db.using(sealed_app.extensions["logsvc"].store):
        chosen = db.call(segments._chosen_segments, Filters(q='"alpha0 note"'), None, None)
        # Blocks whose bodies hold the phrase's words, and blocks whose
        # bodies do not.
        assert {bool(held) for meta in chosen for held in meta["bodies"].values()} == {
            True, False}
    assert [store.page(path, **params) for path, params in questions] == before
    assert merge(sealed_app, 256) == 256
    assert [store.page(path, **params) for path, params in questions] == before


def test_a_search_of_a_large_segment_pages_and_counts_window_by_window(make_app):
    # A page of a search looks at a segment's rows a window at a time by id
    # (4,096, then four times as many; past half the rows, or after a
    # window of few candidates, the rest at once), and its total goes on
    # where the page stopped: pages on either side of a window's end, and
    # past them, and every total, are what they were while hot (counted
    # whole: no limit to the rows a total decodes).
    sealed_app = make_app(hot_rows=0, rate_limit_per_min=0, sealed_count_rows=0)
    store = Store(sealed_app.test_client())
    for start in range(0, 10_000, 2_500):
        store.ingest(corpus(2_500, start))
    questions = [(LOGS, {"q": q, **extra})
                 for q in ("reset", "word3", "ada5 OR word6", "word3 ada1*")
                 for extra in ({"limit": 100}, {"offset": 4050, "limit": 30},
                               {"offset": 4100, "order": "desc", "limit": 40},
                               {"offset": 200, "limit": 10, "projectId": "proj_1"},
                               {"order": "desc", "limit": 5})]
    questions += [(STATS, {"q": "reset"}), (STATS, {"q": "word3", "level": "error"})]
    before = [store.page(path, **params) for path, params in questions]
    assert before[0]["total"] == 5000 and len(before[1]["entries"]) == 30
    assert before[15]["total"] == sum(1 for i in range(10_000)  # few, in every block
                                      if i % 6 == 3 and i % 7 == 3 and i % 11 in (1, 10))
    assert seal(sealed_app, hot_rows=700, segment_rows=9216) == 9216
    assert [store.page(path, **params) for path, params in questions] == before


def test_a_search_asks_only_the_urls_and_data_whose_block_may_hold_its_word(sealed_app):
    # A segment of 512 entries in 8 blocks of 64 (one scope: a block is 64
    # consecutive entries). "zulu" is in the urls of blocks 2 and 5, the
    # data of block 3, and bodies here and there: the other blocks' urls
    # and data are not searched for it (their filter lacks it), and every
    # search finds what it found while the entries were hot.
    def entry(i):
        block = i // 64
        url = f"/shop/zulu/{i}" if block in (2, 5) else f"/shop/item{i % 9}"
        data = {"note": "zulu omega" if block == 3 else "omega", "n": i}
        body = f"kilo{i % 5} zulu" if i % 37 == 0 else (f"kilo{i % 5}" if i % 2 else None)
        return make_entry(i, projectId="proj_x", containerId="cnt_x", url=url, data=data,
                          responseBody=body)

    store = Store(sealed_app.test_client())
    store.ingest([entry(i) for i in range(600)])
    searches = ["zulu", "ZULU omega", "zulu OR item3", '"shop zulu"', "zulu -kilo1",
                '"omega zulu"', "zul*", "kilo2 zulu", '"zulu 130"', "item7 OR kilo3"]
    questions = [(path, {"q": q, **extra}) for q in searches
                 for path, extra in ((LOGS, {"limit": 600}), (STATS, {}))]
    before = [store.page(path, **params) for path, params in questions]
    assert before[0]["total"] == 64 * 3 + sum(1 for i in range(600) if i % 37 == 0
                                              and i // 64 not in (2, 3, 5))
    assert seal(sealed_app, hot_rows=80, segment_rows=512) == 512
    with db.using(sealed_app.extensions["logsvc"].store):
        (meta,) = db.call(segments._chosen_segments, Filters(q="zulu"), None, None)
        size, heads = meta["heads"]
        assert size == 64
        assert list(heads["zulu"]) == [False, False, True, True, False, True, False, False]
    assert [store.page(path, **params) for path, params in questions] == before


def test_segments_with_one_bloom_filter_a_block_answer_as_before(sealed_app):
    # Segments written by earlier versions have one filter a block, of all
    # its words and trace ids: they answer as the new ones do.
    store = Store(sealed_app.test_client())
    store.ingest(corpus(400))
    before = answers(store)
    assert seal(sealed_app) == 256

    def one_filter_a_block():
        for (segment_id,) in db.execute("SELECT id FROM segment").fetchall():
            import io

            import pyarrow.parquet as pq

            data = segments.stored_bytes(segment_id)

            table = pq.read_table(io.BytesIO(bytes(data)))
            size = pq.ParquetFile(io.BytesIO(bytes(data))).metadata.row_group(0).num_rows
            rows = table.to_pylist()
            blooms = []
            for start in range(0, len(rows), size):
                block = rows[start:start + size]
                words = set()
                for row in block:
                    words |= fulltext.word_bytes(fulltext.document(
                        row["url"], row["request_body"], row["response_body"], row["data"]))
                words |= {("\x00trace:" + row["trace_id"]).encode() for row in block
                          if row["trace_id"]}
                blooms.append(segments.Bloom.of(words).dump())
            value = size.to_bytes(4, "big") + b"".join(
                len(b).to_bytes(4, "big") + b for b in blooms)
            db.execute("UPDATE segment SET words = ? WHERE id = ?", (value, segment_id))

    with db.using(sealed_app.extensions["logsvc"].store):
        db.call(one_filter_a_block)
        segments._skips.values.clear()  # none of this store's read yet; others' too
        segments._skips.held = 0
    assert answers(store) == before


def stored_segments(*sizes, size_bytes=100):
    """Segment rows as merge_plan reads them: consecutive id ranges."""
    out, low = [], 1
    for i, rows in enumerate(sizes, 1):
        out.append((i, low, low + rows - 1, rows, size_bytes * rows))
        low += rows
    return out


def test_a_merge_plan_takes_the_oldest_full_run_and_merges_an_entry_once():
    ids = lambda run: None if run is None else [segment[0] for segment in run]
    plan = segments.merge_plan
    # Seven eighths of 16 x 64 rows are due; fewer wait for more segments.
    assert ids(plan(stored_segments(*[64] * 13), 1024)) is None
    assert ids(plan(stored_segments(*[64] * 14), 1024)) == list(range(1, 15))
    # A merged segment (over half the most) is merged no more: the run
    # after it is the one due, as soon as it holds seven eighths.
    assert ids(plan(stored_segments(1024, 896, *[64] * 16), 1024)) == list(range(3, 17))
    # A run that the next segment cannot join is due as it is.
    assert ids(plan(stored_segments(64, 64, 64, 700, 64), 1024)) == [1, 2, 3]
    # Ids that do not follow (none are missing in a store) break a run.
    broken = stored_segments(*[64] * 16)
    broken[8] = (9, 10_000, 10_063, 64, 6400)
    assert ids(plan(broken, 1024)) == list(range(1, 9))
    # With a bound on bytes (LOGSVC_MAX_DISK_BYTES / 16), runs stop at it.
    assert ids(plan(stored_segments(*[64] * 16, size_bytes=100), 1024, 64 * 100 * 4)) \
        == [1, 2, 3, 4]
    assert plan(stored_segments(*[64] * 16), 0) is None  # merging off


@pytest.mark.sqlite_only("a read snapshot held on SQLite keeps its log from being cut")
def test_a_merge_holds_no_read_snapshot_while_it_builds(sealed_app, tmp_path):
    """A merge decodes and writes for tens of seconds on a large store: were
    it reading its sources through open blob handles all along, their read
    snapshot would keep every TRUNCATE checkpoint from cutting the log, and
    the writers waiting on those checkpoints would time out."""
    store = Store(sealed_app.test_client())
    store.ingest(corpus(3000))
    seal(sealed_app, hot_rows=100, segment_rows=256)
    attempts, done = [], threading.Event()

    def checkpoints():
        # Another connection writes (so that the log has frames a reader
        # may still need) and asks for the log to be cut, again and again.
        other = sqlite3.connect(tmp_path / "logs.db", timeout=0, isolation_level=None)
        other.execute("CREATE TABLE IF NOT EXISTS probe (x)")
        while not done.is_set():
            try:
                other.execute("INSERT INTO probe VALUES (1)")
                busy = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            except sqlite3.OperationalError:  # locked by the merge's reads
                busy = 1
            attempts.append((time.monotonic(), not busy))
            time.sleep(0.002)
        other.close()

    with db.using(sealed_app.extensions["logsvc"].store):
        metas = db.call(lambda: [{"id": i, "min_id": low, "max_id": high, "blocks": None}
                                 for i, low, high in db.execute(
                                     "SELECT id, min_id, max_id FROM segment ORDER BY min_id")])
        assert len(metas) == 11
        # On a loaded machine the watcher may get few turns during one
        # merge: the merge is built again until it saw three late attempts.
        late = []
        for _ in range(5):
            attempts.clear()
            done.clear()
            watcher = threading.Thread(target=checkpoints)
            watcher.start()
            try:
                start = time.monotonic()
                _, summary = db.call(segments._merged, metas)
                end = time.monotonic()
            finally:
                done.set()
                watcher.join()
            assert summary["rows"] == 11 * 256
            # Past its first half the merge only decodes and writes: the log
            # is cut at every attempt.
            now_late = [ok for at, ok in attempts if (start + end) / 2 <= at <= end]
            assert all(now_late), (len(attempts), now_late)
            late += now_late
            if len(late) >= 3:
                break
    assert len(late) >= 3, late


def test_a_read_whose_segments_were_merged_meanwhile_is_answered_from_the_merged_one(
        sealed_app):
    store = Store(sealed_app.test_client())
    store.ingest(corpus(500))
    expected = store.page(q="word3", limit=500)["entries"]
    seal(sealed_app, hot_rows=50, segment_rows=64)
    attempts = []

    def question():
        from logsvc.store.filters import Filters
        memo = {}
        filters = Filters(q="word3")
        segments._segments(filters, None, None, memo)  # the segments chosen first
        if not attempts:  # then merged by another process before they are read
            attempts.append(segments.merge_once(64 * 8))
        else:
            attempts.append("again")
        return segments.read(filters, order="asc", memo=memo)

    with db.using(sealed_app.extensions["logsvc"].store):
        found = db.call(question)
    assert attempts == [448, "again"]
    sealed = [e for e in expected if e["id"] <= 448]
    assert [e["id"] for e in found] == [e["id"] for e in sealed]
    assert found[0]["url"] == sealed[0]["url"]


@pytest.mark.parametrize("q", [None, "word2"])
def test_a_catch_up_read_during_which_a_seal_commits_gets_every_entry_once(sealed_app, q):
    """The live tail's catch-up reads the segments up to the watermark, then
    the hot tier above it. A seal that commits between the two reads takes
    out of the hot tier entries the segment read did not reach."""
    from logsvc.store import query

    store = Store(sealed_app.test_client())
    store.ingest(corpus(300))
    seal(sealed_app, hot_rows=200, segment_rows=64)  # 1-64 sealed, the rest hot
    filters = Filters(q=q)
    sealed = []

    def hot(after, n, max_id):
        if not sealed:  # another process seals before the hot read
            while taken := segments.seal_once(0, 64):
                sealed.append(taken)
        return query._entries_stored(filters, after, n, max_id)

    with db.using(sealed_app.extensions["logsvc"].store):
        found = db.call(query._ascending, filters, 20, 1000, None, hot)
        assert sum(sealed) == 192 and db.call(segments.sealed_through) == 256
    assert [e["id"] for e in found] == [i for i in range(21, 301)
                                        if q is None or (i - 1) % 2 and (i - 1) % 7 == 2]


def test_keyset_paging_crosses_the_boundary_without_skipping_or_repeating(sealed_app):
    store = Store(sealed_app.test_client())
    store.ingest(corpus(300))
    seal(sealed_app)
    for params, expected in (({}, list(range(1, 301))),
                             ({"q": "word2"}, [i + 1 for i in range(300)
                                               if i % 2 and i % 7 == 2])):
        seen, after = [], 0
        while True:
            page = store.page(afterId=after, limit=7, **params)
            seen += [e["id"] for e in page["entries"]]
            if not page["entries"]:
                break
            after = page["nextAfterId"]
        assert seen == expected


def test_a_sealed_entry_reads_as_it_was_written(sealed_app):
    store = Store(sealed_app.test_client())
    written = corpus(300)
    store.ingest(written)
    seal(sealed_app)
    entry = store.page(traceId="trace-5", includeRequestBody="true",
                       includeResponseBody="true")["entries"]
    assert [e["id"] for e in entry] == [11, 12]
    assert entry[0]["url"] == written[10]["url"] and entry[0]["clientIp"] == "10.0.2.1"
    assert entry[1]["responseBody"] == written[11]["responseBody"]
    assert entry[0]["data"] == {"n": 10} and entry[0]["requestBody"] is None


def test_retention_drops_the_oldest_segments_whole_and_the_counters_follow(sealed_app):
    store = Store(sealed_app.test_client())
    store.ingest(corpus(400))
    seal(sealed_app)
    config = sealed_app.extensions["logsvc"].config.replace(max_rows=300, retention_days=0)
    with db.using(sealed_app.extensions["logsvc"].store):
        assert db.call(lambda: db.execute("SELECT count(*) FROM segment").fetchone()[0]) == 4
        # 100 too many: the two oldest segments (1-64, 65-128) go whole.
        assert retention.prune(config) == 128
        kept = db.call(lambda: db.execute("SELECT min_id FROM segment ORDER BY min_id")
                       .fetchall())
    assert kept == [(129,), (193,)]
    stats = store.page(STATS)
    assert stats["total"] == 272
    assert sum(stats["byLevel"].values()) == 272
    assert stats == store.page(STATS, since="0")  # the counters agree with the entries
    assert [e["id"] for e in store.page(limit=500)["entries"]] == list(range(129, 401))
    page = store.page(q="word3", limit=500)
    assert [e["id"] for e in page["entries"]] == [i + 1 for i in range(128, 400)
                                                   if i % 2 and i % 7 == 3]
    assert page["total"] == len(page["entries"])


def test_retention_by_age_drops_a_segment_once_all_of_it_is_past(sealed_app):
    store = Store(sealed_app.test_client())
    store.ingest(corpus(400))
    seal(sealed_app)
    # Entry i is at 1_800_000_000_000 + i * 7000: the cutoff falls inside
    # the second segment (entries 65-128), which stays whole.
    now = 1_800_000_000_000 + 100 * 7_000 + 30 * 86_400_000
    config = sealed_app.extensions["logsvc"].config.replace(retention_days=30)
    with db.using(sealed_app.extensions["logsvc"].store):
        assert retention.prune(config, now=now) == 64
    assert store.page(STATS)["total"] == 336
    assert store.page(limit=1)["entries"][0]["id"] == 65


def test_a_clear_removes_the_segments_too(sealed_app):
    store = Store(sealed_app.test_client())
    store.ingest(corpus(300))
    seal(sealed_app)
    assert store.client.post("/api/proxy-logs/_admin/clear",
                             headers=store.headers).status_code == 200
    assert store.page(q="word3")["entries"] == []
    with db.using(sealed_app.extensions["logsvc"].store):
        assert db.call(lambda: db.execute("SELECT count(*) FROM segment").fetchone()[0]) == 0


@pytest.mark.sqlite_only("the upgrade in place of a schema 12 SQLite store")
def test_a_schema_12_store_is_upgraded_in_place_and_sealed_in_the_background(
        make_app, tmp_path):
    app = make_app(hot_rows=0, rate_limit_per_min=0)
    store = Store(app.test_client())
    store.ingest(corpus(300))
    before = answers(store)
    with db.using(app.extensions["logsvc"].store):
        db.call(rollup.count_all)  # schema 12 counted each entry as it stored it
    path = app.extensions["logsvc"].config.sqlite_path
    app.extensions["logsvc"].store.close()
    with sqlite3.connect(path) as conn:  # as schema 12 left it
        conn.execute("DROP TABLE segment")
        conn.execute("DELETE FROM meta WHERE key = 'counted_through'")
        conn.execute("UPDATE meta SET value = '12' WHERE key = 'schema_version'")
    upgraded = make_app(hot_rows=0, rate_limit_per_min=0)
    with db.using(upgraded.extensions["logsvc"].store):
        assert db.call(migrations.stored_version) == migrations.SCHEMA_VERSION
    store = Store(upgraded.test_client())
    assert seal(upgraded) == 192
    assert answers(store) == before


def _sealer(data_dir, hot_rows, segment_rows, log):
    """A process that seals and merges (runs of four segments) as fast as
    it can, to be killed."""
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "from logsvc.config import Config\n"
        "from logsvc.store import db, rollup, segments  # rollup: a seal counts first\n"
        f"config = Config.from_env().replace(data_dir={str(data_dir)!r})\n"
        "db.init(config)\n"
        f"while (db.call(segments.seal_once, {hot_rows}, {segment_rows})\n"
        f"       or db.call(segments.merge_once, {4 * segment_rows})): pass\n"
    )
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                                stdout=out, stderr=subprocess.STDOUT)


def test_a_kill_in_the_middle_of_a_seal_or_a_merge_loses_and_repeats_nothing(make_app,
                                                                             tmp_path):
    app = make_app(hot_rows=0, rate_limit_per_min=0)
    store = Store(app.test_client())
    for start in range(0, 4000, 1000):
        store.ingest(corpus(1000, start))
    before = answers(store)
    data_dir = app.extensions["logsvc"].config.data_dir
    rng = random.Random(5)
    for _ in range(8):
        child = _sealer(data_dir, 200, 97, tmp_path / "sealer.log")
        time.sleep(rng.uniform(0.2, 1.2))
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    child = _sealer(data_dir, 200, 97, tmp_path / "sealer.log")  # then to the end
    assert child.wait(timeout=300) == 0, (tmp_path / "sealer.log").read_text()[-3000:]
    with db.using(app.extensions["logsvc"].store):
        through = db.call(segments.sealed_through)
        ranges = db.call(lambda: db.execute(
            "SELECT min_id, max_id, rows FROM segment ORDER BY min_id").fetchall())
    assert through >= 3700
    # Consecutive ranges from 1 to the watermark, each entry in one.
    assert ranges[0][0] == 1 and ranges[-1][1] == through
    assert all(a[1] + 1 == b[0] for a, b in zip(ranges, ranges[1:]))
    assert sum(r[2] for r in ranges) == through
    assert [r[2] for r in ranges[:9]] == [4 * 97] * 9  # merged, the newest few waiting
    assert answers(store) == before
    ids = [e["id"] for e in store.page(limit=5000)["entries"]]
    assert ids == list(range(1, 4001))


@pytest.mark.sqlite_only("the test reads the watermark from the store's file")
def test_a_live_tail_resuming_from_a_sealed_id_gets_every_entry_once(tmp_path):
    server = Server(tmp_path, env={"LOGSVC_HOT_ROWS": "50", "LOGSVC_SEGMENT_ROWS": "50",
                                   "LOGSVC_MERGE_SEGMENTS": "2",
                                   "LOGSVC_SEAL_INTERVAL_S": "0.2"})
    server.start()
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    written = corpus(300)
    response = requests.post(server.url + INGEST, data=orjson.dumps(written), timeout=30,
                             headers={**headers, "Content-Type": "application/json"})
    assert response.status_code == 200
    path = tmp_path / "logs.db"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with sqlite3.connect(path) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'sealed_through'").fetchone()
        if row and int(row[0]) >= 200:
            break
        time.sleep(0.2)
    else:
        pytest.fail("nothing was sealed")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # pairs of segments merged
        with sqlite3.connect(path) as conn:
            sizes = [row[0] for row in conn.execute("SELECT rows FROM segment ORDER BY min_id")]
        if sizes[:2] == [100, 100]:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"segments not merged: {sizes}")
    for params in ({}, {"q": "word3"}):
        seen = []
        with requests.get(server.url + LOGS + "/stream", params=params, stream=True,
                          timeout=30, headers={**headers, "Last-Event-ID": "20"}) as stream:
            for line in stream.iter_lines():
                if line.startswith(b"data: ") and line != b"data: {}":
                    item = orjson.loads(line[6:])
                    seen.append(item["id"])
                    if item["id"] == 300 or (params and item["id"] >= 292):
                        break
        expected = [i + 1 for i in range(20, 300)
                    if not params or (i % 2 and i % 7 == 3)]
        assert seen == expected, params
    server.stop()


def _sealed_by(path):
    """(the watermark, the seal lease's holder) of a store's file."""
    with sqlite3.connect(path) as conn:
        through = conn.execute("SELECT value FROM meta WHERE key = 'sealed_through'").fetchone()
        holder = conn.execute("SELECT holder FROM lease WHERE name = 'seal'").fetchone()
    return int(through[0]) if through else 0, holder[0] if holder else None


def _running(pid):
    try:
        status = (Path("/proc") / str(pid) / "status").read_text()
    except OSError:
        return False
    return "zombie" not in status


@pytest.mark.sqlite_only("the test reads the watermark and the lease from the store's file")
@pytest.mark.parametrize("own_process", [True, False])
def test_gunicorn_seals_in_a_process_of_its_own_that_ends_with_the_server(tmp_path, own_process):
    server = Server(tmp_path, env={"LOGSVC_HOT_ROWS": "50", "LOGSVC_SEGMENT_ROWS": "50",
                                   "LOGSVC_SEAL_INTERVAL_S": "0.2",
                                   "LOGSVC_SEAL_PROCESS": "1" if own_process else "0"})
    server.start()
    sealer, workers = server.sealer_pid(), server.worker_pids()
    assert len(workers) == 2 and (sealer is not None) == own_process
    response = requests.post(server.url + INGEST, data=orjson.dumps(corpus(300)), timeout=30,
                             headers={"Authorization": f"Bearer {ADMIN_TOKEN}",
                                      "Content-Type": "application/json"})
    assert response.status_code == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _sealed_by(tmp_path / "logs.db")[0] < 200:
        time.sleep(0.2)
    through, holder = _sealed_by(tmp_path / "logs.db")
    assert through == 200
    sealed_in = int(holder.rsplit(":", 1)[1])
    assert sealed_in == sealer if own_process else sealed_in in workers
    if own_process:
        # It runs at a lower priority than the workers (LOGSVC_SEAL_NICE).
        served_at = os.getpriority(os.PRIO_PROCESS, workers[0])
        assert os.getpriority(os.PRIO_PROCESS, sealer) == min(19, served_at + 10)
        # The master killed without a word: the sealing process ends too.
        server.proc.kill()
        server.proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _running(sealer):
            time.sleep(0.1)
        assert not _running(sealer)
    else:
        server.stop()


@pytest.mark.sqlite_only("the test reads the watermark and the lease from the store's file")
def test_a_sealing_process_that_dies_is_started_again_and_takes_its_lease_over_at_once(tmp_path):
    server = Server(tmp_path, env={"LOGSVC_HOT_ROWS": "50", "LOGSVC_SEGMENT_ROWS": "50",
                                   "LOGSVC_SEAL_INTERVAL_S": "0.2"})
    server.start()
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}

    def sealed_through_at_least(count, timeout_s):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _sealed_by(tmp_path / "logs.db")[0] < count:
            time.sleep(0.2)
        return _sealed_by(tmp_path / "logs.db")

    try:
        first = server.sealer_pid()
        assert requests.post(server.url + INGEST, data=orjson.dumps(corpus(300)), timeout=30,
                             headers=headers).status_code == 200
        through, holder = sealed_through_at_least(200, 30)
        assert through >= 200 and int(holder.rsplit(":", 1)[1]) == first
        workers = server.worker_pids()
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and server.sealer_pid() in (None, first):
            time.sleep(0.1)
        second = server.sealer_pid()
        assert second not in (None, first)
        # Well within the dead process's lease (two minutes): the new
        # process took it over and seals what arrives next.
        assert requests.post(server.url + INGEST, data=orjson.dumps(corpus(300, 300)), timeout=30,
                             headers=headers).status_code == 200
        through, holder = sealed_through_at_least(500, 30)
        assert through >= 500
        assert int(holder.rsplit(":", 1)[1]) == second
        assert server.worker_pids() == workers  # the workers went on serving
    finally:
        server.stop()
    assert not _running(second)


T0 = 1_800_000_000_000  # on an hour
HOUR = 3_600_000


def spread(n, start=0):
    """corpus(), 30 s apart: 400 entries over 3 h 20 min."""
    entries = corpus(n, start)
    for i, e in enumerate(entries, start):
        e["tsMs"] = T0 + i * 30_000
    return entries


# Questions whose edges, scopes and buckets fall on both sides of a floor
# at T0 + 2 h, each asked of the counters and, with a filter they lack that
# every entry meets (a method), of the entries themselves.
EVERY_METHOD = {"method": "GET,POST,DELETE"}
FLOOR_QUESTIONS = [
    (STATS, {"projectId": "proj_1", "since": T0 + HOUR + 123_456, "until": T0 + 3 * HOUR + 5_000}),
    (STATS, {"since": T0 + 61_001, "until": T0 + 2 * HOUR + 1}),
    (STATS, {"since": T0 + HOUR + 20 * 60_000 + 5, "until": T0 + 3 * HOUR + 40 * 60_000}),
    (STATS, {"projectId": "proj_2", "containerId": "cnt_2", "since": T0 + 45 * 60_000 + 7}),
    (STATS, {"projectId": "proj_0", "since": T0 + 100_000, "until": T0 + 119 * 60_000 + 1}),
    (STATS, {"containerId": "cnt_4", "since": T0 + 5_000}),
    (HISTOGRAM, {"projectId": "proj_0", "since": T0, "until": T0 + 4 * HOUR, "bucket": "5m"}),
    (HISTOGRAM, {"projectId": "proj_1", "since": T0 + 3_000_000, "until": T0 + 9_000_000,
                 "bucket": "1m"}),
    (HISTOGRAM, {"containerId": "cnt_1", "since": T0 + 60_000, "until": T0 + 3 * HOUR,
                 "bucket": "15m"}),
    (STATS, {"projectId": "proj_1", "since": T0, "until": T0 + HOUR}),
    (STATS, {"since": T0, "until": T0 + HOUR}),
]


def floor_answers(store, oracle=False):
    return [store.page(path, **params, **(EVERY_METHOD if oracle else {}))
            for path, params in FLOOR_QUESTIONS]


def test_minute_counters_below_the_floor_go_and_every_answer_stays_exact(sealed_app):
    store = Store(sealed_app.test_client())
    written = spread(400)
    written[10]["durationMs"] = 9_999.5  # the longest of its hour, which retention drops
    store.ingest(written)
    before = answers(store) + floor_answers(store)
    assert before[-1]["latency"]["max"] == 9_999.5
    assert floor_answers(store) == floor_answers(store, oracle=True)
    seal(sealed_app)
    minutes = "SELECT count(*) FROM {} WHERE minute < ?"
    with db.using(sealed_app.extensions["logsvc"].store):
        # Keeping 2 hours at T0 + 4 h: the floor is T0 + 2 h, raised now,
        # its rows deleted once the grace has passed.
        assert horizon.trim(2, 1_000, now=T0 + 4 * HOUR) == 0
        assert db.call(horizon.floor_ms) == T0 + 2 * HOUR
        assert answers(store) + floor_answers(store) == before
        assert horizon.trim(2, 1_000, now=T0 + 4 * HOUR + 999) == 0
        deleted = horizon.trim(2, 1_000, now=T0 + 4 * HOUR + 1_000)
        floor = (T0 + 2 * HOUR) // 60_000
        assert deleted > 200
        for table in horizon.TRIMMED:
            assert db.call(lambda t=table: db.execute(minutes.format(t), (floor,))
                           .fetchone()[0]) == 0, table
        assert db.call(lambda: db.execute("SELECT count(*) FROM rollup_minute")
                       .fetchone()[0]) > 0
    assert answers(store) + floor_answers(store) == before
    # Late entries below the floor and new ones above it; then retention
    # drops the oldest segments, subtracting entries below the floor.
    late = spread(20, 400)
    for i, e in enumerate(late):
        e["tsMs"] = T0 + (i * 397_000 if i % 2 else 2 * HOUR + i * 61_000)
        e["durationMs"] = 1.0 + i
    store.ingest(late)
    assert floor_answers(store) == floor_answers(store, oracle=True)
    config = sealed_app.extensions["logsvc"].config.replace(max_rows=300, retention_days=0)
    with db.using(sealed_app.extensions["logsvc"].store):
        assert retention.prune(config) == 128
        assert db.call(lambda: db.execute(minutes.format("rollup_minute"), (floor,))
                       .fetchone()[0]) == 0
    after = floor_answers(store)
    assert after == floor_answers(store, oracle=True)
    assert store.page(STATS)["total"] == 420 - 128
    # The longest duration of the hour that lost it is the longest left.
    assert 0 < after[-1]["latency"]["max"] < 9_999 and after[-2]["latency"]["max"] < 9_999


@pytest.mark.sqlite_only("the test reads the store's file and its write-ahead log")
def test_a_sealing_server_trims_old_minute_counters_then_gives_its_log_back(tmp_path):
    # The background work seals, raises the minute counters' floor to an
    # hour ago and deletes the rows below it once the grace (twice the
    # query timeout) has passed; the answers stay exact. Then the sealer
    # asks whether anything is due before it takes its lease (a write):
    # a lease taken every round kept the log from ever being idle.
    server = Server(tmp_path, env={"LOGSVC_HOT_ROWS": "50", "LOGSVC_SEGMENT_ROWS": "50",
                                   "LOGSVC_SEAL_INTERVAL_S": "0.1", "LOGSVC_WAL_IDLE_S": "1",
                                   "LOGSVC_MINUTE_COUNTERS_HOURS": "1",
                                   "LOGSVC_QUERY_TIMEOUT_S": "0.5"})
    server.start()
    now = int(time.time() * 1000)
    written = corpus(300)
    for i, e in enumerate(written):
        e["tsMs"] = now - 3 * HOUR + i * 36_000  # the last 3 hours
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    response = requests.post(server.url + INGEST, data=orjson.dumps(written), timeout=30,
                             headers={**headers, "Content-Type": "application/json"})
    assert response.status_code == 200
    log = tmp_path / "logs.db-wal"
    floor = (now - HOUR) // HOUR * 60
    deadline = time.monotonic() + 30
    state = None
    while time.monotonic() < deadline:
        with sqlite3.connect(tmp_path / "logs.db") as conn:
            state = conn.execute(
                "SELECT (SELECT value FROM meta WHERE key = 'sealed_through'), "
                "(SELECT value FROM meta WHERE key = 'minute_floor'), "
                "(SELECT min(minute) FROM rollup_minute)").fetchone()
        size = log.stat().st_size if log.exists() else None
        if state[0] == "200" and state[1] and state[1].split()[2] == str(floor) and size == 0:
            break
        time.sleep(0.2)
    else:
        server.stop()
        pytest.fail(f"sealed, floor, first minute: {state}; write-ahead log {size}")
    assert state[1].split()[0] == str(floor) and state[2] >= floor
    for params in ({"projectId": "proj_1", "since": now - 150 * 60_000 + 7},
                   {"containerId": "cnt_3", "since": now - 3 * HOUR, "until": now - 5_000}):
        ours, entries = (requests.get(server.url + STATS, params={**params, **extra},
                                      headers=headers, timeout=30).json()
                         for extra in ({}, EVERY_METHOD))
        assert ours == entries and ours["total"] > 0, params
    server.stop()


@pytest.mark.postgres_only("SQLite gives sealed rows' pages back through incremental vacuum")
def test_on_postgresql_a_sealed_partition_is_dropped_and_its_space_given_back(make_app):
    from logsvc.store import partitions

    app = make_app(hot_rows=100, segment_rows=64, rate_limit_per_min=0)
    config = app.extensions["logsvc"].config
    assert config.store_partition_rows == 64  # a segment's ids per partition
    store = Store(app.test_client())
    store.ingest(corpus(500))
    before = answers(store)

    def entry_bytes():
        return db.call(lambda: int(db.execute(
            "SELECT coalesce(sum(pg_total_relation_size(i.inhrelid)), 0) FROM pg_inherits i "
            "WHERE i.inhparent IN ('entry'::regclass, 'entry_body'::regclass)").fetchone()[0]))

    with db.using(app.extensions["logsvc"].store):
        full = entry_bytes()
        # Whole segments, as long as more than 100 newer entries stay hot.
        assert retention.seal_due(config) == 64 * 6
        through = db.call(segments.sealed_through)
        left = db.call(partitions.listed)
        # Every partition below the watermark is gone, not just emptied;
        # the next two are made ahead of the writers (partitions.prepare:
        # AHEAD_FIRST, the pace of ingest not known yet).
        assert through == 384 and left == [6, 7, 8, 9]
        assert entry_bytes() < full * 0.5
    assert answers(store) == before  # nothing was lost with the tables


@pytest.mark.postgres_only("partitions are PostgreSQL's")
def test_on_postgresql_a_partition_drop_gives_way_to_a_long_read_and_is_done_later(make_app):
    """A drop held up by a long read gives way (after its wait, here a
    second), and the next round drops the partition; meanwhile writes go
    on (a lock of the parents queued every write of `entry` behind it
    until it gave way)."""
    from logsvc.store import partitions

    app = make_app(hot_rows=100, segment_rows=64, rate_limit_per_min=0)
    store = Store(app.test_client())
    store.ingest(corpus(300))
    held, release = threading.Event(), threading.Event()

    def long_read():  # another connection, in a transaction that reads partition 0
        with db.using(app.extensions["logsvc"].store), db.database.atomic():
            db.execute("SELECT count(*) FROM entry_p0").fetchone()
            held.set()
            release.wait(30)

    with db.using(app.extensions["logsvc"].store):
        assert db.call(segments.seal_once, 100, 64) == 64
        reader = threading.Thread(target=long_read)
        reader.start()
        try:
            assert held.wait(30)
            started = time.monotonic()
            tried = {}

            def drop():
                with db.using(app.extensions["logsvc"].store):
                    tried["dropped"] = db.call(partitions.drop_sealed, 64, "1s")
                    tried["at"] = time.monotonic()

            dropping = threading.Thread(target=drop)
            dropping.start()
            time.sleep(0.3)  # the drop waits for the long read
            # Ids 301-310: a partition there is already (no new one to make).
            assert store.ingest(corpus(10))["accepted"] == 10
            written = time.monotonic()
            dropping.join()
            assert tried["dropped"] == [] and written < tried["at"]
            assert time.monotonic() - started < 10
            assert db.call(partitions.listed)[0] == 0
        finally:
            release.set()
            reader.join()
        # A later round (one that a read of the moment holds up again
        # gives way too).
        deadline = time.monotonic() + 30
        while (dropped := db.call(partitions.drop_sealed, 64)) == [] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert dropped == [0]
        assert db.call(partitions.listed)[0] == 1
    assert [e["id"] for e in store.page(limit=500)["entries"]] == list(range(1, 311))


@pytest.mark.postgres_only("partitions are PostgreSQL's")
def test_on_postgresql_as_many_partitions_are_made_ahead_as_the_pace_of_ingest_needs(make_app):
    """Each empty partition made ahead is planned by every question that
    reads `entry`: the background makes as many as the writers fill in two
    of its rounds at the pace since its last round (at least one, at most
    AHEAD), and after a burst the next partitions are made one by one."""
    from logsvc.store import partitions, query

    app = make_app(hot_rows=100, segment_rows=64, rate_limit_per_min=0)
    store = Store(app.test_client())
    store.ingest(corpus(100))  # ids 1-100: partitions 0 and 1
    with db.using(app.extensions["logsvc"].store):
        def count(high_water, at):
            return db.call(lambda: partitions.ahead_count(high_water, 30, now=at))

        base = time.monotonic() - 300  # the rounds below ended before now
        assert count(100, base) == partitions.AHEAD_FIRST  # no pace known yet
        assert count(100, base + 30) == 1  # idle: the next one only
        assert count(100 + 64 * 10, base + 60) == partitions.AHEAD  # a burst: the most
        assert count(100 + 64 * 10 + 40, base + 90) == 2  # 40 ids a round: 80 in two
        assert count(100 + 64 * 10 + 40, base + 200) == 1
        # Made by the background's round: the partition of the next id and
        # the one after it (what an idle store's pace asks).
        from logsvc.store import retention

        config = app.extensions["logsvc"].config
        retention.seal_due(config)
        assert db.call(partitions.listed) == [0, 1, 2]
        assert db.call(query.high_water) == 100


@pytest.mark.postgres_only("partitions are PostgreSQL's")
def test_on_postgresql_partitions_are_made_ahead_without_waiting_for_reads(make_app):
    """The background makes the next partitions while a long transaction
    reads `entry` (a writer's CREATE TABLE ... PARTITION OF would wait for
    it, and hold every later read and write up behind it), and writers
    then find them."""
    from logsvc.store import partitions, query

    app = make_app(hot_rows=100, segment_rows=64, rate_limit_per_min=0)
    store = Store(app.test_client())
    store.ingest(corpus(100))  # ids 1-100: partitions 0 and 1

    def long_read():  # held until the block ends
        db.execute("SELECT count(*) FROM entry").fetchone()

    with _held_open(app, long_read, commit_after_s=30), \
            db.using(app.extensions["logsvc"].store):
        started = time.monotonic()
        assert db.call(lambda: partitions.prepare(query.high_water(), 3)) == [2, 3, 4]
        assert time.monotonic() - started < 0.9  # (a lock wait gives way at 1 s)
        assert db.call(partitions.listed) == [0, 1, 2, 3, 4]
        assert db.call(lambda: partitions.prepare(query.high_water(), 3)) == []
    assert store.ingest(corpus(200, start=100))["accepted"] == 200  # ids 101-300
    with db.using(app.extensions["logsvc"].store):
        assert db.call(partitions.listed) == [0, 1, 2, 3, 4]  # none more to make
        assert db.call(lambda: db.execute("SELECT count(*) FROM entry_p3").fetchone()[0]) == 64
    assert [e["id"] for e in store.page(limit=500)["entries"]] == list(range(1, 301))


@contextlib.contextmanager
def _held_open(app, work, commit_after_s):
    """Run `work` in a transaction of another thread, committed
    `commit_after_s` seconds after the block starts (or as it ends)."""
    made, commit = threading.Event(), threading.Event()

    def run():
        with db.using(app.extensions["logsvc"].store), db.database.atomic():
            work()
            made.set()
            commit.wait(30)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert made.wait(30)
        threading.Timer(commit_after_s, commit.set).start()
        yield
    finally:
        commit.set()
        thread.join()


@pytest.mark.postgres_only("partitions are PostgreSQL's")
def test_on_postgresql_a_writer_and_the_background_making_one_partition_both_go_on(make_app):
    """A writer that needs a partition the background is making at that
    moment waits for it and writes into it (its own creation fails on the
    name the other took), and the background leaves one a writer is
    making to it."""
    from logsvc.store import partitions, query

    app = make_app(hot_rows=100, segment_rows=64, rate_limit_per_min=0)
    store = Store(app.test_client())
    store.ingest(corpus(100))  # partitions 0 and 1

    def background():  # what prepare does for partition 2
        for parent in ("entry", "entry_body"):
            db.execute(f"CREATE TABLE {parent}_p2 (LIKE {parent})")
            db.execute(f"ALTER TABLE {parent} ATTACH PARTITION {parent}_p2 "
                       f"FOR VALUES FROM (129) TO (193)")

    with _held_open(app, background, commit_after_s=1.0):
        # Ids 101-200: partitions 1, 2 (being made) and 3.
        assert store.ingest(corpus(100, start=100))["accepted"] == 100
    with db.using(app.extensions["logsvc"].store):
        assert db.call(partitions.listed) == [0, 1, 2, 3]
        # A writer making partition 4 (ids 257-320): partitions 4 and 5
        # are due, and 4 is the writer's once it commits.
        with _held_open(app, lambda: partitions.ensure(257, 260), commit_after_s=0.5):
            assert db.call(lambda: partitions.prepare(query.high_water(), 2)) == [5]
        assert db.call(partitions.listed) == [0, 1, 2, 3, 4, 5]
    assert [e["id"] for e in store.page(limit=500)["entries"]] == list(range(1, 201))


@pytest.mark.postgres_only("partitions are PostgreSQL's")
def test_on_postgresql_a_sealed_partition_detached_but_not_dropped_is_dropped_later(make_app):
    """A process that ended between detaching a sealed partition and
    dropping it left a table that no parent lists: the next round drops
    it (and never a partition of ids not sealed)."""
    from logsvc.store import partitions

    app = make_app(hot_rows=100, segment_rows=64, rate_limit_per_min=0)
    store = Store(app.test_client())
    store.ingest(corpus(300))

    def tables():
        return sorted(name for (name,) in db.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = to_regnamespace(current_schema()) "
            "AND relkind = 'r' AND (relname LIKE 'entry\\_p%' OR relname LIKE 'entry\\_body\\_p%')"
        ).fetchall())

    with db.using(app.extensions["logsvc"].store):
        assert db.call(segments.seal_once, 100, 64) == 64
        for parent in ("entry_body", "entry"):
            db.call(db.execute, f"ALTER TABLE {parent} DETACH PARTITION {parent}_p0")
        # And one of ids not sealed, detached by hand: not ours to drop.
        db.call(db.execute, "ALTER TABLE entry_body DETACH PARTITION entry_body_p3")
        assert db.call(partitions.listed)[0] == 1
        assert db.call(partitions.drop_sealed, 64) == []
        left = db.call(tables)
        assert "entry_p0" not in left and "entry_body_p0" not in left
        assert "entry_body_p3" in left and "entry_p1" in left


@pytest.fixture
def small_filesystem(tmp_path):
    """A 48 MB filesystem of its own (tmpfs), unmounted after the test."""
    where = tmp_path / "small"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.sqlite_only("the data directory's own filesystem")
def test_on_a_small_filesystem_retention_by_size_keeps_room_and_tails_are_told(
        small_filesystem):
    limit = 16_000_000
    server = Server(small_filesystem, env={
        "LOGSVC_MAX_DISK_BYTES": str(limit), "LOGSVC_HOT_ROWS": "4000",
        "LOGSVC_SEGMENT_ROWS": "2000", "LOGSVC_SEAL_INTERVAL_S": "0.2",
        "LOGSVC_PRUNE_INTERVAL_S": "0.5", "LOGSVC_WAL_CHECKPOINT_MB": "4",
        "LOGSVC_RATE_LIMIT_PER_MIN": "0", "LOGSVC_RETENTION_DAYS": "0"}).start()
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    gaps, delivered = [], []

    def tail():
        with requests.get(server.url + LOGS + "/stream", stream=True, timeout=120,
                          headers={**headers, "Last-Event-ID": "0"}) as stream:
            event = None
            for line in stream.iter_lines():
                if line.startswith(b"event: "):
                    event = line[7:].decode()
                elif line.startswith(b"data: ") and line != b"data: {}":
                    item = orjson.loads(line[6:])
                    if event == "gap":
                        gaps.append(item)
                    else:
                        delivered.append(item["id"])
                    event = None
                    if delivered and delivered[-1] >= total:
                        return

    rng = random.Random(5)
    words = [f"w{rng.getrandbits(20):x}" for _ in range(500)]
    batches, size = 70, 1000  # about 90 MB of entries: more than the filesystem holds
    total = batches * size
    reader = threading.Thread(target=tail, daemon=True)
    reader.start()
    fullest = 0
    for b in range(batches):
        batch = [make_entry(b * size + i, responseBody=orjson.dumps({
            "items": [rng.choice(words) for _ in range(60)], "ref": f"{rng.getrandbits(64):x}",
            "note": " ".join(rng.choice(words) for _ in range(60))}).decode())
            for i in range(size)]
        response = requests.post(server.url + INGEST, data=orjson.dumps(batch), timeout=60,
                                 headers={**headers, "Content-Type": "application/json"})
        # Retention makes room: no write is refused for want of disk.
        assert response.status_code == 200, (b, response.text)
        usage = os.statvfs(small_filesystem)
        fullest = max(fullest, (usage.f_blocks - usage.f_bavail) * usage.f_frsize)
        time.sleep(0.1)
    reader.join(timeout=60)

    def look():
        stats = requests.get(server.url + STATS, headers=headers, timeout=10).json()
        page = requests.get(server.url + LOGS, headers=headers, timeout=10,
                            params={"limit": 1, "order": "asc"}).json()
        return stats["total"], page["entries"][0]["id"]

    deadline, seen = time.monotonic() + 60, None
    while time.monotonic() < deadline:  # until the last prunes and seals are done
        time.sleep(2)
        now = look()
        if now == seen:
            break
        seen = now
    count, first = seen
    kept = (small_filesystem / "logs.db").stat().st_size
    # A tail resuming from the beginning is told first what it missed.
    with requests.get(server.url + LOGS + "/stream", stream=True, timeout=30,
                      headers={**headers, "Last-Event-ID": "0"}) as stream:
        lines = (line for line in stream.iter_lines() if line.startswith((b"event:", b"data:")))
        told = [next(lines), next(lines)]
    server.stop()
    assert fullest < 48 * 1024 * 1024 * 0.95  # the filesystem never filled
    # The newest entries are kept, whole, and the counters count exactly them.
    assert count == total - first + 1 and 10_000 < count < 45_000
    assert kept < limit * 1.25  # the file itself, not just the pages it uses
    assert told[0] == b"event: gap"
    assert orjson.loads(told[1][6:]) == {"fromId": 1, "toId": first - 1}
    # The tail that kept up saw every entry once, in order.
    assert delivered == list(range(1, total + 1)) or (gaps and delivered[-1] == total)


def test_retention_by_size_keeps_the_newest_that_fit_and_the_counters_exact(make_app):
    app = make_app(hot_rows=0, rate_limit_per_min=0, retention_days=0)
    store = Store(app.test_client())
    store.ingest(corpus(1000))
    seal(app, hot_rows=300, segment_rows=200)  # what is sealed takes less room
    with db.using(app.extensions["logsvc"].store):
        used = db.call(db.used_bytes)
        config = app.extensions["logsvc"].config.replace(max_disk_bytes=used // 2)
        removed = retention.prune(config)
    # Half the bytes: half the entries at least (PostgreSQL's sizes move a
    # little between two looks: its statistics, its free space map), taken
    # as whole segments of 200, the oldest first.
    assert 475 <= removed <= 700 and removed % 200 == 0
    assert store.page(STATS)["total"] == 1000 - removed
    ids = [e["id"] for e in store.page(limit=5000)["entries"]]
    assert ids == list(range(removed + 1, 1001))  # the oldest went first
    page = store.page(q="word3", limit=5000)
    assert [e["id"] for e in page["entries"]] == [i + 1 for i in range(removed, 1000)
                                                   if i % 2 and i % 7 == 3]


@pytest.mark.sqlite_only("a few small segments free less than PostgreSQL's counter tables "
                         "grow by while they are subtracted from (the next test shows the "
                         "dropped segments' space reused and not counted)")
def test_retention_by_size_stops_once_the_store_fits(make_app):
    # What dropped segments took is free for the next ones (on PostgreSQL:
    # space within the segment table, made reusable as they are dropped),
    # and the store's size does not count it: once the store fits, a round
    # removes nothing. Counting it, each round went on removing a share of
    # what was left.
    app = make_app(hot_rows=0, rate_limit_per_min=0, retention_days=0)
    store = Store(app.test_client())
    store.ingest(corpus(1000))
    seal(app, hot_rows=300, segment_rows=100)
    with db.using(app.extensions["logsvc"].store):
        # A limit that half the segments' bytes would meet.
        (sealed,) = db.call(lambda: db.execute("SELECT sum(bytes) FROM segment").fetchone())
        config = app.extensions["logsvc"].config.replace(
            max_disk_bytes=db.call(retention.used_bytes) - sealed // 2)
        rounds = []
        while not rounds or rounds[-1] and len(rounds) < 10:
            rounds.append(retention.prune(config))  # a round of run_forever
            db.call(partitions.vacuum_updated)
        assert rounds[-1] == 0 and db.call(retention.used_bytes) <= config.max_disk_bytes
    kept = 1000 - sum(rounds)
    assert 400 <= kept <= 800 and store.page(STATS)["total"] == kept


@pytest.mark.postgres_only("PostgreSQL keeps the space of deleted segments in the table")
def test_the_space_of_merged_segments_is_reused_and_not_counted(make_app):
    app = make_app(hot_rows=0, rate_limit_per_min=0)
    store = Store(app.test_client())
    config = app.extensions["logsvc"].config.replace(hot_rows=100, segment_rows=64,
                                                     merge_segments=8)

    def sizes():
        total = db.execute("SELECT pg_total_relation_size('segment')").fetchone()[0]
        return total, retention.used_bytes(), db.execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'm')").fetchone()[0]

    store.ingest(corpus(613))
    with db.using(app.extensions["logsvc"].store):
        assert retention.seal_due(config) == 512  # eight segments, seven merged into one
        merged, used, files = db.call(sizes)
        assert db.call(lambda: db.execute("SELECT count(*) FROM segment").fetchone()[0]) == 2
        # The seven that were merged left their space: free, and not counted.
        assert used < files - merged // 3
        # (VACUUM frees what no running transaction may still read: tests
        # beside this one may hold a snapshot from before the merge.)
        db.call(_vacuum_once_older_transactions_end)
    store.ingest(corpus(512, start=613))
    with db.using(app.extensions["logsvc"].store):
        assert retention.seal_due(config) == 512
        # Eight more segments took the space of the first seven.
        assert db.call(sizes)[0] <= merged * 1.3  # (the second merged segment)
    assert store.page(STATS)["total"] == 1125


def _vacuum_once_older_transactions_end(timeout_s=60):
    (now,) = db.execute("SELECT clock_timestamp()").fetchone()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
            "AND (backend_xmin IS NOT NULL OR backend_xid IS NOT NULL) AND xact_start < ?",
            (now,)).fetchone()[0]:
        time.sleep(0.1)
    segments.vacuum()


def test_a_bloom_filter_sets_the_bits_its_layout_defines():
    """Segments sealed earlier are read with the same layout: each word's
    bits are (h1 + i * h2) mod size for i < hashes, h1 and h2 the two
    halves of its 16-byte BLAKE2b digest (h2 odd), size ten bits a word in
    whole bytes, bit p being bit p % 8 of byte p // 8. Built word by word
    here, the filter must match bit for bit, and answer for every word."""
    import hashlib

    rng = random.Random(3)
    for count in (0, 1, 7, 300, 5000):
        words = {"".join(rng.choice("abcdéz019_\x00:") for _ in range(rng.randint(1, 14)))
                 for _ in range(count)}
        size = -(-max(64, len(words) * 10) // 8) * 8
        expected = bytearray(size // 8)
        for word in words:
            digest = hashlib.blake2b(word.encode(), digest_size=16).digest()
            first = int.from_bytes(digest[:8], "big")
            second = int.from_bytes(digest[8:], "big") | 1
            for i in range(7):
                position = (first + i * second) % size
                expected[position // 8] |= 1 << (position % 8)
        built = segments.Bloom.of(words)
        assert built.dump() == (7).to_bytes(4, "big") + bytes(expected)
        loaded = segments.Bloom.load(built.dump())
        assert all(word in loaded for word in words)


# Few letters, so that words often match; every kind of separator, case,
# and letters beyond ASCII whose lowercase differs from their case folding.
_COLUMN_TEXT = st.text(alphabet="abAB1_ -./:\n\"éÉİKß", max_size=24)
_TERM = st.sampled_from(["a", "ab", "b1", "AB", "a*", "-a", "-b1", "NOT ab", '"a b"', "a-b",
                         "OR", "é", "i", "k", "ss", "1"])


def _query(terms):
    """The `q` of the terms, and it parsed (None: not a valid `q`)."""
    q = " ".join(terms)
    try:
        return q, fulltext.parse(q)
    except ValueError:
        return q, None


@settings(max_examples=500, deadline=None)
@given(rows=st.lists(st.tuples(_COLUMN_TEXT, st.none() | _COLUMN_TEXT,
                               st.none() | _COLUMN_TEXT, _COLUMN_TEXT), min_size=1, max_size=6),
       terms=st.lists(_TERM, min_size=1, max_size=4))
def test_a_sealed_search_finds_what_the_live_tail_matches(rows, terms):
    # A segment's rows are searched with Arrow's regular expressions, and
    # those they cannot decide are checked by fulltext.matches: together
    # they must find exactly the rows whose document matches.
    import pyarrow as pa

    q, parsed = _query(terms)
    if parsed is None:
        return
    table = pa.table({**{column: pa.array([r[at] for r in rows], pa.string()) for at, column in
                         enumerate(("url", "request_body", "response_body", "data"))},
                      "_pos": list(range(len(rows)))})
    kept = segments._prefiltered(table, q)
    found = sorted(kept["_pos"][i].as_py() for i in segments._passing(kept, parsed))
    assert found == [i for i, row in enumerate(rows)
                     if fulltext.matches(parsed, fulltext.document(*row))]


_PHRASE = st.sampled_from(["a", "ab", "b1", '"a b"', "a-b", "b1/ab", '"ab a b1"', "a.ab*",
                           '"1 a"', "-a-b", "é/a", "i-k", "OR", "ss-1"])


def _admitted_block(rows, q):
    """Whether a search for `q` reads the block of `rows` (url, request
    body, response body, data): its filters made as a seal makes them,
    stored and read back as a segment's, and asked as a search asks every
    block of a segment at once."""
    filters = Filters(q=q)
    blocks = segments._block_blooms(
        [r[0] for r in rows], [r[3] for r in rows], [None] * len(rows),
        [r[1] for r in rows], [r[2] for r in rows], len(rows))
    _, blooms, holding = segments._unpack_blooms(segments._words_value(len(rows), blocks))
    held = segments._held(holding, blooms, [0])
    return segments._holding_blocks(blooms, [0], held, segments._wanted_words(filters),
                                    segments._runs(filters)) == [0]


@settings(max_examples=1000, deadline=None)
@given(rows=st.lists(st.tuples(_COLUMN_TEXT, st.none() | _COLUMN_TEXT,
                               st.none() | _COLUMN_TEXT, _COLUMN_TEXT), min_size=1, max_size=4),
       terms=st.lists(_PHRASE, min_size=1, max_size=3))
def test_a_block_whose_entry_matches_a_phrase_is_never_skipped_by_its_word_order(rows, terms):
    # A block's filter of word order holds which words follow which in its
    # urls and `data` (_sequence_marks): a block is skipped for a phrase only where no
    # entry's document can hold it, however it runs through the url, the
    # bodies and `data`.
    q, parsed = _query(terms)
    if parsed is None:
        return
    if any(fulltext.matches(parsed, fulltext.document(*row)) for row in rows):
        assert _admitted_block(rows, q)


def test_a_phrase_skips_the_blocks_whose_urls_hold_its_words_apart():
    # Every word of /v1/invoices/4242 is in the block's urls (and bodies
    # name invoices), but not in that order: the block is skipped, unless
    # the phrase may run from a url into a body or a body into `data`.
    apart = [("/v1/invoices/17", None, '{"resource":"invoices"}', '{"bytesIn":4242}'),
             ("/v1/orders/4242", None, None, '{"bytesIn":5}')]
    assert not _admitted_block(apart, "/v1/invoices/4242")
    assert _admitted_block(apart, "v1/orders/4242")
    assert _admitted_block(apart, '"17 resource invoices bytesin 4242"')
    assert _admitted_block(
        [("/v1/invoices", None, "4242 ok", None), *apart], "/v1/invoices/4242")
    assert not _admitted_block(apart, '"invoices 17 v1"')


@settings(max_examples=500, deadline=None)
@given(rows=st.lists(st.tuples(_COLUMN_TEXT, st.none() | _COLUMN_TEXT,
                               st.none() | _COLUMN_TEXT, _COLUMN_TEXT, st.integers(-1, 2)),
                     min_size=1, max_size=8),
       terms=st.lists(_TERM, min_size=1, max_size=4))
def test_a_search_reading_bodies_only_where_they_may_decide_finds_what_the_live_tail_matches(
        rows, terms):
    # A search of a segment reads the rows of some blocks without their
    # bodies (the others, block -1, whole), then the bodies of the rows
    # that may need them, by each block's filter of its bodies
    # (_with_bodies); then as above.
    import pyarrow as pa

    q, parsed = _query(terms)
    if parsed is None:
        return
    columns = ("url", "request_body", "response_body", "data")
    whole = pa.table({**{column: pa.array([r[at] for r in rows], pa.string())
                         for at, column in enumerate(columns)},
                      "_pos": list(range(len(rows)))})
    bare = whole.set_column(1, "request_body", pa.array(
        [r[1] if r[4] < 0 else None for r in rows], pa.string())).set_column(
        2, "response_body", pa.array([r[2] if r[4] < 0 else None for r in rows],
                                     pa.string())).append_column(
        "has_body", pa.array([r[1] is not None or r[2] is not None for r in rows])).append_column(
        "_block", pa.array([r[4] for r in rows], pa.int64()))
    searched = segments._searched_words(Filters(q=q))
    held = {}
    for block in range(3):
        bloom = segments.Bloom.of(fulltext.word_bytes("\n".join(
            part for r in rows if r[4] == block for part in r[1:3] if part)))
        held[block] = frozenset(word for word in searched if word in bloom)
    expected = [i for i, row in enumerate(rows)
                if fulltext.matches(parsed, fulltext.document(*row[:4]))]
    for prefilter in (False, True):
        kept = segments._with_bodies(bare, q, held, lambda positions: whole.select(
            ["request_body", "response_body"]).take(pa.array(positions, pa.int64())))
        if prefilter:
            kept = segments._prefiltered(kept, q)
        found = sorted(kept["_pos"][i].as_py() for i in segments._passing(kept, parsed))
        assert found == expected, prefilter


def test_decoded_columns_past_the_budget_keep_the_part_that_fits():
    # A question that decodes more than the budget (a common word searched
    # in a merged segment: its urls, data and bodies) finds, asked again,
    # the values that fit still kept, rather than none: least recently used
    # alone would have evicted each one just before it was needed again.
    cache = segments._Budgeted(100, stale_s=60.0)
    wanted = [("segment", group, "response_body") for group in range(10)]

    def ask():
        hits = 0
        for at, key in enumerate(wanted):
            if cache.get(key) is not None:
                hits += 1
            else:
                assert cache.put(key, f"decoded {at}", 20) == f"decoded {at}"
        return hits

    assert ask() == 0
    assert ask() == ask() == 5
    assert cache.held == 100
    # Values unused for stale_s make room for others: another question
    # asked later is kept, least recently used first out.
    cache.stale_s = 0.05
    time.sleep(0.1)
    assert cache.put(("other", 0, "url"), "other", 30) == "other"
    assert cache.get(("other", 0, "url")) == "other"
    assert cache.get(wanted[0]) is None and cache.get(wanted[1]) is None
    assert cache.get(wanted[4]) == "decoded 4"
    assert cache.held == 90
