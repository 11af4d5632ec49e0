"""Tables of the store.

- `Entry`: one captured log entry. Its `id` doubles as the live tail's
  sequence number: ingest assigns ids from `IdSequence` (see ingest.py), so
  an id is never reused, even after the newest rows are deleted, and ids
  become visible in the order they were assigned. On PostgreSQL `entry`
  and `entry_body` are partitioned by id range (see partitions.py).
- `EntryBody`: captured request/response bodies, kept apart so scans of
  `entry` never read them. A body of BODY_COMPRESS_FROM bytes or more is
  kept zstd-compressed in the `_z` column (with the store's dictionary,
  `BodyDictionary`: about a fifth of its size for JSON), a shorter one as
  text (see bodies.py). On PostgreSQL every entry
  has a row, whose `doc` is its full-text index entry (see fulltext.py).
- `RollupTotal` / `RollupHour` / `RollupMinute`: entry counts per
  (project, container, service), all time, per hour and per minute, and
  `RollupMinuteAll`: per minute over every scope (what an unfiltered
  histogram reads). One column per level, kind, status class and source.
  Ingest adds to them and retention subtracts from them in the same
  transaction as the rows, so they always equal a GROUP BY over `entry`
  (see rollup.py, and stats.py for which question reads which). Key
  columns use '' for "none" because a primary key treats NULLs as distinct
  and the upsert needs a key.
- `IdSequence`: the last id handed out, per sequence ('entry').
- `Meta`: small key/value records (the schema version, the partition size).
- `RateBucket`: the rate limit's state per scope (PostgreSQL only).
- `Lease`: named, expiring locks shared by every process on the database
  (who runs retention).
- `ApiToken`, `User`, `Session`, `WsToken`: the scoped callers, browser
  sessions and WebSocket tickets (secrets kept only as digests or slow
  hashes).
- `BodyDictionary`: the zstd dictionaries bodies and `data` are compressed
  with.
- `DestroyedScope`: containers destroyed by the operator.
- `PruneLog`: the id ranges retention removed, and when.
"""
import secrets

import peewee

from logsvc.entry import coerce_duration, derive_route

from . import db, fulltext, lookup, names, rollup, sketch
from .db import database
from .rollup import COUNT_COLUMNS, ROLLUP_DIMENSIONS, ROUTE_COUNT_COLUMNS

SCHEMA_VERSION = 15


class BaseModel(peewee.Model):
    class Meta:
        database = database
        legacy_table_names = False


class Entry(BaseModel):
    # INTEGER PRIMARY KEY on SQLite (the rowid), BIGINT on PostgreSQL.
    id = peewee.BigIntegerField(primary_key=True)
    trace_id = peewee.TextField()
    ts_ms = peewee.BigIntegerField()
    kind = peewee.TextField()
    level = peewee.TextField()
    project_id = peewee.TextField()
    container_id = peewee.TextField(null=True)
    service_name = peewee.TextField(null=True)
    method = peewee.TextField(null=True)
    url = peewee.TextField(null=True)
    client_ip = peewee.TextField(null=True)
    status = peewee.IntegerField(null=True)
    source = peewee.TextField()
    data = peewee.TextField(default="{}")
    has_body = peewee.BooleanField(default=False)
    body_truncated = peewee.BooleanField(default=False)
    duration_ms = peewee.DoubleField(null=True)
    route = peewee.TextField(null=True)
    # The duration's bucket in the latency counters' layout (sketch.py),
    # so that sums over raw rows use exactly the counters' buckets.
    lat_bucket = peewee.SmallIntegerField(null=True)

    class Meta:
        # Each index costs 15-45 bytes per entry. `kind` and `source` have
        # none: with two or three values, a page of them is found by walking
        # back from the newest id, and their totals come from the counters.
        # Trace ids and client addresses: see _create_lookup_indexes. The
        # indexes of one value and the id are set per engine
        # (_entry_indexes, called by create_schema).
        indexes = (
            # A tenant's newest page walks its project backwards by id; a
            # container's and a level's are checked from the index itself
            # (SQLite reads the row of an index entry only once every
            # condition on the index's columns holds): a small tenant's
            # errors read the rows of its errors, not of all its entries.
            (("project_id", "id", "container_id", "level"), False),
            (("ts_ms",), False),
        )


# A page of one level, service, status or method walks its index backwards
# by id; `order=slowest` walks an index by latency bucket (sketch.py: a
# bucket's durations are all longer than the one below's) backwards,
# sorting the entries of each bucket it reaches by duration, for every
# scope and for a tenant. Keyed by bucket and id, each grows at the end of
# its buckets; keyed by the duration itself, each entry went to a random
# page. Entries without a duration are not in them (partial indexes).
#
# SQLite ends every index key with the rowid, which is the id: an index of
# the values alone is already in that order, and naming the id too would
# store it twice (4 bytes an entry per index). PostgreSQL needs it.
_BY_VALUE = (("level",), ("service_name",), ("status",), ("method",))
_BY_LATENCY = (("lat_bucket",), ("project_id", "lat_bucket"))
_BASE_INDEXES = tuple(Entry._meta.indexes)


def _entry_indexes(postgres):
    """Entry's indexes for the engine (set before its tables are made)."""
    then_id = ("id",) if postgres else ()
    Entry._meta.indexes = [
        *_BASE_INDEXES,
        *(((*columns, *then_id), False) for columns in _BY_VALUE),
        *(peewee.ModelIndex(Entry, [getattr(Entry, c) for c in (*columns, *then_id)],
                            where=Entry.lat_bucket.is_null(False)) for columns in _BY_LATENCY),
    ]


class EntryBody(BaseModel):
    entry = peewee.ForeignKeyField(Entry, primary_key=True, on_delete="CASCADE",
                                   column_name="entry_id")
    request_body = peewee.TextField(null=True)
    response_body = peewee.TextField(null=True)
    request_body_z = peewee.BlobField(null=True)
    response_body_z = peewee.BlobField(null=True)


def _latency(cls, with_max=True):
    # A latency sketch (sketch.py) and the exact longest duration.
    cls._meta.add_field("lat", peewee.TextField(null=True))
    if with_max:
        cls._meta.add_field("lat_max", peewee.DoubleField(null=True))
    return cls


def _add_counts(cls, columns, with_max=True):
    # Every count but the total `n` may be NULL, which PostgreSQL writes
    # for 0 (see rollup.Tier): a NULL costs a bit there, a bigint 8 bytes.
    for name in columns:
        cls._meta.add_field(name, peewee.BigIntegerField(default=0, null=name != "n"))
    return _latency(cls, with_max)


def _counted(cls):
    return _add_counts(cls, COUNT_COLUMNS)


def _route_counted(cls):
    return _add_counts(cls, ROUTE_COUNT_COLUMNS)


@_counted
class RollupTotal(BaseModel):
    project_id = peewee.TextField()
    container_id = peewee.TextField()
    service_name = peewee.TextField()

    class Meta:
        primary_key = peewee.CompositeKey(*ROLLUP_DIMENSIONS)
        table_settings = ["WITHOUT ROWID"]


@_counted
class RollupHour(BaseModel):
    hour = peewee.BigIntegerField()  # ts_ms // 3_600_000
    project_id = peewee.TextField()
    container_id = peewee.TextField()
    service_name = peewee.TextField()

    class Meta:
        primary_key = peewee.CompositeKey("hour", *ROLLUP_DIMENSIONS)
        table_settings = ["WITHOUT ROWID"]


@_counted
class RollupMinute(BaseModel):
    minute = peewee.BigIntegerField()  # ts_ms // 60_000
    project_id = peewee.TextField()
    container_id = peewee.TextField()
    service_name = peewee.TextField()

    class Meta:
        primary_key = peewee.CompositeKey("minute", *ROLLUP_DIMENSIONS)
        table_settings = ["WITHOUT ROWID"]
        # A tenant's histogram and recent stats read one project's minutes
        # (the key's other columns come with every entry of this index).
        indexes = ((("project_id", "minute"), False),)


@_counted
class RollupMinuteAll(BaseModel):
    minute = peewee.BigIntegerField(primary_key=True)
    # The least and the greatest id ever counted in this minute (retention
    # leaves them: still bounds). Every entry of a time range has an id
    # between those of its minutes (planner.py walks between them).
    id_min = peewee.BigIntegerField(null=True)
    id_max = peewee.BigIntegerField(null=True)

    class Meta:
        table_settings = ["WITHOUT ROWID"]


@_counted
class RollupFiveMinutesAll(BaseModel):
    # ts_ms // 300_000: what histograms of 5 to 30 minute buckets read, five
    # times fewer sketches to merge than minutes.
    five_minutes = peewee.BigIntegerField(primary_key=True)

    class Meta:
        table_settings = ["WITHOUT ROWID"]


@_counted
class RollupHourAll(BaseModel):
    hour = peewee.BigIntegerField(primary_key=True)

    class Meta:
        table_settings = ["WITHOUT ROWID"]


@_counted
class RollupTotalAll(BaseModel):
    one = peewee.SmallIntegerField(primary_key=True)  # always 0: one row

    class Meta:
        table_settings = ["WITHOUT ROWID"]


# Per scope, level and status class (rollup.CLASS_KEYS), per hour and all
# time: the counts and latency of stats filtered by a level or a status
# class. No longest duration (rollup.latency_max finds it in `entry`).
def _class_keys(cls):
    cls._meta.add_field("level", peewee.TextField())
    cls._meta.add_field("status_class", peewee.SmallIntegerField())
    return cls


@_class_keys
class RollupClassHour(BaseModel):
    hour = peewee.BigIntegerField()
    project_id = peewee.TextField()
    container_id = peewee.TextField()
    service_name = peewee.TextField()

    class Meta:
        primary_key = peewee.CompositeKey("hour", *ROLLUP_DIMENSIONS, "level", "status_class")
        table_settings = ["WITHOUT ROWID"]


@_class_keys
class RollupClassTotal(BaseModel):
    project_id = peewee.TextField()
    container_id = peewee.TextField()
    service_name = peewee.TextField()

    class Meta:
        primary_key = peewee.CompositeKey(*ROLLUP_DIMENSIONS, "level", "status_class")
        table_settings = ["WITHOUT ROWID"]


@_class_keys
class RollupClassHourAll(BaseModel):
    hour = peewee.BigIntegerField()

    class Meta:
        primary_key = peewee.CompositeKey("hour", "level", "status_class")
        table_settings = ["WITHOUT ROWID"]


@_class_keys
class RollupClassTotalAll(BaseModel):
    class Meta:
        primary_key = peewee.CompositeKey("level", "status_class")
        table_settings = ["WITHOUT ROWID"]


for _model in (RollupClassHour, RollupClassTotal, RollupClassHourAll, RollupClassTotalAll):
    _add_counts(_model, COUNT_COLUMNS, with_max=False)


# Per route: calls, errors and latency. Per project and minute or hour, per
# container all time, and over every scope per minute, hour and all time.
@_route_counted
class RollupRouteMinute(BaseModel):
    project_id = peewee.TextField()
    minute = peewee.BigIntegerField()
    route = peewee.TextField()

    class Meta:
        # Only a project's questions read it (every scope's: the *_all tier).
        primary_key = peewee.CompositeKey("project_id", "minute", "route")
        table_settings = ["WITHOUT ROWID"]


@_route_counted
class RollupRouteHour(BaseModel):
    hour = peewee.BigIntegerField()
    project_id = peewee.TextField()
    route = peewee.TextField()

    class Meta:
        primary_key = peewee.CompositeKey("hour", "project_id", "route")
        table_settings = ["WITHOUT ROWID"]
        indexes = ((("project_id", "hour"), False),)


@_route_counted
class RollupRouteTotal(BaseModel):
    project_id = peewee.TextField()
    container_id = peewee.TextField()
    route = peewee.TextField()

    class Meta:
        primary_key = peewee.CompositeKey("project_id", "container_id", "route")
        table_settings = ["WITHOUT ROWID"]


@_route_counted
class RollupRouteMinuteAll(BaseModel):
    minute = peewee.BigIntegerField()
    route = peewee.TextField()

    class Meta:
        primary_key = peewee.CompositeKey("minute", "route")
        table_settings = ["WITHOUT ROWID"]


@_route_counted
class RollupRouteFiveMinutesAll(BaseModel):
    # What the last hour's routes read, five times fewer sketches to merge.
    five_minutes = peewee.BigIntegerField()
    route = peewee.TextField()

    class Meta:
        primary_key = peewee.CompositeKey("five_minutes", "route")
        table_settings = ["WITHOUT ROWID"]


@_route_counted
class RollupRouteHourAll(BaseModel):
    hour = peewee.BigIntegerField()
    route = peewee.TextField()

    class Meta:
        primary_key = peewee.CompositeKey("hour", "route")
        table_settings = ["WITHOUT ROWID"]


@_route_counted
class RollupRouteTotalAll(BaseModel):
    route = peewee.TextField(primary_key=True)

    class Meta:
        table_settings = ["WITHOUT ROWID"]


@_class_keys
class RollupRouteClassHour(BaseModel):
    hour = peewee.BigIntegerField()
    project_id = peewee.TextField()
    route = peewee.TextField()

    class Meta:
        primary_key = peewee.CompositeKey("hour", "project_id", "route", "level",
                                          "status_class")
        table_settings = ["WITHOUT ROWID"]


@_class_keys
class RollupRouteClassTotal(BaseModel):
    project_id = peewee.TextField()
    route = peewee.TextField()

    class Meta:
        primary_key = peewee.CompositeKey("project_id", "route", "level", "status_class")
        table_settings = ["WITHOUT ROWID"]


@_class_keys
class RollupRouteClassHourAll(BaseModel):
    hour = peewee.BigIntegerField()
    route = peewee.TextField()

    class Meta:
        primary_key = peewee.CompositeKey("hour", "route", "level", "status_class")
        table_settings = ["WITHOUT ROWID"]


@_class_keys
class RollupRouteClassTotalAll(BaseModel):
    route = peewee.TextField()

    class Meta:
        primary_key = peewee.CompositeKey("route", "level", "status_class")
        table_settings = ["WITHOUT ROWID"]


for _model in (RollupRouteClassHour, RollupRouteClassTotal, RollupRouteClassHourAll,
               RollupRouteClassTotalAll):
    _add_counts(_model, ROUTE_COUNT_COLUMNS, with_max=False)


ROLLUP_MODELS = (RollupTotal, RollupHour, RollupMinute, RollupMinuteAll, RollupFiveMinutesAll,
                 RollupHourAll,
                 RollupTotalAll, RollupRouteMinute, RollupRouteHour, RollupRouteTotal,
                 RollupRouteMinuteAll, RollupRouteFiveMinutesAll, RollupRouteHourAll,
                 RollupRouteTotalAll, RollupClassHour, RollupClassTotal, RollupClassHourAll,
                 RollupClassTotalAll, RollupRouteClassHour, RollupRouteClassTotal,
                 RollupRouteClassHourAll, RollupRouteClassTotalAll)


class IdSequence(BaseModel):
    name = peewee.TextField(primary_key=True)
    last_id = peewee.BigIntegerField()

    @classmethod
    def take(cls, count):
        """Hand out `count` entry ids; returns the last. Run it first in the
        writing transaction: the row lock it takes orders every writer (see
        ingest.py) until the transaction ends."""
        (last,) = db.execute("UPDATE id_sequence SET last_id = last_id + ? "
                             "WHERE name = 'entry' RETURNING last_id", (count,)).fetchone()
        return last

    @classmethod
    def high_water(cls):
        """The highest entry id handed out and committed."""
        (last,) = db.execute("SELECT last_id FROM id_sequence WHERE name = 'entry'").fetchone()
        return last


class RateBucket(BaseModel):
    """PostgreSQL: the rate limit's state per scope, shared by every host
    (SQLite keeps it in a file of its own, see limits.py)."""
    scope = peewee.TextField(primary_key=True)
    tat = peewee.DoubleField()


class Meta(BaseModel):
    key = peewee.TextField(primary_key=True)
    value = peewee.TextField()


class Lease(BaseModel):
    name = peewee.TextField(primary_key=True)
    holder = peewee.TextField()
    expires_ms = peewee.BigIntegerField()


class ApiToken(BaseModel):
    """A scoped bearer token. Only a SHA-256 digest of its secret is kept."""
    id = peewee.AutoField()
    name = peewee.TextField()
    secret_digest = peewee.TextField()
    project_id = peewee.TextField()
    container_id = peewee.TextField(null=True)
    capabilities = peewee.TextField()  # JSON object
    created_ms = peewee.BigIntegerField()
    revoked_ms = peewee.BigIntegerField(null=True)


class User(BaseModel):
    """A scoped HTTP Basic user; the password is kept as a slow hash."""
    username = peewee.TextField(primary_key=True)
    password_hash = peewee.TextField()
    project_id = peewee.TextField()
    container_id = peewee.TextField(null=True)
    capabilities = peewee.TextField()
    created_ms = peewee.BigIntegerField()


class Session(BaseModel):
    """A browser session (cookie); only a digest of the cookie is kept."""
    digest = peewee.TextField(primary_key=True)
    principal = peewee.TextField()  # JSON: the principal it was opened for
    token_id = peewee.IntegerField(null=True)
    username = peewee.TextField(null=True)
    expires_ms = peewee.BigIntegerField()


class WsToken(BaseModel):
    """A single-use WebSocket ticket; only a digest of it is kept."""
    digest = peewee.TextField(primary_key=True)
    principal = peewee.TextField()  # JSON: the principal it was issued to
    expires_ms = peewee.BigIntegerField()


class IngestKey(BaseModel):
    """An ingest request's Idempotency-Key, remembered with its answer for
    LOGSVC_IDEMPOTENCY_WINDOW_S: a retry of the request gets the same
    answer instead of storing its entries twice."""
    scope = peewee.TextField()  # the writer's scope: keys of two tenants never meet
    key = peewee.TextField()
    digest = peewee.TextField()  # SHA-256 of the request body
    answer = peewee.TextField()  # JSON: the answer the request got
    expires_ms = peewee.BigIntegerField(index=True)

    class Meta:
        primary_key = peewee.CompositeKey("scope", "key")


class BodyDictionary(BaseModel):
    """The zstd dictionaries that stored bodies and (SQLite) `data` were
    compressed with (see bodies.py): written once, never changed or removed."""
    id = peewee.BigIntegerField(primary_key=True)  # the dictionary's own id
    created_ms = peewee.BigIntegerField()
    data = peewee.BlobField()
    kind = peewee.TextField(default="body")  # what it compresses: "body" or "data"


class StoredName(BaseModel):
    """SQLite: the number that stands for a project, container, service,
    method or route name in `entry` and the counters (see names.py). Never
    changed or removed."""
    code = peewee.AutoField()
    name = peewee.TextField(unique=True)


class DestroyedScope(BaseModel):
    project_id = peewee.TextField()
    container_id = peewee.TextField()
    destroyed_ms = peewee.BigIntegerField()

    class Meta:
        primary_key = peewee.CompositeKey("project_id", "container_id")


class PruneLog(BaseModel):
    """Id ranges removed by retention, so a cursor sweep knows it lost rows."""
    id = peewee.AutoField()
    ts_ms = peewee.BigIntegerField(index=True)
    min_id = peewee.BigIntegerField()
    max_id = peewee.BigIntegerField()


class Segment(BaseModel):
    """A sealed segment of entries (segments.py): a Parquet file and what
    lets a question skip it."""
    id = peewee.AutoField()
    min_id = peewee.BigIntegerField(unique=True)
    max_id = peewee.BigIntegerField()
    min_ts = peewee.BigIntegerField()
    max_ts = peewee.BigIntegerField()
    rows = peewee.IntegerField()
    bytes = peewee.BigIntegerField()
    projects = peewee.TextField()  # JSON list of the project ids it holds
    words = peewee.BlobField()  # a Bloom filter of its words and trace ids
    data = peewee.BlobField()  # the Parquet file
    created_ms = peewee.BigIntegerField()


class AlertRule(BaseModel):
    """An alert rule and its state (alerts.py)."""
    id = peewee.AutoField()
    name = peewee.TextField()
    project_id = peewee.TextField(null=True)  # the owner's scope
    container_id = peewee.TextField(null=True)
    filters = peewee.TextField()  # JSON: as given
    parsed = peewee.TextField()  # JSON: Filters' fields
    metric = peewee.TextField()
    op = peewee.TextField()
    threshold = peewee.DoubleField()
    window_s = peewee.IntegerField()
    for_s = peewee.IntegerField()
    webhook = peewee.TextField()
    labels = peewee.TextField()  # JSON
    annotations = peewee.TextField()  # JSON
    enabled = peewee.BooleanField()
    state = peewee.TextField()  # ok, pending, firing
    state_since_ms = peewee.BigIntegerField()
    episode_ms = peewee.BigIntegerField(null=True)
    value = peewee.DoubleField(null=True)
    evaluated_ms = peewee.BigIntegerField(null=True)
    created_ms = peewee.BigIntegerField()
    updated_ms = peewee.BigIntegerField()

    class Meta:
        indexes = ((("project_id", "container_id"), False),)


class AlertDelivery(BaseModel):
    """A notification an alert rule owes, until delivered or given up."""
    id = peewee.AutoField()
    rule_id = peewee.BigIntegerField(index=True)
    status = peewee.TextField()  # firing, resolved
    payload = peewee.TextField()  # JSON: the webhook's body
    attempts = peewee.IntegerField()
    next_ms = peewee.BigIntegerField(index=True)
    delivered_ms = peewee.BigIntegerField(null=True)
    tried_ms = peewee.BigIntegerField(null=True)
    result = peewee.TextField(null=True)  # the receiver's status, or what went wrong
    created_ms = peewee.BigIntegerField()


ALL_MODELS = (Entry, EntryBody, *ROLLUP_MODELS, IdSequence, RateBucket, Meta, Lease,
              ApiToken, User, Session, WsToken, IngestKey, BodyDictionary, StoredName,
              DestroyedScope, PruneLog, Segment, AlertRule, AlertDelivery)


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


# Columns that later versions added to tables that existed before them:
# added before create_tables, whose indexes may use them. (Version 4: the
# latency and route columns; version 7: the kind of a dictionary; version
# 9: the id bounds of a minute.)
_ADDED_COLUMNS = {
    "entry": (("duration_ms", "DOUBLE PRECISION", "REAL"), ("route", "TEXT", "TEXT"),
              ("lat_bucket", "SMALLINT", "INTEGER")),
    **{table: (("lat", "TEXT", "TEXT"), ("lat_max", "DOUBLE PRECISION", "REAL"))
       for table in ("rollup_minute", "rollup_hour", "rollup_total")},
    "body_dictionary": (("kind", "TEXT NOT NULL DEFAULT 'body'", "TEXT NOT NULL DEFAULT 'body'"),),
    "rollup_minute_all": (("lat", "TEXT", "TEXT"), ("lat_max", "DOUBLE PRECISION", "REAL"),
                          ("id_min", "BIGINT", "INTEGER"), ("id_max", "BIGINT", "INTEGER")),
}


def _add_columns():
    postgres = db.is_postgres()
    for table, columns in _ADDED_COLUMNS.items():
        if not database.table_exists(table):
            continue
        present = {c.name for c in database.get_columns(table)}
        for name, pg_type, sqlite_type in columns:
            if name not in present:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} "
                           f"{pg_type if postgres else sqlite_type}")


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


def _create_lookup_indexes():
    # `traceId=` and `clientIp=`: SQLite's lookup index (lookup.py),
    # PostgreSQL's b-trees.
    if db.is_postgres():
        db.execute("CREATE INDEX IF NOT EXISTS entry_trace_id ON entry (trace_id)")
        db.execute("CREATE INDEX IF NOT EXISTS entry_client_ip_id ON entry (client_ip, id)")
    else:
        lookup.create()


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


# Migrations from version N to N+1, each run in one transaction.
# v5 added the ingest_key table and v6 body_dictionary, which create_tables
# makes. v7 compacts the entries written from then on (SQLite: `data`
# compressed, trace ids and addresses as bytes; see lookup.py); older rows
# are read as they are. Its dictionary column is added by _add_columns and
# PostgreSQL's new sketch merge by create_schema. v8 (SQLite) rewrites every
# entry and counter row once: names as numbers, levels, kinds and sources
# as letters (create_tables makes stored_name).
def _v8_to_v9():
    # Version 9: each minute's id bounds, the routes of every scope per five
    # minutes (summed from their minutes), and the tenant index with the
    # level (create_tables has made it).
    db.execute("DROP INDEX IF EXISTS entry_project_id_id_container_id")
    rollup.fill_id_bounds()
    rollup.fill_from_finer("rollup_route_five_minutes_all")


def _v11_to_v12():
    if not db.is_postgres():
        fulltext.add_scope_words()


MIGRATIONS = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4, 4: lambda: None, 5: _v5_to_v6,
              6: _v6_to_v7, 7: _v7_to_v8, 8: _v8_to_v9,
              # 9 -> 10: PostgreSQL's faster sketch merge, which every upgrade
              # makes again (create_schema); nothing else changes.
              9: lambda: None,
              # 10 -> 11: the counters by level and status class (create_tables
              # has made their tables), counted from the entries.
              10: lambda: rollup.rebuild(rollup.CLASS_TABLES),
              # 11 -> 12 (SQLite): the scope words of every entry in the
              # full-text index (fulltext.scope_words).
              11: _v11_to_v12,
              # 12 -> 13: sealed segments (create_tables has made their
              # table). The entries stay where they are: the background
              # sealer moves the older ones into segments, a segment at a
              # time, while the store serves (segments.py).
              12: lambda: None,
              # 13 -> 14: alert rules (create_tables has made their tables).
              13: lambda: None,
              # 14 -> 15: a route's counts are calls (a request entry no longer
              # counts, its response does), recounted from the entries.
              14: lambda: rollup.rebuild(rollup.ROUTE_TIERS)}

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


def shared_secret(name):
    """A random secret kept in `meta`, made by whichever process asks first
    and the same for every process and host on this store (it signs
    cursors, which may come back to any host). Once it exists this only
    reads, so a worker also starts on a store it cannot write."""
    row = Meta.get_or_none(Meta.key == f"secret:{name}")
    if row is not None:
        return row.value
    with database.atomic():
        (Meta.insert(key=f"secret:{name}", value=secrets.token_urlsafe(32))
         .on_conflict_ignore().execute())
        return Meta.get(Meta.key == f"secret:{name}").value


class SchemaTooNew(RuntimeError):
    pass


def _stored_version():
    if not database.table_exists("meta"):  # a new store
        return None
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else None


def create_schema(partition_rows=1_000_000):
    """Create the tables of a new store, or migrate an existing one.
    `partition_rows` (PostgreSQL) is the id range of one partition; the
    first process to create the store decides it for every host."""
    postgres = db.is_postgres()
    if _stored_version() == SCHEMA_VERSION:
        # The usual start of a worker: nothing to create, and no DDL that
        # would lock tables that the writers of other hosts are using.
        return
    for model in ROLLUP_MODELS:
        model._meta.table_settings = [] if postgres else ["WITHOUT ROWID"]
    Entry._meta.table_settings = ["PARTITION BY RANGE (id)"] if postgres else []
    _entry_indexes(postgres)
    EntryBody._meta.table_settings = ["PARTITION BY RANGE (entry_id)"] if postgres else []
    with database.atomic():
        if postgres:
            # Every worker of every host runs this at start: one at a time,
            # and none once another has made the store current (its DDL
            # would lock tables that the first one's writers are using).
            db.execute("SELECT pg_advisory_xact_lock(7106737)")
            if _stored_version() == SCHEMA_VERSION:
                return
            db.execute(_PG_SKETCH_ADD)
        _add_columns()
        database.create_tables(ALL_MODELS, safe=True)
        _create_lookup_indexes()
        fulltext.create()
        if postgres:
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
            return
        version = int(row.value)
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"the store has schema version {version}; this logsvc knows "
                f"{SCHEMA_VERSION}. Upgrade logsvc."
            )
        while version < SCHEMA_VERSION:
            MIGRATIONS[version]()
            version += 1
        Meta.update(value=str(version)).where(Meta.key == "schema_version").execute()
