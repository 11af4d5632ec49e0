"""Which index finds a page's entries, or a capped count's.

SQLite chooses among `entry`'s indexes without knowing how many entries a
value holds (it keeps no statistics unless ANALYZE runs, which reads every
index, and even then it knows an index's average per value: `level=error`
and `level=info` look alike, and a range's size is a guess). At a million
entries that chose badly where two filters have indexes: `projectId` of
a small tenant with `level=error` walked every error of every tenant
(53 ms), `status=2xx&order=desc` read all 640,000 2xx entries through
the status index to sort them (780 ms) where walking the newest ids finds
200 of them at once. PostgreSQL estimates from a sample, and took the
same small tenant's errors as the AND of both indexes (7 ms for 50 rows).

The counters know those numbers exactly (rollup.py), so the choice is made
here: for each filter with an index, the rows that walking it would read
before the page (or the count's cap) is full, beside walking every entry
by id; the cheapest wins, and every other filter is written without its
index (filters.where_sql's `plain`). What the counters do not hold (a
method, a route) is estimated. Lookups by trace id, address or `q`, and
`order=slowest`, are left as they are: their own indexes find few rows.

The estimates, for a store of N entries and M matching the filters
(taken as independent of each other):
- walking by id reads about need × N / M rows (every row when M < need),
  and, newest first, those after `until` first (oldest first: before
  `since`); ids follow time closely enough for a time range's entries to
  lie together;
- an index of one value (in id order) reads about need × c / M of its c
  entries, the same way;
- an index of several values or a range reads all of its c entries and
  sorts them (a count needs no sort: need × c / M);
- a time range can also be walked by id between the least and the greatest
  id of its entries, which the counters keep per minute (a row a minute to
  read, where the ts_ms index held all of the range's entries: 2.7 ms for
  an hour at a million entries a day).
"""
import math
import time

from . import db, fulltext, names, rollup, sketch
from .filters import where_sql as _where_sql
from .rollup import COUNT_COLUMNS

# What the counters cannot tell, as the share of the entries that match.
_GUESS = {"methods": 0.3, "routes": 0.1}
# Reading through an index costs a row lookup besides the index entry;
# sorting what it read, about half as much again.
_INDEX_COST, _SORT_COST = 1.5, 0.5
# Filters with an index of their own (models.py), by field.
_INDEXED = ("project_id", "levels", "service_names", "status_ranges", "methods", "time",
            "duration")
# The fields of each of those whose name is not the field's.
_FIELDS = {"project_id": ("project_id", "container_id"), "time": ("since", "until"),
           "duration": ("min_duration_ms", "max_duration_ms")}
_BY_DEFAULT = ("trace_id", "client_ip", "q", "timed")
_INDEXED_FIELDS = {field for name in _INDEXED for field in _FIELDS.get(name, (name,))}


def where_sql(filters, need, ordered=True, order="desc"):
    """filters.where_sql of `filters`, written so that a page of `need`
    entries (`ordered`: by id, newest first unless `order` is "asc") or a
    count capped at `need` reads the fewest rows."""
    plain, bounds = choose(filters, need, ordered, order)
    kept = _kept_value(filters, plain) if bounds is not None and db.is_postgres() else None
    if kept is None:
        where, params = _where_sql(filters, plain)
        if bounds is not None:
            where += " AND e.id >= ? AND e.id <= ?"
            params += list(bounds)
        return where, params
    # PostgreSQL, walking one value of an index between ids: given the ids
    # alone, it reads their range through the primary key instead (44,000
    # rows for the last hour's 3,300 errors at a million entries); given
    # the value's equality too, it reads every entry of the value in the
    # index. Compared as a pair, they are that index's range and no other's
    # (the value's own equality stays, written without its index).
    field, column, value = kept
    where, params = _where_sql(filters, plain | {field})
    where += f" AND (e.{column}, e.id) >= (?, ?) AND (e.{column}, e.id) <= (?, ?)"
    return where, params + [value, bounds[0], value, bounds[1]]


def _kept_value(filters, plain):
    """(field, column, stored value) of the one-value filter whose index a
    walk between ids goes through, or None (a walk of every entry between
    them)."""
    for item, value in filters.active:
        if item.field in _SINGLE and item.field not in plain:
            _, values = item.sql(value)
            return (item.field, _SINGLE[item.field], values[0]) if len(values) == 1 else None
    return None


# A search (`q`) on SQLite whose words the full-text index holds for at
# least COMMON entries walks that index by id (fulltext.WALKED) when the
# other filters are expected to let through a page within WALK_MAX of its
# rows; otherwise the index's matches are collected first and the entries
# found as for any other filter (fulltext.where_sql).
COMMON = 20_000
WALK_MAX = 50_000


def search_walk(filters, need, catch_up=False):
    """SQLite: (condition over fulltext.WALKED, params) that finds the
    entries of a search by walking the full-text index in id order, or
    None where collecting the index's matches first reads less: a rare
    word (the usual search: an id, an email) outside a tenant, or words
    beside filters that few entries pass. The time range becomes id bounds on the walk
    (`_id_bounds`). `need`: the rows of the page or the capped count.
    `catch_up`: the live tail's read of what follows an id, which walks
    whatever the words (it reads the index from that id on, not all of it)."""
    f = filters
    if f.q is None or db.is_postgres():
        return None
    if f.trace_id is not None or f.client_ip is not None or f.timed:
        return None  # their own indexes find few rows
    low, high = _search_bounds(f)
    scope = fulltext.scope_of(f)
    if not catch_up:
        # A tenant's search walks whatever its words: the index steps
        # through the tenant's matches (scope words), newest first, and
        # stops with the page; collecting them first would read them all.
        if not scope and not _common(f.q, low, high):
            return None
        # The index holds the project and container (scope words): the
        # walk meets only their entries.
        rest = f.replace(q=None, since=None, until=None, project_id=None, container_id=None)
        if rest.active:
            counts = _Counts(rest)
            if counts.total <= 0:
                return None
            share = math.prod(counts.shares(counts.candidates()).values())
            if share <= 0 or need / share > WALK_MAX:
                return None
    where, params = _where_sql(f.replace(q=None))
    found, found_params = fulltext.walk_sql(f.q, low, high, scope)
    return f"{found} AND {where}", [*found_params, *params]


def _search_bounds(filters):
    """The id bounds of the time range (None, None: none)."""
    if filters.since is None and filters.until is None:
        return None, None
    return _id_bounds(filters)


def _common(q, low, high, scope=()):
    """Whether the full-text index holds COMMON entries or more for the
    words of `q` (and the `scope` words) with low <= id <= high (the time
    range's id bounds)."""
    return fulltext.indexed(q, low, high, COMMON, kept=True, scope=scope) >= COMMON


def index_alone(filters):
    """Whether the full-text index alone counts the entries of `filters`: a
    search with no other filter (on SQLite, of words, in a project or a
    container or not: the index holds their scope words; a phrase is
    checked against each document. PostgreSQL's index holds positions)."""
    alone = {"q"} if db.is_postgres() else {"q", "project_id", "container_id"}
    return (filters.q is not None
            and all(item.field in alone for item, _ in filters.active)
            and (db.is_postgres() or fulltext.exact_in_index(fulltext.parse(filters.q))))


# The filters whose index holds one value's entries in id order (models.py).
_SINGLE = {"project_id": "project_id", "levels": "level", "service_names": "service_name",
           "status_ranges": "status", "methods": "method"}


def _id_bounds(filters):
    """The least and the greatest id of the entries in the time range:
    every match lies between them. From the id bounds of the range's
    minutes (rollup_minute_all: a row a minute), or where a minute lacks
    them (counted by an older version), from the ts_ms index."""
    where, params = [], []
    if filters.since is not None:
        where.append("minute >= ?")
        params.append(filters.since // rollup.MINUTE_MS)
    if filters.until is not None:
        where.append("minute <= ?")
        params.append((filters.until - 1) // rollup.MINUTE_MS)
    low, high, minutes, bounded = db.execute(
        f"SELECT min(id_min), max(id_max), count(*), count(id_min) FROM rollup_minute_all "
        f"WHERE {' AND '.join(where)}", params).fetchone()
    if minutes != bounded:
        where, params = [], []
        if filters.since is not None:
            where.append("ts_ms >= ?")
            params.append(filters.since)
        if filters.until is not None:
            where.append("ts_ms < ?")
            params.append(filters.until)
        low, high = db.execute(f"SELECT min(id), max(id) FROM entry "
                               f"WHERE {' AND '.join(where)}", params).fetchone()
    return (1, 0) if low is None else (low, high)


def choose(filters, need, ordered=True, order="desc"):
    """(the fields of `filters` to write without their index, (least,
    greatest) id to walk between or None); ((), None) leaves the choice to
    the database."""
    if any(getattr(filters, f) not in (None, ()) for f in _BY_DEFAULT if f != "q"):
        return (), None
    if filters.q is not None:
        if db.is_postgres():
            # Words that enough of the newest (oldest) documents hold for a
            # page to fill within WALK_MAX entries: each entry is checked
            # against its document (PostgreSQL picks the index to walk).
            # Else the GIN index's matches are collected and read by id.
            share = fulltext.dense(filters.q, *_search_bounds(filters),
                                   newest=not ordered or order != "asc", kept=True)
            return (frozenset({"q"}) if share * WALK_MAX >= need else ()), None
        if not _common(filters.q, *_search_bounds(filters), fulltext.scope_of(filters)):
            return (), None  # a rare word: its few matches are read by id
        # A common word beside filters that few entries pass (else it is
        # walked, see search_walk): the index those filters choose finds
        # the entries, each checked against the collected matches. Without
        # one, the matches are read by id.
        rest = filters.replace(q=None)
        plain, bounds = choose(rest, need, ordered, order)
        kept = {item.field for item, _ in rest.active} & _INDEXED_FIELDS
        if bounds is None and not kept - set(plain):
            return (), None
        return frozenset(plain) | {"q"}, bounds
    active = {item.field for item, _ in filters.active}
    if not active & {"levels", "service_names", "status_ranges", "methods", "since", "until",
                     "min_duration_ms", "max_duration_ms"}:
        return (), None  # nothing to choose: the project's index, or walking by id
    counts = _Counts(filters)
    if counts.total <= 0:
        return (), None
    candidates = counts.candidates()
    matching = max(1.0, counts.total * math.prod(counts.shares(candidates).values()))
    total = counts.total
    window = counts.window
    skip = counts.skipped(order) if ordered else 0
    # Fewer matches than needed: a walk reads everything it can reach.
    short = matching < need
    if ordered:
        walk = total if short else skip + need * window / matching
    else:
        walk = total if short else need * total / matching
    costs = {None: walk}
    for name, (size, single) in candidates.items():
        if name == "time":
            continue  # walked between ids instead (below): never dearer
        if ordered and single:
            cost = size if short else min(size, skip * size / total
                                          + need * size * (window / total) / matching)
        elif ordered:
            cost = size * (1 + _SORT_COST)
        else:
            cost = size if short else min(size, need * size / matching)
        costs[name] = cost * _INDEX_COST
    bounds = None
    if "time" in candidates:
        # Walking by id between the least and the greatest id of the time
        # range, read from the id bounds of its minutes (a counter row a
        # minute): every entry between them, or the entries of one value of
        # an index (SQLite ends each index key with the id, so `level = ?
        # AND id BETWEEN ? AND ?` is one range of it). Where entries arrived
        # long after their time, ids span more than the range: checked once
        # the ids are known.
        def between(span):
            options = {("bounds", None): span}
            options.update((("bounds", name), size * span / total * _INDEX_COST)
                           for name, (size, single) in candidates.items()
                           if single and name != "time")
            return {key: rows if short else min(rows, need * rows / matching)
                    for key, rows in options.items()}
        costs.update(between(window))
        if isinstance(min(costs, key=costs.get), tuple):
            bounds = _id_bounds(filters)
            costs.update(between(max(window, bounds[1] - bounds[0] + 1)))
    best = min(costs, key=costs.get)
    between_ids = isinstance(best, tuple)
    keep = best[1] if between_ids else best
    # Every indexed filter but the one kept is written plain (the time
    # range always: it is walked by id, or not used to find the rows).
    plain = {field for name in _INDEXED if name != keep
             for field in _FIELDS.get(name, (name,))}
    return frozenset(plain & active), bounds if between_ids else None


# How long a process keeps the entry count of each service (a row per
# service name): an estimate needs no more recent figures.
SERVICES_KEPT_S = 30.0


def _per_service():
    """{stored service name: entries} over every scope, read at most every
    SERVICES_KEPT_S seconds per process and store."""
    store = db.current()
    kept = getattr(store, "per_service", None)
    now = time.monotonic()
    if kept is None or now - kept[0] > SERVICES_KEPT_S:
        rows = db.execute("SELECT service_name, n FROM rollup_service_total_all").fetchall()
        kept = store.per_service = (now, {name: n for name, n in rows})
    return kept[1]


_TOTALS = ", ".join(f"CAST(SUM({c}) AS BIGINT)" for c in COUNT_COLUMNS)


class _Counts:
    """What the counters say of the filters' values."""

    def __init__(self, filters):
        self.filters = f = filters
        row = db.execute(f"SELECT {_TOTALS}, MAX(lat) FROM rollup_total_all").fetchone()
        self.total = row[0] or 0
        self.by_column = {c: n or 0 for c, n in zip(COUNT_COLUMNS, row)}
        self.latency = sketch.loads(row[-1])
        self.window = self.total
        if f.since is not None or f.until is not None:
            self.window = self._between(f.since, f.until)

    def _between(self, since, until):
        # An estimate: the whole minutes around the range, which the
        # counters hold (its partial minutes would be counted from the
        # entries, sealed ones too).
        minute = rollup.MINUTE_MS
        since = None if since is None else since // minute * minute
        until = None if until is None else -(-until // minute) * minute
        source = rollup.counted(None, None, since, until, keys=False, columns=("n",))
        if source is None:
            return 0
        (n,) = db.execute(f"SELECT CAST(coalesce(SUM(n), 0) AS BIGINT) FROM ({source[0]}) "
                          f"AS counted", source[1]).fetchone()
        return n

    def skipped(self, order):
        """Entries that a walk by id passes before the time range: newer
        than `until` (newest first), older than `since` (oldest first)."""
        f = self.filters
        if order == "asc":
            return 0 if f.since is None else self._between(None, f.since)
        return 0 if f.until is None else self._between(f.until, None)

    def _scope(self, project_id, container_id=None):
        where, params = rollup.scope_where(project_id, container_id)
        (n,) = db.execute("SELECT CAST(coalesce(SUM(n), 0) AS BIGINT) FROM "
                          f"{rollup.source('rollup_container_total')} WHERE {' AND '.join(where)}",
                          params).fetchone()
        return n

    def _breakdown(self, prefix, values):
        return sum(self.by_column.get(f"{prefix}_{v}", 0) for v in values)

    def _statuses(self):
        size = 0
        for low, high in self.filters.status_ranges:
            for c in range(max(1, low // 100), min(5, high // 100) + 1):
                part = (min(high, c * 100 + 99) - max(low, c * 100) + 1) / 100
                # A whole class is counted; a part of one, a share of it (one
                # status of a class holds about a fifth of it).
                size += self.by_column[f"status_{c}xx"] * (1 if part >= 1 else min(1, part * 20))
        return size

    def _duration(self):
        f = self.filters
        low = None if f.min_duration_ms is None else sketch.bucket_of(f.min_duration_ms)
        high = None if f.max_duration_ms is None else sketch.bucket_of(f.max_duration_ms)
        return sum(n for bucket, n in self.latency.items()
                   if (low is None or bucket >= low) and (high is None or bucket <= high))

    def candidates(self):
        """{name: (entries its index holds for the value(s), whether one
        value in id order)} of the filters with an index."""
        f, out = self.filters, {}
        if f.project_id is not None:
            out["project_id"] = (self._scope(f.project_id), True)
        if f.levels:
            out["levels"] = (self._breakdown("level", f.levels), len(f.levels) == 1)
        if f.service_names:
            per_service = _per_service()
            out["service_names"] = (sum(per_service.get(s, 0) for s in
                                        names.stored_all(f.service_names)),
                                    len(f.service_names) == 1)
        if f.status_ranges:
            single = len(f.status_ranges) == 1 and f.status_ranges[0][0] == f.status_ranges[0][1]
            out["status_ranges"] = (self._statuses(), single)
        if f.methods:
            out["methods"] = (self.total * min(1.0, _GUESS["methods"] * len(f.methods)),
                              len(f.methods) == 1)
        if f.since is not None or f.until is not None:
            out["time"] = (self.window, False)
        if f.min_duration_ms is not None or f.max_duration_ms is not None:
            out["duration"] = (self._duration(), False)
        return out

    def shares(self, candidates):
        """{filter: the share of the entries it lets through}."""
        f, total = self.filters, self.total
        out = {name: min(1.0, size / total) for name, (size, _) in candidates.items()}
        if f.container_id is not None:
            within = candidates["project_id"][0] if f.project_id is not None else total
            out["container_id"] = (self._scope(f.project_id, f.container_id) / max(1, within))
        if f.kinds:
            out["kinds"] = self._breakdown("kind", f.kinds) / total
        if f.sources:
            out["sources"] = self._breakdown("source", f.sources) / total
        if f.routes:
            out["routes"] = min(1.0, _GUESS["routes"] * len(f.routes))
        return out
