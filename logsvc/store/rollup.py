"""Entry counts at several resolutions, kept exact.

`add(keys, sign)` runs inside the transaction that inserts (+1) or
deletes (-1) the rows, so the counters always equal a GROUP BY over `entry`.
A row of counters holds the total `n` and one column per level, kind,
status class and source (see models.COUNT_COLUMNS). The tiers:

    rollup_minute      (minute, project, container, service)
    rollup_hour        (hour, project, container, service)
    rollup_total       (project, container, service)
    rollup_minute_all  (minute)

A batch touches one row per distinct key of each tier; batches arrive
roughly in time order, so that is about one row per distinct scope.
"""
from logsvc.entry import KINDS, LEVELS, SOURCES, STATUS_CLASSES

from . import db
from .models import COUNT_COLUMNS, ROLLUP_DIMENSIONS

WIDTH = len(COUNT_COLUMNS)
LEVEL_AT = {name: COUNT_COLUMNS.index(f"level_{name}") for name in LEVELS}
KIND_AT = {name: COUNT_COLUMNS.index(f"kind_{name}") for name in KINDS}
STATUS_AT = {c: COUNT_COLUMNS.index(f"status_{c}") for c in STATUS_CLASSES}
SOURCE_AT = {name: COUNT_COLUMNS.index(f"source_{name}") for name in SOURCES}

_KEYS = ", ".join(ROLLUP_DIMENSIONS)
_COUNTS = ", ".join(COUNT_COLUMNS)


def _upsert_parts(table, keys):
    """(INSERT head, ON CONFLICT clause, placeholders of one row) of the
    counter upsert into `table`, keyed on `keys`."""
    columns = f"{keys}, {_COUNTS}"
    sets = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in COUNT_COLUMNS)
    marks = ", ".join("?" for _ in columns.split(", "))
    return (f"INSERT INTO {table} ({columns})",
            f"ON CONFLICT ({keys}) DO UPDATE SET {sets}", f"({marks})")


# (table, its time column or None, upsert statement parts, key of the tier
# from a minute key; None: the minute key itself)
TIERS = (
    ("rollup_minute", "minute", _upsert_parts("rollup_minute", f"minute, {_KEYS}"), None),
    ("rollup_hour", "hour", _upsert_parts("rollup_hour", f"hour, {_KEYS}"),
     lambda key: (key[0] // 60, *key[1:])),
    ("rollup_total", None, _upsert_parts("rollup_total", _KEYS), lambda key: key[1:]),
    ("rollup_minute_all", "minute", _upsert_parts("rollup_minute_all", "minute"),
     lambda key: key[:1]),
)

# The columns of `entry` that `key_of` takes, in its argument order.
ROW_SQL = "ts_ms, project_id, container_id, service_name, level, kind, status, source"


def key_of(ts_ms, project_id, container_id, service_name, level, kind, status, source):
    """(rollup key, positions of the count columns this entry adds to)."""
    positions = (LEVEL_AT[level], KIND_AT[kind], SOURCE_AT[source])
    if status is not None and 100 <= status <= 599:
        positions += (STATUS_AT[f"{status // 100}xx"],)
    return (ts_ms // 60_000, project_id, container_id or "", service_name or ""), positions


def add(keyed, sign=1, weights=None):
    """Add `sign` times each (key, positions) from `key_of` to the counters
    (times its weight, when `weights` gives one per key)."""
    per_minute = {}
    for index, (key, positions) in enumerate(keyed):
        counts = per_minute.get(key)
        if counts is None:
            counts = per_minute[key] = [0] * WIDTH
        step = sign if weights is None else sign * weights[index]
        counts[0] += step
        for at in positions:
            counts[at] += step
    for table, time_column, parts, tier_key in TIERS:
        if tier_key is None:
            rows = per_minute
        else:
            rows = {}
            for key, counts in per_minute.items():
                key = tier_key(key)
                into = rows.get(key)
                rows[key] = counts if into is None else [a + b for a, b in zip(into, counts)]
        # In key order, so that concurrent transactions lock rows in one order.
        _upsert(parts, sorted((*key, *counts) for key, counts in rows.items()))
        if sign < 0:
            _drop_empty(table, time_column, rows)


def _drop_empty(table, time_column, rows):
    """Delete the rows of `table` that a subtraction left at zero."""
    if time_column is None:
        db.execute(f"DELETE FROM {table} WHERE n <= 0")
        return
    db.executemany(f"DELETE FROM {table} WHERE {time_column} = ? AND n <= 0",
                   [(t,) for t in sorted({key[0] for key in rows})])


def _upsert(parts, rows):
    if not rows:
        return
    head, conflict, marks = parts
    if not db.is_postgres():
        db.executemany(f"{head} VALUES {marks} {conflict}", rows)
        return
    # One multi-row statement: its keys are distinct, as ON CONFLICT needs.
    from psycopg2.extras import execute_values

    with db.database.connection().cursor() as cursor:
        execute_values(cursor, f"{head} VALUES %s {conflict}", rows, page_size=len(rows))


# Reading: rows shaped like a counter row (project, container, service,
# <count columns>) that together count exactly the entries asked for.

MINUTE_MS = 60_000


def counted(project_id=None, container_id=None, since=None, until=None):
    """(sql, params) of rows (project_id, container_id, service_name,
    <COUNT_COLUMNS>) whose sums count exactly the entries of the scope with
    since <= ts_ms < until (None: unbounded), or None when none can match.

    Without a range: `rollup_total`. With one: whole hours from
    `rollup_hour`, the whole minutes around them from `rollup_minute`, and
    the partial minutes at either end from `entry` itself, so the rows read
    stay about scopes × (hours + 2 × 59 minutes) for any range, exact to
    the millisecond."""
    if since is None and until is None:
        parts = [_tier_part("rollup_total", None, None, None, project_id, container_id)]
    else:
        parts = _range_parts(0 if since is None else since,
                             2**62 if until is None else until, project_id, container_id)
    if not parts:
        return None
    return (" UNION ALL ".join(sql for sql, _ in parts),
            [p for _, part_params in parts for p in part_params])


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
    where, params = scope_where(project_id, container_id)
    if time_column is not None:
        where.append(f"{time_column} >= ? AND {time_column} < ?")
        params += [start, end]
    sql = f"SELECT {_KEYS}, {_COUNTS} FROM {table}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return sql, params


def _entry_part(low, high, project_id, container_id):
    # A partial minute holds few entries: found through the ts_ms index. The
    # scope is compared as an expression so that the planner does not pick
    # the scope's index instead, which would visit all of its entries.
    where, params = scope_where(project_id, container_id, indexed=False)
    where.append("ts_ms >= ? AND ts_ms < ?")
    params += [low, high]
    return f"{_ENTRY_AS_COUNTERS} WHERE " + " AND ".join(where), params


def scope_where(project_id, container_id, indexed=True):
    where, params = [], []
    wrap = "{}" if indexed else "{} || ''"
    if project_id is not None:
        where.append(f"{wrap.format('project_id')} = ?")
        params.append(project_id)
    if container_id is not None:
        where.append(f"{wrap.format('container_id')} = ?")
        params.append(container_id)
    return where, params
