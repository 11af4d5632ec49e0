"""Which index a page walks (planner.py): the same entries whatever it
chooses, and on SQLite the choice the counters point to."""
import random

import orjson
import pytest

from logsvc.store import db, fulltext, planner, query
from logsvc.store.filters import Filters
from logsvc.testing import make_entry

START = 1_800_000_000_000
HOUR = 3_600_000


def skewed(n=900, seed=3):
    """A busy tenant and a small one, mostly info and 200s, errors and 5xx
    mostly the busy tenant's, ten hours of timestamps that arrive partly out of order (a late
    batch carries the first hour's entries last)."""
    rng = random.Random(seed)
    entries = []
    for i in range(n):
        late = i >= n - n // 10
        ts = START + (rng.randrange(HOUR) if late else i * (9 * HOUR) // n + HOUR)
        small = rng.random() < 0.08
        error = rng.random() < (0.1 if small else 0.15)
        status = rng.choice((500, 503)) if error else rng.choice((200, 200, 200, 201, 404, 302))
        entries.append(make_entry(
            i, projectId="small" if small else "busy", tsMs=ts, status=status,
            containerId=f"c{rng.randrange(3)}", serviceName=rng.choice(("api", "web", "jobs")),
            method=rng.choice(("GET", "GET", "GET", "POST", "DELETE")),
            **({"level": "error"} if error else {})))
    return entries


@pytest.fixture
def loaded(store):
    entries = skewed()
    for at in range(0, len(entries), 300):
        store.ingest(entries[at:at + 300])
    # Ids follow the order of ingest.
    return store, [{**e, "id": i + 1} for i, e in enumerate(entries)]


def _level(e):
    return e.get("level") or ("error" if e["status"] >= 500 else "info")


QUESTIONS = [
    ({"projectId": "small", "level": "error"},
     lambda e: e["projectId"] == "small" and _level(e) == "error"),
    ({"status": "2xx"}, lambda e: 200 <= e["status"] <= 299),
    ({"status": "5xx", "method": "POST"}, lambda e: e["status"] >= 500 and e["method"] == "POST"),
    ({"status": "404"}, lambda e: e["status"] == 404),
    ({"serviceName": "jobs", "level": "error"},
     lambda e: e["serviceName"] == "jobs" and _level(e) == "error"),
    ({"projectId": "busy", "containerId": "c1", "status": "5xx"},
     lambda e: (e["projectId"], e["containerId"]) == ("busy", "c1") and e["status"] >= 500),
    ({"since": START + 5 * HOUR, "until": START + 6 * HOUR},
     lambda e: START + 5 * HOUR <= e["tsMs"] < START + 6 * HOUR),
    # The late batch: ids at the end, timestamps at the start.
    ({"since": START, "until": START + HOUR + HOUR // 2, "level": "error"},
     lambda e: START <= e["tsMs"] < START + HOUR + HOUR // 2 and _level(e) == "error"),
    ({"since": START + 9 * HOUR, "method": "DELETE"},
     lambda e: e["tsMs"] >= START + 9 * HOUR and e["method"] == "DELETE"),
    ({"until": START + 2 * HOUR, "projectId": "small"},
     lambda e: e["tsMs"] < START + 2 * HOUR and e["projectId"] == "small"),
    ({"since": START + 20 * HOUR}, lambda e: False),
]


@pytest.mark.parametrize("order", ["asc", "desc"])
@pytest.mark.parametrize("params, wanted", QUESTIONS)
def test_a_page_holds_the_same_entries_whichever_index_finds_them(loaded, params, wanted, order):
    store, entries = loaded
    matching = [e["id"] for e in entries if wanted(e)]
    expected = matching if order == "asc" else matching[::-1]
    for limit, offset in ((7, 0), (7, 5), (500, 0)):
        page = store.page(**params, order=order, limit=limit, offset=offset)
        assert [e["id"] for e in page["entries"]] == expected[offset:offset + limit], (limit, offset)
        if page["totalExact"]:
            assert page["total"] == len(matching)
    # `last` and `afterId` too.
    assert [e["id"] for e in store.page(**params, last=5)["entries"]] == matching[-5:]
    after = matching[2] if len(matching) > 2 else 0
    assert [e["id"] for e in store.page(**params, afterId=after, limit=6)["entries"]] == [
        i for i in matching if i > after][:6]


@pytest.mark.parametrize("params, wanted", QUESTIONS)
def test_stats_count_the_same_entries_whichever_index_finds_them(loaded, params, wanted):
    store, entries = loaded
    stats = store.page("/api/proxy-logs/_logs/stats", **params)
    matching = [e for e in entries if wanted(e)]
    assert stats["total"] == len(matching)
    by_project = {}
    for e in matching:
        by_project[e["projectId"]] = by_project.get(e["projectId"], 0) + 1
    assert stats["byProject"] == by_project


def _plan(app, filters, need=200, ordered=True, order="desc"):
    """The plan SQLite makes of the page's query, and the planner's choice."""
    with db.using(app.extensions["logsvc"].store):
        where, params = planner.where_sql(filters, need, ordered, order)
        direction = "DESC" if order == "desc" else "ASC"
        sql = f"SELECT e.id FROM entry e WHERE {where} ORDER BY e.id {direction} LIMIT 200"
        steps = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()]
        return " / ".join(steps), planner.choose(filters, need, ordered, order)


def test_postgresql_is_kept_off_the_indexes_the_counters_rule_out(loaded, app, engine):
    if engine != "postgresql":
        pytest.skip("SQLite: the test below reads its plans in full")
    # PostgreSQL estimates from samples, and a rare tenant's errors looked
    # cheapest as the AND of both indexes (every error read); the filters
    # the counters rule out are written so that it cannot use their index.
    with db.using(app.extensions["logsvc"].store):
        for filters, kept, left in (
                (Filters(project_id="small", levels=("error",)), "project_id", "_p0_level"),
                (Filters(status_ranges=((200, 299),)), None, "_p0_status"),
                (Filters(project_id="small", status_ranges=((500, 599),)), "project_id",
                 "_p0_status")):
            where, params = planner.where_sql(filters, 200)
            plan = " / ".join(row[0] for row in db.execute(
                f"EXPLAIN SELECT e.id FROM entry e WHERE {where} ORDER BY e.id DESC LIMIT 200",
                params).fetchall())
            assert left not in plan, plan
            plain, _ = planner.choose(filters, 200)
            assert (kept is None or kept not in plain) and plain, plain


def test_postgresql_walks_the_kept_index_between_the_ids_of_the_time_range(loaded, app, engine):
    if engine != "postgresql":
        pytest.skip("SQLite ends every index key with the id: `level = ? AND id BETWEEN` "
                    "is one range of its level index already")
    # Given the ids alone, PostgreSQL read their range through the primary
    # key (every entry of the hour for its errors); given the value's
    # equality too, every entry of the value in its index.
    with db.using(app.extensions["logsvc"].store):
        for filters, column in (
                (Filters(since=START + 5 * HOUR, until=START + 6 * HOUR, levels=("error",)),
                 "level"),
                (Filters(since=START + 5 * HOUR, until=START + 6 * HOUR,
                         status_ranges=((503, 503),)), "status"),
                (Filters(since=START + 8 * HOUR, project_id="small"), "project_id")):
            plain, bounds = planner.choose(filters, 200)
            assert bounds is not None and plain <= {"since", "until"}, plain
            where, params = planner.where_sql(filters, 200)
            plan = " / ".join(row[0] for row in db.execute(
                f"EXPLAIN SELECT e.id FROM entry e WHERE {where} ORDER BY e.id DESC LIMIT 200",
                params).fetchall())
            assert f"Index Cond: ((ROW({column}, id) >= ROW(" in plan, plan
            assert "pkey" not in plan, plan


def test_the_counters_choose_the_index_that_reads_least(loaded, app, engine):
    if engine != "sqlite":
        pytest.skip("PostgreSQL's plans: the test above")
    # The small tenant's errors: its own index, not every tenant's errors.
    plan, _ = _plan(app, Filters(project_id="small", levels=("error",)))
    assert "entry_project_id_id_container_id" in plan and "entry_level" not in plan
    # The busy tenant's errors are fewer than its entries: the level's index.
    plan, _ = _plan(app, Filters(project_id="busy", levels=("error",)))
    assert "entry_level" in plan
    # Two thirds of the entries: the newest ids hold a page, nothing sorted.
    plan, _ = _plan(app, Filters(status_ranges=((200, 299),)))
    assert "entry_status" not in plan and "TEMP B-TREE" not in plan
    # A time range: walked by id between the range's least and greatest id.
    plan, (_, bounds) = _plan(app, Filters(since=START + 5 * HOUR, until=START + 6 * HOUR))
    assert "INTEGER PRIMARY KEY (rowid>? AND rowid<?)" in plan and "TEMP B-TREE" not in plan
    assert bounds[0] < bounds[1]
    # A range that holds no entry: found empty at once, not by walking
    # every info entry.
    plan, (_, bounds) = _plan(app, Filters(since=START + 20 * HOUR, levels=("info",)))
    assert bounds == (1, 0) or plan == "SEARCH e USING INDEX entry_ts_ms (ts_ms>?)"


def _minute_bounds():
    return db.call(lambda: (
        db.execute("SELECT minute, id_min, id_max FROM rollup_minute_all ORDER BY 1").fetchall(),
        db.execute("SELECT ts_ms / 60000, min(id), max(id) FROM entry GROUP BY 1 "
                   "ORDER BY 1").fetchall()))


def test_each_minute_keeps_the_least_and_greatest_id_of_its_entries(app, loaded):
    store, entries = loaded
    kept, exact = _minute_bounds()
    assert kept == exact
    # An entry that arrives late widens its minute's bounds to its id.
    minute = (START + 5 * HOUR) // 60_000
    (low, high), = [(low, high) for m, low, high in kept if m == minute]
    store.ingest([make_entry(0, tsMs=START + 5 * HOUR + 59_999)])
    kept, exact = _minute_bounds()
    assert kept == exact
    assert [(low_, high_) for m, low_, high_ in kept if m == minute] == [(low, len(entries) + 1)]
    # Retention removes the oldest ids: the bounds of what is left still
    # hold every id of their minute (a minute may keep a wider bound).
    from logsvc.store import retention

    retention.prune(app.extensions["logsvc"].config.replace(max_rows=500, retention_days=0))
    kept, exact = _minute_bounds()
    assert len(exact) < len(entries) and [m for m, *_ in kept] == [m for m, *_ in exact]
    assert all(k_low <= low and high <= k_high
               for (_, k_low, k_high), (_, low, high) in zip(kept, exact))
    # Pages over a time range walk between those bounds and miss nothing.
    left = store.page("/api/proxy-logs/_logs", limit=1000, order="asc")["entries"]
    for since, until in ((START, START + HOUR), (START + 4 * HOUR + 123, START + 7 * HOUR)):
        got = store.page("/api/proxy-logs/_logs", since=since, until=until, limit=1000,
                         order="desc")["entries"]
        assert [e["id"] for e in got] == [e["id"] for e in reversed(left)
                                          if since <= e["tsMs"] < until]


# Searches (`q`). Every entry's url holds `v1` and `items`; `12` is in the
# urls and `data` of a few. With COMMON lowered to the size of this store,
# a word of every entry is "common" here as one of a million entries'
# would be at the default.
SEARCHES = [
    ({"q": "items"}, lambda e: True),
    ({"q": "v1 items", "level": "error"}, lambda e: _level(e) == "error"),
    ({"q": "items", "projectId": "small"}, lambda e: e["projectId"] == "small"),
    ({"q": "items", "projectId": "busy", "status": "5xx"},
     lambda e: e["projectId"] == "busy" and e["status"] >= 500),
    ({"q": '"v1 items"', "method": "POST"}, lambda e: e["method"] == "POST"),
    ({"q": '"items v1"'}, lambda e: False),  # a phrase: the words in that order
    ({"q": "items -12"}, lambda e: "12" not in (e["url"].split("/")[-1], str(e["data"]["n"]))),
    ({"q": "items", "since": START + 5 * HOUR, "until": START + 6 * HOUR},
     lambda e: START + 5 * HOUR <= e["tsMs"] < START + 6 * HOUR),
    # The late batch: ids at the end, timestamps at the start.
    ({"q": "items", "until": START + HOUR}, lambda e: e["tsMs"] < START + HOUR),
    ({"q": "12"}, lambda e: "12" in (e["url"].split("/")[-1], str(e["data"]["n"]))),
]


@pytest.fixture
def common_words(monkeypatch):
    """Words of a hundred entries are common; a walk of the full-text index
    may read 2,000 rows for a page."""
    monkeypatch.setattr(planner, "COMMON", 100)
    monkeypatch.setattr(planner, "WALK_MAX", 2000)


@pytest.mark.parametrize("order", ["asc", "desc"])
@pytest.mark.parametrize("params, wanted", SEARCHES)
def test_a_search_finds_the_same_entries_however_its_words_are_read(
        loaded, common_words, params, wanted, order):
    test_a_page_holds_the_same_entries_whichever_index_finds_them(loaded, params, wanted, order)
    store, entries = loaded
    # A search's total is exact up to the cap of a page's count.
    page = store.page(**params, limit=3)
    assert page["totalExact"] and page["total"] == len([e for e in entries if wanted(e)])


@pytest.mark.sqlite_only("the walk of the full-text index is SQLite's")
@pytest.mark.parametrize("q", sorted({params["q"] for params, _ in SEARCHES}))
def test_the_live_tail_of_a_search_reads_what_follows_an_id(loaded, common_words, app, q):
    _, entries = loaded
    wanted = [e["id"] for e in entries if fulltext.matches(fulltext.parse(q), fulltext.document(
        e["url"], None, None, orjson.dumps(e["data"]).decode()))]
    after = wanted[len(wanted) // 2] if wanted else 0
    with db.using(app.extensions["logsvc"].store):
        found = query.entries_after(Filters(q=q), after, 1000)
        assert [e["id"] for e in found] == [i for i in wanted if i > after]
        if db.is_postgres():
            return  # its GIN index (fulltext.py)
        # A tail catching up walks the index from that id on, whatever the words.
        where, params = planner.search_walk(Filters(q=q), 1000, catch_up=True)
        plan = " / ".join(row[3] for row in db.execute(
            f"EXPLAIN QUERY PLAN SELECT e.id FROM {fulltext.WALKED} WHERE {where} "
            "AND f.rowid > ? ORDER BY f.rowid LIMIT 10", [*params, after]).fetchall())
    assert plan.startswith("SCAN f VIRTUAL TABLE") and "TEMP B-TREE" not in plan


def test_a_common_word_walks_the_full_text_index_unless_a_filter_reads_less(
        loaded, common_words, app, engine):
    if engine != "sqlite":
        pytest.skip("PostgreSQL searches through its GIN index (fulltext.py)")
    with db.using(app.extensions["logsvc"].store):
        # Alone, or beside filters most entries pass: the index in id order,
        # read until the page is full (no collecting of every match).
        for filters in (Filters(q="items"), Filters(q="items", project_id="busy")):
            where, params = planner.search_walk(filters, 200)
            plan = " / ".join(row[3] for row in db.execute(
                f"EXPLAIN QUERY PLAN SELECT e.id FROM {fulltext.WALKED} WHERE {where} "
                "ORDER BY f.rowid DESC LIMIT 200", params).fetchall())
            assert plan.startswith("SCAN f VIRTUAL TABLE") and "TEMP B-TREE" not in plan
        # Beside filters that few entries pass (the jobs service's 5xx, 5 %):
        # their index finds the entries, each checked against the collected
        # matches.
        few = Filters(q="items", service_names=("jobs",), status_ranges=((500, 599),))
        assert planner.search_walk(few, 200) is None
        plan, (plain, _) = _plan(app, few)
        assert "q" in plain and plan.startswith("SEARCH e USING INDEX entry_s")
        # A tenant's search asks the index for its words and the tenant's
        # scope word: FTS5 steps through the tenant's entries, in id order,
        # however few (the small tenant's are fewer than COMMON) or many.
        small = Filters(q="items", project_id="small")
        _, entries = loaded
        assert fulltext.indexed("items", cap=1000, scope=fulltext.scope_of(small)) == len(
            [e for e in entries if e["projectId"] == "small"]) < planner.COMMON
        where, params = planner.search_walk(small, 200)
        assert params[0].endswith(f' AND "{fulltext.scope_of(small)[0]}"')
        busy = Filters(q="items", project_id="busy", container_id="c1")
        project, container = fulltext.scope_of(busy)
        assert project.startswith("\ue000p") and container.startswith("\ue000c")
        where, params = planner.search_walk(busy, 200)
        assert params[0].endswith(f' AND "{project}" AND "{container}"')
        # A rare word: its few matches are read by id.
        rare = Filters(q="12")
        assert planner.search_walk(rare, 200) is None
        plan, _ = _plan(app, rare)
        assert "LIST SUBQUERY" in plan and "entry_project_id" not in plan


@pytest.mark.postgres_only("SQLite walks its full-text index (the test above)")
def test_postgresql_checks_a_common_word_entry_by_entry_and_collects_a_rare_words_matches(
        loaded, common_words, app):
    with db.using(app.extensions["logsvc"].store):
        # Every url holds "items": a page walks the entries, each checked
        # against its document, until it is full.
        assert fulltext.dense("items") == 1.0
        where, _ = planner.where_sql(Filters(q="items"), 200)
        assert where.startswith("EXISTS (SELECT 1 FROM entry_body")
        # A word that too few of the newest documents hold for a page of
        # 200 to fill within WALK_MAX (2,000) entries: its matches through
        # the GIN index.
        assert 0 < fulltext.dense("12") * planner.WALK_MAX < 200
        where, _ = planner.where_sql(Filters(q="12"), 200)
        assert where.startswith("e.id = ANY(ARRAY(SELECT entry_id FROM entry_body")
        # A time range: the share among the documents of its ids. The
        # late batch (the last 90 ids) holds the first hour.
        assert fulltext.dense("items", 811, 900) == 1.0
        assert fulltext.dense("12", 1, 0) == 0.0
        # Counted alone, a search reads entry_body, up to the cap.
        assert fulltext.indexed("items", cap=50) == 50
        assert fulltext.indexed("items", 811, 900, cap=1000) == 90
