"""Entry counts per minute and dimension combination, kept exact.

`add(conn, rows, sign)` runs inside the transaction that inserts (+1) or
deletes (-1) the rows, so the counters always equal a GROUP BY over `entry`.
Readers (`stats.py`, the `total` of a query) sum these small tables instead
of scanning entries.
"""
from collections import Counter

from .entry import status_class
from .models import ROLLUP_DIMENSIONS

_DIMS = ", ".join(ROLLUP_DIMENSIONS)
_PLACEHOLDERS = ", ".join("?" for _ in ROLLUP_DIMENSIONS)
_UPSERT_TOTAL = (
    f"INSERT INTO rollup_total ({_DIMS}, n) VALUES ({_PLACEHOLDERS}, ?) "
    f"ON CONFLICT ({_DIMS}) DO UPDATE SET n = n + excluded.n"
)
_UPSERT_MINUTE = (
    f"INSERT INTO rollup_minute (minute, {_DIMS}, n) VALUES (?, {_PLACEHOLDERS}, ?) "
    f"ON CONFLICT (minute, {_DIMS}) DO UPDATE SET n = n + excluded.n"
)

# The dimensions of a stored row, in ROLLUP_DIMENSIONS order, from the
# columns (ts_ms, project_id, container_id, service_name, level, kind,
# status, source).
ROW_SQL = "ts_ms, project_id, container_id, service_name, level, kind, status, source"


def key_of(ts_ms, project_id, container_id, service_name, level, kind, status, source):
    return (ts_ms // 60_000, project_id, container_id or "", service_name or "",
            level, kind, status_class(status), source)


def add(conn, keys, sign=1):
    """Add `sign` times the count of each key (from `key_of`) to the counters."""
    per_minute = Counter(keys)
    totals = Counter()
    for key, n in per_minute.items():
        totals[key[1:]] += n
    conn.executemany(_UPSERT_MINUTE, [(*key, sign * n) for key, n in per_minute.items()])
    conn.executemany(_UPSERT_TOTAL, [(*key, sign * n) for key, n in totals.items()])
    if sign < 0:
        minutes = sorted({key[0] for key in per_minute})
        conn.executemany("DELETE FROM rollup_minute WHERE minute = ? AND n <= 0",
                         [(m,) for m in minutes])
        conn.execute("DELETE FROM rollup_total WHERE n <= 0")
