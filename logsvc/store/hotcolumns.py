"""The hot entries' small columns, kept by each process as one Arrow table.

Stats over a filter the counters do not keep (a method, a route, a
duration: stats.py's `_raw_summary`) count the matching entries. The sealed
ones are grouped with numpy from their segments' warm columns
(segments.matching_arrays); the hot ones were read from `entry` a row at a
time and counted in Python: at 1M, 100 of the 115 ms of a method's stats
went to the 82,496 hot entries. Each process now keeps the hot entries'
COLUMNS (as the API gives them: names as text) in one table, and a
question brings it up to its own snapshot before it filters and groups it
as it does a segment's (segments.hot_arrays):

- the first question starts making it in the background (82,496
  entries: about 0.3 s) and reads `entry` meanwhile;
- the entries committed since are read by id (ids commit in order:
  ingest.py), at most REFRESH_ROWS of them; those this snapshot does not
  see yet are left out;
- the entries sealed since (at or below the watermark,
  segments.sealed_through) are cut off the front;
- when entries were removed otherwise (retention, a dropped partition,
  `clear`: meta `removals`, which models.PruneLog.record counts in the
  removal's transaction), it is made whole again.

While such questions come (within WANTED_S), the background work of each
worker brings the table up to date each round (`warm`, beside
segments.warm), so that a question finds little to read. A table further
behind than REFRESH_ROWS, and a store with more hot entries than
LOGSVC_HOT_COLUMNS_ROWS (a store that seals nothing, a sealer far
behind; 0 keeps no table), leave the question to read `entry` as before.
"""
import functools
import logging
import time

from logsvc import runtime

from . import db, names, segments

log = logging.getLogger("logsvc.hotcolumns")

COLUMNS = ("id", "ts_ms", "kind", "level", "project_id", "container_id", "service_name",
           "method", "status", "source", "duration_ms", "route", "lat_bucket")
_NAMED = ("project_id", "container_id", "service_name", "method", "route")
_LETTERED = ("kind", "level", "source")
# Appended chunks a table holds before they are combined into one.
_CHUNKS = 32
# A question brings its process's table up by at most this many entries
# (about 3.5 µs each); further behind, it reads `entry` as before.
REFRESH_ROWS = 32_768
# The background keeps a table while a question asked for one this
# recently (seconds).
WANTED_S = 600


class _Kept:
    """A table of hot entries and what it was read in: the removals
    counted, the watermark, the last id."""

    __slots__ = ("removals", "through", "high", "table")

    def __init__(self, removals, through, high, table):
        self.removals, self.through, self.high, self.table = removals, through, high, table


def table():
    """The hot entries the caller's snapshot sees, as an Arrow table of
    COLUMNS in id order; None when the caller is to read `entry`: the
    process keeps no table of them yet (one is made in the background,
    `_make`), its table is further behind than REFRESH_ROWS (the
    background's next round brings it up), or the store has more hot
    entries than it keeps."""
    store = db.current()
    store.hot_columns_wanted = time.monotonic()
    found = _brought_up(store, REFRESH_ROWS)
    if found is _MISSING:
        if not store.closed and not runtime.alive(store.hot_columns_making):
            store.hot_columns_making = runtime.spawn(_make, store, name="logsvc-hot-columns")
        return None
    return found


def _make(store):
    try:
        with db.using(store):
            db.call(_brought_up, store, None)
    except Exception as exc:  # noqa: BLE001 - a question reads `entry` meanwhile
        log.warning("the hot entries' columns were not made: %s", exc)


def warm():
    """Bring this process's table of hot entries up to date, if a question
    asked for it in the last WANTED_S (each round of the background work,
    as segments.warm)."""
    store = db.current()
    wanted = store.hot_columns_wanted
    if wanted is None or time.monotonic() - wanted > WANTED_S:
        store.hot_columns = None  # no longer asked for: not kept
        return
    _brought_up(store, None)


_MISSING = object()  # `_brought_up`: no table to bring up


def _brought_up(store, limit):
    """The table of `store`'s hot entries brought up to this snapshot, by
    at most `limit` entries (None: any, and made whole if need be); None
    past that or past the entries kept, _MISSING when there is no table
    to bring up."""
    segments.arrow_ready()
    import pyarrow as pa
    import pyarrow.compute as pc

    through = segments.sealed_through()
    (high,) = db.execute("SELECT max(id) FROM entry").fetchone()
    high = through if high is None or high < through else high
    if high - through > store.hot_columns_rows:
        store.hot_columns = None
        return None
    row = db.execute("SELECT value FROM meta WHERE key = 'removals'").fetchone()
    removals = row[0] if row else None
    kept = store.hot_columns
    if kept is None or kept.removals != removals or kept.through > through:
        if limit is not None:
            return _MISSING
        kept = _Kept(removals, through, through, _empty())  # made whole
    elif limit is not None and high - max(kept.high, through) > limit:
        return None
    since = max(kept.high, through)
    found = kept.table
    if high > since:
        rows = db.execute(f"SELECT {', '.join(COLUMNS)} FROM entry "
                          f"WHERE id > ? AND id <= ? ORDER BY id", (since, high)).fetchall()
        found = pa.concat_tables([found, _arrow(rows)])
    if found.num_rows and found["id"][0].as_py() <= through:  # sealed since
        found = found.slice(int(pc.sum(pc.less_equal(found["id"], through)).as_py()))
    if found.num_rows and found["id"][-1].as_py() > high:  # not in this snapshot
        seen = found.slice(0, int(pc.sum(pc.less_equal(found["id"], high)).as_py()))
    else:
        seen = found
    if found["id"].num_chunks > _CHUNKS:
        found = found.unify_dictionaries().combine_chunks()
    newest = max(high, kept.high)
    current = store.hot_columns
    if current is None or current is kept or (
            through >= current.through and newest >= current.high):
        store.hot_columns = _Kept(removals, through, newest, found)
    return seen


def _empty():
    segments.arrow_ready()
    import pyarrow as pa

    schema = segments.schema_of(COLUMNS)
    return pa.table([pa.array([], field.type) for field in schema], schema=schema)


def _arrow(rows):
    """Rows of COLUMNS as `entry` stores them, as a table with the API's
    values: a name, level, kind or source as a dictionary column, each
    distinct stored value translated once."""
    segments.arrow_ready()
    import pyarrow as pa

    schema = segments.schema_of(COLUMNS)
    columns = list(zip(*rows)) if rows else [()] * len(COLUMNS)
    show = names.shower()
    made = []
    for name, values, field in zip(COLUMNS, columns, schema):
        if not pa.types.is_dictionary(field.type):
            made.append(pa.array(values, field.type))
            continue
        translate = show if name in _NAMED else functools.partial(names.unlettered, name)
        # SQLite stores names as numbers' bytes, PostgreSQL as text; levels,
        # kinds and sources as text: each distinct value translated once.
        stored = pa.array(values)
        if not (pa.types.is_binary(stored.type) or pa.types.is_string(stored.type)):
            made.append(pa.array([None if v is None else translate(v) for v in values],
                                 pa.string()).dictionary_encode())  # none at all
            continue
        stored = stored.dictionary_encode()
        made.append(pa.DictionaryArray.from_arrays(
            stored.indices.cast(pa.int32()),
            pa.array([translate(v) for v in stored.dictionary.to_pylist()], pa.string())))
    return pa.table(made, schema=schema)
