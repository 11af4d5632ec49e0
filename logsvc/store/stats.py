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
`rollup_hour`; shorter ones read `rollup_minute_all` when no scope is asked
for and `rollup_minute` (through its (project, container, minute) index)
when one is.
"""
from logsvc.entry import KINDS, LEVELS, SOURCES, STATUS_CLASSES, now_ms

from . import db
from .models import COUNT_COLUMNS, ROLLUP_DIMENSIONS
from .query import InvalidParameter

MINUTE_MS = 60_000
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
_COLUMNS = ", ".join(COUNT_COLUMNS)


def _entry_expression(column):
    """SQL over `entry` that gives 1 where the count column `column` counts
    the row, else 0 (the same rule as rollup.key_of)."""
    if column == "n":
        return "1"
    prefix, value = column.split("_", 1)
    if prefix == "status":
        low = int(value[0]) * 100
        return f"CASE WHEN status >= {low} AND status < {low + 100} THEN 1 ELSE 0 END"
    return f"CASE WHEN {prefix} = '{value}' THEN 1 ELSE 0 END"


# `entry` rows in the shape of a counter row.
_ENTRY_AS_COUNTERS = (
    "SELECT project_id, coalesce(container_id, '') AS container_id, "
    "coalesce(service_name, '') AS service_name, "
    + ", ".join(f"{_entry_expression(c)} AS {c}" for c in COUNT_COLUMNS)
    + " FROM entry"
)
assert all(f"{p}_{v}" in COUNT_COLUMNS for p, vs in
           (("level", LEVELS), ("kind", KINDS), ("status", STATUS_CLASSES),
            ("source", SOURCES)) for v in vs)


def summary(project_id=None, container_id=None, since=None, until=None):
    """{total, byLevel, byProject, byContainer, byService, byKind, byStatus, bySource}."""
    return db.call(_summary, project_id, container_id, since, until)


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
    if since is None and until is None:
        parts = [_tier_part("rollup_total", None, None, None, project_id, container_id)]
    else:
        parts = _range_parts(0 if since is None else since,
                             2**62 if until is None else until, project_id, container_id)
    result = {"total": 0, **{name: {} for name in (*_KEY_BREAKDOWNS, *_BREAKDOWN_OF_PREFIX.values())}}
    if not parts:
        return result
    source = " UNION ALL ".join(sql for sql, _ in parts)
    params = [p for _, part_params in parts for p in part_params]
    rows = db.execute(_SUMMARY_SQL.format(source=source), params).fetchall()
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


def _range_parts(low, high, project_id, container_id):
    """The (sql, params) parts whose rows count the entries with
    low <= ts_ms < high exactly: whole hours, whole minutes, partial minutes."""
    parts = []
    if high <= low:
        return parts
    first_minute = -(-low // MINUTE_MS)  # the first minute wholly inside
    end_minute = high // MINUTE_MS  # minutes before this one are wholly inside
    if first_minute >= end_minute:
        return [_entry_part(low, high, project_id, container_id)]
    first_hour = -(-first_minute // 60)
    end_hour = end_minute // 60
    if first_hour < end_hour:
        parts.append(_tier_part("rollup_hour", "hour", first_hour, end_hour,
                                project_id, container_id))
        minute_spans = ((first_minute, first_hour * 60), (end_hour * 60, end_minute))
    else:
        minute_spans = ((first_minute, end_minute),)
    for start, end in minute_spans:
        if start < end:
            parts.append(_tier_part("rollup_minute", "minute", start, end,
                                    project_id, container_id))
    for start, end in ((low, first_minute * MINUTE_MS), (end_minute * MINUTE_MS, high)):
        if start < end:
            parts.append(_entry_part(start, end, project_id, container_id))
    return parts


def _tier_part(table, time_column, start, end, project_id, container_id):
    where, params = _scope_where(project_id, container_id)
    if time_column is not None:
        where.append(f"{time_column} >= ? AND {time_column} < ?")
        params += [start, end]
    sql = f"SELECT {_KEYS}, {_COLUMNS} FROM {table}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return sql, params


def _entry_part(low, high, project_id, container_id):
    # A partial minute holds few entries: found through the ts_ms index. The
    # scope is compared as an expression so that the planner does not pick
    # the scope's index instead, which would visit all of its entries.
    where, params = _scope_where(project_id, container_id, indexed=False)
    where.append("ts_ms >= ? AND ts_ms < ?")
    params += [low, high]
    return f"{_ENTRY_AS_COUNTERS} WHERE " + " AND ".join(where), params


def _scope_where(project_id, container_id, indexed=True):
    where, params = [], []
    wrap = "{}" if indexed else "{} || ''"
    if project_id is not None:
        where.append(f"{wrap.format('project_id')} = ?")
        params.append(project_id)
    if container_id is not None:
        where.append(f"{wrap.format('container_id')} = ?")
        params.append(container_id)
    return where, params


def _histogram(bucket, since, until, project_id, container_id):
    minutes = BUCKETS[bucket]
    size_ms = minutes * MINUTE_MS
    start = since // size_ms * size_ms
    end = -(-until // size_ms) * size_ms
    where, params = _scope_where(project_id, container_id)
    if minutes % 60 == 0:
        table, unit, per_bucket = "rollup_hour", "hour", minutes // 60
    elif where:
        table, unit, per_bucket = "rollup_minute", "minute", minutes
    else:
        table, unit, per_bucket = "rollup_minute_all", "minute", minutes
    unit_ms = HOUR_MS if unit == "hour" else MINUTE_MS
    where.append(f"{unit} >= ? AND {unit} < ?")
    params += [start // unit_ms, end // unit_ms]
    bucket_of = f"({unit} / {per_bucket}) * {per_bucket}" if per_bucket > 1 else unit
    levels = ", ".join(f"CAST(SUM(level_{name}) AS BIGINT)" for name in LEVELS)
    rows = db.execute(f"SELECT {bucket_of} AS b, {levels} FROM {table} "
                      f"WHERE {' AND '.join(where)} GROUP BY b", params).fetchall()
    by_bucket = {row[0] * unit_ms: row[1:] for row in rows}
    buckets = []
    for ts in range(start, end, size_ms):
        sums = by_bucket.get(ts, ())
        by_level = {name: n for name, n in zip(LEVELS, sums) if n}
        buckets.append({"tsMs": ts, "total": sum(by_level.values()), "byLevel": by_level})
    return {"bucket": bucket, "bucketMs": size_ms, "since": start, "until": end,
            "buckets": buckets}
