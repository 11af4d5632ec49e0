"""Entry counts and latency at several resolutions, kept exact.

`add(rows, sign)` runs inside the transaction that inserts (+1) or deletes
(-1) the rows, so the counters always equal a GROUP BY over `entry`.

Scope counters: the total `n` and one column per level, kind, status class
and source (COUNT_COLUMNS), a latency sketch `lat` (sketch.py) and
the longest duration `lat_max`:

    rollup_minute      (minute, project, container, service)
    rollup_hour        (hour, project, container, service)
    rollup_total       (project, container, service)
    rollup_minute_all / rollup_five_minutes_all / rollup_hour_all /
    rollup_total_all   (every scope)

`rollup_minute_all` also keeps the least and the greatest id counted in
each minute (what planner.py walks a time range between).

Class counters: the same, per scope and class (CLASS_KEYS: the level and
the status class), per hour and all time, for stats filtered by a level
or a status class (`classed`), without a longest duration (`latency_max`
finds it through the entries' latency bucket index):

    rollup_class_hour  (hour, project, container, service, level, status class)
    rollup_class_total (project, container, service, level, status class)

Key counters: the entry count `n` alone, per container and per service,
per hour and all time, and the same by class. A question without a scope
reads its project, container and service breakdowns from them (KEY_TIERS,
`key_counted`): a row per key of the answer, where the scope tiers hold
one per container and service (twenty for a gateway in front of twenty
services):

    rollup_container_hour  (hour, project, container)
    rollup_container_total (project, container)
    rollup_service_minute_all / rollup_service_hour_all /
    rollup_service_total_all (service)
    rollup_class_container_hour / rollup_class_container_total /
    rollup_class_service_hour_all / rollup_class_service_total_all
                           (the same and the level and status class)

Route counters: calls `n`, `errors` (level error) and `lat`, for the
entries that have a route:

    rollup_route_minute (minute, project, route)
    rollup_route_hour   (hour, project, route)
    rollup_route_total  (project, container, route)
    rollup_route_minute_all / rollup_route_five_minutes_all /
    rollup_route_hour_all / rollup_route_total_all
    rollup_route_class_hour  (hour, project, route, level, status class)
    rollup_route_class_total (project, route, level, status class)
    rollup_route_class_hour_all / rollup_route_class_total_all

A batch touches one row per distinct key of each tier; batches arrive
roughly in time order, so that is about one row per distinct scope (and
route). Subtraction cannot lower a maximum by itself: after retention,
the rows whose `lat_max` may have been a removed entry's are recomputed
from the finer tier (minutes from `entry`), so `lat_max` stays exact too.
"""
import re

from logsvc.entry import KINDS, LEVELS, SOURCES, STATUS_CLASSES, now_ms

from . import db, horizon, names, segments, sketch
from .filters import Filters, unindexed, where_sql

ROLLUP_DIMENSIONS = ("project_id", "container_id", "service_name")
# One count column per value of each breakdown, beside the row total `n`.
COUNT_COLUMNS = (
    ("n",)
    + tuple(f"level_{name}" for name in LEVELS)
    + tuple(f"kind_{name}" for name in KINDS)
    + tuple(f"status_{name}" for name in STATUS_CLASSES)
    + tuple(f"source_{name}" for name in SOURCES)
)
ROUTE_COUNT_COLUMNS = ("n", "errors")
KEY_COUNTS = ("n",)

WIDTH = len(COUNT_COLUMNS)
# The count column of each level, kind and source, by name and by its
# letter (what SQLite's rows hold, see names.py).
LEVEL_AT, KIND_AT, SOURCE_AT = (
    {key: COUNT_COLUMNS.index(f"{column}_{name}") for name in values
     for key in (name, names.LETTERS[column][name])}
    for column, values in (("level", LEVELS), ("kind", KINDS), ("source", SOURCES)))
STATUS_AT = {c: COUNT_COLUMNS.index(f"status_{c}") for c in STATUS_CLASSES}

MINUTE_MS = 60_000
FIVE_MINUTES_MS = 300_000
HOUR_MS = 3_600_000

_KEYS = ", ".join(ROLLUP_DIMENSIONS)


# PostgreSQL: the type of each counter column that is not a bigint
# (`_inline`'s arrays).
_PG_TYPES = {"project_id": "text", "container_id": "text", "service_name": "text",
             "route": "text", "level": "text", "lat": "text", "lat_max": "float8",
             "one": "int2", "status_class": "int2"}


class Tier:
    """One counter table: its key columns, its time column (None: all
    time), and the tier (or the base accumulation of `add`) it is summed
    from, with the key function that maps that one's keys to its own.

    On PostgreSQL a count of 0 other than `n` is written as NULL: most
    counter rows hold one entry or a few, so most of their counts are 0,
    and a NULL costs a bit of the row's null bitmap where a bigint costs 8
    bytes. SQLite stores a 0 in its record header alone, and keeps zeros.
    Readers sum them (SUM skips NULLs) or take NULL as 0."""

    def __init__(self, table, keys, time_column, counts, source, key_from, with_ids=False,
                 with_max=None, with_lat=True):
        self.table, self.keys, self.time_column = table, keys, time_column
        self.counts, self.source, self.key_from = counts, source, key_from
        # Without a sketch: the counts only, a prefix of the source's
        # (the key tiers keep `n`).
        self.with_lat = with_lat
        self.with_max = (counts is COUNT_COLUMNS and with_lat) if with_max is None else with_max
        self.with_ids = with_ids  # id_min and id_max, widened by each batch
        self.staged = f"{table}_staged"  # PostgreSQL: see _upsert
        # Its columns, keys first.
        self.columns = ([*keys, *counts] + (["lat"] if self.with_lat else [])
                        + (["lat_max"] if self.with_max else []))
        self.sql = {postgres: self._sql(postgres) for postgres in (False, True)}

    def _sql(self, postgres):
        """{sign > 0: (columns, statement)} of the upsert: on SQLite its
        rows are the statement's parameters, on PostgreSQL they are first
        copied into the tier's staging table (see _upsert)."""
        table, counts = self.table, self.counts
        columns = self.columns
        sets = [f"{c} = {table}.{c} + excluded.{c}" if c == "n" or not postgres else
                f"{c} = nullif(coalesce({table}.{c}, 0) + coalesce(excluded.{c}, 0), 0)"
                for c in counts]
        if self.with_lat:
            sets.append(f"lat = logsvc_sketch_add({table}.lat, excluded.lat)")
        keys = ", ".join(self.keys)

        def upsert(columns, rows=None):
            names = ", ".join(columns)
            if rows is None:
                rows = (f"SELECT {names} FROM {self.staged} ORDER BY {keys}" if postgres else
                        f"VALUES ({', '.join('?' for _ in columns)})")
            return (columns, f"INSERT INTO {table} ({names}) {rows} "
                             f"ON CONFLICT ({keys}) DO UPDATE SET {', '.join(sets)}")

        # Subtracting leaves lat_max to refresh_max.
        out = {False: upsert(columns)}
        if self.with_max:
            sets.append(f"lat_max = CASE WHEN excluded.lat_max IS NULL OR "
                        f"{table}.lat_max >= excluded.lat_max THEN {table}.lat_max "
                        f"ELSE excluded.lat_max END")
        if self.with_ids:
            columns = [*columns, "id_min", "id_max"]
            # The one of the two that is not NULL, or the wider.
            # (PostgreSQL's LEAST and GREATEST skip NULLs, SQLite's min and
            # max return NULL.)
            for column, pick in (("id_min", ("LEAST", "min")), ("id_max", ("GREATEST", "max"))):
                ours, theirs = f"{table}.{column}", f"excluded.{column}"
                sets.append(f"{column} = {pick[0]}({ours}, {theirs})" if postgres else
                            f"{column} = coalesce({pick[1]}({ours}, {theirs}), {ours}, {theirs})")
        out[True] = upsert(columns)
        if postgres:
            # Adding, with the values in the statement (see INLINE_ROWS):
            # a literal array per column, whose elements unnest as rows.
            arrays = ", ".join(f"{{{c}}}::{_PG_TYPES.get(c, 'bigint')}[]" for c in columns)
            out["inline"] = upsert(columns, f"SELECT * FROM unnest({arrays}) "
                                            f"AS u ({', '.join(columns)}) ORDER BY {keys}")[1]
        if not postgres:
            # SQLite, ingest: the rows staged before the write lock
            # (`stage`), moved in one statement. Their id bounds are offsets
            # in the batch (plus `:first`, the first id); the minute tiers
            # take minutes from `:floor` on. (WHERE: an upsert's SELECT
            # needs one.)
            picked = ", ".join(f"{c} + :first" if c in ("id_min", "id_max") else c
                               for c in columns)
            floor = "minute >= :floor" if table in horizon.TRIMMED else "true"
            out["staged"] = (
                f"CREATE TEMP TABLE IF NOT EXISTS {self.staged} ({', '.join(columns)})",
                f"INSERT INTO temp.{self.staged} VALUES ({', '.join('?' for _ in columns)})",
                upsert(columns, f"SELECT {picked} FROM temp.{self.staged} WHERE {floor}")[1])
        return out


_SCOPE = ("project_id", "container_id", "service_name")
# The keys of the class tiers beside the scope: the level (as `entry` stores
# it) and the status class (1-5; 0 without a status in 100-599).
CLASS_KEYS = ("level", "status_class")
# Bases built by `add`: "scopes" keyed (minute, project, container, service),
# "routes" (project, container, route), "route_minutes" (project, minute,
# route). Each tier is summed from its source, in this order.
TIERS = {t.table: t for t in (
    Tier("rollup_minute", ("minute", *_SCOPE), "minute", COUNT_COLUMNS, "scopes", None),
    Tier("rollup_hour", ("hour", *_SCOPE), "hour", COUNT_COLUMNS, "rollup_minute",
         lambda k: (k[0] // 60, k[1], k[2], k[3])),
    Tier("rollup_total", _SCOPE, None, COUNT_COLUMNS, "rollup_hour", lambda k: k[1:]),
    # The key tiers: entries per container and per service, what the key
    # breakdowns of a question without a scope read (a row per key of the
    # answer, where the scope tiers have one per container and service).
    Tier("rollup_container_hour", ("hour", "project_id", "container_id"), "hour", KEY_COUNTS,
         "rollup_hour", lambda k: k[:3], with_lat=False),
    Tier("rollup_container_total", ("project_id", "container_id"), None, KEY_COUNTS,
         "rollup_total", lambda k: k[:2], with_lat=False),
    Tier("rollup_service_minute_all", ("minute", "service_name"), "minute", KEY_COUNTS,
         "rollup_minute", lambda k: (k[0], k[3]), with_lat=False),
    Tier("rollup_service_hour_all", ("hour", "service_name"), "hour", KEY_COUNTS,
         "rollup_hour", lambda k: (k[0], k[3]), with_lat=False),
    Tier("rollup_service_total_all", ("service_name",), None, KEY_COUNTS,
         "rollup_total", lambda k: (k[2],), with_lat=False),
    Tier("rollup_minute_all", ("minute",), "minute", COUNT_COLUMNS, "scopes",
         lambda k: (k[0],), with_ids=True),
    Tier("rollup_five_minutes_all", ("five_minutes",), "five_minutes", COUNT_COLUMNS,
         "rollup_minute_all", lambda k: (k[0] // 5,)),
    Tier("rollup_hour_all", ("hour",), "hour", COUNT_COLUMNS, "rollup_minute_all",
         lambda k: (k[0] // 60,)),
    Tier("rollup_total_all", ("one",), None, COUNT_COLUMNS, "rollup_hour_all",
         lambda k: (0,)),
    # By level and status class too (CLASS_KEYS), per hour and all time:
    # what stats filtered by a level or a status class read. Without a
    # longest duration: latency_max finds it through the entries' latency
    # bucket index.
    Tier("rollup_class_hour", ("hour", *_SCOPE, *CLASS_KEYS), "hour", COUNT_COLUMNS,
         "classes", None, with_max=False),
    Tier("rollup_class_total", (*_SCOPE, *CLASS_KEYS), None, COUNT_COLUMNS,
         "rollup_class_hour", lambda k: k[1:], with_max=False),
    # And the key tiers by class.
    Tier("rollup_class_container_hour", ("hour", "project_id", "container_id", *CLASS_KEYS),
         "hour", KEY_COUNTS, "rollup_class_hour", lambda k: (*k[:3], *k[4:]), with_lat=False),
    Tier("rollup_class_container_total", ("project_id", "container_id", *CLASS_KEYS), None,
         KEY_COUNTS, "rollup_class_total", lambda k: (*k[:2], *k[3:]), with_lat=False),
    Tier("rollup_class_service_hour_all", ("hour", "service_name", *CLASS_KEYS), "hour",
         KEY_COUNTS, "rollup_class_hour", lambda k: (k[0], *k[3:]), with_lat=False),
    Tier("rollup_class_service_total_all", ("service_name", *CLASS_KEYS), None, KEY_COUNTS,
         "rollup_class_total", lambda k: k[2:], with_lat=False),
    Tier("rollup_class_hour_all", ("hour", *CLASS_KEYS), "hour", COUNT_COLUMNS,
         "rollup_class_hour", lambda k: (k[0], k[4], k[5]), with_max=False),
    Tier("rollup_class_total_all", CLASS_KEYS, None, COUNT_COLUMNS,
         "rollup_class_hour_all", lambda k: k[1:], with_max=False),
)}
ROUTE_TIERS = {t.table: t for t in (
    Tier("rollup_route_minute", ("project_id", "minute", "route"), "minute",
         ROUTE_COUNT_COLUMNS, "route_minutes", None),
    Tier("rollup_route_hour", ("hour", "project_id", "route"), "hour", ROUTE_COUNT_COLUMNS,
         "rollup_route_minute", lambda k: (k[1] // 60, k[0], k[2])),
    Tier("rollup_route_total", ("project_id", "container_id", "route"), None,
         ROUTE_COUNT_COLUMNS, "routes", None),
    Tier("rollup_route_minute_all", ("minute", "route"), "minute", ROUTE_COUNT_COLUMNS,
         "rollup_route_minute", lambda k: (k[1], k[2])),
    Tier("rollup_route_five_minutes_all", ("five_minutes", "route"), "five_minutes",
         ROUTE_COUNT_COLUMNS, "rollup_route_minute_all", lambda k: (k[0] // 5, k[1])),
    Tier("rollup_route_hour_all", ("hour", "route"), "hour", ROUTE_COUNT_COLUMNS,
         "rollup_route_minute_all", lambda k: (k[0] // 60, k[1])),
    Tier("rollup_route_total_all", ("route",), None, ROUTE_COUNT_COLUMNS,
         "rollup_route_hour_all", lambda k: (k[1],)),
    Tier("rollup_route_class_hour", ("hour", "project_id", "route", *CLASS_KEYS), "hour",
         ROUTE_COUNT_COLUMNS, "route_classes", None),
    Tier("rollup_route_class_total", ("project_id", "route", *CLASS_KEYS), None,
         ROUTE_COUNT_COLUMNS, "rollup_route_class_hour", lambda k: k[1:]),
    Tier("rollup_route_class_hour_all", ("hour", "route", *CLASS_KEYS), "hour",
         ROUTE_COUNT_COLUMNS, "rollup_route_class_hour", lambda k: (k[0], *k[2:])),
    Tier("rollup_route_class_total_all", ("route", *CLASS_KEYS), None, ROUTE_COUNT_COLUMNS,
         "rollup_route_class_hour_all", lambda k: k[1:]),
)}

# Counted in the background, not by the ingest that stores an entry: the
# tiers with a row per scope (or route) and unit, five in six of the rows
# a batch adds (and half of an entry's time when each ingest added them).
# `count_pending` adds the entries above the counted watermark (meta
# `counted_through`) to them, a batch of up to COUNT_ROWS at a time, so
# that an hour's or all time's row of a scope takes one addition a batch,
# not one a request; readers take such a tier through `source`, which adds
# the entries above the watermark as rows of it (one an entry), so every
# answer counts every stored entry. The tiers of every scope (`*_all`) are
# still added to by each ingest: a few rows a batch, and the minutes' id
# bounds that planner.py reads.
DEFERRED = frozenset(
    table for tiers in (TIERS, ROUTE_TIERS) for table in tiers if not table.endswith("_all"))
COUNT_ROWS = 16_384
COUNTED_THROUGH = segments.COUNTED_THROUGH


def _pending_sql(tier, columns):
    """The entries above the watermark as rows of `tier` (its `columns`)."""
    keys = {"minute": f"e.ts_ms / {MINUTE_MS}", "hour": f"e.ts_ms / {HOUR_MS}",
            "project_id": "e.project_id", "container_id": "coalesce(e.container_id, '')",
            "service_name": "coalesce(e.service_name, '')", "level": "e.level",
            "status_class": "CASE WHEN e.status >= 100 AND e.status <= 599 "
                            "THEN e.status / 100 ELSE 0 END",
            "route": "e.route"}
    picked = {**{k: keys[k] for k in tier.keys},
              "lat": "CASE WHEN e.lat_bucket IS NULL THEN NULL "
                     "ELSE '[' || e.lat_bucket || ',1]' END",
              "lat_max": "e.duration_ms"}
    if tier.counts is ROUTE_COUNT_COLUMNS:
        picked.update(n="1", errors=_entry_expression("level_error"))
    else:
        picked.update({c: _entry_expression(c) for c in tier.counts})
    picked = [picked[c] for c in columns]
    where = f"e.id > {COUNTED_THROUGH}"
    if tier.counts is ROUTE_COUNT_COLUMNS:  # calls (summarize)
        where += (f" AND e.route IS NOT NULL AND e.kind NOT IN ({_either('kind', 'request')})")
    return f"SELECT {', '.join(picked)} FROM entry e WHERE {where}"


def source(table, alias=None, used=None):
    """What a reader selects the rows of counter `table` from (as `alias`,
    by default its name): the table; for one counted in the background
    (DEFERRED), its rows and the entries above the watermark as rows of
    it. `used`: the SQL that reads it (its columns named there are the
    ones selected; SQLite reads every column a union selects, the
    latency sketches too)."""
    alias = alias or table
    if table not in DEFERRED:
        return table if alias == table else f"{table} {alias}"
    tier = TIERS.get(table) or ROUTE_TIERS[table]
    columns = tier.columns
    if used is not None:
        columns = [c for c in columns if re.search(rf"\b{c}\b", used)] or columns[:1]
    return (f"(SELECT {', '.join(columns)} FROM {table} UNION ALL "
            f"{_pending_sql(tier, columns)}) AS {alias}")


counted_through = segments.counted_through
set_counted_through = segments.set_counted_through


def count_pending(upto=None, limit=COUNT_ROWS):
    """Add the entries above the watermark, up to id `upto` (None: every
    committed one) and at most `limit` of them, to the DEFERRED tiers, and
    move the watermark past them: read and summed first, written in one
    transaction that checks the watermark has not moved meanwhile (another
    process counted them). Returns how many ids it moved past (0: none
    pending)."""
    through = counted_through()
    # Never past the ids committed: those of a transaction under way are
    # counted once it commits.
    high = _high_water() if upto is None else min(upto, _high_water())
    end = min(high, through + limit) if limit else high
    if end <= through:
        return 0
    rows = db.execute(f"SELECT {ROW_SQL} FROM entry WHERE id > ? AND id <= ? ORDER BY id",
                      (through, end)).fetchall()
    summary = summarize(rows, deferred=True) if rows else []
    with db.database.atomic():
        if db.is_postgres():  # one counter at a time, and after the deletes of the moment
            row = db.execute("SELECT value FROM meta WHERE key = 'counted_through' "
                             "FOR UPDATE").fetchone()
            moved = row is not None and int(row[0]) != through
        else:
            moved = counted_through() != through
        if moved:
            return 0
        if summary:
            write(summary)
        set_counted_through(end)
    return end - through


def pending():
    """Whether entries wait to be counted (a read)."""
    return _high_water() > counted_through()


def _high_water():
    """The last id handed out and committed (models.IdSequence's)."""
    (last,) = db.execute("SELECT last_id FROM id_sequence WHERE name = 'entry'").fetchone()
    return last


def count_all(upto=None):
    """count_pending until every entry up to id `upto` (None: every
    committed one) is counted, by this process or another: what a seal, a
    deletion and a reader of the tables themselves need first."""
    target = _high_water() if upto is None else min(upto, _high_water())
    while counted_through() < target:
        count_pending(target)


segments.count_first = count_all  # a seal counts what it takes first


# The columns of `entry` that `add` takes, in order.
ROW_SQL = ("ts_ms, project_id, container_id, service_name, level, kind, status, source, "
           "route, lat_bucket, duration_ms")
# The rows of a table of entries grouped as `add` takes them with weights:
# ROW_SQL's columns (the longest duration of each group), then the count.
GROUPED = ("SELECT (ts_ms / 60000) * 60000, project_id, container_id, service_name, level, "
           "kind, status, source, route, lat_bucket, MAX(duration_ms), count(*) "
           "FROM {table} GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10")


def add(rows, sign=1, weights=None):
    """Add `sign` times each row (ROW_SQL's columns) to the counters (times
    its weight, when `weights` gives one per row; the row's duration is then
    the longest of those it stands for)."""
    write(summarize(rows, sign, weights), sign)


def write(summary, sign=1, first_id=None, staged=False):
    """Apply what `summarize` prepared, in the writing transaction.
    `first_id`: the id of the batch's first row (summarize(ids=True)).
    `staged`: its rows were staged (`stage`, SQLite)."""
    floor = horizon.floor()
    pending = [] if db.is_postgres() else None
    if staged:
        for tier, rows, _ in summary:
            if rows:
                # Named parameters: each statement takes those it names.
                db.execute(tier.sql[False]["staged"][2], {"first": first_id, "floor": floor})
        return
    for tier, rows, folded in summary:
        if floor and tier.table in horizon.TRIMMED:
            # Minutes of a scope below the floor are not kept (horizon.py).
            at = tier.keys.index("minute")
            rows = [row for row in rows if row[at] >= floor]
            if folded is not None:  # (summarize's sums per key: see COLUMNAR_ROWS)
                folded = {key: value for key, value in folded.items() if key[at] >= floor}
        if tier.with_ids and sign > 0:
            # Each row ends with the offsets in the batch of its least and
            # greatest row (None: not known).
            rows = [(*row[:-2], *((None, None) if row[-2] is None or first_id is None else
                                  (first_id + row[-2], first_id + row[-1])))
                    for row in rows]
        if sign > 0 and pending is not None and 0 < len(rows) <= INLINE_ROWS:
            pending.append(_inline(tier, rows))
            continue
        _flush(pending)
        _upsert(tier, sign, rows)
        if sign < 0:
            _drop_empty(tier, folded)
            if tier.with_max:
                _refresh_max(tier, folded)
    _flush(pending)


# PostgreSQL: a tier that a batch adds this many rows or fewer to is
# written with its values in the statement, one array literal a column,
# and the statements of consecutive such tiers go to the server together,
# in one exchange, rather than four each (a temporary table made if
# missing, filled by COPY, moved, emptied: see _upsert). Their order is
# kept: concurrent writers lock the tiers' rows in one order. A batch of
# 5,000 entries adds more rows than this to a scope's minutes.
INLINE_ROWS = 2_000


def _inline(tier, rows):
    """The upsert of `rows` into `tier` (adding) with the values in it."""
    columns = tier.sql[True][True][0]
    literals = {}
    with db.database.connection().cursor() as cursor:
        for at, column in enumerate(columns):
            values = [row[at] for row in rows]
            if _PG_TYPES.get(column) == "text":
                items = ["NULL" if v is None else
                         '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values]
            else:
                items = ["NULL" if v is None else repr(v) for v in values]
            literals[column] = cursor.mogrify("%s", ("{" + ",".join(items) + "}",)).decode()
    return tier.sql[True]["inline"].format(**literals)


def _flush(pending):
    """Send the statements of `_inline` kept in `pending`, in one exchange."""
    if pending:
        db.execute_literal(";\n".join(pending))
        pending.clear()


def stage(summary):
    """SQLite: copy the rows of `summary` (summarize's, ids=True, adding)
    into temporary tables of this connection, before the write lock is
    taken: `write(summary, first_id=..., staged=True)` then moves each
    tier's rows in one statement, and the lock is not held while Python
    hands the rows to SQLite one by one (a third of the counters' time).
    `unstage()` empties the tables after the transaction; they are
    emptied here first too, so that no row of a batch whose `unstage` did
    not run is ever counted with the next."""
    for tier, rows, _ in summary:
        if rows:
            create, insert, _ = tier.sql[False]["staged"]
            db.execute(create)
            db.execute(f"DELETE FROM temp.{tier.staged}")
            db.executemany(insert, rows)


def unstage(summary):
    for tier, rows, _ in summary:
        if rows:
            db.execute(f"DELETE FROM temp.{tier.staged}")


# Adding this many rows or more, the tiers are summed with numpy
# (`_summarize_columns`): 25 µs an entry in batches of 5,000, 34-40 in
# batches of 1,000, where the loop below takes 41-80 (Arrow's group-by,
# before, 32 at 5,000 on the same day); its fixed cost (some 90
# factorizations and sorts) makes it the slower below about 400 (at 200:
# 60-68 against 44-51).
COLUMNAR_ROWS = 500


def summarize(rows, sign=1, weights=None, ids=False, deferred=None):
    """The upserts that `add` makes, as [(tier, rows, sums per key)]: pure
    computation, which ingest does before it takes the write lock. With
    `ids`, the rows are a batch in id order, whose first id `write` takes:
    each minute's id bounds are then kept. (Adding COLUMNAR_ROWS rows or
    more, the sums per key are None: only a subtraction needs them.)
    `deferred`: True for the DEFERRED tiers only, False for the others
    only, None for all."""
    if sign > 0 and len(rows) >= COLUMNAR_ROWS:
        return _summarize_columns(rows, sign, weights, ids, deferred)
    # Accumulations: [counts, {bucket: count} or None, longest or None]
    scopes, routes, route_minutes = {}, {}, {}
    classes, route_classes = {}, {}
    level_at, kind_at, source_at, status_at = LEVEL_AT, KIND_AT, SOURCE_AT, STATUS_AT
    error_at = LEVEL_AT["error"]
    request_at = KIND_AT["request"]
    # Rows bring a level as a word (ingest) or as stored (from `entry`);
    # the class tiers key it as `entry` stores it.
    stored_level = _STORED_LEVEL[db.is_postgres()]
    for index, (ts_ms, project_id, container_id, service_name, level, kind, status,
                source, route, bucket, duration) in enumerate(rows):
        step = sign if weights is None else sign * weights[index]
        minute = ts_ms // MINUTE_MS
        container_id = container_id or ""
        key = (minute, project_id, container_id, service_name or "")
        into = scopes.get(key)
        if into is None:
            into = scopes[key] = [[0] * WIDTH, None, None]
        at = level_at[level]
        status_class = status // 100 if status is not None and 100 <= status <= 599 else 0
        # The count columns this entry adds to, in its scope's row and its
        # class's row alike.
        columns = (0, at, kind_at[kind], source_at[source],
                   status_at[_CLASS[status_class]] if status_class else None)
        hour = minute // 60
        klass = (stored_level[level], status_class)
        key = (hour, key[1], key[2], key[3], *klass)
        classed = classes.get(key)
        if classed is None:
            classed = classes[key] = [[0] * WIDTH, None, None]
        counts, tally = into[0], classed[0]
        for column in columns:
            if column is not None:
                counts[column] += step
                tally[column] += step
        if bucket is not None:
            lat = into[1]
            if lat is None:
                lat = into[1] = {}
            lat[bucket] = lat.get(bucket, 0) + step
            if into[2] is None or duration > into[2]:
                into[2] = duration
            lat = classed[1]
            if lat is None:
                lat = classed[1] = {}
            lat[bucket] = lat.get(bucket, 0) + step
        if route is not None and kind_at[kind] != request_at:
            # A route's counts are calls: a request entry is the first half
            # of a call whose response (or failure event) counts it.
            error = step if at == error_at else 0
            for base, key in ((routes, (project_id, container_id, route)),
                              (route_minutes, (project_id, minute, route)),
                              (route_classes, (hour, project_id, route, *klass))):
                into = base.get(key)
                if into is None:
                    into = base[key] = [[0, 0], None, None]
                into[0][0] += step
                into[0][1] += error
                if bucket is not None:
                    lat = into[1]
                    if lat is None:
                        lat = into[1] = {}
                    lat[bucket] = lat.get(bucket, 0) + step
    offsets = _offsets([row[0] // MINUTE_MS for row in rows]) if ids else {}
    summed = {"scopes": scopes, "routes": routes, "route_minutes": route_minutes,
              "classes": classes, "route_classes": route_classes}
    summary = []
    postgres = db.is_postgres()
    for tiers in (TIERS, ROUTE_TIERS):
        for tier in tiers.values():
            source = summed[tier.source]
            folded = summed[tier.table] = (
                source if tier.key_from is None else
                _fold(source, tier.key_from) if tier.with_lat else _fold_n(source, tier.key_from))
            if not _chosen(tier, deferred):
                continue
            rows = _rows(tier, folded, sign, postgres)
            if tier.with_ids and sign > 0:
                rows = [(*row, *offsets.get(row[0], (None, None))) for row in rows]
            summary.append((tier, rows, folded))
    return summary


def _offsets(minutes):
    """{minute: [first, last] offset of its rows in the batch}."""
    offsets = {}
    for index, minute in enumerate(minutes):
        span = offsets.get(minute)
        if span is None:
            offsets[minute] = [index, index]
        else:
            span[1] = index
    return offsets


def _chosen(tier, deferred):
    return deferred is None or (tier.table in DEFERRED) == deferred


def _summarize_columns(rows, sign, weights, ids, deferred=None):
    """`summarize` of many rows, the same rows in every tier, summed with
    numpy: each key column factorized to codes, a tier's keys combined
    into one code a group (prefixes shared between tiers), each count
    column a weighted bincount of the groups, the latency sketches the
    distinct (group, bucket) pairs in order. (tests/test_stats.py pins
    both ways to one answer.)"""
    import numpy as np

    postgres = db.is_postgres()
    n = len(rows)
    (ts_ms, project_id, container_id, service_name, level, kind, status, source, route,
     bucket, duration) = zip(*rows)
    step = np.full(n, sign, np.int64) if weights is None else \
        np.array([sign * w for w in weights], np.int64)
    minute = np.array(ts_ms, np.int64) // MINUTE_MS
    classes = [s // 100 if s is not None and 100 <= s <= 599 else 0 for s in status]
    stored_level = _STORED_LEVEL[postgres]
    level_at = np.array([LEVEL_AT[v] for v in level], np.int64)
    kind_at = np.array([KIND_AT[v] for v in kind], np.int64)
    # The count column each entry adds to, per breakdown (-1: none).
    columns_at = np.stack((np.zeros(n, np.int64), level_at, kind_at,
                           np.array([SOURCE_AT[v] for v in source], np.int64),
                           np.array([STATUS_AT[_CLASS[c]] if c else -1 for c in classes],
                                    np.int64)))
    timed = np.array([b is not None for b in bucket], bool)
    buckets = np.array([-1 if b is None else b for b in bucket], np.int64)
    longest = np.array([-np.inf if d is None else d for d in duration], np.float64)
    errors = step * (level_at == LEVEL_AT["error"])
    values = {  # each key column's value per row, as the tiers key it
        "project_id": project_id,
        "container_id": ["" if v is None else v for v in container_id],
        "service_name": ["" if v is None else v for v in service_name],
        "route": route, "level": [stored_level[v] for v in level], "status_class": classes,
    }
    numbers = {"minute": minute, "hour": minute // 60, "five_minutes": minute // 5,
               "one": np.zeros(n, np.int64)}
    coded, groups = {}, {}

    def codes(key):
        """(a code for each row's value of key column `key`, how many)."""
        found = coded.get(key)
        if found is None:
            if key in numbers:
                distinct, inverse = np.unique(numbers[key], return_inverse=True)
                found = (inverse, len(distinct))
            else:
                index = {}
                found = (np.array([index.setdefault(v, len(index)) for v in values[key]],
                                  np.int64), len(index))
            coded[key] = found
        return found

    def grouped(keys, among):
        """(the group of each row of `among`, how many groups, the first
        row of each) by the tier keys `keys`; a tier's groups are its
        prefix's, split by its last key (a prefix is grouped once)."""
        found = groups.get((keys, among is None))
        if found is None:
            last, size = codes(keys[-1])
            last = last if among is None else last[among]
            combined = last if len(keys) == 1 else grouped(keys[:-1], among)[0] * size + last
            distinct, first, inverse = np.unique(combined, return_index=True,
                                                 return_inverse=True)
            found = groups[(keys, among is None)] = (inverse, len(distinct), first)
        return found

    calls = np.flatnonzero(np.array([r is not None for r in route], bool)
                           & (kind_at != KIND_AT["request"]))
    offsets = _offsets(minute.tolist()) if ids else {}
    summary = []
    kept = columns_at >= 0
    counted_weights = np.broadcast_to(step, columns_at.shape)[kept]
    for tiers, among in ((TIERS, None), (ROUTE_TIERS, calls)):
        # The tiers' rows: every entry, or the calls (route tiers).
        rows_of = np.arange(n) if among is None else among
        weight = step[rows_of]
        for tier in tiers.values():
            if not _chosen(tier, deferred):
                continue
            keys = tier.keys
            group, size, first = grouped(tuple(keys), among)
            at = rows_of[first]  # a row of each group, for its key values
            parts = [numbers[k][at].tolist() if k in numbers else
                     [values[k][i] for i in at.tolist()] for k in keys]
            if tier.counts is COUNT_COLUMNS:  # the scope tiers, of every entry
                flat = (group * WIDTH + columns_at)[kept]
                sums = np.bincount(flat, counted_weights, size * WIDTH).reshape(size, WIDTH)
            elif tier.counts is ROUTE_COUNT_COLUMNS:
                sums = np.stack((np.bincount(group, weight, size),
                                 np.bincount(group, errors[rows_of], size)), axis=1)
            else:
                sums = np.bincount(group, weight, size)[:, None]
            counted = np.rint(sums).astype(np.int64).tolist()
            if postgres:  # zeros as NULL but `n` (see Tier)
                counted = [[row[0], *(v or None for v in row[1:])] for row in counted]
            extra = []
            if tier.with_lat:
                extra.append(_sketch_texts(group, size, timed[rows_of], buckets[rows_of],
                                           weight))
            if tier.with_max:
                most = np.full(size, -np.inf)
                np.maximum.at(most, group, longest[rows_of])
                extra.append([None if v == -np.inf else v for v in most.tolist()])
            found = [(*key, *counts, *more) for key, counts, more in
                     zip(zip(*parts), counted, zip(*extra) if extra else ((),) * size)]
            if tier.with_ids:
                found = [(*row, *offsets.get(row[0], (None, None))) for row in found]
            if postgres:  # in key order, see _rows
                width = len(keys)
                found.sort(key=lambda r: r[:width])
            summary.append((tier, found, None))
    return summary


def _sketch_texts(group, size, timed, buckets, weight):
    """The stored sketch (sketch.dumps's text) of each of `size` groups,
    from its rows' latency buckets (those `timed`) and weights; None for a
    group without one."""
    import numpy as np

    texts = [None] * size
    if not timed.any():
        return texts
    span = int(buckets.max()) + 1
    pairs, inverse = np.unique(group[timed] * span + buckets[timed], return_inverse=True)
    counts = np.rint(np.bincount(inverse, weight[timed], len(pairs))).astype(np.int64)
    groups = pairs // span
    items = [f"{b},{c}" for b, c in zip((pairs % span).tolist(), counts.tolist())]
    # Each group's pairs are consecutive, in bucket order.
    starts = np.flatnonzero(np.diff(groups, prepend=-1)).tolist()
    ends = starts[1:] + [len(items)]
    for g, start, end in zip(groups[starts].tolist(), starts, ends):
        texts[g] = "[" + ",".join(items[start:end]) + "]"
    return texts


_CLASS = {c: f"{c}xx" for c in range(1, 6)}
# {postgres: {a level as a word or a letter: as `entry` stores it}}
_STORED_LEVEL = {postgres: {key: (word if postgres else names.LETTERS["level"][word])
                            for word in LEVELS for key in (word, names.LETTERS["level"][word])}
                 for postgres in (False, True)}


def _rows(tier, folded, sign, postgres):
    if not tier.with_lat:  # a key tier: `n` alone
        rows = [(*key, counts[0]) for key, (counts, _, _) in folded.items()]
    else:
        rows = []
        with_max = tier.with_max
        dumps = sketch.dumps
        for key, (counts, lat, longest) in folded.items():
            if postgres:  # zeros as NULL (see Tier)
                counts = (counts[0], *(n or None for n in counts[1:]))
            row = (*key, *counts, dumps(lat) if lat else None)
            rows.append(row + (longest if sign > 0 else None,) if with_max else row)
    if postgres:
        # In key order, so that concurrent transactions lock rows in one
        # order (SQLite has one writer; its keys mix numbers' bytes and '').
        width = len(tier.keys)
        rows.sort(key=lambda r: r[:width])
    return rows


def rebuild(tables=None):
    """Recount every counter (or those of `tables`) from `entry` (a schema
    upgrade)."""
    chosen = [*TIERS, *ROUTE_TIERS] if tables is None else list(tables)
    for table in chosen:
        db.execute(f"DELETE FROM {table}")
    cursor = db.execute(GROUPED.format(table="entry"))
    while chunk := cursor.fetchmany(50_000):
        summary = summarize([row[:11] for row in chunk], weights=[row[11] for row in chunk])
        write([part for part in summary if part[0].table in chosen])
    # Sealed entries (segments.py) are counted too, a page at a time.
    through, after = segments.sealed_through(), 0
    while through and after < through:
        found = segments.read(Filters(), after_id=after, upto_id=through, order="asc",
                              limit=50_000)
        if not found:
            break
        write([part for part in summarize([_stored_row(e) for e in found])
               if part[0].table in chosen])
        after = found[-1]["id"]
    if "rollup_minute_all" in chosen:
        fill_id_bounds()
    if DEFERRED & set(chosen):
        # Every stored entry is counted (a schema upgrade: no writer).
        set_counted_through(_high_water())


def _stored_row(e):
    """An API entry as ROW_SQL's columns, in their stored forms."""
    stored, lettered = names.stored, names.lettered
    duration = e["durationMs"]
    return (e["tsMs"], stored(e["projectId"]), stored(e["containerId"]),
            stored(e["serviceName"]), lettered("level", e["level"]),
            lettered("kind", e["kind"]), e["status"], lettered("source", e["source"]),
            stored(e["route"]), None if duration is None else sketch.bucket_of(duration),
            duration)


# The tiers by level and status class (schema 11).
CLASS_TABLES = ("rollup_class_hour", "rollup_class_total", "rollup_class_hour_all",
                "rollup_class_total_all", "rollup_route_class_hour", "rollup_route_class_total",
                "rollup_route_class_hour_all", "rollup_route_class_total_all")


def fill_id_bounds():
    """Each minute's id bounds, read from `entry` (a schema upgrade)."""
    db.executemany("UPDATE rollup_minute_all SET id_min = ?, id_max = ? WHERE minute = ?",
                   db.execute(f"SELECT min(id), max(id), ts_ms / {MINUTE_MS} FROM entry "
                              f"GROUP BY ts_ms / {MINUTE_MS}").fetchall())


def fill_from_finer(table):
    """A new tier summed from the tier it is summed from (a schema upgrade)."""
    tier = TIERS.get(table) or ROUTE_TIERS[table]
    finer = TIERS.get(tier.source) or ROUTE_TIERS[tier.source]
    if not tier.with_lat:
        # A key tier: its keys are columns of the finer tier's.
        keys = ", ".join(tier.keys)
        db.execute(f"DELETE FROM {table}")
        db.execute(f"INSERT INTO {table} ({keys}, n) SELECT {keys}, SUM(n) FROM {finer.table} "
                   f"GROUP BY {keys} HAVING SUM(n) > 0")
        return
    width = len(finer.keys)
    columns = [*finer.keys, *finer.counts, "lat"] + (["lat_max"] if finer.with_max else [])
    source = {}
    for row in db.execute(f"SELECT {', '.join(columns)} FROM {finer.table}").fetchall():
        counts = [n or 0 for n in row[width:width + len(finer.counts)]]
        rest = row[width + len(finer.counts):]
        source[tuple(row[:width])] = [counts, sketch.loads(rest[0]) or None,
                                      rest[1] if finer.with_max else None]
    db.execute(f"DELETE FROM {table}")
    postgres = db.is_postgres()
    _upsert(tier, 1, _rows(tier, _fold(source, tier.key_from), 1, postgres))


def _fold(source, key_from):
    """The accumulations of `source` summed per key_from(key)."""
    out = {}
    for key, (counts, lat, longest) in source.items():
        key = key_from(key)
        into = out.get(key)
        if into is None:
            out[key] = [counts.copy(), dict(lat) if lat else None, longest]
            continue
        total = into[0]
        for at, n in enumerate(counts):
            if n:
                total[at] += n
        if lat:
            mine = into[1]
            if mine is None:
                into[1] = dict(lat)
            else:
                for bucket, n in lat.items():
                    mine[bucket] = mine.get(bucket, 0) + n
        if longest is not None and (into[2] is None or longest > into[2]):
            into[2] = longest
    return out


def _fold_n(source, key_from):
    """The entry counts `n` of `source` summed per key_from(key), shaped as
    _fold's (a key tier's: no sketch, no longest)."""
    out = {}
    for key, (counts, _, _) in source.items():
        key = key_from(key)
        into = out.get(key)
        if into is None:
            out[key] = [[counts[0]], None, None]
        else:
            into[0][0] += counts[0]
    return out


def _drop_empty(tier, folded):
    """Delete the rows of `tier` that a subtraction left at zero (found by
    their keys: no scan)."""
    match = " AND ".join(f"{c} = ?" for c in tier.keys)
    db.executemany(f"DELETE FROM {tier.table} WHERE {match} AND n <= 0",
                   sorted(folded) if db.is_postgres() else list(folded))  # see _rows


# Where a tier's lat_max is recomputed from: (finer table, its time column).
_MAX_SOURCES = {
    "rollup_hour": ("rollup_minute", "minute"),
    "rollup_total": ("rollup_hour", "hour"),
    "rollup_minute_all": ("rollup_minute", "minute"),
    "rollup_five_minutes_all": ("rollup_minute_all", "minute"),
    "rollup_hour_all": ("rollup_minute_all", "minute"),
    "rollup_total_all": ("rollup_hour_all", "hour"),
}


def _refresh_max(tier, folded):
    """After a subtraction: recompute lat_max of the surviving rows whose
    maximum may have been among the removed rows' (the removed longest is
    at least the row's). Tiers are refreshed finest first."""
    keys = [(key, longest) for key, (_, _, longest) in folded.items() if longest is not None]
    if not keys:
        return
    table = tier.table
    match = " AND ".join(f"{c} = ?" for c in tier.keys)
    if table == "rollup_minute":
        _max_from_entries(table, keys, match, MINUTE_MS, per_scope=True)
        return
    floor_ms = horizon.floor_ms()
    if floor_ms and table in ("rollup_hour", "rollup_minute_all"):
        # Below the floor, minutes of each scope are not kept (horizon.py):
        # from the entries of the hour or the minute, as rollup_minute's.
        unit_ms = HOUR_MS if table == "rollup_hour" else MINUTE_MS
        below = [(key, longest) for key, longest in keys if key[0] * unit_ms < floor_ms]
        if below:
            _max_from_entries(table, below, match, unit_ms, per_scope=table == "rollup_hour")
            keys = [(key, longest) for key, longest in keys if key[0] * unit_ms >= floor_ms]
            if not keys:
                return
    finer, finer_time = _MAX_SOURCES[table]
    shared = [c for c in tier.keys if c != tier.time_column and c != "one"]
    where = [f"f.{c} = {table}.{c}" for c in shared]
    if tier.time_column is not None:
        per = ({"hour": 60, "five_minutes": 5}.get(tier.time_column, 1)
               if finer_time == "minute" else 1)
        where.append(f"f.{finer_time} >= {table}.{tier.time_column} * {per} "
                     f"AND f.{finer_time} < ({table}.{tier.time_column} + 1) * {per}")
    condition = " AND ".join(where) or "TRUE"
    db.executemany(
        f"UPDATE {table} SET lat_max = (SELECT MAX(f.lat_max) FROM "
        f"{source(finer, 'f', 'lat_max ' + condition)} "
        f"WHERE {condition}) WHERE {match} AND lat_max <= ?",
        [(*key, longest) for key, longest in keys])


def _max_from_entries(table, keys, match, unit_ms, per_scope):
    """Set lat_max of the rows of `keys` ((key, removed longest), the key's
    time first, then its scope when `per_scope`) to the longest duration
    of the entries left in that unit, one grouped read per unit."""
    scope = "project_id, coalesce(container_id, ''), coalesce(service_name, ''), "
    for unit in sorted({key[0] for key, _ in keys}):
        start = unit * unit_ms
        found = {}
        longest = (f"SELECT {scope if per_scope else ''}MAX(duration_ms) FROM entry "
                   "WHERE ts_ms >= ? AND ts_ms < ? AND duration_ms IS NOT NULL"
                   + (" GROUP BY 1, 2, 3" if per_scope else ""))
        for sql, params in _with_sealed(longest, [start, start + unit_ms],
                                        _window(start, start + unit_ms, None, None)):
            for row in db.execute(sql, params).fetchall():
                key = tuple(row[:-1])
                if row[-1] is not None and (found.get(key) is None or row[-1] > found[key]):
                    found[key] = row[-1]
        db.executemany(
            f"UPDATE {table} SET lat_max = ? WHERE {match} AND lat_max <= ?",
            [(found.get(tuple(key[1:])), *key, longest) for key, longest in keys
             if key[0] == unit])


def _upsert(tier, sign, rows):
    if not rows:
        return
    postgres = db.is_postgres()
    columns, statement = tier.sql[postgres][sign > 0]
    if not postgres:
        db.executemany(statement, rows)
        return
    # PostgreSQL: the rows go by COPY into a temporary table of the tier's
    # shape (one per connection), then into the tier in one statement, in
    # key order (concurrent writers lock rows in one order). Sent as one
    # multi-row VALUES, each of their values was quoted in Python and
    # parsed by the server: 34 µs a row of `rollup_minute`. Their keys are
    # distinct, as ON CONFLICT needs. Emptied by TRUNCATE, not DELETE: no
    # vacuum ever visits a temporary table, which would grow by every row
    # a long-lived connection ever staged. (Not ON COMMIT DELETE ROWS:
    # the server then truncates every such table of the session at the
    # end of each transaction that touched any temporary table, a read of
    # sealed entries included: 29 of them added 88 ms to each.) The tiers
    # a batch adds few rows to skip this (INLINE_ROWS).
    db.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {tier.staged} (LIKE {tier.table})")
    db.copy(tier.staged, columns, rows)
    db.execute(statement)
    db.execute(f"TRUNCATE {tier.staged}")


# Reading. Each question is split by time (signed_spans) into whole hours,
# whole minutes and the partial minutes at either end; whole units come from
# the counter tiers, the rest from `entry` itself (see _raw_where), so an
# answer is exact to the millisecond while the rows read stay about
# scopes × (hours + 2 × 30 minutes), whatever the length of the range (sums
# may subtract; latency, whose maximum cannot, adds up to 2 × 59 minutes).

_WHOLE = 2**62 // HOUR_MS * HOUR_MS  # "no end", on an hour boundary


def counted(project_id=None, container_id=None, since=None, until=None, keys=True,
            columns=COUNT_COLUMNS, filters=None, found=None):
    """(sql, params) of rows (project_id, container_id, service_name,
    <columns>) whose sums count exactly the entries of the scope with
    since <= ts_ms < until (None: unbounded), or None when none can match.
    `columns`: the count columns wanted (all of them by default).
    Rows of a span that `signed_spans` subtracts come with their counts
    negated. With keys=False the rows may lack the key columns: without a
    scope they are then read from the all-scope tiers. `filters`: a scope,
    a time range and a level or status class (`classed`), read from the
    tiers by class, the rest of the range from the entries `found` gives
    (see _counted_by_class)."""
    if filters is not None:
        return _counted_by_class(filters, columns, found, keys)
    every_scope = not keys and project_id is None and container_id is None
    names = _ALL_TIER if every_scope else _SCOPE_TIER
    counts = ", ".join(columns)
    negated = ", ".join(f"-{c} AS {c}" for c in columns)
    if not every_scope:
        counts, negated = f"{_KEYS}, {counts}", f"{_KEYS}, {negated}"
    parts = []
    for unit, start, end, sign in _planned_spans(since, until, names):
        if unit is None:
            for sql, params in _entry_part(start, end, project_id, container_id,
                                           _entry_select(columns, keys=not every_scope)):
                if sign < 0:
                    sql = f"SELECT {negated} FROM ({sql}) AS raw"
                parts.append((sql, params))
        else:
            parts.append(_tier_part(names[unit], start, end, project_id, container_id,
                                    select=counts if sign > 0 else negated))
    return _joined(parts)


# The key tiers of each key breakdown of a question without a scope, by
# unit, and the keys they give (a container's minutes from the scope tier,
# whose rows are about as many as the entries of those minutes anyway).
KEY_TIERS = {
    "containers": ({"total": "rollup_container_total", HOUR_MS: "rollup_container_hour",
                    MINUTE_MS: "rollup_minute"}, "project_id, container_id"),
    "services": ({"total": "rollup_service_total_all", HOUR_MS: "rollup_service_hour_all",
                  MINUTE_MS: "rollup_service_minute_all"}, "service_name"),
}
_ENTRY_KEYS = {"containers": "project_id, coalesce(container_id, '') AS container_id",
               "services": "coalesce(service_name, '') AS service_name"}


# By class (`classed`): hours and all time.
CLASS_KEY_TIERS = {
    "containers": {"total": "rollup_class_container_total",
                   HOUR_MS: "rollup_class_container_hour"},
    "services": {"total": "rollup_class_service_total_all", HOUR_MS: "rollup_class_service_hour_all"},
}


def key_counted(breakdown, since=None, until=None, filters=None, found=None):
    """(sql, params) of rows (<keys of `breakdown`>, n) of every scope, whose
    sums per key count exactly the entries with since <= ts_ms < until
    (None: unbounded), or None when none can match: as many rows as the
    breakdown has keys per hour (or all time), where the scope tiers have
    one per container and service. `breakdown`: "containers" (project_id,
    container_id) or "services" (service_name), see KEY_TIERS. `filters`:
    a time range and a level or status class (`classed`, no scope), read
    from the key tiers by class and the entries `found` gives."""
    tiers, keys = KEY_TIERS[breakdown]
    counts, negated = f"{keys}, n", f"{keys}, -n AS n"
    select = f"SELECT {_ENTRY_KEYS[breakdown]}, 1 AS n FROM entry e"
    parts = []
    if filters is None:
        spans, also = _planned_spans(since, until, tiers), None
    else:
        tiers = CLASS_KEY_TIERS[breakdown]
        spans, also = _class_spans(filters, tiers), class_where(filters)
    for unit, start, end, sign in spans:
        if unit is None:
            if filters is None:
                raw = _entry_part(start, end, None, None, select)
            else:
                part = filters.replace(since=start, until=end)
                where, values = found(part)
                raw = _with_sealed(f"{select} WHERE {where}", values, part)
            for sql, params in raw:
                if sign < 0:
                    sql = f"SELECT {negated} FROM ({sql}) AS raw"
                parts.append((sql, params))
        else:
            parts.append(_tier_part(tiers[unit], start, end, None, None,
                                    select=counts if sign > 0 else negated, also=also))
    return _joined(parts)


# The class tiers (a level and a status class beside the scope), by unit;
# of every scope, and a route's.
_CLASS_TIER = {"total": "rollup_class_total", HOUR_MS: "rollup_class_hour"}
_CLASS_ALL_TIER = {"total": "rollup_class_total_all", HOUR_MS: "rollup_class_hour_all"}


def _class_tiers(filters):
    """The class tiers of a question: every scope's without a scope."""
    every_scope = filters.project_id is None and filters.container_id is None
    return _CLASS_ALL_TIER if every_scope else _CLASS_TIER


# What the counters answer, by the filters of a question (Filters' fields),
# in one place for every reader:
# - a scope and a time range: the scope tiers (totals, breakdowns, latency,
#   routes; stats.from_counters);
SCOPE_FIELDS = frozenset({"project_id", "container_id", "since", "until"})
# - and levels or whole status classes: the class tiers (`classed`);
CLASS_FIELDS = SCOPE_FIELDS | {"levels", "status_ranges"}
# - and services, or the values of one breakdown (levels, kinds, whole
#   status classes or sources): a count, from the count columns of the
#   scope tiers' rows (query.py);
COLUMN_FIELDS = SCOPE_FIELDS | {"service_names", "levels", "kinds", "status_ranges", "sources"}
# - and only the entries that have a duration: a count, from the latency
#   sketches (query.py).
TIMED_FIELDS = SCOPE_FIELDS | {"timed"}


def only(filters, fields):
    """Whether every filter of `filters` is one of `fields`."""
    return all(item.field in fields for item, _ in filters.active)


def whole_classes(ranges):
    """Status ranges as whole classes ('4xx', ...), or None if one is not
    (`5xx` and `400-599` are; `404` and `500-503` are not)."""
    classes = []
    for low, high in ranges:
        if low % 100 != 0 or high % 100 != 99 or low < 100 or high > 599 or low > high:
            return None
        classes.extend(f"{c}xx" for c in range(low // 100, high // 100 + 1))
    return tuple(dict.fromkeys(classes))


def classed(filters):
    """Whether the class tiers answer stats of `filters`: a scope, a time
    range and a level or a status class (whole classes: `5xx`, `400-599`),
    one of them at least."""
    return ((bool(filters.levels) or bool(filters.status_ranges)) and only(filters, CLASS_FIELDS)
            and whole_classes(filters.status_ranges) is not None)


def class_where(filters):
    """The condition of the class tiers' keys for the filters' levels and
    status classes (values of fixed sets, written in the SQL)."""
    where = []
    if filters.levels:
        stored = [names.lettered("level", level) for level in filters.levels]
        assert all(value.isalpha() for value in stored)
        where.append(f"level IN ({', '.join(repr(v) for v in stored)})")
    if filters.status_ranges:
        classes = sorted({c for low, high in filters.status_ranges
                          for c in range(low // 100, high // 100 + 1)})
        where.append(f"status_class IN ({', '.join(str(int(c)) for c in classes)})")
    return " AND ".join(where)


def _class_spans(filters, tiers):
    """(unit or None, start, end, sign) of the question, over `tiers`."""
    return _signed_spans(filters.since, filters.until, _units(tiers))


# The class readers take `found(filters)`: (condition over `entry e`,
# params) for the entries of `filters` (stats passes planner.where_sql,
# which reads these counters to choose an index).


def _counted_by_class(filters, columns, found, keys):
    tiers = _CLASS_TIER if keys else _class_tiers(filters)
    keyed = tiers is _CLASS_TIER
    prefix = f"{_KEYS}, " if keyed else ""
    counts = prefix + ", ".join(columns)
    negated = prefix + ", ".join(f"-{c} AS {c}" for c in columns)
    also = class_where(filters)
    parts = []
    for unit, start, end, sign in _class_spans(filters, tiers):
        if unit is None:
            part = filters.replace(since=start, until=end)
            where, values = found(part)
            for sql, params in _with_sealed(f"{_entry_select(columns, keys=keyed)} WHERE {where}",
                                            values, part):
                if sign < 0:
                    sql = f"SELECT {negated} FROM ({sql}) AS raw"
                parts.append((sql, params))
        else:
            parts.append(_tier_part(tiers[unit], start, end, filters.project_id,
                                    filters.container_id,
                                    select=counts if sign > 0 else negated, also=also))
    return _joined(parts)


def class_latency(filters, found):
    """({bucket: count}, longest) of the durations of the entries of
    `filters` (`classed`): the sketches of whole hours and all time, the
    rest counted from `entry`; the longest from `latency_max`."""
    also = class_where(filters) + " AND lat IS NOT NULL"
    tiers = _class_tiers(filters)
    parts = []
    for unit, start, end, sign in _class_spans(filters, tiers):
        if unit is None:
            part = filters.replace(since=start, until=end)
            where, params = found(part)
            parts.extend(_with_sealed(
                f"SELECT {_NO_TEXT}, lat_bucket, count(*), {sign} FROM entry e "
                f"WHERE {where} AND +lat_bucket IS NOT NULL GROUP BY lat_bucket", params, part))
        else:
            parts.append(_tier_part(tiers[unit], start, end, filters.project_id,
                                    filters.container_id,
                                    select=f"lat, {_NO_NUMBER}, {_NO_NUMBER}, {sign}",
                                    also=also))
    counts = {}
    for lat, bucket, n, sign in _union(parts):
        if lat is None:
            counts[bucket] = counts.get(bucket, 0) + sign * n
        else:
            sketch.add(counts, lat, sign)
    counts = {bucket: n for bucket, n in counts.items() if n > 0}
    return counts, latency_max(filters, counts)


def latency_max(filters, counts):
    """The longest duration of the entries of `filters`, whose latency
    buckets are `counts` (see latency_extreme)."""
    top = max(counts, default=None)
    return None if top is None else latency_extreme(filters, top)


def latency_extreme(filters, bucket, shortest=False):
    """The longest (`shortest`: the shortest) duration of the entries of
    `filters` in latency bucket `bucket`, found through the latency bucket
    index: the highest (lowest) bucket that holds a duration holds the
    extreme."""
    where, params = _by_bucket(filters)
    sql = (f"SELECT {'MIN' if shortest else 'MAX'}(e.duration_ms) FROM entry e "
           f"WHERE {where} AND e.lat_bucket = ?")
    found = [db.execute(part, values).fetchone()[0]
             for part, values in _with_sealed(sql, [*params, bucket], filters, bucket=bucket)]
    found = [n for n in found if n is not None]
    return (min if shortest else max)(found, default=None)


def _by_bucket(filters):
    """where_sql of `filters` written so that the latency bucket index
    (with the project, when there is one) is the one used."""
    fields = {item.field for item, _ in filters.active}
    return where_sql(filters, plain=fields - {"project_id"})


def route_extremes(filters, wanted, found=None):
    """{route: (shortest, longest)} of the calls (as the route counters
    count them: no request entries) of the entries of `filters`, for the
    routes of `wanted` ({stored route: (lowest bucket or None, highest
    bucket or None)}): the shortest of the lowest bucket, the longest of
    the highest, in one statement. With `found` (filters -> condition and
    params over `entry e`, as the class readers take it), read through it
    (a scan of the matching entries: the choice when they are few); else
    through the latency bucket index, every bucket of it asked for."""
    buckets = sorted({b for pair in wanted.values() for b in pair if b is not None})
    routes = list(wanted)
    where, params = found(filters) if found is not None else _by_bucket(filters)

    def statement(among):
        return (f"SELECT e.route, e.lat_bucket, MIN(e.duration_ms), MAX(e.duration_ms) "
                f"FROM entry e WHERE {where} AND e.lat_bucket IN ({', '.join('?' for _ in among)}) "
                f"AND e.route IN ({', '.join('?' for _ in routes)}) "
                f"AND e.kind NOT IN ({_either('kind', 'request')}) "
                "GROUP BY e.route, e.lat_bucket", [*params, *among, *routes])
    rows = list(db.execute(*statement(buckets)).fetchall())
    # Sealed entries: staged with the filters (those found by a scan), or
    # a bucket at a time, each read as soon as it is staged.
    if found is not None:
        if segments.stage(filters):
            sql, values = statement(buckets)
            rows += db.execute(segments.twin(sql), values).fetchall()
    else:
        for bucket in buckets:
            if segments.stage(filters, bucket):
                sql, values = statement([bucket])
                rows += db.execute(segments.twin(sql), values).fetchall()
    out = {route: [None, None] for route in wanted}
    for route, bucket, low, high in rows:
        lowest, highest = wanted[route]
        span = out[route]
        if bucket == lowest and (span[0] is None or low < span[0]):
            span[0] = low
        if bucket == highest and (span[1] is None or high > span[1]):
            span[1] = high
    return {route: tuple(span) for route, span in out.items()}


def class_routes(filters, found):
    """routes() of the entries of `filters` (`classed`); a container's
    (a few thousand entries) counted from the entries."""
    if filters.project_id is None and filters.container_id is None:
        tables = {"total": "rollup_route_class_total_all",
                  HOUR_MS: "rollup_route_class_hour_all"}
    else:
        tables = {"total": "rollup_route_class_total", HOUR_MS: "rollup_route_class_hour"}
    also = class_where(filters)
    spans = (_class_spans(filters, tables) if filters.container_id is None else
             [(None, filters.since, filters.until, 1)])
    parts = []
    for unit, start, end, sign in spans:
        if unit is None:
            part = filters.replace(since=start, until=end)
            parts.extend(_with_sealed(*_entry_routes(*found(part), sign), part))
        else:
            parts.append(_tier_part(tables[unit], start, end, filters.project_id,
                                    filters.container_id,
                                    select=f"route, n, errors, lat, {_NO_NUMBER}, {sign}",
                                    also=also))
    return _route_rows(parts)


# What reading a unit of each tier costs, in minute rows (an hour holds
# more scopes than a minute: about ten times as many at a thousand busy
# scopes; five minutes, kept for every scope only, hold a row or a row per
# route, as a minute does), and a minute read from `entry` (every entry of
# that minute, of every scope: about ten times a minute's counter rows),
# pro rata.
_UNIT_COST = {HOUR_MS: 10, FIVE_MINUTES_MS: 2, MINUTE_MS: 1}
_RAW_COST = 10


def _signed_spans(since, until, units=(HOUR_MS, MINUTE_MS), subtract=True, floor_ms=0):
    """signed_spans of [since, until) (None: unbounded); without a range,
    the one span ("total", None, None, 1): all time. Before `floor_ms` (an
    hour boundary), no minute unit is used (horizon.py)."""
    if since is None and until is None:
        return [("total", None, None, 1)]
    low, high = 0 if since is None else since, _WHOLE if until is None else until
    now = now_ms() if until is None else None
    if floor_ms and MINUTE_MS in units and low < floor_ms:
        coarse = tuple(u for u in units if u != MINUTE_MS)
        spans = signed_spans(low, min(high, floor_ms), now, coarse, subtract)
        if high > floor_ms:
            spans += signed_spans(floor_ms, high, now, units, subtract)
        return spans
    return signed_spans(low, high, now, units, subtract)


def _planned_spans(since, until, tiers, subtract=True):
    """_signed_spans over the units of `tiers` ({unit: table}), minutes of a
    scope only from the floor on (horizon.py)."""
    floor_ms = horizon.floor_ms() if tiers.get(MINUTE_MS) in horizon.TRIMMED else 0
    return _signed_spans(since, until, _units(tiers), subtract, floor_ms)


def signed_spans(low, high, horizon=None, units=(HOUR_MS, MINUTE_MS), subtract=True):
    """[low, high) as the cheapest sum of spans [(unit or None for raw,
    start, end, sign)]: whole units added, and, where it reads fewer rows,
    a whole unit taken and the part of it outside the range subtracted (an
    hour minus its first minutes, rather than the minutes after them).
    Starts and ends count units (epoch ms for raw spans). Counts are sums,
    so subtraction is exact (subtract=False: whole units inside the range
    only, for what cannot be subtracted). With a `horizon` (now, for a
    range without an end), what lies after it is taken to hold nothing."""
    return _cheapest(low, high, _WHOLE * 2 if horizon is None else horizon, units,
                     subtract)[1]


def _cheapest(low, high, now, units, subtract):
    """(cost, spans) of the cheapest plan for [low, high)."""
    if high <= low:
        return 0, []
    if not units:
        return _RAW_COST * max(0, min(high, now) - low) / MINUTE_MS, [(None, low, high, 1)]
    unit, finer = units[0], units[1:]
    best = _cheapest(low, high, now, finer, subtract)
    inner = (-(-low // unit), high // unit)  # the whole units inside the range
    for first in {low // unit, inner[0]} if subtract else {inner[0]}:
        for end in {inner[1], -(-high // unit)} if subtract else {inner[1]}:
            if end <= first:
                continue
            cost = _UNIT_COST[unit] * max(0, min(end, now // unit + 1) - first)
            spans = [(unit, first, end, 1)]
            for a, b, sign in ((low, first * unit, 1), (first * unit, low, -1),
                               (end * unit, high, 1), (high, end * unit, -1)):
                if a < b:
                    part_cost, part = _cheapest(a, b, now, finer, subtract)
                    cost += part_cost
                    spans += [(u, s, e, sign * g) for u, s, e, g in part]
            if cost < best[0]:
                best = (cost, spans)
    return best


# The tier of each unit of `signed_spans`.
_SCOPE_TIER = {"total": "rollup_total", HOUR_MS: "rollup_hour", MINUTE_MS: "rollup_minute"}
_ALL_TIER = {"total": "rollup_total_all", HOUR_MS: "rollup_hour_all",
             FIVE_MINUTES_MS: "rollup_five_minutes_all", MINUTE_MS: "rollup_minute_all"}


def _units(tiers):
    """The units of time that `tiers` keep, longest first."""
    return tuple(u for u in (HOUR_MS, FIVE_MINUTES_MS, MINUTE_MS) if u in tiers)


def _entry_expression(column):
    """SQL over `entry` that gives 1 where the count column `column` counts
    the row, else 0 (the same rule as `add`)."""
    if column == "n":
        return "1"
    prefix, value = column.split("_", 1)
    if prefix == "status":
        low = int(value[0]) * 100
        return f"CASE WHEN status >= {low} AND status < {low + 100} THEN 1 ELSE 0 END"
    return f"CASE WHEN {prefix} IN ({_either(prefix, value)}) THEN 1 ELSE 0 END"


def _either(column, value):
    """A level, kind or source as SQL, as either engine stores it (SQLite
    its letter, see names.py)."""
    return f"'{value}', '{names.LETTERS[column][value]}'"


def _entry_select(columns=COUNT_COLUMNS, keys=True):
    """`entry` rows in the shape of a counter row (`entry e`): the scope
    keys (with keys=True) and `columns`."""
    selected = ", ".join(f"{_entry_expression(c)} AS {c}" for c in columns)
    if keys:
        selected = ("project_id, coalesce(container_id, '') AS container_id, "
                    f"coalesce(service_name, '') AS service_name, {selected}")
    return f"SELECT {selected} FROM entry e"


assert all(f"{p}_{v}" in COUNT_COLUMNS for p, vs in
           (("level", LEVELS), ("kind", KINDS), ("status", STATUS_CLASSES),
            ("source", SOURCES)) for v in vs)


def _tier_part(table, start, end, project_id, container_id, select, also=None):
    tier = TIERS.get(table) or ROUTE_TIERS[table]
    where, params = scope_where(project_id, container_id)
    if also:
        where.append(also)
    if start is not None and tier.time_column is not None:
        where.append(f"{tier.time_column} >= ? AND {tier.time_column} < ?")
        params += [start, end]
    sql = f"SELECT {select} FROM {source(table, used=' '.join([select, *where]))}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return sql, params


def _raw_where(low, high, project_id, container_id):
    """A condition over `entry e` for the scope's entries with low <= ts_ms
    < high: a partial minute, few entries of every scope."""
    if project_id is None:
        # Found through the ts_ms index. The scope is compared as an
        # expression so that the planner does not pick the scope's index,
        # which would visit all of its entries.
        where, params = scope_where(project_id, container_id, indexed=False)
        where.append("ts_ms >= ? AND ts_ms < ?")
        return " AND ".join(where), [*params, low, high]
    # A tenant's: the ids of the span's entries lie between the least and
    # the greatest id that the ts_ms index holds for it (read from the index
    # alone); the tenant's entries in that id range come from its own index.
    # Of a busy store's minute this reads the tenant's rows, not everyone's.
    # The bound is written `id + 0`: given min(id), PostgreSQL walks the
    # primary key from the least id until it meets the span (38,000 rows
    # for the last minute at a million entries, 7 ms), where the ts_ms index
    # holds the span's few hundred (0.1 ms). SQLite reads the index either way.
    where, params = scope_where(project_id, container_id)
    span = "(SELECT {}(id + 0) FROM entry WHERE ts_ms >= ? AND ts_ms < ?)"
    where.append(f"e.id >= {span.format('min')} AND e.id <= {span.format('max')} "
                 "AND ts_ms >= ? AND ts_ms < ?")
    return " AND ".join(where), [*params, low, high, low, high, low, high]


def _entry_part(low, high, project_id, container_id, select):
    """The parts that read the scope's entries with low <= ts_ms < high
    (hot and sealed, see _with_sealed)."""
    where, params = _raw_where(low, high, project_id, container_id)
    return _with_sealed(f"{select} WHERE {where}", params,
                        _window(low, high, project_id, container_id))


def _window(low, high, project_id, container_id):
    return Filters(project_id=project_id, container_id=container_id, since=low, until=high)


def _with_sealed(sql, params, filters, bucket=None):
    """[(sql, params)]: `sql` over `entry`, and, where sealed entries may
    match `filters` (segments.stage copies them into `sealed_entry`), the
    same over them."""
    parts = [(sql, params)]
    if segments.stage(filters, bucket):
        parts.append((segments.twin(sql), list(params)))
    return parts


def scope_where(project_id, container_id, indexed=True):
    """The condition for a project and container (names as sent), with
    `indexed=False` written so that no index is used for it."""
    where, params = [], []
    column = (lambda name: name) if indexed else unindexed
    if project_id is not None:
        where.append(f"{column('project_id')} = ?")
        params.append(names.stored(project_id))
    if container_id is not None:
        where.append(f"{column('container_id')} = ?")
        params.append(names.stored(container_id))
    return where, params


def latency(project_id=None, container_id=None, since=None, until=None):
    """({bucket: count}, longest) of the durations of the scope's entries
    with since <= ts_ms < until: the sketches of whole units merged, the
    partial minutes counted from `entry`, in one statement. Unscoped
    questions read the all-scope tiers (a row per minute or hour), scoped
    ones the scope's."""
    names = _ALL_TIER if project_id is None and container_id is None else _SCOPE_TIER
    parts = []
    # A maximum cannot be subtracted: whole units are only added. Rows are
    # a sketch (counters) or a bucket's count (entries), with the longest.
    for unit, start, end, _ in _planned_spans(since, until, names, subtract=False):
        if unit is None:
            where, params = _raw_where(start, end, project_id, container_id)
            parts.extend(_with_sealed(
                f"SELECT {_NO_TEXT}, lat_bucket, count(*), MAX(duration_ms) "
                f"FROM entry e WHERE {where} AND +lat_bucket IS NOT NULL "
                f"GROUP BY lat_bucket", params, _window(start, end, project_id, container_id)))
        else:
            parts.append(_tier_part(names[unit], start, end, project_id, container_id,
                                    select=f"lat, {_NO_NUMBER}, {_NO_NUMBER}, lat_max",
                                    also="lat IS NOT NULL"))
    counts, longest = {}, None
    for lat, bucket, n, top in _union(parts):
        if lat is None:
            counts[bucket] = counts.get(bucket, 0) + n
        else:
            sketch.add(counts, lat)
        if top is not None and (longest is None or top > longest):
            longest = top
    return counts, longest


def routes(project_id=None, container_id=None, since=None, until=None):
    """{route: [calls, errors, {bucket: count}]} for the scope's entries
    with since <= ts_ms < until, in one statement. Tiers by scope: every
    scope reads the all-scope route tiers, a project its own (minutes,
    hours, all time); a container reads its all-time row, and counts a
    range from `entry`."""
    if project_id is None and container_id is None:
        tables = {"total": "rollup_route_total_all", HOUR_MS: "rollup_route_hour_all",
                  FIVE_MINUTES_MS: "rollup_route_five_minutes_all",
                  MINUTE_MS: "rollup_route_minute_all"}
    elif container_id is None:
        tables = {"total": "rollup_route_total", HOUR_MS: "rollup_route_hour",
                  MINUTE_MS: "rollup_route_minute"}
    else:
        tables = {"total": "rollup_route_total"}
    parts = []
    # Calls, errors and sketches are sums: spans may be subtracted (the
    # route counters keep no maximum). Rows are (route, calls, errors, and
    # a sketch (counters) or a bucket (entries), sign).
    for unit, start, end, sign in _planned_spans(since, until, tables):
        if unit is None:
            parts.extend(_with_sealed(
                *_entry_routes(*_raw_where(start, end, project_id, container_id), sign),
                _window(start, end, project_id, container_id)))
        else:
            parts.append(_tier_part(tables[unit], start, end, project_id, container_id,
                                    select=f"route, n, errors, lat, {_NO_NUMBER}, {sign}"))
    return _route_rows(parts)


def _entry_routes(where, params, sign):
    """(sql, params) of route rows (see _route_rows) counted from the
    entries matching `where`."""
    return (f"SELECT route, count(*), SUM({_entry_expression('level_error')}), {_NO_TEXT}, "
            f"lat_bucket, {sign} FROM entry e WHERE {where} AND route IS NOT NULL "
            f"AND kind NOT IN ({_either('kind', 'request')}) "  # calls (summarize)
            "GROUP BY route, lat_bucket", params)


def _route_rows(parts):
    """{route: [calls, errors, {bucket: count}]} of the route rows of `parts`."""
    out = {}
    for route, n, errors, lat, bucket, sign in _union(parts):
        into = out.get(route)
        if into is None:
            into = out[route] = [0, 0, {}]
        into[0] += sign * n
        into[1] += sign * (errors or 0)
        if lat is not None:
            sketch.add(into[2], lat, sign)
        elif bucket is not None:
            into[2][bucket] = into[2].get(bucket, 0) + sign * n
    return out


# Typed NULLs, so that either engine takes the columns of a UNION ALL
# whose first part lacks them.
_NO_TEXT, _NO_NUMBER = "CAST(NULL AS TEXT)", "CAST(NULL AS BIGINT)"


def _joined(parts):
    """The (sql, params) parts as one (sql, params), None if there are none."""
    if not parts:
        return None
    return (" UNION ALL ".join(sql for sql, _ in parts),
            [p for _, params in parts for p in params])


def _union(parts):
    """The rows of the (sql, params) parts, in one statement."""
    joined = _joined(parts)
    return [] if joined is None else db.execute(*joined).fetchall()

