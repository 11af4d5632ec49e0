"""The store's schema: how a new store is made and how an older one is
brought to SCHEMA_VERSION, one version at a time.

`create_schema` runs in every process as it starts. On a current store it
only reads the version. Otherwise it creates what is missing (tables,
indexes, columns that later versions added: `create_tables` never alters a
table) and then runs each step of STEPS from the stored version on, all in
one transaction: a store is upgraded whole or not at all. On PostgreSQL the
processes of every host take turns through an advisory lock, and the first
to finish leaves the others nothing to do.

A step is written for a store of the version before it, whose tables
`create_tables` has just completed. Work that can be done while the store
serves is left to the background (version 13's segments are sealed by the
sealer, not by the upgrade).
"""
import peewee

from logsvc.entry import coerce_duration, derive_route

from . import db, fulltext, lookup, names, rollup, segments, sketch
from .db import database
from .models import ALL_MODELS, ROLLUP_MODELS, Entry, EntryBody, IdSequence, Meta, entry_indexes
from .rollup import COUNT_COLUMNS, ROLLUP_DIMENSIONS, ROUTE_COUNT_COLUMNS

SCHEMA_VERSION = 20


# Columns that later versions added to tables that existed before them:
# added before create_tables, whose indexes may use them. (Version 4: the
# latency and route columns; version 7: the kind of a dictionary; version
# 9: the id bounds of a minute; version 19: a segment's parts.)
_ADDED_COLUMNS = {
    "entry": (("duration_ms", "DOUBLE PRECISION", "REAL"), ("route", "TEXT", "TEXT"),
              ("lat_bucket", "SMALLINT", "INTEGER")),
    **{table: (("lat", "TEXT", "TEXT"), ("lat_max", "DOUBLE PRECISION", "REAL"))
       for table in ("rollup_minute", "rollup_hour", "rollup_total")},
    "body_dictionary": (("kind", "TEXT NOT NULL DEFAULT 'body'", "TEXT NOT NULL DEFAULT 'body'"),),
    "rollup_minute_all": (("lat", "TEXT", "TEXT"), ("lat_max", "DOUBLE PRECISION", "REAL"),
                          ("id_min", "BIGINT", "INTEGER"), ("id_max", "BIGINT", "INTEGER")),
    # Version 19: where a segment's parts are (SQLite).
    "segment": (("part_id", "BIGINT", "INTEGER"), ("part_bytes", "INTEGER", "INTEGER")),
}


def _add_columns():
    postgres = db.is_postgres()
    for table, columns in _ADDED_COLUMNS.items():
        if not db.table_exists(table):
            continue
        present = {c.name for c in database.get_columns(table)}
        for name, pg_type, sqlite_type in columns:
            if name not in present:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} "
                           f"{pg_type if postgres else sqlite_type}")


def _create_lookup_indexes():
    # `traceId=` and `clientIp=`: SQLite's lookup index (lookup.py),
    # PostgreSQL's b-trees.
    if db.is_postgres():
        db.execute("CREATE INDEX IF NOT EXISTS entry_trace_id ON entry (trace_id)")
        db.execute("CREATE INDEX IF NOT EXISTS entry_client_ip_id ON entry (client_ip, id)")
    else:
        lookup.create()


def _v1_to_v2():
    # Version 1 (SQLite only) took entry ids from sqlite_sequence.
    db.execute("UPDATE id_sequence SET last_id = max(last_id, coalesce("
               "(SELECT seq FROM sqlite_sequence WHERE name = 'entry'), 0)) WHERE name = 'entry'")


def _v2_to_v3():
    # Version 3 keeps long bodies compressed in columns of their own (the
    # bodies already stored stay as they are: text is read as before).
    for column in ("request_body_z", "response_body_z"):
        if db.is_postgres():
            db.execute(f"ALTER TABLE entry_body ADD COLUMN IF NOT EXISTS {column} BYTEA")
        elif column not in {c.name for c in database.get_columns("entry_body")}:
            db.execute(f"ALTER TABLE entry_body ADD COLUMN {column} BLOB")
    # Indexes that version 3 does without or orders differently (see Entry;
    # create_tables has made the new ones).
    for index in ("entry_kind_id", "entry_source_id", "entry_project_id_container_id_id"):
        db.execute(f"DROP INDEX IF EXISTS {index}")
    # Version 2 kept counters per minute and all time; the hourly and the
    # all-scopes minute counters are sums of the minute counters.
    sums = ", ".join(f"SUM({c})" for c in COUNT_COLUMNS)
    columns = ", ".join(COUNT_COLUMNS)
    keys = ", ".join(ROLLUP_DIMENSIONS)
    db.execute("DELETE FROM rollup_hour")
    db.execute(f"INSERT INTO rollup_hour (hour, {keys}, {columns}) "
               f"SELECT minute / 60, {keys}, {sums} FROM rollup_minute "
               f"GROUP BY minute / 60, {keys}")
    db.execute("DELETE FROM rollup_minute_all")
    db.execute(f"INSERT INTO rollup_minute_all (minute, {columns}) "
               f"SELECT minute, {sums} FROM rollup_minute GROUP BY minute")
    # Version 3 indexes url, bodies and data for `q`.
    fulltext.rebuild()


def _v3_to_v4():
    # Version 4 has durations and routes. Entries stored before keep a
    # numeric data.durationMs in `data` and gain it as their duration too.
    if db.is_postgres():
        number = ("CASE WHEN jsonb_typeof(data::jsonb -> 'durationMs') = 'number' "
                  "THEN (data::jsonb ->> 'durationMs')::float8 END")
    else:
        number = ("CASE WHEN json_type(data, '$.durationMs') IN ('integer', 'real') "
                  "THEN json_extract(data, '$.durationMs') END")
    after = 0
    while True:
        rows = db.execute(f"SELECT id, url, {number} FROM entry WHERE id > ? "
                          f"ORDER BY id LIMIT 20000", (after,)).fetchall()
        if not rows:
            break
        after = rows[-1][0]
        updates = []
        for entry_id, url, stored in rows:
            try:
                duration = None if stored is None else coerce_duration(stored)
            except ValueError:  # out of range: stays in `data` only
                duration = None
            route = derive_route(url)
            if duration is not None or route is not None:
                updates.append((duration, route, sketch.bucket_of(duration), entry_id))
        db.executemany("UPDATE entry SET duration_ms = ?, route = ?, lat_bucket = ? "
                       "WHERE id = ?", updates)
    # Every counter is rebuilt from the entries, with latency and routes.
    rollup.rebuild()


def _v5_to_v6():
    # Version 6: `order=slowest` walks latency buckets (create_tables has
    # made their indexes, and on SQLite those of values without the id). On
    # SQLite, a full-text index without positions (see fulltext.py), made
    # again, and trace ids and client addresses in the lookup index
    # (lookup.py) instead of b-trees.
    for index in ("entry_duration_ms", "entry_project_id_duration_ms"):
        db.execute(f"DROP INDEX IF EXISTS {index}")
    if not db.is_postgres():
        # Indexes of a value and the id, now of the value alone (see
        # _entry_indexes), and of trace ids and addresses, now in `lookup`.
        for column in ("level", "service_name", "status", "method", "trace", "client_ip"):
            db.execute(f"DROP INDEX IF EXISTS entry_{column}_id")
        lookup.rebuild()
        fulltext.recreate_sqlite()


# Version 5 added the ingest_key table and version 6 body_dictionary, which
# create_tables makes. Version 7 compacts the entries written from then on
# (SQLite: `data` compressed, trace ids and addresses as bytes; see
# lookup.py); older rows are read as they are. Its dictionary column is
# added by _add_columns and PostgreSQL's new sketch merge by create_schema.
def _v6_to_v7():
    # Version 7 (PostgreSQL): the counts other than `n` may be NULL, written
    # for 0 (see rollup.Tier). Rows written before keep their zeros.
    if db.is_postgres():
        counts = {*COUNT_COLUMNS, *ROUTE_COUNT_COLUMNS}
        for model in ROLLUP_MODELS:
            for field in model._meta.sorted_fields:
                if field.null and field.name in counts:  # as _add_counts declares them
                    db.execute(f"ALTER TABLE {model._meta.table_name} "
                               f"ALTER COLUMN {field.name} DROP NOT NULL")


def _v7_to_v8():
    # Version 8 (SQLite): project, container and service names as numbers
    # (names.py), in every entry and counter row: one rewrite of each.
    if not db.is_postgres():
        names.code_stored_names()


def _v8_to_v9():
    # Version 9: each minute's id bounds, the routes of every scope per five
    # minutes (summed from their minutes), and the tenant index with the
    # level (create_tables has made it).
    db.execute("DROP INDEX IF EXISTS entry_project_id_id_container_id")
    rollup.fill_id_bounds()
    rollup.fill_from_finer("rollup_route_five_minutes_all")


def _v10_to_v11():
    # Version 11: the counters by level and status class (create_tables has
    # made their tables), counted from the entries.
    rollup.rebuild(rollup.CLASS_TABLES)


def _v11_to_v12():
    if not db.is_postgres():
        fulltext.add_scope_words()


def _v14_to_v15():
    # Version 15: a route's counts are calls (a request entry no longer
    # counts, its response does), recounted from the entries.
    rollup.rebuild(rollup.ROUTE_TIERS)



def _v15_to_v16():
    # Version 16 (PostgreSQL): the all-time counters, which every ingest
    # rewrites, leave room in each page for a row's new version (see
    # _PG_UPDATED); the pages written from now on.
    if db.is_postgres():
        for table in sorted(_all_time()):
            db.execute(f"ALTER TABLE {table} SET ({_PG_UPDATED})")


def _v16_to_v17():
    # Version 17: the key tiers (entries per container and per service, per
    # hour and all time, by class, and per service and minute as far back
    # as rollup_minute reaches), summed from the scope tiers.
    for tier in rollup.TIERS.values():
        if not tier.with_lat:
            rollup.fill_from_finer(tier.table)


def _v17_to_v18():
    # Version 18 (PostgreSQL): segments' bytes are stored uncompressed out
    # of line (they are compressed already), so that a question reads the
    # ranges of a segment it decodes, not all of it (segments.py): the
    # segments written from now on; those before were stored so already
    # unless their first kilobyte compressed.
    if db.is_postgres():
        db.execute(_PG_SEGMENT_STORAGE)


_PG_SEGMENT_STORAGE = "ALTER TABLE segment ALTER COLUMN data SET STORAGE EXTERNAL"


def _v18_to_v19():
    # Version 19 (SQLite): segments written from now on keep their bytes in
    # parts (`segment_part`, which create_tables has made), so that a
    # question reading a row group walks a part's pages, not the segment's
    # from its start; the parts go with their segment (a trigger). Those
    # before stay in `segment.data`, until a merge rewrites them.
    if not db.is_postgres():
        segments.create_parts_trigger()


def _v19_to_v20():
    # Version 20: the counters with a row per scope and unit are counted in
    # the background (rollup.DEFERRED): every entry stored so far is in
    # them, so the watermark starts at the last id handed out.
    rollup.set_counted_through(IdSequence.high_water())


# PostgreSQL: the storage of a counter table whose rows are rewritten all
# the time (the all-time tiers: a scope's row takes every batch of it). With
# half of each page free, a row's new version goes in the same page (a
# HOT update) and the page's dead versions are pruned when it fills,
# without waiting for a VACUUM; packed pages sent each new version to the
# end of the table (41 MB for 2,000 rows of rollup_total after a million
# entries, autovacuum off).
_PG_UPDATED = "fillfactor = 50"


def _all_time():
    """The counter tables without a time column."""
    return {t.table for tiers in (rollup.TIERS, rollup.ROUTE_TIERS) for t in tiers.values()
            if t.time_column is None}


def _nothing():
    """Only new tables, which create_tables has made."""


# STEPS[v - 1] brings a store of version v to version v + 1.
STEPS = (
    _v1_to_v2,
    _v2_to_v3,
    _v3_to_v4,
    # 4 -> 5: the ingest_key table (Idempotency-Key).
    _nothing,
    _v5_to_v6,
    _v6_to_v7,
    _v7_to_v8,
    _v8_to_v9,
    # 9 -> 10: PostgreSQL's faster sketch merge, which every upgrade makes
    # again (_PG_SKETCH_ADD); nothing else changes.
    _nothing,
    _v10_to_v11,
    _v11_to_v12,
    # 12 -> 13: sealed segments (their table). The entries stay where they
    # are: the background sealer moves the older ones into segments, a
    # segment at a time, while the store serves (segments.py).
    _nothing,
    # 13 -> 14: alert rules and their deliveries (their tables).
    _nothing,
    _v14_to_v15,
    _v15_to_v16,
    _v16_to_v17,
    _v17_to_v18,
    _v18_to_v19,
    _v19_to_v20,
)
assert len(STEPS) == SCHEMA_VERSION - 1


# PostgreSQL's twin of sketch.merge_stored (SQLite calls the Python one).
# It runs for every counter row an ingest adds to, most often a batch's few
# buckets into a long all-time sketch: each bucket is found by bisection in
# the stored pairs, kept as text (only the buckets it compares are read as
# numbers), and the pairs are written back in one piece. Walking both
# sketches pair by pair and writing the result piece by piece took 64 µs
# for a tenant's all-time row (90 buckets), this 24; parsing them as jsonb
# and grouping the pairs took four times as long as that walk.
_PG_SKETCH_ADD = """
CREATE OR REPLACE FUNCTION logsvc_sketch_add(a text, b text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
  x text[]; y bigint[]; pairs int; j int := 1; ny int; lo int; hi int; mid int;
  k bigint; n bigint;
BEGIN
  IF a IS NULL OR a = '' THEN RETURN nullif(b, ''); END IF;
  IF b IS NULL OR b = '' THEN RETURN a; END IF;
  x := string_to_array(btrim(a, '[] '), ',');
  y := string_to_array(btrim(b, '[] '), ',')::bigint[];
  ny := coalesce(array_length(y, 1), 0);
  WHILE j < ny LOOP
    k := y[j]; n := y[j + 1]; j := j + 2;
    CONTINUE WHEN n = 0;
    pairs := coalesce(array_length(x, 1), 0) / 2;
    lo := 0; hi := pairs;
    WHILE lo < hi LOOP
      mid := (lo + hi) / 2;
      IF x[2 * mid + 1]::bigint < k THEN lo := mid + 1; ELSE hi := mid; END IF;
    END LOOP;
    IF lo < pairs AND x[2 * lo + 1]::bigint = k THEN
      IF x[2 * lo + 2]::bigint + n = 0 THEN
        x := x[1:2 * lo] || x[2 * lo + 3:2 * pairs];
      ELSE
        x[2 * lo + 2] := (x[2 * lo + 2]::bigint + n)::text;
      END IF;
    ELSE
      x := x[1:2 * lo] || ARRAY[k::text, n::text] || x[2 * lo + 1:2 * pairs];
    END IF;
  END LOOP;
  IF coalesce(array_length(x, 1), 0) = 0 THEN RETURN NULL; END IF;
  RETURN '[' || array_to_string(x, ',') || ']';
END
$$
"""


class SchemaTooNew(RuntimeError):
    pass


def stored_version():
    if not db.table_exists("meta"):  # a new store
        return None
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else None


def create_schema(partition_rows=1_000_000):
    """Create the tables of a new store, or migrate an existing one.
    `partition_rows` (PostgreSQL) is the id range of one partition; the
    first process to create the store decides it for every host."""
    postgres = db.is_postgres()
    if stored_version() == SCHEMA_VERSION:
        # The usual start of a worker: nothing to create, and no DDL that
        # would lock tables that the writers of other hosts are using.
        return
    rewritten = _all_time()
    for model in ROLLUP_MODELS:
        if not postgres:
            model._meta.table_settings = ["WITHOUT ROWID"]
        else:
            rewritten_here = model._meta.table_name in rewritten
            model._meta.table_settings = [f"WITH ({_PG_UPDATED})"] if rewritten_here else []
    Entry._meta.table_settings = ["PARTITION BY RANGE (id)"] if postgres else []
    entry_indexes(postgres)
    EntryBody._meta.table_settings = ["PARTITION BY RANGE (entry_id)"] if postgres else []
    if not postgres:
        _create(postgres, partition_rows)
        return
    # Every worker of every host runs this at start: one at a time, and
    # none once another has made the store current (its DDL would lock
    # tables that the first one's writers are using). The lock is the
    # session's, taken before the transaction begins, so that the version
    # is read in a transaction that began after the one before committed.
    # Taken inside the transaction (as it once was), a process that had
    # waited for it still found no version at times, while many stores
    # were being created on one server, and made the store again: holding
    # locks on `entry`, it asked for `id_sequence`'s row, and deadlocked
    # with the first ingest, which creates a partition of `entry` while
    # holding that row (the ingest failed with a 503).
    db.execute(f"SELECT pg_advisory_lock({_SCHEMA_LOCK})")
    try:
        _create(postgres, partition_rows)
    finally:
        try:
            db.execute(f"SELECT pg_advisory_unlock({_SCHEMA_LOCK})")
        except (peewee.InterfaceError, peewee.OperationalError):
            pass  # the connection is gone, and its lock with it


_SCHEMA_LOCK = 7106737


def _create(postgres, partition_rows):
    with database.atomic():
        if postgres:
            if stored_version() == SCHEMA_VERSION:
                return
            db.execute(_PG_SKETCH_ADD)
        _add_columns()
        database.create_tables(ALL_MODELS, safe=True)
        _create_lookup_indexes()
        fulltext.create()
        if not postgres:
            segments.create_parts_trigger()
        if postgres:
            db.execute(_PG_SEGMENT_STORAGE)
            # Partitions are dropped whole by retention, bodies with their
            # entries: a foreign key between the two would forbid that.
            db.execute("ALTER TABLE entry_body DROP CONSTRAINT IF EXISTS entry_body_entry_id_fkey")
        (IdSequence.insert(name="entry", last_id=0)
         .on_conflict_ignore().execute())
        if postgres:
            (Meta.insert(key="partition_rows", value=str(max(1, partition_rows)))
             .on_conflict_ignore().execute())
        row = Meta.get_or_none(Meta.key == "schema_version")
        if row is None:
            Meta.create(key="schema_version", value=str(SCHEMA_VERSION))
            rollup.set_counted_through(0)  # a new store: nothing to count yet
            return
        version = int(row.value)
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"the store has schema version {version}; this logsvc knows "
                f"{SCHEMA_VERSION}. Upgrade logsvc."
            )
        while version < SCHEMA_VERSION:
            STEPS[version - 1]()
            version += 1
        Meta.update(value=str(version)).where(Meta.key == "schema_version").execute()
