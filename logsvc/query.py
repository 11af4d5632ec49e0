"""Search stored entries: filters, paging modes and the `total`.

Services take plain values: a `Filters` (what to match; the caller's scope
is already folded into `project_id`/`container_id` by `auth.authorize`) and
a `Page` (how to page). `list_entries` runs its SQL on a database thread.

`total` comes from the rollup counters when every filter is one of their
dimensions (exact, and cheap at any size); otherwise it is a count capped at
`offset + limit + COUNT_CAP` rows, and `totalExact` says whether the cap was
reached.
"""
import dataclasses

import orjson

from . import db
from .entry import COLUMNS, row_to_dict

COUNT_CAP = 10_000
MAX_LIMIT = 5000


@dataclasses.dataclass(frozen=True)
class Filters:
    project_id: str = None
    container_id: str = None
    service_names: tuple = ()
    levels: tuple = ()
    kinds: tuple = ()
    methods: tuple = ()
    sources: tuple = ()
    trace_id: str = None
    status_ranges: tuple = ()  # ((low, high), ...) inclusive
    since: int = None  # epoch ms, inclusive
    until: int = None  # epoch ms, exclusive
    q: str = None  # case-insensitive substring of url
    client_ip: str = None

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class Page:
    limit: int = 200
    offset: int = 0
    order: str = "asc"
    last: int = None
    after_id: int = None
    max_id: int = None  # a cursor sweep's snapshot
    include_request_body: bool = False
    include_response_body: bool = False


def list_entries(filters, page):
    """Return {"entries", "total", "totalExact", "limit", "offset"} and, for
    `last`/`afterId` paging, "nextAfterId"."""
    return db.call(_list_entries, filters, page)


def entries_after(filters, after_id, limit, max_id=None):
    """Matching entries with after_id < id <= max_id, ascending, without a
    total (the live tail's catch-up). Runs on a database thread."""
    return db.call(_entries_after, filters, after_id, limit, max_id)


def last_entries(filters, n, max_id):
    """The newest `n` matching entries with id <= max_id, oldest first."""
    def run():
        where, params = where_sql(filters)
        rows = db.execute(
            f"{_SELECT} FROM entry e WHERE {where} AND e.id <= ? ORDER BY e.id DESC LIMIT ?",
            [*params, max_id, n]).fetchall()
        return [render_row(row) for row in reversed(rows)]
    return db.call(run)


def high_water():
    """The highest id ever assigned and committed (every entry up to it is
    visible: ids are committed in order, see ingest.py)."""
    (last_id,) = db.execute("SELECT last_id FROM id_sequence WHERE name = 'entry'").fetchone()
    return last_id


def rows_after(after_id, limit):
    """Every stored row (COLUMNS order) with an id above `after_id`, ascending."""
    return db.execute(
        f"{_SELECT} FROM entry e WHERE e.id > ? ORDER BY e.id LIMIT ?",
        (after_id, limit)).fetchall()


def matches(f, entry):
    """Whether an entry (API shape) passes `f`: the in-memory twin of
    `where_sql`, used on the live tail's ring (a test pins that they agree)."""
    if f.project_id is not None and entry["projectId"] != f.project_id:
        return False
    if f.container_id is not None and entry["containerId"] != f.container_id:
        return False
    if f.trace_id is not None and entry["traceId"] != f.trace_id:
        return False
    if f.client_ip is not None and entry["clientIp"] != f.client_ip:
        return False
    for values, key in ((f.service_names, "serviceName"), (f.levels, "level"),
                        (f.kinds, "kind"), (f.methods, "method"), (f.sources, "source")):
        if values and entry[key] not in values:
            return False
    if f.status_ranges:
        status = entry["status"]
        if status is None or not any(low <= status <= high for low, high in f.status_ranges):
            return False
    if f.since is not None and entry["tsMs"] < f.since:
        return False
    if f.until is not None and entry["tsMs"] >= f.until:
        return False
    if f.q and f.q.lower() not in (entry["url"] or "").lower():
        return False
    return True


def count(filters, cap=None):
    """(total, exact) of the entries matching `filters`."""
    return db.call(_count, filters, cap)


def where_sql(filters):
    """The filters as an SQL condition over `entry` and its parameters.

    Written by hand rather than through peewee's query builder: compiling
    the builder's expression costs more than running the query on an
    indexed page, and this is the hottest read path."""
    f = filters
    terms, params = [], []
    for column, value in (("project_id", f.project_id), ("container_id", f.container_id),
                          ("trace_id", f.trace_id), ("client_ip", f.client_ip)):
        if value is not None:
            terms.append(f"{column} = ?")
            params.append(value)
    for column, values in (("service_name", f.service_names), ("level", f.levels),
                           ("kind", f.kinds), ("method", f.methods), ("source", f.sources)):
        if len(values) == 1:
            terms.append(f"{column} = ?")
        elif values:
            terms.append(f"{column} IN ({', '.join('?' * len(values))})")
        params.extend(values)
    if f.status_ranges:
        parts = []
        for low, high in f.status_ranges:
            parts.append("status = ?" if low == high else "status BETWEEN ? AND ?")
            params.extend((low,) if low == high else (low, high))
        terms.append(f"({' OR '.join(parts)})")
    if f.since is not None:
        terms.append("ts_ms >= ?")
        params.append(f.since)
    if f.until is not None:
        terms.append("ts_ms < ?")
        params.append(f.until)
    if f.q:
        # Case-insensitive (SQLite's LIKE is, for ASCII); % and _ match literally.
        terms.append(f"url {'ILIKE' if db.is_postgres() else 'LIKE'} ? ESCAPE '\\'")
        escaped = f.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        params.append(f"%{escaped}%")
    return (" AND ".join(terms) if terms else "TRUE"), params


_SELECT = "SELECT " + ", ".join(f"e.{c}" for c in COLUMNS)


def _list_entries(filters, page):
    with_bodies = page.include_request_body or page.include_response_body
    where, params = where_sql(filters)
    sql = _SELECT
    if with_bodies:
        sql += (", b.request_body, b.response_body FROM entry e "
                "LEFT JOIN entry_body b ON b.entry_id = e.id")
    else:
        sql += " FROM entry e"
    sql += f" WHERE {where}"
    if page.after_id is not None:
        sql += " AND e.id > ?"
        params.append(page.after_id)
    if page.max_id is not None:
        sql += " AND e.id <= ?"
        params.append(page.max_id)
    if page.last is not None:
        limit = page.last
        sql += " ORDER BY e.id DESC LIMIT ?"
        params.append(limit)
    else:
        limit = page.limit
        sql += f" ORDER BY e.id {'DESC' if page.order == 'desc' else 'ASC'} LIMIT ? OFFSET ?"
        params.extend((limit, page.offset))
    rows = db.execute(sql, params).fetchall()
    if page.last is not None:
        rows.reverse()
    width = len(COLUMNS)
    entries = []
    for row in rows:
        bodies = None
        if with_bodies:
            bodies = (row[width], row[width + 1],
                      page.include_request_body, page.include_response_body)
        entries.append(render_row(row[:width], bodies))
    total, exact = _count(filters, page.offset + limit + COUNT_CAP)
    result = {"entries": entries, "total": max(total, page.offset + len(entries)),
              "totalExact": exact, "limit": limit, "offset": page.offset}
    if page.last is not None or page.after_id is not None:
        result["nextAfterId"] = rows[-1][0] if rows else page.after_id
    return result


def _entries_after(filters, after_id, limit, max_id):
    where, params = where_sql(filters)
    sql = f"{_SELECT} FROM entry e WHERE {where} AND e.id > ?"
    params.append(after_id)
    if max_id is not None:
        sql += " AND e.id <= ?"
        params.append(max_id)
    sql += " ORDER BY e.id LIMIT ?"
    params.append(limit)
    return [render_row(row) for row in db.execute(sql, params).fetchall()]


def render_row(row, bodies=None):
    """An `entry` row as the API's entry, `data` kept as its stored JSON text."""
    item = row_to_dict(row, bodies)
    item["data"] = orjson.Fragment(item["data"])
    return item


def _count(filters, cap=None):
    pushed = _rollup_sum(filters)
    if pushed is not None:
        column, where, params = pushed
        (n,) = db.execute(
            f"SELECT CAST(coalesce(SUM({column}), 0) AS BIGINT) FROM rollup_total WHERE {where}",
            params).fetchone()
        return n, True
    cap = cap or COUNT_CAP
    where, params = where_sql(filters)
    (n,) = db.execute(
        f"SELECT count(*) FROM (SELECT 1 FROM entry e WHERE {where} LIMIT ?) AS matched",
        [*params, cap + 1]).fetchone()
    return (cap, False) if n > cap else (n, True)


def _rollup_sum(f):
    """(column sum, condition, parameters) over `rollup_total` that counts
    the entries matching `f`, or None when the counters cannot answer
    exactly: a filter that is not a counter dimension, or two breakdown
    filters at once (the counters hold each breakdown, not their product)."""
    if (f.trace_id is not None or f.client_ip is not None or f.methods or f.q
            or f.since is not None or f.until is not None):
        return None
    classes = _status_classes(f.status_ranges)
    if classes is None:
        return None
    breakdowns = [(prefix, values) for prefix, values in
                  (("level", f.levels), ("kind", f.kinds), ("status", classes),
                   ("source", f.sources)) if values]
    if len(breakdowns) > 1:
        return None
    column = "n"
    if breakdowns:
        prefix, values = breakdowns[0]
        column = " + ".join(f"{prefix}_{value}" for value in values)
    terms, params = [], []
    for name, value in (("project_id", f.project_id), ("container_id", f.container_id)):
        if value is not None:
            terms.append(f"{name} = ?")
            params.append(value)
    if f.service_names:
        terms.append(f"service_name IN ({', '.join('?' * len(f.service_names))})")
        params.extend(f.service_names)
    return column, (" AND ".join(terms) if terms else "TRUE"), params


def _status_classes(ranges):
    """Status ranges as whole classes ('4xx', ...), or None if one is not."""
    classes = []
    for low, high in ranges:
        if low % 100 != 0 or high % 100 != 99 or low < 100 or high > 599:
            return None
        classes.extend(f"{c}xx" for c in range(low // 100, high // 100 + 1))
    return tuple(dict.fromkeys(classes))
