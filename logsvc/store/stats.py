"""Counts for dashboards, read from the rollup counters and summed in SQL.

A summary is one statement over a *source*: rows shaped (project,
container, service, n, <count columns>) that together count exactly the
entries of the question, summed per scope once and then into the total
and the breakdowns.

- No time range: `rollup_total`, one row per scope.
- A time range [since, until): whole hours from `rollup_hour`, the whole
  minutes around them from `rollup_minute`, and the partial minutes at
  either end straight from `entry` through its `ts_ms` index, so the answer
  is exact to the millisecond while the rows read stay about
  (scopes × (hours + 2 × 59 minutes)), whatever the length of the range.

The database does the summing; Python only shapes the answer, so the cost
follows the size of the answer (the number of projects, containers and
services in it), not the number of entries.

A histogram's buckets are whole buckets: hourly and longer ones read
`rollup_hour_all` when no scope is asked for and `rollup_hour` when one is;
shorter ones read `rollup_minute_all` or `rollup_minute` (through its
(project, minute) index). Each bucket's p50 and p95 come from the latency
sketches of the same rows, merged (sketch.py).

`latency` and `byRoute` read the latency and route counters the same way
(rollup.latency, rollup.routes); percentiles are within 1 % of the exact
nearest-rank value, and `max` is exact.
"""
from logsvc.entry import LEVELS, now_ms

from . import db, rollup, sketch
from .query import InvalidParameter
from .rollup import COUNT_COLUMNS, ROLLUP_DIMENSIONS

MINUTE_MS = rollup.MINUTE_MS
HOUR_MS = 3_600_000
BUCKETS = {"1m": 1, "5m": 5, "10m": 10, "15m": 15, "30m": 30, "1h": 60,
           "3h": 180, "6h": 360, "12h": 720, "1d": 1440}
MAX_BUCKETS = 10_000
DEFAULT_HISTOGRAM_MS = 3_600_000

_BREAKDOWN_OF_PREFIX = {"level": "byLevel", "kind": "byKind", "status": "byStatus",
                        "source": "bySource"}
# Breakdowns read from key columns: name -> column
_KEY_BREAKDOWNS = {"byProject": "project_id", "byContainer": "container_id",
                   "byService": "service_name"}
_KEYS = ", ".join(ROLLUP_DIMENSIONS)


TOP_ROUTES = 20


def summary(project_id=None, container_id=None, since=None, until=None, top_routes=TOP_ROUTES):
    """{total, byLevel, byProject, byContainer, byService, byKind, byStatus,
    bySource, latency, byRoute}."""
    def run():
        result = _summary(project_id, container_id, since, until)
        counts, longest = rollup.latency(project_id, container_id, since, until)
        result["latency"] = sketch.summary(counts, longest)
        result["byRoute"] = _by_route(rollup.routes(project_id, container_id, since, until),
                                      top_routes)
        return result
    return db.call(run)


def _by_route(routes, top):
    """The `top` routes by calls, busiest first (ties by name)."""
    ranked = sorted(routes.items(), key=lambda item: (-item[1][0], item[0]))
    out = []
    for route, (calls, errors, counts) in ranked[:top]:
        if calls <= 0:
            continue
        timed = sum(counts.values())
        row = {"route": route, "total": calls, "errors": errors, "timed": timed}
        for p in (50, 95, 99):
            row[f"p{p}"] = sketch.percentile(counts, p, timed) if timed else None
        out.append(row)
    return out


def histogram(bucket, since=None, until=None, project_id=None, container_id=None):
    """Entries per time bucket and level over [since, until), whole buckets.
    `until` defaults to now, `since` to an hour before `until`; a range of
    more than MAX_BUCKETS buckets is refused."""
    until = now_ms() if until is None else until
    since = until - DEFAULT_HISTOGRAM_MS if since is None else since
    if since >= until:
        raise InvalidParameter("since", "Must be earlier than until.")
    if (until - since) // (BUCKETS[bucket] * MINUTE_MS) > MAX_BUCKETS:
        raise InvalidParameter("bucket", f"more than {MAX_BUCKETS} buckets; use a larger bucket")
    return db.call(_histogram, bucket, since, until, project_id, container_id)


def _summary(project_id, container_id, since, until):
    source = rollup.counted(project_id, container_id, since, until)
    result = {"total": 0, **{name: {} for name in (*_KEY_BREAKDOWNS, *_BREAKDOWN_OF_PREFIX.values())}}
    if source is None:
        return result
    rows = db.execute(_SUMMARY_SQL.format(source=source[0]), source[1]).fetchall()
    for kind, key, *counts in rows:
        if kind == "total":
            result["total"] = counts[0] or 0
            for column, n in zip(COUNT_COLUMNS[1:], counts[1:]):
                if n:
                    prefix, value = column.split("_", 1)
                    result[_BREAKDOWN_OF_PREFIX[prefix]][value] = n
        else:
            result[kind][key] = counts[0]
    return result


def _summary_sql():
    """One statement: the source summed per scope once (MATERIALIZED), then
    the total row and the three key breakdowns from those sums."""
    per_scope = ", ".join(f"SUM({c}) AS {c}" for c in COUNT_COLUMNS)
    sums = ", ".join(f"CAST(SUM({c}) AS BIGINT)" for c in COUNT_COLUMNS)
    blanks = ", ".join("NULL" for _ in COUNT_COLUMNS[1:])
    selects = [f"SELECT 'total', '', {sums} FROM scoped"]
    for name, key in _KEY_BREAKDOWNS.items():
        selects.append(f"SELECT '{name}', {key}, CAST(SUM(n) AS BIGINT), {blanks} FROM scoped "
                       f"WHERE {key} <> '' GROUP BY {key} HAVING SUM(n) > 0")
    return (f"WITH scoped AS MATERIALIZED (SELECT {_KEYS}, {per_scope} "
            f"FROM ({{source}}) AS counted GROUP BY {_KEYS}) " + " UNION ALL ".join(selects))


_SUMMARY_SQL = _summary_sql()


def _histogram(bucket, since, until, project_id, container_id):
    minutes = BUCKETS[bucket]
    size_ms = minutes * MINUTE_MS
    start = since // size_ms * size_ms
    end = -(-until // size_ms) * size_ms
    where, params = rollup.scope_where(project_id, container_id)
    if minutes % 60 == 0:
        table = "rollup_hour" if where else "rollup_hour_all"
        unit, per_bucket = "hour", minutes // 60
    elif where:
        table, unit, per_bucket = "rollup_minute", "minute", minutes
    else:
        table, unit, per_bucket = "rollup_minute_all", "minute", minutes
    unit_ms = HOUR_MS if unit == "hour" else MINUTE_MS
    where.append(f"{unit} >= ? AND {unit} < ?")
    params += [start // unit_ms, end // unit_ms]
    bucket_of = f"({unit} / {per_bucket}) * {per_bucket}" if per_bucket > 1 else unit
    levels = ", ".join(f"CAST(SUM(level_{name}) AS BIGINT)" for name in LEVELS)
    condition = " AND ".join(where)
    rows = db.execute(f"SELECT {bucket_of} AS b, {levels} FROM {table} "
                      f"WHERE {condition} GROUP BY b", params).fetchall()
    by_bucket = {row[0] * unit_ms: row[1:] for row in rows}
    # Latency per bucket: the sketches of its rows merged.
    sketches = {}
    for b, lat, longest in db.execute(
            f"SELECT {bucket_of} AS b, lat, lat_max FROM {table} "
            f"WHERE {condition} AND lat IS NOT NULL", params):
        into = sketches.setdefault(b * unit_ms, [{}, None])
        sketch.add(into[0], lat)
        if longest is not None and (into[1] is None or longest > into[1]):
            into[1] = longest
    buckets = []
    for ts in range(start, end, size_ms):
        sums = by_bucket.get(ts, ())
        by_level = {name: n for name, n in zip(LEVELS, sums) if n}
        item = {"tsMs": ts, "total": sum(by_level.values()), "byLevel": by_level,
                "p50": None, "p95": None}
        timed = sketches.get(ts)
        if timed:
            counts, longest = timed
            total = sum(counts.values())
            if total > 0:
                item["p50"] = sketch.percentile(counts, 50, total, longest)
                item["p95"] = sketch.percentile(counts, 95, total, longest)
        buckets.append(item)
    return {"bucket": bucket, "bucketMs": size_ms, "since": start, "until": end,
            "buckets": buckets}
