"""Counts for dashboards, read from the rollup counters.

`summary` without a time range sums `rollup_total` (one row per project,
container and service, so its cost does not depend on how many entries are
stored). With `since`/`until` it sums `rollup_minute` over the whole minutes
of the range and counts the partial minutes at either end straight from
`entry` through its `ts_ms` index, so the answer is exact for any
millisecond range.
"""
import peewee

from logsvc.entry import KINDS, LEVELS, SOURCES, STATUS_CLASSES, now_ms

from . import db
from .models import COUNT_COLUMNS, RollupMinute, RollupTotal
from .query import InvalidParameter
from .rollup import ROW_SQL, WIDTH, key_of

MINUTE_MS = 60_000
BUCKETS = {"1m": 1, "5m": 5, "10m": 10, "15m": 15, "30m": 30, "1h": 60,
           "3h": 180, "6h": 360, "12h": 720, "1d": 1440}
MAX_BUCKETS = 10_000
DEFAULT_HISTOGRAM_MS = 3_600_000

# Breakdowns read from count columns: name -> ((value, column index), ...)
_COLUMN_BREAKDOWNS = {
    "byLevel": tuple((v, COUNT_COLUMNS.index(f"level_{v}")) for v in LEVELS),
    "byKind": tuple((v, COUNT_COLUMNS.index(f"kind_{v}")) for v in KINDS),
    "byStatus": tuple((v, COUNT_COLUMNS.index(f"status_{v}")) for v in STATUS_CLASSES),
    "bySource": tuple((v, COUNT_COLUMNS.index(f"source_{v}")) for v in SOURCES),
}
# Breakdowns read from key columns: name -> position in (project, container, service)
_KEY_BREAKDOWNS = {"byProject": 0, "byContainer": 1, "byService": 2}


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
    counts = {}
    if since is None and until is None:
        query = _scoped(RollupTotal.select(*_keys(RollupTotal), *_counts(RollupTotal)),
                        RollupTotal, project_id, container_id)
        _accumulate(counts, query.tuples())
    else:
        _add_range(counts, project_id, container_id, since, until)
    result = {"total": 0, **{name: {} for name in (*_KEY_BREAKDOWNS, *_COLUMN_BREAKDOWNS)}}
    for key, row in counts.items():
        if row[0] <= 0:
            continue
        result["total"] += row[0]
        for name, position in _KEY_BREAKDOWNS.items():
            if key[position]:
                breakdown = result[name]
                breakdown[key[position]] = breakdown.get(key[position], 0) + row[0]
        for name, columns in _COLUMN_BREAKDOWNS.items():
            breakdown = result[name]
            for value, at in columns:
                if row[at]:
                    breakdown[value] = breakdown.get(value, 0) + row[at]
    return result


def _histogram(bucket, since, until, project_id, container_id):
    minutes = BUCKETS[bucket]
    size_ms = minutes * MINUTE_MS
    start = since // size_ms * size_ms
    end = -(-until // size_ms) * size_ms
    M = RollupMinute
    bucket_of = (M.minute / minutes) * minutes if minutes > 1 else M.minute
    levels = [peewee.fn.SUM(getattr(M, f"level_{name}")).cast("BIGINT") for name in LEVELS]
    query = (M.select(bucket_of, *levels)
             .where((M.minute >= start // MINUTE_MS) & (M.minute < end // MINUTE_MS))
             .group_by(bucket_of))
    by_bucket = {row[0] * MINUTE_MS: row[1:]
                 for row in _scoped(query, M, project_id, container_id).tuples()}
    buckets = []
    for ts in range(start, end, size_ms):
        sums = by_bucket.get(ts, ())
        by_level = {name: n for name, n in zip(LEVELS, sums) if n}
        buckets.append({"tsMs": ts, "total": sum(by_level.values()), "byLevel": by_level})
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
    query = (M.select(*_keys(M), *[peewee.fn.SUM(c).cast("BIGINT") for c in _counts(M)])
             .where((M.minute >= first_full) & (M.minute < end_full))
             .group_by(*_keys(M)))
    _accumulate(counts, _scoped(query, M, project_id, container_id).tuples())
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
    for row in db.execute(sql, params):
        key, positions = key_of(*row)
        target = counts.get(key[1:])
        if target is None:
            target = counts[key[1:]] = [0] * WIDTH
        target[0] += 1
        for at in positions:
            target[at] += 1


def _accumulate(counts, rows):
    for row in rows:
        key = row[:3]
        target = counts.get(key)
        if target is None:
            counts[key] = list(row[3:])
        else:
            for at, n in enumerate(row[3:]):
                target[at] += n


def _keys(model):
    return (model.project_id, model.container_id, model.service_name)


def _counts(model):
    return tuple(getattr(model, name) for name in COUNT_COLUMNS)


def _scoped(query, model, project_id, container_id):
    if project_id is not None:
        query = query.where(model.project_id == project_id)
    if container_id is not None:
        query = query.where(model.container_id == container_id)
    return query
