"""Counts for dashboards, read from the rollup counters.

`summary` without a time range sums `rollup_total` (one row per dimension
combination, so its cost does not depend on how many entries are stored).
With `since`/`until` it sums `rollup_minute` over the whole minutes of the
range and counts the partial minutes at either end straight from `entry`
through its `ts_ms` index, so the answer is exact for any millisecond range.
"""
from collections import Counter

import peewee

from . import db
from .models import RollupMinute, RollupTotal
from .rollup import ROW_SQL, key_of

MINUTE_MS = 60_000
BUCKETS = {"1m": 1, "5m": 5, "10m": 10, "15m": 15, "30m": 30, "1h": 60,
           "3h": 180, "6h": 360, "12h": 720, "1d": 1440}
MAX_BUCKETS = 10_000

_BREAKDOWNS = (("byLevel", 3), ("byProject", 0), ("byContainer", 1), ("byService", 2),
               ("byKind", 4), ("byStatus", 5), ("bySource", 6))


def summary(project_id=None, container_id=None, since=None, until=None):
    """{total, byLevel, byProject, byContainer, byService, byKind, byStatus, bySource}."""
    return db.call(_summary, project_id, container_id, since, until)


def histogram(bucket, since, until, project_id=None, container_id=None):
    """Entries per time bucket and level over [since, until), whole buckets."""
    return db.call(_histogram, bucket, since, until, project_id, container_id)


def _summary(project_id, container_id, since, until):
    counts = Counter()
    if since is None and until is None:
        query = _scoped(RollupTotal.select(*_dims(RollupTotal), RollupTotal.n),
                        RollupTotal, project_id, container_id)
        for row in query.tuples():
            counts[row[:-1]] += row[-1]
    else:
        _add_range(counts, project_id, container_id, since, until)
    result = {"total": sum(counts.values())}
    for name, position in _BREAKDOWNS:
        result[name] = {}
    for key, n in counts.items():
        if n <= 0:
            continue
        for name, position in _BREAKDOWNS:
            value = key[position]
            if value:
                bucket = result[name]
                bucket[value] = bucket.get(value, 0) + n
    return result


def _histogram(bucket, since, until, project_id, container_id):
    minutes = BUCKETS[bucket]
    size_ms = minutes * MINUTE_MS
    start = since // size_ms * size_ms
    end = -(-until // size_ms) * size_ms
    M = RollupMinute
    bucket_of = (M.minute / minutes) * minutes if minutes > 1 else M.minute
    query = (M.select(bucket_of.alias("b"), M.level, peewee.fn.SUM(M.n))
             .where((M.minute >= start // MINUTE_MS) & (M.minute < end // MINUTE_MS))
             .group_by(bucket_of, M.level)
             .order_by(bucket_of))
    query = _scoped(query, M, project_id, container_id)
    by_bucket = {}
    for minute, level, n in query.tuples():
        if n:
            row = by_bucket.setdefault(minute * MINUTE_MS, Counter())
            row[level] += n
    buckets = []
    for ts in range(start, end, size_ms):
        levels = by_bucket.get(ts, Counter())
        buckets.append({"tsMs": ts, "total": sum(levels.values()), "byLevel": dict(levels)})
    return {"bucket": bucket, "bucketMs": size_ms, "since": start, "until": end,
            "buckets": buckets}


def _add_range(counts, project_id, container_id, since, until):
    low = 0 if since is None else since
    high = 2**62 if until is None else until
    if high <= low:
        return
    first_full = -(-low // MINUTE_MS)  # first minute wholly inside the range
    end_full = high // MINUTE_MS  # minutes before this one are wholly inside
    if first_full >= end_full:
        _add_raw(counts, project_id, container_id, low, high)
        return
    M = RollupMinute
    query = (M.select(*_dims(M), peewee.fn.SUM(M.n))
             .where((M.minute >= first_full) & (M.minute < end_full))
             .group_by(*_dims(M)))
    for row in _scoped(query, M, project_id, container_id).tuples():
        counts[row[:-1]] += row[-1]
    _add_raw(counts, project_id, container_id, low, first_full * MINUTE_MS)
    _add_raw(counts, project_id, container_id, end_full * MINUTE_MS, high)


def _add_raw(counts, project_id, container_id, low, high):
    """Count entries with low <= ts_ms < high (less than a minute's worth)."""
    if high <= low:
        return
    sql = f"SELECT {ROW_SQL} FROM entry WHERE ts_ms >= ? AND ts_ms < ?"
    params = [low, high]
    if project_id is not None:
        sql += " AND project_id = ?"
        params.append(project_id)
    if container_id is not None:
        sql += " AND container_id = ?"
        params.append(container_id)
    for row in db.database.execute_sql(sql, params):
        counts[key_of(*row)[1:]] += 1


def _dims(model):
    return (model.project_id, model.container_id, model.service_name, model.level,
            model.kind, model.status_class, model.source)


def _scoped(query, model, project_id, container_id):
    if project_id is not None:
        query = query.where(model.project_id == project_id)
    if container_id is not None:
        query = query.where(model.container_id == container_id)
    return query
