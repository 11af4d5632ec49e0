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
import operator
from functools import reduce

import orjson
import peewee

from . import db
from .entry import COLUMNS, row_to_dict
from .models import Entry, EntryBody, RollupTotal

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
    include_request_body: bool = False
    include_response_body: bool = False


def list_entries(filters, page):
    """Return {"entries", "total", "totalExact", "limit", "offset"} and, for
    `last`/`afterId` paging, "nextAfterId"."""
    return db.call(_list_entries, filters, page)


def count(filters, cap=None):
    """(total, exact) of the entries matching `filters`."""
    return db.call(_count, filters, cap)


def conditions(filters):
    """The peewee expression for `filters` over `Entry` (None: everything)."""
    f = filters
    terms = []
    if f.project_id is not None:
        terms.append(Entry.project_id == f.project_id)
    if f.container_id is not None:
        terms.append(Entry.container_id == f.container_id)
    for column, values in ((Entry.service_name, f.service_names), (Entry.level, f.levels),
                           (Entry.kind, f.kinds), (Entry.method, f.methods),
                           (Entry.source, f.sources)):
        if len(values) == 1:
            terms.append(column == values[0])
        elif values:
            terms.append(column.in_(values))
    if f.trace_id is not None:
        terms.append(Entry.trace_id == f.trace_id)
    if f.client_ip is not None:
        terms.append(Entry.client_ip == f.client_ip)
    if f.status_ranges:
        terms.append(reduce(operator.or_, [
            (Entry.status == low) if low == high else Entry.status.between(low, high)
            for low, high in f.status_ranges]))
    if f.since is not None:
        terms.append(Entry.ts_ms >= f.since)
    if f.until is not None:
        terms.append(Entry.ts_ms < f.until)
    if f.q:
        terms.append(Entry.url.contains(f.q))
    return reduce(operator.and_, terms) if terms else None


def _list_entries(filters, page):
    with_bodies = page.include_request_body or page.include_response_body
    columns = [getattr(Entry, name) for name in COLUMNS]
    query = Entry.select(*columns)
    if with_bodies:
        query = (query
                 .select_extend(EntryBody.request_body, EntryBody.response_body)
                 .join(EntryBody, join_type=peewee.JOIN.LEFT_OUTER,
                       on=(EntryBody.entry == Entry.id)))
    where = conditions(filters)
    if page.after_id is not None:
        after = Entry.id > page.after_id
        where = after if where is None else (where & after)
    if where is not None:
        query = query.where(where)
    if page.last is not None:
        limit = page.last
        query = query.order_by(Entry.id.desc()).limit(limit)
    else:
        limit = page.limit
        order = Entry.id.desc() if page.order == "desc" else Entry.id.asc()
        query = query.order_by(order).limit(limit).offset(page.offset)
    rows = list(query.tuples())
    if page.last is not None:
        rows.reverse()
    width = len(COLUMNS)
    entries = []
    for row in rows:
        head = row[:width]
        bodies = None
        if with_bodies:
            bodies = (row[width], row[width + 1],
                      page.include_request_body, page.include_response_body)
        item = row_to_dict(head, bodies)
        item["data"] = orjson.Fragment(item["data"])
        entries.append(item)
    total, exact = _count(filters, page.offset + limit + COUNT_CAP)
    result = {"entries": entries, "total": max(total, page.offset + len(entries)),
              "totalExact": exact, "limit": limit, "offset": page.offset}
    if page.last is not None or page.after_id is not None:
        result["nextAfterId"] = rows[-1][0] if rows else page.after_id
    return result


def _count(filters, cap=None):
    pushed = _rollup_sum(filters)
    if pushed is not None:
        column, where = pushed
        query = RollupTotal.select(peewee.fn.SUM(column))
        if where is not None:
            query = query.where(where)
        return int(query.scalar() or 0), True
    cap = cap or COUNT_CAP
    inner = Entry.select(Entry.id).where(conditions(filters)).limit(cap + 1)
    (n,) = Entry.select(peewee.fn.COUNT(1)).from_(inner.alias("m")).tuples().get()
    return (cap, False) if n > cap else (n, True)


def _rollup_sum(f):
    """(expression to sum, where) over RollupTotal that counts the entries
    matching `f`, or None when the counters cannot answer exactly: a filter
    that is not a counter dimension, or two breakdown filters at once."""
    if (f.trace_id is not None or f.client_ip is not None or f.methods or f.q
            or f.since is not None or f.until is not None):
        return None
    classes = _status_classes(f.status_ranges)
    if classes is None:
        return None
    R = RollupTotal
    breakdowns = [(prefix, values) for prefix, values in
                  (("level", f.levels), ("kind", f.kinds), ("status", classes),
                   ("source", f.sources)) if values]
    if len(breakdowns) > 1:
        return None
    column = R.n
    if breakdowns:
        prefix, values = breakdowns[0]
        column = reduce(operator.add, [getattr(R, f"{prefix}_{v}") for v in values])
    terms = []
    if f.project_id is not None:
        terms.append(R.project_id == f.project_id)
    if f.container_id is not None:
        terms.append(R.container_id == f.container_id)
    if f.service_names:
        terms.append(R.service_name.in_(f.service_names))
    return column, (reduce(operator.and_, terms) if terms else None)


def _status_classes(ranges):
    """Status ranges as whole classes ('4xx', ...), or None if one is not."""
    classes = []
    for low, high in ranges:
        if low % 100 != 0 or high % 100 != 99 or low < 100 or high > 599:
            return None
        classes.extend(f"{c}xx" for c in range(low // 100, high // 100 + 1))
    return tuple(dict.fromkeys(classes))
