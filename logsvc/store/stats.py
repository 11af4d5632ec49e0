"""Counts for dashboards, read from the rollup counters and summed in SQL.

A summary is one statement over a *source*: rows shaped (project,
container, service, n, <count columns>) that together count exactly the
entries of the question, summed per scope once and then into the total
and the breakdowns.

- No time range: `rollup_total`, one row per scope (without a scope:
  `rollup_total_all`, `rollup_container_total`, `rollup_service_total_all`).
- A time range [since, until): whole hours from `rollup_hour`, the whole
  minutes around them from `rollup_minute`, and the partial minutes at
  either end straight from `entry` through its `ts_ms` index, so the answer
  is exact to the millisecond while the rows read stay about
  (scopes × (hours + 2 × 30 minutes)), whatever the length of the range:
  where an edge lies in the first half of its hour, the whole hour is read
  and the minutes before the edge are subtracted (rollup.signed_spans).

The database does the summing: the total and its level, kind, status and
source breakdowns in one row (from the all-scope tiers when no scope is
asked for), and the project, container and service breakdowns: without a
scope, from the key tiers (rows per container and per service, see
rollup.key_counted); with one, from the scope's rows (one per container
and service), summed per key. The cost follows the size of the
answer (the number of projects, containers and services in it), not the
number of entries, nor the number of services behind each container.

A level or a status class (whole classes: `5xx`, `400-599`), with a scope
and a time range or not, is read the same way from the counters kept per
class (rollup.classed): whole hours and all time from them, the rest of
the range from the matching entries.

Filters the counters lack (a method, a service, a route, a duration, a
kind, `q`...) send the question to the matching entries, found through the index the
planner picks (planner.py) and read once: one pass gives the summary, its
latency and its routes (`_raw_summary`).

A histogram's buckets are whole buckets: hourly and longer ones read
`rollup_hour_all` when no scope is asked for and `rollup_hour` when one is;
shorter ones read `rollup_five_minutes_all` (5 to 30 minutes) or
`rollup_minute_all` when no scope is asked for, and `rollup_minute`
(through its (project, minute) index) when one is. Each bucket's p50 and p95 come from the latency
sketches of the same rows, merged (sketch.py).

`latency` and `byRoute` read the latency and route counters the same way
(rollup.latency, rollup.routes); percentiles are within 1 % of the exact
nearest-rank value, and `max` is exact.
"""
import itertools
import math
import operator
from collections import Counter

from logsvc.entry import KINDS, LEVELS, SOURCES, STATUS_CLASSES, now_ms

from . import db, horizon, hotcolumns, names, planner, rollup, segments, sketch
from .query import InvalidParameter
from .rollup import COUNT_COLUMNS

MINUTE_MS = rollup.MINUTE_MS
HOUR_MS = rollup.HOUR_MS
BUCKETS = {"1m": 1, "5m": 5, "10m": 10, "15m": 15, "30m": 30, "1h": 60,
           "3h": 180, "6h": 360, "12h": 720, "1d": 1440}
MAX_BUCKETS = 10_000
DEFAULT_HISTOGRAM_MS = 3_600_000

_BREAKDOWN_OF_PREFIX = {"level": "byLevel", "kind": "byKind", "status": "byStatus",
                        "source": "bySource"}
# Breakdowns read from key columns: name -> column
_KEY_BREAKDOWNS = {"byProject": "project_id", "byContainer": "container_id",
                   "byService": "service_name"}


TOP_ROUTES = 20
EVERY = float("inf")  # a count of every match (planner.where_sql's `need`)


def from_counters(filters):
    """Whether the scope tiers answer (rollup.SCOPE_FIELDS); any other
    filter sends the question to `entry`."""
    return rollup.only(filters, rollup.SCOPE_FIELDS)


def summary(filters, top_routes=TOP_ROUTES, sort="total"):
    """{total, byLevel, byProject, byContainer, byService, byKind, byStatus,
    bySource, latency, byRoute} of the entries matching `filters`: from the
    counters when the filters are a scope and a time range, else counted
    over the matching entries (through the same indexes as a search)."""
    f = filters
    def run():
        found = _planned()
        if from_counters(f):
            scope = (f.project_id, f.container_id, f.since, f.until)
            # The total and its breakdowns by level, kind, status and source
            # need no scope keys: unscoped, they come from the all-scope
            # tiers (a row per minute or hour, not one per scope). A scope's
            # rows give both.
            if f.project_id is None and f.container_id is None:
                result = _summarize_every_scope(rollup.counted(*scope, keys=False),
                                                f.since, f.until)
            else:
                result = _summarize(rollup.counted(*scope))
            counts, longest = rollup.latency(*scope)
            routes = rollup.routes(*scope)
        elif rollup.classed(f):
            # A level or a status class: the counters kept by class.
            if f.project_id is None and f.container_id is None:
                result = _summarize_every_scope(
                    rollup.counted(filters=f, found=found, keys=False), f.since, f.until,
                    filters=f, found=found)
            else:
                result = _summarize(rollup.counted(filters=f, found=found))
            counts, longest = rollup.class_latency(f, found)
            routes = rollup.class_routes(f, found)
        else:
            result, counts, longest, routes, spans = _raw_summary(
                *planner.where_sql(f, EVERY, ordered=False), filters=f,
                requests="request" in f.kinds)
            result["latency"] = sketch.summary(counts, longest, minimum=spans.pop(None, (None,))[0])
            result["byRoute"] = _by_route(routes, top_routes, sort, lambda wanted: spans)
            return result
        result["latency"] = sketch.summary(counts, longest, minimum=_shortest(f, counts))
        result["byRoute"] = _by_route(routes, top_routes, sort,
                                      _route_spans(f, sum(counts.values()), found))
        return result
    return db.read(run)


def measure(filters, metric):
    """What an alert rule measures (alerts.py): {"total", "errors"} for
    count, rate and errorRate, or the latency summary for a percentile,
    read with as few counter rows as the filters allow (a scope and a time
    range: the counters' totals; with levels or status classes, the class
    counters); other filters: `summary`."""
    f = filters
    if metric in ("count", "rate", "errorRate") and (
            from_counters(f) or (rollup.classed(f) and metric != "errorRate")):
        def run():
            columns = ("n", "level_error") if from_counters(f) else ("n",)
            if from_counters(f):
                source = rollup.counted(f.project_id, f.container_id, f.since, f.until,
                                        keys=False, columns=columns)
            else:
                source = rollup.counted(filters=f, found=_found, keys=False, columns=columns)
            if source is None:
                return {"total": 0, "errors": 0}
            sums = ", ".join(f"CAST(coalesce(SUM({c}), 0) AS BIGINT)" for c in columns)
            row = db.execute(f"SELECT {sums} FROM ({source[0]}) AS counted",
                             source[1]).fetchone()
            return {"total": row[0], "errors": row[1] if len(row) > 1 else None}
        return db.read(run)
    if metric.startswith("p") and (from_counters(f) or rollup.classed(f)):
        def latency():
            if from_counters(f):
                counts, longest = rollup.latency(f.project_id, f.container_id, f.since, f.until)
            else:
                counts, longest = rollup.class_latency(f, _found)
            return sketch.summary(counts, longest, minimum=_shortest(f, counts))
        return db.read(latency)
    found = summary(f, top_routes=1)
    return {"total": found["total"], "errors": found["byLevel"].get("error", 0),
            **found["latency"]}


def _planned():
    """_found with each plan worked out once: within one request, several
    readers (the totals, the breakdowns, the latency, the routes) ask for
    the entries of the same filters (a range, or a part of it)."""
    plans = {}

    def found(filters):
        plan = plans.get(filters)
        if plan is None:
            plan = plans[filters] = _found(filters)
        return plan[0], list(plan[1])
    return found


def _found(filters):
    """(condition, params) of every entry of `filters` (rollup's class readers)."""
    return planner.where_sql(filters, EVERY, ordered=False)


# The columns the route table may be sorted by (`sort`).
ROUTE_SORTS = ("total", "errors", "errorRate", "timed", "p50", "p95", "p99", "route")


def _shortest(filters, counts):
    """The exact shortest duration of the entries of `filters` (latency
    buckets `counts`), read only when a percentile falls in the lowest
    bucket (else None: no percentile needs it)."""
    lowest, _ = sketch.extremes_needed(counts, sketch.PERCENTILES)
    return None if lowest is None else rollup.latency_extreme(filters, lowest, shortest=True)


# Up to this many timed entries, the exact extremes of the routes are read
# by a scan of the question's entries; past it, through the latency bucket
# index (see rollup.route_extremes).
SCANNED_EXTREMES = 20_000


def _route_spans(filters, timed, found):
    """spans(wanted) -> {route: (shortest, longest)} of the routes' calls
    among the entries of `filters` (`timed` of them have a duration), in
    one statement (rollup.route_extremes); `found`: _found, or the
    request's `_planned`."""
    scan = found if timed <= SCANNED_EXTREMES else None
    return lambda wanted: rollup.route_extremes(filters, wanted, scan)


_ROUTE_PS = (50, 95, 99)


def _by_route(routes, top, sort="total", spans=None):
    """The `top` routes by `sort` (ROUTE_SORTS), highest first (`route`:
    by name); ties by name. By calls or by name, only the shown rows are
    worked out. `spans(wanted)`: the exact (shortest, longest) duration of
    the calls of each route of `wanted` ({route: (lowest bucket, highest
    bucket)}, each None when no percentile falls in it), which its
    percentiles stay within; by another column, the routes are ranked by
    their sketches and the shown ones then kept within their extremes
    (which moves a value by less than 1 %)."""
    shown = names.shower()  # stored routes (names.py) by name
    ranked = sorted(((route, counts) for route, counts in routes.items()
                     if counts[0] > 0), key=lambda item: (-item[1][0], shown(item[0])))
    if sort in ("total", "route"):
        if sort == "route":
            ranked.sort(key=lambda item: shown(item[0]))
        chosen = ranked[:top]
        found = _spans_of(chosen, spans)
        return [_route_row(shown(route), counts, found.get(route)) for route, counts in chosen]
    rows = sorted(((route, _route_row(shown(route), counts)) for route, counts in ranked),
                  key=lambda row: _sort_key(row[1], sort))[:top]
    found = _spans_of([(route, routes[route]) for route, _ in rows], spans)
    rows = [_route_row(row["route"], routes[route], found[route]) if route in found else row
            for route, row in rows]
    return sorted(rows, key=lambda row: _sort_key(row, sort))


def _spans_of(chosen, spans):
    """{route: (shortest, longest)} of the routes of `chosen` ((route,
    counts) pairs) whose percentiles need them."""
    wanted = {}
    for route, (_, _, buckets) in chosen:
        pair = sketch.extremes_needed(buckets, _ROUTE_PS)
        if pair != (None, None):
            wanted[route] = pair
    return spans(wanted) if spans is not None and wanted else {}


def _route_row(route, counts, span=None):
    calls, errors, buckets = counts
    timed = sum(buckets.values())
    row = {"route": route, "total": calls, "errors": errors, "timed": timed,
           "errorRate": round(errors / calls, 4)}
    shortest, longest = span or (None, None)
    row.update((f"p{p}", v) for p, v in
               sketch.percentiles(buckets, _ROUTE_PS, timed, longest, shortest).items())
    return row


def _sort_key(row, sort):
    return (row[sort] is None, -(row[sort] or 0), row["route"])


def histogram(bucket, filters):
    """Entries per time bucket and level over [since, until), whole buckets,
    with each bucket's p50 and p95 duration. `until` defaults to now,
    `since` to an hour before `until`; a range of more than MAX_BUCKETS
    buckets is refused."""
    until = now_ms() if filters.until is None else filters.until
    since = until - DEFAULT_HISTOGRAM_MS if filters.since is None else filters.since
    if since >= until:
        raise InvalidParameter("since", "Must be earlier than until.")
    if (until - since) // (BUCKETS[bucket] * MINUTE_MS) > MAX_BUCKETS:
        raise InvalidParameter("bucket", f"more than {MAX_BUCKETS} buckets; use a larger bucket")
    return db.read(_histogram, bucket, since, until, filters)


def level_buckets(filters, size_ms, start, end):
    """({bucket start: counts in LEVELS order}, {bucket start: (latency
    sketch, longest)}) of the entries matching `filters` in whole buckets
    of `size_ms` over [start, end) (both multiples of it): from the
    counters when the filters are a scope and a time range and the bucket
    whole minutes, else counted over the matching entries."""
    def run():
        if from_counters(filters) and size_ms % MINUTE_MS == 0:
            return _counted_buckets(size_ms // MINUTE_MS, start, end, filters)
        return _raw_buckets(size_ms, start, end, filters)
    return db.read(run)


def _empty():
    return {"total": 0, **{name: {} for name in (*_KEY_BREAKDOWNS, *_BREAKDOWN_OF_PREFIX.values())}}


def _summarize(source):
    """The summary of the counter rows of `source` (sql, params: one row per
    scope and time unit, with every count column), in one statement."""
    result = _empty()
    if source is None:
        return result
    return _summarized(result, _SHARED_SQL.format(source=source[0]), source[1])


def _summarize_every_scope(totals, since, until, filters=None, found=None):
    """The summary of every scope's entries over [since, until): the total
    and its breakdowns from the all-scope rows of `totals`, the key
    breakdowns from the key tiers (rollup.key_counted; by class with
    `filters` and `found`), in one statement."""
    result = _empty()
    if totals is None:
        return result
    containers, services = (rollup.key_counted(breakdown, since, until, filters, found)
                            for breakdown in ("containers", "services"))
    sql = _EVERY_SCOPE_SQL.format(containers=containers[0], totals=totals[0],
                                  services=services[0])
    return _summarized(result, sql, [*totals[1], *containers[1], *services[1]])


def _summarized(result, sql, params):
    """`result` with the rows of `sql` (a total row, then a row per
    project, container and service, see _SHARED_SQL, or per container and
    service, see _EVERY_SCOPE_SQL) added in."""
    shown = names.shower()  # stored names (names.py) by name
    total, projects, containers = None, {}, {}
    for row in db.execute(sql, params).fetchall():
        kind = row[0]
        if kind == "total":
            total = row[2:2 + len(COUNT_COLUMNS)]
        elif kind == "container":  # project, n, ..., container
            projects[row[1]] = projects.get(row[1], 0) + row[2]
            if row[-1]:  # the same name in two projects: one key
                containers[row[-1]] = containers.get(row[-1], 0) + row[2]
        else:  # one row per project, container or service
            result[kind][shown(row[1])] = row[2]
    for name, summed in (("byProject", projects), ("byContainer", containers)):
        if summed:
            result[name] = {shown(key): n for key, n in summed.items()}
    if total is not None:
        result["total"] = total[0] or 0
        for column, n in zip(COUNT_COLUMNS[1:], total[1:]):
            if n:
                prefix, value = column.split("_", 1)
                result[_BREAKDOWN_OF_PREFIX[prefix]][value] = n
    return result


def _add_scopes(result, counted):
    """Sum (project, container, service, n) rows into the project, container
    and service breakdowns: by stored name (names.py), then named, one
    lookup per name."""
    shown = names.shower()
    projects, containers, services = {}, {}, {}
    for project, container, service, n in counted:
        projects[project] = projects.get(project, 0) + n
        if container:
            containers[container] = containers.get(container, 0) + n
        if service:
            services[service] = services.get(service, 0) + n
    for name, summed in zip(_KEY_BREAKDOWNS, (projects, containers, services)):
        result[name] = {shown(key): n for key, n in summed.items() if n > 0}


_SUMS = ", ".join(f"CAST(SUM({c}) AS BIGINT)" for c in COUNT_COLUMNS)
# The total row (from the all-scope tiers when there is no scope), then
# the entry count of each project, container and service, which is all the
# key breakdowns need: summing one column costs a fifth of summing all of
# them, and a sum per key of each breakdown returns as many rows as the
# answer has keys, not one per scope (a gateway container in front of
# twenty services is twenty scopes). (Typed NULLs pad the rows to one
# shape, as a UNION ALL needs.)
_TOTAL_ROW = f"SELECT 'total', CAST(NULL AS TEXT), {_SUMS} FROM {{totals}}"
_NO_COUNTS = ", ".join("CAST(NULL AS BIGINT)" for _ in COUNT_COLUMNS[1:])
# Counter rows key "no container" and "no service" as ''.
_KEYED = {"project_id": "", "container_id": " WHERE container_id <> ''",
          "service_name": " WHERE service_name <> ''"}
_KEY_ROWS = " UNION ALL ".join(
    f"SELECT '{breakdown}', {column}, CAST(SUM(n) AS BIGINT), {_NO_COUNTS} "
    f"FROM {{source}}{_KEYED[column]} GROUP BY {column} HAVING SUM(n) > 0"
    for breakdown, column in _KEY_BREAKDOWNS.items())
# Without a scope: the key rows from the key tiers (rollup.key_counted), a
# row per key of the answer: a row per container (which Python adds into
# the projects too), its name in a last column, and per service.
_EVERY_SCOPE_SQL = (
    f"SELECT 'total', CAST(NULL AS TEXT), {_SUMS}, CAST(NULL AS TEXT) FROM ({{totals}}) AS totals"
    f" UNION ALL SELECT 'container', project_id, CAST(SUM(n) AS BIGINT), {_NO_COUNTS}, "
    "container_id FROM ({containers}) AS containers GROUP BY project_id, container_id "
    f"HAVING SUM(n) > 0 UNION ALL SELECT 'byService', service_name, CAST(SUM(n) AS BIGINT), "
    f"{_NO_COUNTS}, CAST(NULL AS TEXT) FROM ({{services}}) AS services "
    "WHERE service_name <> '' GROUP BY service_name HAVING SUM(n) > 0")
# A scope's rows read once for all of them.
_SHARED_SQL = ("WITH counted AS MATERIALIZED ({source}) "
               + _TOTAL_ROW.format(totals="counted") + " UNION ALL "
               + _KEY_ROWS.format(source="counted"))

# Stats over the entries themselves (filters the counters lack): one pass
# over the matching rows gives the summary, its latency and its routes.
# Each chunk of rows is counted per distinct tuple of the columns a
# breakdown needs (Counter over itemgetter: the counting runs in C), and
# the distinct tuples, far fewer than the rows, are folded in Python.
_RAW_SQL = ("SELECT project_id, container_id, service_name, level, kind, status, source, "
            "route, lat_bucket, coalesce(duration_ms, -1.0) FROM entry e WHERE {where}")
_SCOPE_OF = operator.itemgetter(0, 1, 2)
_VALUES_OF = operator.itemgetter(3, 4, 5, 6)
_ROUTE_OF = operator.itemgetter(7, 8, 3, 4)  # route, latency bucket, level, kind
_DURATION_OF = operator.itemgetter(9)
_SPAN_OF = operator.itemgetter(7, 4, 9)  # route, kind, duration
_CHUNK = 10_000
_ORDER = {"byLevel": LEVELS, "byKind": KINDS, "byStatus": STATUS_CLASSES, "bySource": SOURCES}


def _sealed_arrays(filters, columns):
    """The sealed entries that match `filters` (segments.py: `entry` no
    longer holds them), as numpy arrays of their `columns`, a segment at a
    time (segments.matching_arrays)."""
    through = segments.sealed_through()
    return segments.matching_arrays(filters, through, columns) if through else ()


def _hot_arrays(filters):
    """The hot entries that match `filters` as `_sealed_arrays` gives a
    segment's (from this process's table of them, hotcolumns.py): [] when
    none does, None when they are to be read from `entry` (a filter the
    table cannot apply, or too many hot entries to keep)."""
    if filters.q or filters.trace_id is not None or filters.client_ip is not None:
        return None
    table = hotcolumns.table()
    if table is None:
        return None
    arrays = segments.hot_arrays(table, filters, _SEALED_COLUMNS)
    return [] if arrays is None else [arrays]


def _grouped_summary(found, requests, scopes, values, routes, spans):
    """Add entries given as numpy arrays (`_sealed_arrays`, `_hot_arrays`)
    into `_raw_summary`'s counters (grouped with numpy: no entry made of
    each row); returns their longest duration (-1.0: none)."""
    import numpy as np

    longest = -1.0
    skipped = () if requests else ("request",)
    for arrays in found:
        for row in segments.grouped(arrays, ("project_id", "container_id", "service_name")):
            scopes[row[:3]] += row[3]
        for row in segments.grouped(arrays, ("level", "kind", "status", "source")):
            values[row[:4]] += row[4]
        for row in segments.grouped(arrays, ("route", "lat_bucket", "level", "kind")):
            routes[row[:4]] += row[4]
        durations = arrays["duration_ms"]
        timed = ~np.isnan(durations)
        if not timed.any():
            continue
        low, high = float(durations[timed].min()), float(durations[timed].max())
        longest = max(longest, high)
        every = spans.get(None, (math.inf, -math.inf))
        spans[None] = (min(every[0], low), max(every[1], high))
        kinds, kind_codes = arrays["kind"]
        calls = timed & (arrays["route"][1] >= 0)
        for at, kind in enumerate(kinds.to_pylist()):
            if kind in skipped:
                calls &= kind_codes != at
        for route, _, shortest, most in segments.grouped(
                arrays, ("route",), rows=np.flatnonzero(calls), extremes="duration_ms"):
            span = spans.get(route)
            spans[route] = (shortest, most) if span is None else (
                min(span[0], shortest), max(span[1], most))
    return longest


_SEALED_COLUMNS = ("project_id", "container_id", "service_name", "level", "kind", "status",
                   "source", "route", "lat_bucket", "duration_ms")


def _raw_summary(where, params, filters=None, requests=False):
    """(summary, {latency bucket: count}, longest, routes as rollup.routes
    gives them, {route: (shortest, longest) of its calls, None: of every
    entry}) of the entries matching `where`, and of the sealed entries
    matching `filters` beside them (None: none). A route counts calls, not
    request entries, unless `requests` (the question asks for requests)."""
    scopes, values, routes = Counter(), Counter(), Counter()
    longest = -1.0  # durations are never negative
    spans = {}
    skipped = () if requests else {names.lettered("kind", "request"), "request"}
    # The hot entries: from this process's table of them, else from `entry`.
    hot = None if filters is None else _hot_arrays(filters)
    cursor = db.execute(_RAW_SQL.format(where=where), params) if hot is None else None
    if filters is not None:
        longest = _grouped_summary(
            itertools.chain(hot or (), _sealed_arrays(filters, _SEALED_COLUMNS)),
            requests, scopes, values, routes, spans)
    while cursor is not None and (rows := cursor.fetchmany(_CHUNK)):
        scopes.update(map(_SCOPE_OF, rows))
        values.update(map(_VALUES_OF, rows))
        routes.update(map(_ROUTE_OF, rows))
        longest = max(longest, max(map(_DURATION_OF, rows)))
        _add_spans(spans, rows, skipped)
    if filters is not None:
        # The hot entries and the segments were read in snapshots of their
        # own: a seal between them is read again (see check_sealed_through).
        segments.check_sealed_through(segments.sealed_through())
    result = _empty()
    _add_scopes(result, ((*key, n) for key, n in scopes.items()))
    result["total"] = scopes.total()
    found = {name: Counter() for name in _ORDER}
    for (level, kind, status, source), n in values.items():
        found["byLevel"][names.unlettered("level", level)] += n
        found["byKind"][names.unlettered("kind", kind)] += n
        if status is not None and 100 <= status <= 599:
            found["byStatus"][f"{status // 100}xx"] += n
        found["bySource"][names.unlettered("source", source)] += n
    for name, order in _ORDER.items():
        result[name] = {value: found[name][value] for value in order if found[name][value]}
    counts, by_route = {}, {}
    for (route, bucket, level, kind), n in routes.items():
        if bucket is not None:
            counts[bucket] = counts.get(bucket, 0) + n
        if route is None or (not requests and names.unlettered("kind", kind) == "request"):
            continue  # a route's counts are calls (rollup.summarize)
        into = by_route.setdefault(route, [0, 0, {}])
        into[0] += n
        if names.unlettered("level", level) == "error":
            into[1] += n
        if bucket is not None:
            into[2][bucket] = into[2].get(bucket, 0) + n
    return result, counts, (longest if longest >= 0 else None), by_route, spans


def _add_spans(spans, rows, skipped):
    """Widen spans ({route: (shortest, longest)}, None: every entry) by
    the durations of `rows` (_RAW_SQL's); a route's without the kinds in
    `skipped`."""
    timed = [row for row in rows if row[9] >= 0]
    if not timed:
        return
    durations = list(map(_DURATION_OF, timed))
    low, high = spans.get(None, (math.inf, -math.inf))
    spans[None] = (min(low, min(durations)), max(high, max(durations)))
    for route, kind, duration in map(_SPAN_OF, timed):
        if route is None or kind in skipped:
            continue
        span = spans.get(route)
        if span is None:
            spans[route] = (duration, duration)
        elif duration < span[0]:
            spans[route] = (duration, span[1])
        elif duration > span[1]:
            spans[route] = (span[0], duration)


def _histogram(bucket, since, until, filters):
    minutes = BUCKETS[bucket]
    size_ms = minutes * MINUTE_MS
    start = since // size_ms * size_ms
    end = -(-until // size_ms) * size_ms
    if from_counters(filters) or (minutes % 60 == 0 and rollup.classed(filters)):
        counted, timed = _counted_buckets(minutes, start, end, filters)
    else:
        counted, timed = _raw_buckets(size_ms, start, end, filters)
    buckets = []
    for ts in range(start, end, size_ms):
        sums = counted.get(ts, ())
        by_level = {name: n for name, n in zip(LEVELS, sums) if n}
        item = {"tsMs": ts, "total": sum(by_level.values()), "byLevel": by_level,
                "p50": None, "p95": None}
        if ts in timed:
            counts, longest = timed[ts]
            total = sum(counts.values())
            if total > 0:
                found = sketch.percentiles(counts, (50, 95), total, longest)
                item["p50"], item["p95"] = found[50], found[95]
        buckets.append(item)
    return {"bucket": bucket, "bucketMs": size_ms, "since": start, "until": end,
            "buckets": buckets}


def _counted_buckets(minutes, start, end, filters):
    """({bucket start: level counts}, {bucket start: (sketch, longest)})
    from the counter tier of the bucket's unit."""
    where, params = rollup.scope_where(filters.project_id, filters.container_id)
    longest_of = "lat_max"
    if rollup.classed(filters):  # whole hours (see _histogram)
        table = "rollup_class_hour" if where else "rollup_class_hour_all"
        where.append(rollup.class_where(filters))
        unit, per_bucket = "hour", minutes // 60
        longest_of = _NO_LONGEST
    elif minutes % 60 == 0:
        table = "rollup_hour" if where else "rollup_hour_all"
        unit, per_bucket = "hour", minutes // 60
    elif minutes % 5 == 0 and not where:
        table, unit, per_bucket = "rollup_five_minutes_all", "five_minutes", minutes // 5
    else:
        table = "rollup_minute" if where else "rollup_minute_all"
        unit, per_bucket = "minute", minutes
        floor_ms = horizon.floor_ms() if table in horizon.TRIMMED else 0
        if start < floor_ms:
            # A scope's minutes before the floor are counted from its entries
            # (horizon.py; the floor is on an hour, so on a bucket's start).
            counted, timed = _raw_buckets(minutes * MINUTE_MS, start, min(end, floor_ms),
                                          filters)
            if end > floor_ms:
                later = _counted_buckets(minutes, floor_ms, end, filters)
                counted.update(later[0])
                timed.update(later[1])
            return counted, timed
    unit_ms = {"hour": HOUR_MS, "five_minutes": 5 * MINUTE_MS, "minute": MINUTE_MS}[unit]
    where.append(f"{unit} >= ? AND {unit} < ?")
    params += [start // unit_ms, end // unit_ms]
    bucket_of = f"({unit} / {per_bucket}) * {per_bucket}" if per_bucket > 1 else unit
    levels = ", ".join(f"CAST(SUM(level_{name}) AS BIGINT)" for name in LEVELS)
    condition = " AND ".join(where)
    counted_from = rollup.source(table, used=f"{levels} {condition} {unit}")
    rows = db.execute(f"SELECT {bucket_of} AS b, {levels} FROM {counted_from} "
                      f"WHERE {condition} GROUP BY b", params).fetchall()
    counted = {row[0] * unit_ms: row[1:] for row in rows}
    # Latency per bucket: the sketches of its rows merged.
    texts, longest = {}, {}
    for b, lat, top in db.execute(
            f"SELECT {bucket_of} AS b, lat, {longest_of} FROM "
            f"{rollup.source(table, used=f'lat {longest_of} {condition} {unit}')} "
            f"WHERE {condition} AND lat IS NOT NULL", params):
        texts.setdefault(b, []).append(lat)
        if top is not None and (longest.get(b) is None or top > longest[b]):
            longest[b] = top
    timed = {b * unit_ms: (sketch.merged(lats), longest.get(b)) for b, lats in texts.items()}
    return counted, timed


# The class tiers keep no longest duration: a bucket's percentiles are
# then those of its sketch alone.
_NO_LONGEST = "CAST(NULL AS DOUBLE PRECISION)"


def _raw_buckets(size_ms, start, end, filters):
    """The same, counted over the entries matching `filters`."""
    # The histogram's whole buckets (as the counters count them, and as the
    # answer's `since` and `until` say), not only the range asked for.
    filters = filters.replace(since=start, until=end)
    condition, params = planner.where_sql(filters, EVERY, ordered=False)
    # One pass: counted per bucket, level and latency bucket.
    counted, timed = {}, {}
    grouped = db.execute(
        f"SELECT (e.ts_ms / {size_ms}) * {size_ms} AS b, e.level, e.lat_bucket, count(*), "
        f"MAX(e.duration_ms) FROM entry e WHERE {condition} "
        f"GROUP BY b, e.level, e.lat_bucket", params).fetchall()
    for arrays in _sealed_arrays(filters, ("ts_ms", "level", "lat_bucket", "duration_ms")):
        arrays["b"] = arrays["ts_ms"] // size_ms * size_ms
        grouped.extend((*row[:4], greatest) for *row, _, greatest in segments.grouped(
            arrays, ("b", "level", "lat_bucket"), extremes="duration_ms"))
    for b, level, bucket, n, longest in grouped:
        counted.setdefault(b, [0] * len(LEVELS))[
            LEVELS.index(names.unlettered("level", level))] += n
        if bucket is None:
            continue
        into = timed.setdefault(b, [{}, None])
        into[0][bucket] = into[0].get(bucket, 0) + n
        if into[1] is None or longest > into[1]:
            into[1] = longest
    return counted, timed
