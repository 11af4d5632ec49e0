"""Entry counts per minute and (project, container, service), kept exact.

`add(keys, sign)` runs inside the transaction that inserts (+1) or
deletes (-1) the rows, so the counters always equal a GROUP BY over `entry`.
A row of counters holds the total `n` and one column per level, kind,
status class and source (see models.COUNT_COLUMNS); a batch touches one row
per distinct (minute, project, container, service), which keeps the cost of
the upserts well below the cost of the inserts they accompany.
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


_UPSERT_TOTAL = _upsert_parts("rollup_total", _KEYS)
_UPSERT_MINUTE = _upsert_parts("rollup_minute", f"minute, {_KEYS}")

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
    totals = {}
    for key, counts in per_minute.items():
        total = totals.get(key[1:])
        if total is None:
            totals[key[1:]] = list(counts)
        else:
            for at in range(WIDTH):
                total[at] += counts[at]
    # In key order, so that concurrent transactions lock rows in one order.
    _upsert(_UPSERT_MINUTE, sorted((*key, *counts) for key, counts in per_minute.items()))
    _upsert(_UPSERT_TOTAL, sorted((*key, *counts) for key, counts in totals.items()))
    if sign < 0:
        minutes = sorted({key[0] for key in per_minute})
        db.executemany("DELETE FROM rollup_minute WHERE minute = ? AND n <= 0",
                       [(m,) for m in minutes])
        db.execute("DELETE FROM rollup_total WHERE n <= 0")


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
