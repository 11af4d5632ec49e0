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
  and the upsert needs a key. The key counters (`RollupContainerTotal`,
  `RollupServiceTotalAll`...) keep the entry count alone per container and
  per service: what a question without a scope breaks its answer down by.
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

How a store is made and upgraded from an older schema: migrations.py.
"""
import secrets

import peewee

from . import db
from .db import database
from .rollup import COUNT_COLUMNS, ROLLUP_DIMENSIONS, ROUTE_COUNT_COLUMNS


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
        # Trace ids and client addresses: see migrations._create_lookup_indexes. The
        # indexes of one value and the id are set per engine
        # (entry_indexes, called by migrations.create_schema).
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


def entry_indexes(postgres):
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


# Entries per container and per service, per hour and all time: the key
# breakdowns of a question without a scope (rollup.KEY_TIERS).
def _key_counted(cls):
    cls._meta.add_field("n", peewee.BigIntegerField(default=0))
    return cls


@_key_counted
class RollupContainerHour(BaseModel):
    hour = peewee.BigIntegerField()
    project_id = peewee.TextField()
    container_id = peewee.TextField()

    class Meta:
        primary_key = peewee.CompositeKey("hour", "project_id", "container_id")
        table_settings = ["WITHOUT ROWID"]


@_key_counted
class RollupContainerTotal(BaseModel):
    project_id = peewee.TextField()
    container_id = peewee.TextField()

    class Meta:
        primary_key = peewee.CompositeKey("project_id", "container_id")
        table_settings = ["WITHOUT ROWID"]


@_key_counted
class RollupServiceMinuteAll(BaseModel):
    minute = peewee.BigIntegerField()
    service_name = peewee.TextField()

    class Meta:
        primary_key = peewee.CompositeKey("minute", "service_name")
        table_settings = ["WITHOUT ROWID"]


@_key_counted
class RollupServiceHourAll(BaseModel):
    hour = peewee.BigIntegerField()
    service_name = peewee.TextField()

    class Meta:
        primary_key = peewee.CompositeKey("hour", "service_name")
        table_settings = ["WITHOUT ROWID"]


@_key_counted
class RollupServiceTotalAll(BaseModel):
    service_name = peewee.TextField(primary_key=True)

    class Meta:
        table_settings = ["WITHOUT ROWID"]


@_key_counted
class RollupClassContainerHour(BaseModel):
    hour = peewee.BigIntegerField()
    project_id = peewee.TextField()
    container_id = peewee.TextField()

    class Meta:
        primary_key = peewee.CompositeKey("hour", "project_id", "container_id", "level",
                                          "status_class")
        table_settings = ["WITHOUT ROWID"]


@_key_counted
class RollupClassContainerTotal(BaseModel):
    project_id = peewee.TextField()
    container_id = peewee.TextField()

    class Meta:
        primary_key = peewee.CompositeKey("project_id", "container_id", "level", "status_class")
        table_settings = ["WITHOUT ROWID"]


@_key_counted
class RollupClassServiceHourAll(BaseModel):
    hour = peewee.BigIntegerField()
    service_name = peewee.TextField()

    class Meta:
        primary_key = peewee.CompositeKey("hour", "service_name", "level", "status_class")
        table_settings = ["WITHOUT ROWID"]


@_key_counted
class RollupClassServiceTotalAll(BaseModel):
    service_name = peewee.TextField()

    class Meta:
        primary_key = peewee.CompositeKey("service_name", "level", "status_class")
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
for _model in (RollupClassContainerHour, RollupClassContainerTotal, RollupClassServiceHourAll,
               RollupClassServiceTotalAll):
    _class_keys(_model)


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
                 RollupRouteClassHourAll, RollupRouteClassTotalAll, RollupContainerHour,
                 RollupContainerTotal, RollupServiceMinuteAll, RollupServiceHourAll,
                 RollupServiceTotalAll,
                 RollupClassContainerHour, RollupClassContainerTotal, RollupClassServiceHourAll,
                 RollupClassServiceTotalAll)


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

    @classmethod
    def record(cls, ts_ms, min_id, max_id):
        """Log a removal, in its transaction, and count it in meta
        `removals`: what a process that keeps entries' columns
        (hotcolumns.py) reads to know that some it kept are gone. (The
        log's ids would not do: on PostgreSQL they commit out of order.)"""
        cls.create(ts_ms=ts_ms, min_id=min_id, max_id=max_id)
        db.execute("INSERT INTO meta (key, value) VALUES ('removals', '1') "
                   "ON CONFLICT (key) DO UPDATE SET "
                   "value = CAST(CAST(meta.value AS BIGINT) + 1 AS TEXT)")


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
    data = peewee.BlobField()  # the Parquet file (SQLite: empty when in parts)
    created_ms = peewee.BigIntegerField()
    # SQLite: the file is in `segment_part` rows of part_bytes each, from
    # part_id on (segments.py); NULL: in `data` (earlier versions).
    part_id = peewee.BigIntegerField(null=True)
    part_bytes = peewee.IntegerField(null=True)


class SegmentPart(BaseModel):
    """SQLite: a piece of a segment's Parquet file (segments.py)."""
    id = peewee.AutoField()
    data = peewee.BlobField()


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
              DestroyedScope, PruneLog, Segment, SegmentPart, AlertRule, AlertDelivery)


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


