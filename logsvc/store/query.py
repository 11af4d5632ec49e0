"""Search stored entries: filters, paging modes and the `total`.

Services take plain values: a `Filters` (what to match, see filters.py)
and a `Page` (how to page). `list_entries` runs its SQL on a database thread.

`total` comes from the rollup counters when every filter is one of their
dimensions or the time range (exact to the millisecond, and cheap at any
size: see rollup.counted); otherwise it is a count capped at
`offset + limit + COUNT_CAP` rows, and `totalExact` says whether the cap was
reached (or, for sealed entries, the store's `sealed_count_rows`: see
segments.count).

Sealed entries (segments.py) are no longer in `entry`: a page reaching
them reads the segments too, merged by id with what the hot entries give;
a count the counters cannot give counts them there.
"""
import dataclasses

from logsvc.entry import COLUMNS

from . import db, fulltext, names, planner, rollup, segments
from .bodies import unpack_body
from .filters import Filters, where_sql
from .models import IdSequence
from .rows import render_row

COUNT_CAP = 10_000
MAX_LIMIT = 5000  # entries in one page (`limit`, `last`)


class InvalidParameter(ValueError):
    """A request parameter that a service cannot use (400)."""

    def __init__(self, name, message):
        super().__init__(f"Invalid query parameter '{name}': {message}")
        self.name = name


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
    return db.read(_list_entries, filters, page)


def list_around(filters, around, n, page):
    """The entry `around` (if it matches) and up to `n` matching entries
    before and after it, oldest first: an entry's context. `page` gives the
    body flags. {"entries", "total", "totalExact", "limit", "aroundId"}."""
    def run():
        flags = {"include_request_body": page.include_request_body,
                 "include_response_body": page.include_response_body}
        before = _list_entries(filters, Page(last=n, max_id=around - 1, **flags))
        at = _list_entries(filters, Page(after_id=around - 1, max_id=around, limit=1, **flags))
        after = _list_entries(filters, Page(after_id=around, limit=n, **flags))
        entries = [*before["entries"], *at["entries"], *after["entries"]]
        return {"entries": entries, "total": before["total"],
                "totalExact": before["totalExact"], "limit": n, "offset": 0,
                "aroundId": around}
    return db.read(run)


def entries_after(filters, after_id, limit, max_id=None):
    """Matching entries with after_id < id <= max_id, ascending, without a
    total (the live tail's catch-up). Runs on a database thread."""
    return db.call(_entries_after, filters, after_id, limit, max_id)


def last_entries(filters, n, max_id, addresses=True):
    """The newest `n` matching entries with id <= max_id, oldest first
    (without `addresses`: their clientIp left out, see render_row)."""
    def run():
        source, where, params, id_column = _found(filters, n)
        rows = db.execute(
            f"{_SELECT} FROM {source} WHERE {where} AND {id_column} <= ? "
            f"ORDER BY {id_column} DESC LIMIT ?", [*params, max_id, n]).fetchall()
        found = [render_row(row, None, addresses) for row in reversed(rows)]
        # Asked after the hot read: the entries a seal took meanwhile are in
        # its segment, and the hot read may hold some of them too.
        through = segments.sealed_through_now()
        found = [entry for entry in found if entry["id"] > through]
        if through and len(found) < n:
            older = segments.read(filters, upto_id=min(max_id, through), order="desc",
                                  limit=n - len(found))
            found = [*reversed(older), *found]
        return found
    return db.read(run)


def high_water():
    """The highest id ever assigned and committed (every entry up to it is
    visible: ids are committed in order, see ingest.py)."""
    return IdSequence.high_water()


def entries_from(after_id, limit):
    """Every stored entry with an id above `after_id`, ascending, as the
    API's entries (the live tail's ring)."""
    def hot(after, n, max_id):
        return [render_row(row) for row in db.execute(
            f"{_SELECT} FROM entry e WHERE e.id > ? ORDER BY e.id LIMIT ?",
            (after, n)).fetchall()]
    return _ascending(Filters(), after_id, limit, None, hot)


_SELECT = "SELECT " + ", ".join(f"e.{c}" for c in COLUMNS)


# `slowest`: longest first, the newest first among equal durations, so that
# offset paging is stable. Only entries with a duration (see list_entries).
# The latency bucket orders as the duration does and leads, so that SQLite
# walks the bucket indexes (models.py) and sorts only the buckets it reads.
_SLOWEST = "e.lat_bucket DESC, e.duration_ms DESC, e.id DESC"


def _list_entries(filters, page):
    through = segments.sealed_through()
    if through and (page.after_id is None or page.after_id < through):
        found = _list_with_sealed(filters, page, through)
    else:
        found = _list_stored(filters, page)
    segments.check_sealed_through(through)
    return found


def _bodies(page):
    if page.include_request_body or page.include_response_body:
        return page.include_request_body, page.include_response_body
    return None


def _list_with_sealed(filters, page, through):
    """A page over hot and sealed entries: as many as the page needs from each side, in the
    page's order, then the page cut from them."""
    if page.order == "slowest":  # only entries with a duration (see _list_stored)
        filters = filters.replace(timed=True)
    limit = page.last if page.last is not None else page.limit
    need = page.offset + limit
    upto = through if page.max_id is None else min(page.max_id, through)
    bodies = _bodies(page)
    memo = {}  # the segments' matching rows, for the page and its total

    def hot(count, after_id=page.after_id, offset=0):
        if count <= 0:
            return []
        if page.last is not None:
            asked = dataclasses.replace(page, last=count, offset=0)
        else:
            asked = dataclasses.replace(page, limit=count, offset=offset, after_id=after_id)
        return _list_stored(filters, asked, total=False)["entries"]

    def sealed(count, order, slowest=False, skip=None):
        if count <= 0 or (page.after_id is not None and page.after_id >= upto):
            return []
        return segments.read(filters, after_id=page.after_id, upto_id=upto, order=order,
                             limit=count, bodies=bodies, slowest=slowest, memo=memo, skip=skip)

    if page.order == "slowest":
        older = sealed(need, "desc", slowest=True)
        count = need
        if need and len(older) >= need:
            # Only the hot entries slower than the page's last sealed one
            # can be on the page: found by their keys first, read whole
            # after (most of a long history's slowest are sealed).
            floor = segments.slowest_key(older[need - 1])
            count = sum(key > floor for key in _slowest_keys(filters, page, need))
        found = sorted([*hot(count), *older], key=segments.slowest_key, reverse=True)
    elif page.last is not None:  # the newest, returned oldest first
        newer = hot(need)
        found = [*reversed(sealed(need - len(newer), "desc")), *newer]
        found = found[max(0, len(found) - need):]
    elif page.order == "asc":
        # The offset's matches are passed over where they lie, never read
        # whole: the sealed ones first, then, when they ran out, the hot.
        skip = [page.offset]
        older = sealed(limit, "asc", skip=skip)
        after = page.after_id if page.after_id is not None and page.after_id > through \
            else (through if page.after_id is not None else None)
        found = [*older, *hot(limit - len(older), after, offset=skip[0])]
    else:
        newer = hot(limit, offset=page.offset)
        skip = [0]
        if not newer and page.offset:  # the page lies past the hot matches
            skip[0] = page.offset - _hot_count(filters, page, page.offset)
        found = [*newer, *sealed(limit - len(newer), "desc", skip=skip)]
    if page.last is not None:
        entries = found[:len(found) - page.offset] if page.offset else found
        entries = entries[-limit:] if entries else []
    elif page.order == "slowest":
        entries = found[page.offset:page.offset + limit]
    else:
        entries = found
    total, exact = _count(filters, page.offset + limit + COUNT_CAP, memo)
    if entries:
        total = max(total, page.offset + len(entries))
    result = {"entries": entries, "total": total, "totalExact": exact, "limit": limit,
              "offset": page.offset}
    if page.last is not None or page.after_id is not None:
        result["nextAfterId"] = entries[-1]["id"] if entries else page.after_id
    return result


def _hot_count(filters, page, cap):
    """How many hot entries match `filters` within the page's id bounds,
    counted up to `cap`."""
    sql, params = _hot_within(filters, page, "1")
    params.append(cap)
    (n,) = db.execute(f"SELECT count(*) FROM ({sql} LIMIT ?) AS matched", params).fetchone()
    return n


def _slowest_keys(filters, page, limit):
    """The `slowest` order's keys (segments.slowest_key) of the first
    `limit` hot entries in that order."""
    sql, params = _hot_within(filters.replace(timed=True), page,
                              "e.lat_bucket, e.duration_ms, e.id")
    params.append(limit)
    return [tuple(row) for row in db.execute(f"{sql} ORDER BY {_SLOWEST} LIMIT ?", params)]


def _hot_within(filters, page, columns):
    """(SELECT of `columns` of the hot entries matching `filters` within
    the page's id bounds, its params)."""
    where, params = where_sql(filters)
    sql = f"SELECT {columns} FROM entry e WHERE {where}"
    if page.after_id is not None:
        sql += " AND e.id > ?"
        params.append(page.after_id)
    if page.max_id is not None:
        sql += " AND e.id <= ?"
        params.append(page.max_id)
    return sql, params


def _list_stored(filters, page, total=True):
    """A page of what `entry` holds (the hot entries)."""
    if page.order == "slowest":
        # Its own indexes, by latency bucket (models.py).
        filters = filters.replace(timed=True)
        where, params = where_sql(filters)
        source, id_column = "entry e", "e.id"
    else:
        source, where, params, id_column = _found(
            filters, page.offset + (page.limit if page.last is None else page.last),
            order="desc" if page.last is not None else page.order)
    with_bodies = page.include_request_body or page.include_response_body
    sql = _SELECT
    if with_bodies:
        sql += (", b.request_body, b.request_body_z, b.response_body, b.response_body_z "
                f"FROM {source} "
                "LEFT JOIN entry_body b ON b.entry_id = e.id")
    else:
        sql += f" FROM {source}"
    sql += f" WHERE {where}"
    if page.after_id is not None:
        sql += f" AND {id_column} > ?"
        params.append(page.after_id)
    if page.max_id is not None:
        sql += f" AND {id_column} <= ?"
        params.append(page.max_id)
    if page.last is not None:
        limit = page.last
        sql += f" ORDER BY {id_column} DESC LIMIT ?"
        params.append(limit)
    else:
        limit = page.limit
        order = _SLOWEST if page.order == "slowest" else f"{id_column} {page.order.upper()}"
        sql += f" ORDER BY {order} LIMIT ? OFFSET ?"
        params.extend((limit, page.offset))
    rows = db.execute(sql, params).fetchall()
    if page.last is not None:
        rows.reverse()
    width = len(COLUMNS)
    entries = []
    for row in rows:
        bodies = None
        if with_bodies:
            bodies = (unpack_body(row[width], row[width + 1]),
                      unpack_body(row[width + 2], row[width + 3]),
                      page.include_request_body, page.include_response_body)
        entries.append(render_row(row[:width], bodies))
    if not total:
        return {"entries": entries}
    total, exact = _count(filters, page.offset + limit + COUNT_CAP)
    if entries:  # a page past the end must not make the total up
        total = max(total, page.offset + len(entries))
    result = {"entries": entries, "total": total,
              "totalExact": exact, "limit": limit, "offset": page.offset}
    if page.last is not None or page.after_id is not None:
        result["nextAfterId"] = rows[-1][0] if rows else page.after_id
    return result


def _entries_after(filters, after_id, limit, max_id):
    return _ascending(filters, after_id, limit, max_id,
                      lambda after, n, upto: _entries_stored(filters, after, n, upto))


def _ascending(filters, after_id, limit, max_id, hot):
    """The first `limit` entries matching `filters` with after_id < id <=
    max_id (None: no bound), oldest first, from the segments and then from
    the hot tier through `hot(after, limit, max_id)`.

    A seal that commits between the two reads moves entries out of the hot
    tier into a segment this read did not choose: the hot read then lacks
    them. So the watermark is asked again after the hot read; if it moved,
    the hot entries above it are whole (no seal has taken any of them), and
    those up to it are read from the segments, which now hold them."""
    upto = _upper(max_id)
    through = segments.sealed_through_now()
    found = []
    if through and after_id < through:
        found = segments.read(filters, after_id=after_id, upto_id=min(upto, through),
                              order="asc", limit=limit)
        if len(found) >= limit or upto <= through:
            return found
        after_id = through
    newer = hot(after_id, limit - len(found), max_id)
    now = segments.sealed_through_now()
    if now > after_id:
        newer = [entry for entry in newer if entry["id"] > now]
        found += segments.read(filters, after_id=after_id, upto_id=min(upto, now),
                               order="asc", limit=limit - len(found))
    return [*found, *newer][:limit]


def _upper(max_id):
    return float("inf") if max_id is None else max_id


def _entries_stored(filters, after_id, limit, max_id):
    source, where, params, id_column = _found(filters, limit, catch_up=True)
    sql = f"{_SELECT} FROM {source} WHERE {where} AND {id_column} > ?"
    params.append(after_id)
    if max_id is not None:
        sql += f" AND {id_column} <= ?"
        params.append(max_id)
    sql += f" ORDER BY {id_column} LIMIT ?"
    params.append(limit)
    return [render_row(row) for row in db.execute(sql, params).fetchall()]


def _found(filters, need, ordered=True, order="desc", catch_up=False):
    """(FROM clause, condition, params, id column) that find the entries
    matching `filters`: `entry e` through the index planner.py picks, or,
    for a search of common words on SQLite, the full-text index walked by
    id (planner.search_walk). `catch_up`: the live tail's read after an id."""
    walk = planner.search_walk(filters, need, catch_up)
    if walk is not None:
        return fulltext.WALKED, *walk, "f.rowid"
    if catch_up:
        return "entry e", *where_sql(filters), "e.id"
    return "entry e", *planner.where_sql(filters, need, ordered, order), "e.id"


def _count(filters, cap=None, memo=None):
    if filters.timed and rollup.only(filters, rollup.TIMED_FIELDS):
        # The entries with a duration (`order=slowest`) of a scope and a
        # time range: what the latency counters hold, summed.
        counts, _ = rollup.latency(filters.project_id, filters.container_id,
                                   filters.since, filters.until)
        return sum(counts.values()), True
    pushed = _rollup_sum(filters)
    if pushed is not None:
        columns, where, params = pushed
        source = rollup.counted(filters.project_id, filters.container_id,
                                filters.since, filters.until, keys=bool(filters.service_names),
                                columns=columns)
        if source is None:
            return 0, True
        # Each column summed on its own: PostgreSQL keeps a count of 0 as
        # NULL (rollup.Tier), and a row's `a + b` would be NULL with it.
        (n,) = db.execute(
            f"SELECT CAST({' + '.join(f'coalesce(SUM({c}), 0)' for c in columns)} AS BIGINT) "
            f"FROM ({source[0]}) AS counted "
            f"WHERE {where}", [*source[1], *params]).fetchone()
        return n, True
    cap = cap or COUNT_CAP
    if planner.index_alone(filters):
        n = fulltext.indexed(filters.q, cap=cap + 1, scope=fulltext.scope_of(filters))
    else:
        source, where, params, _ = _found(filters, cap + 1, ordered=False)
        (n,) = db.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM {source} WHERE {where} LIMIT ?) AS matched",
            [*params, cap + 1]).fetchone()
    through = segments.sealed_through()
    complete = True
    if through and n <= cap:
        # The sealed entries, which `entry` no longer holds: only as many
        # as the cap still needs, and within a page's share of work.
        sealed, complete = segments.count(filters, upto_id=through, cap=cap - n, memo=memo,
                                          rows=db.current().sealed_count_rows or None)
        n += sealed
    return (cap, False) if n > cap else (n, complete)


def _rollup_sum(f):
    """(count columns to sum, condition, parameters) over `rollup.counted` rows (the
    scope and time range already applied) that counts the entries matching
    `f`, or None when the counters cannot answer exactly: a filter that is
    not a counter dimension, or two breakdown filters at once (the counters
    hold each breakdown, not their product)."""
    if not rollup.only(f, rollup.COLUMN_FIELDS):
        return None
    classes = rollup.whole_classes(f.status_ranges)
    if classes is None:
        return None
    breakdowns = [(prefix, values) for prefix, values in
                  (("level", f.levels), ("kind", f.kinds), ("status", classes),
                   ("source", f.sources)) if values]
    if len(breakdowns) > 1:
        return None
    columns = ("n",)
    if breakdowns:
        prefix, values = breakdowns[0]
        columns = tuple(f"{prefix}_{value}" for value in values)
    terms, params = [], []
    if f.service_names:
        terms.append(f"service_name IN ({', '.join('?' * len(f.service_names))})")
        params.extend(names.stored_all(f.service_names))
    return columns, (" AND ".join(terms) if terms else "TRUE"), params
