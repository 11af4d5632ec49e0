"""PostgreSQL: `entry` and `entry_body` partitioned by id range.

Partition n holds the ids n*R+1 .. (n+1)*R, where R is the store's
`partition_rows` (kept in `meta`, decided when the store was created, the
same on every host). `entry_p<n>` and `entry_body_p<n>` are made ahead of
the writers by the background work (`prepare`, up to AHEAD partitions
beyond the one being filled, as many as the pace of ingest needs), each
as a table of its own then attached, which holds up no read or write of
`entry`. A writer that finds its partition missing (a new store, a
background that fell behind) creates it with `CREATE TABLE ... PARTITION
OF`, while it holds the id sequence's row lock, so two writers never race
to create one; that statement waits for every transaction using `entry`
and holds up all that come after it.
Should a transaction holding `entry_body` ask for `entry` meanwhile, the
server breaks the deadlock by rolling one back; a writer rolled back
writes its batch again (ingest.WRITE_ATTEMPTS).

Retention drops a whole partition once every entry in it is expired (or
the row cap says it must go): it subtracts the partition's share of the
rollup counters with one GROUP BY, records the id range in `prune_log` and
drops both tables, all in one transaction. That costs the same at 100
million rows as at one million; only the partition that straddles the
cutoff is pruned row by row.
"""
import time

import peewee

from logsvc.entry import now_ms

from . import db, rollup
from .models import PruneLog


def partition_rows():
    state = db.current().partitions
    if state["rows"] is None:
        (value,) = db.execute("SELECT value FROM meta WHERE key = 'partition_rows'").fetchone()
        state["rows"] = int(value)
    return state["rows"]


@db.only("postgresql")
def forget():
    """Drop what this process remembers of the current store's partitions
    (a transaction that made some rolled back)."""
    store = db.current()
    with store.lock:
        store.partitions.update(rows=None, covered=-1)


def ensure(first_id, last_id):
    """Create the partitions that ids first_id..last_id fall into. Runs in
    the writer's transaction, after it took its ids."""
    size = partition_rows()
    store = db.current()
    with store.lock:
        if last_id <= store.partitions["covered"]:
            return
    for n in range((first_id - 1) // size, (last_id - 1) // size + 1):
        low, high = n * size + 1, (n + 1) * size + 1
        try:
            with db.database.atomic():  # a savepoint of the writer's transaction
                for parent in ("entry", "entry_body"):
                    db.execute(f"CREATE TABLE IF NOT EXISTS {parent}_p{n} PARTITION OF {parent} "
                               f"FOR VALUES FROM ({low}) TO ({high})")
        except peewee.DatabaseError as exc:
            if not db.has_pgcode(exc, *_MADE_MEANWHILE):
                raise
            # `prepare` made it while this waited: it is attached.
    with store.lock:
        # Only when ids are handed out from below: a partition once made
        # is there for every later writer of this process.
        state = store.partitions
        state["covered"] = max(state["covered"], ((last_id - 1) // size + 1) * size)


# Partitions made ahead of the one being filled (`prepare`): at most
# AHEAD, as many as the writers fill in two rounds of the background work
# at the pace seen since the last round (`ahead_count`), AHEAD_FIRST before a
# pace is known. Each attached partition, even an empty one, is planned
# by every question that reads `entry`: at a million entries four empty
# ones took the planning of a tenant's stats from 2.4 to 5.1 ms.
AHEAD = 4
AHEAD_FIRST = 2


@db.only("postgresql", 0)
def ahead_count(high_water, interval_s, now=None):
    """How many partitions `prepare` makes ahead now (see AHEAD), from
    the ids taken since this process last asked (one round before)."""
    now = time.monotonic() if now is None else now
    store = db.current()
    with store.lock:
        last = store.partitions.get("pace")
        store.partitions["pace"] = (now, high_water)
    if last is None or now <= last[0]:
        return AHEAD_FIRST
    per_s = max(0, high_water - last[1]) / (now - last[0])
    needed = -(-int(per_s * 2 * max(interval_s, now - last[0])) // partition_rows())
    return min(AHEAD, max(1, needed))


@db.only("postgresql", ())
def prepare(high_water, ahead=AHEAD):
    """Make the partitions of the `ahead` partitions' ids after the one
    that holds the next id (`high_water` + 1), which its writer makes if
    missing; outside a transaction. Each is a table created, then
    attached, in one transaction: ATTACH PARTITION holds up no read or
    write of the parent, where a writer's CREATE TABLE ... PARTITION OF
    waits for all of them. One that waits past _LOCK_WAIT (a detach under
    way on another host) is left to the next round. Returns the
    partitions made."""
    size = partition_rows()
    filling = high_water // size  # the partition of id high_water + 1
    there = set(listed())  # (both tables of a partition are made together)
    made = []
    for n in range(filling + 1, filling + 1 + ahead):
        if n in there:
            continue
        try:
            with db.database.atomic():
                db.execute(f"SET LOCAL lock_timeout = '{_LOCK_WAIT}'")
                for parent in ("entry", "entry_body"):
                    # (The name waits for a writer making the same table.)
                    _giving_way(f"CREATE TABLE {parent}_p{n} (LIKE {parent})")
                    _giving_way(f"ALTER TABLE {parent} ATTACH PARTITION {parent}_p{n} "
                                f"FOR VALUES FROM ({n * size + 1}) TO ({(n + 1) * size + 1})")
        except _LockTimeout:
            break
        except peewee.DatabaseError as exc:
            if not db.has_pgcode(exc, *_MADE_MEANWHILE):
                raise
            continue  # a writer made it meanwhile
        made.append(n)
    return made


# A table of that name was created by another transaction while this one
# waited for it (the catalog's unique names: duplicate_table, or
# unique_violation when both were under way at once).
_MADE_MEANWHILE = ("42P07", "23505")


@db.only("postgresql", ())
def analyze_stale():
    """ANALYZE the partitions that were never analyzed or changed by more
    than a fifth since. PostgreSQL's autovacuum gets to a partition being
    filled only after a while; until then the planner works from no or
    stale statistics and may walk a whole partition by id instead of using
    an index (a full-text search for a rare word took 350 ms instead of a
    few). Run by retention's loop, under its lease."""
    names = [row[0] for row in db.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid "
        "WHERE n.nspname = current_schema() AND c.relkind = 'r' "
        "AND (c.relname LIKE 'entry\\_p%' OR c.relname LIKE 'entry\\_body\\_p%') "
        "AND (c.reltuples < 0 OR s.n_mod_since_analyze > 0.2 * c.reltuples + 1000)").fetchall()]
    for name in names:
        db.execute(f"ANALYZE {name}")
    return names


@db.only("postgresql", ())
def vacuum_updated():
    """VACUUM the tables whose rows are updated in place (the counters, the
    id sequence, rate buckets, leases) once a fifth of them or more are
    dead row versions: every ingest rewrites a counter row, and the
    all-time ones (a scope's, a route's) many times a minute. Run by
    retention's loop, under its lease, as analyze_stale is, so that the
    space of the old versions is reused whether or not the server's
    autovacuum keeps up (or runs at all). Returns the tables vacuumed."""
    names = [row[0] for row in db.execute(
        "SELECT relname FROM pg_stat_user_tables WHERE schemaname = current_schema() "
        "AND relname NOT LIKE 'entry\\_%' AND relname <> 'entry' "
        "AND n_dead_tup > 50 + 0.2 * n_live_tup").fetchall()]
    for name in names:
        db.execute(f"VACUUM {name}")  # outside a transaction: db.call is autocommit
    return names


def listed():
    """The partition numbers of `entry`, oldest first."""
    rows = db.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'entry'::regclass").fetchall()
    return sorted(int(name[len("entry_p"):]) for (name,) in rows)


@db.only("postgresql", ())
def drop_sealed(through, wait=None):
    """Drop the partitions whose every id is at or below `through` (the
    sealed watermark, segments.py) and that hold no row any more: their
    entries live in segments now. Nothing is subtracted from the counters
    and nothing goes to prune_log: no entry is removed. Dropping the table
    gives its space back at once; the deleted rows' would stay until a
    VACUUM FULL. Returns the partitions dropped.

    From PostgreSQL 14 on, each partition is first detached CONCURRENTLY:
    that waits for the transactions that may still read it but blocks no
    one meanwhile. Locking the parents instead (before 14) queued every
    read and write of `entry` behind the lock asked for: under a steady
    load, whose ingest transactions run a second or two each, the drop
    rarely had them within _LOCK_WAIT, and each try held ingest up.
    A detach waits up to `wait` (DETACH_WAIT) for them."""
    size = partition_rows()
    if not _detaches_concurrently():
        return _drop_sealed_locked(through, size)
    _drop_detached(through, size)
    dropped = []
    for n in listed():
        if (n + 1) * size > through:
            break
        if db.execute(f"SELECT 1 FROM entry_p{n} LIMIT 1").fetchone():
            break  # a seal of this range has not committed (or a clear raced it)
        try:
            for parent in ("entry_body", "entry"):
                _detach(parent, f"{parent}_p{n}", wait or DETACH_WAIT)
        except _LockTimeout:
            break  # a long read still sees it: the detach is finished next round
        db.execute(f"DROP TABLE IF EXISTS entry_body_p{n}")
        db.execute(f"DROP TABLE IF EXISTS entry_p{n}")
        dropped.append(n)
    return dropped


def _detaches_concurrently():
    state = db.current().partitions
    if state.get("concurrently") is None:
        (version,) = db.execute("SHOW server_version_num").fetchone()
        state["concurrently"] = int(version) >= 140000
    return state["concurrently"]


def _detach(parent, child, wait):
    """Detach `child` from `parent` (outside a transaction), or finish a
    detach that an earlier try left pending (it gave way to a long read,
    or its process ended); nothing when it is detached already."""
    found = db.execute("SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = to_regclass(?) "
                       "AND inhparent = to_regclass(?)", (child, parent)).fetchone()
    if found is None:
        return
    db.execute(f"SET lock_timeout = '{wait}'")
    try:
        _giving_way(f"ALTER TABLE {parent} DETACH PARTITION {child} "
                    f"{'FINALIZE' if found[0] else 'CONCURRENTLY'}")
    finally:
        db.execute("RESET lock_timeout")


def _drop_detached(through, size):
    """Drop the partitions of sealed ids that were detached whole but not
    dropped yet (the process ended in between)."""
    for (name,) in db.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind = 'r' AND NOT c.relispartition "
            "AND (c.relname LIKE 'entry\\_p%' OR c.relname LIKE 'entry\\_body\\_p%')").fetchall():
        number = name.rsplit("_p", 1)[1]
        if number.isdigit() and (int(number) + 1) * size <= through:
            db.execute(f"DROP TABLE IF EXISTS {name}")


def _drop_sealed_locked(through, size):
    """drop_sealed before PostgreSQL 14: under a lock of the parents."""
    dropped = []
    for n in listed():
        if (n + 1) * size > through:
            break
        try:
            with db.database.atomic():
                # The parents to ourselves before the partition is touched
                # at all: a process that holds a lock on the partition (a
                # read) and then asks for the parents would wait for us
                # while we wait for it, a deadlock.
                _lock_parents()
                if db.execute(f"SELECT 1 FROM entry_p{n} LIMIT 1").fetchone():
                    break  # a seal of this range has not committed (or a clear raced it)
                db.execute(f"DROP TABLE entry_body_p{n}")
                db.execute(f"DROP TABLE entry_p{n}")
        except _LockTimeout:
            break  # a long read holds the tables: the next round
        dropped.append(n)
    return dropped


# How long a drop waits for the parents: every read and write of `entry`
# queues behind a lock asked for, so a drop that a long read holds up gives
# way and is tried again later, rather than stalling them all.
_LOCK_WAIT = "1s"
# How long a concurrent detach waits for the transactions that may still
# use the partition: it holds up none of them, only a writer that must
# create a partition (`prepare` makes them ahead). Ingest transactions of a
# steady load run several seconds on a busy host; with a second's wait the
# detach gave way every time, and sealed partitions piled up (23 tables,
# 1.2 GB of a 2 GB store, 2.2M entries into a 10M load).
DETACH_WAIT = "30s"


class _LockTimeout(Exception):
    """The locks were not had within _LOCK_WAIT."""


def _lock_parents():
    db.execute(f"SET LOCAL lock_timeout = '{_LOCK_WAIT}'")
    _giving_way("LOCK TABLE entry, entry_body IN ACCESS EXCLUSIVE MODE")
    db.execute("SET LOCAL lock_timeout = 0")


def _giving_way(statement):
    """Run `statement` under the lock_timeout set; _LockTimeout when its
    locks were not had in time."""
    try:
        db.execute(statement)
    except peewee.OperationalError as exc:
        if "lock timeout" not in str(exc):
            raise
        raise _LockTimeout() from exc


@db.only("postgresql", 0)
def drop_expired(cutoff_ms, excess_rows, high_water, sealed_through=0):
    """Drop the oldest partitions that retention may remove whole: every
    entry older than `cutoff_ms` (None: no age limit), or no more rows than
    `excess_rows` still over the row cap. Never the partition holding
    `high_water`, which writers may still be filling, nor those a seal
    emptied (every id at or below `sealed_through`), which the sealer drops
    (drop_sealed): two processes dropping one partition could deadlock.
    Returns the number of entries removed. Each partition is one
    transaction."""
    size = partition_rows()
    removed = 0
    for n in listed():
        if (n + 1) * size <= sealed_through:
            continue
        if (n + 1) * size > high_water:
            break
        try:
            count = _drop_expired_one(n, cutoff_ms, excess_rows)
        except _LockTimeout:
            break  # a long read holds the tables: the next round
        if count is None:
            break
        removed += count
        excess_rows -= count
    return removed


def _drop_expired_one(n, cutoff_ms, excess_rows):
    """Drop partition `n` if it has expired (drop_expired): the entries it
    held, or None when it has not."""
    table = f"entry_p{n}"
    with db.database.atomic():
        count, newest, low, high = db.execute(
            f"SELECT count(*), max(ts_ms), min(id), max(id) FROM {table}").fetchone()
        expired = count == 0 or (cutoff_ms is not None and newest < cutoff_ms)
        if not expired and count > excess_rows:
            return None
        if count:
            rollup.count_all(high)  # what is subtracted below is in every tier first
        groups = db.execute(rollup.GROUPED.format(table=table)).fetchall() if count else []
        # Dropping a partition needs the parents to itself. Taken before
        # any counter row is touched, so a writer (which holds `entry`
        # while it waits for counter rows) never waits on us in a cycle.
        # The partition is below the high-water mark: nobody writes to
        # it any more, so what was read above still holds.
        _lock_parents()
        db.execute(f"DROP TABLE entry_body_p{n}")
        db.execute(f"DROP TABLE {table}")
        if count:
            # After the drop: the longest durations left are recomputed
            # from the entries that remain.
            rollup.add([row[:11] for row in groups], sign=-1,
                       weights=[row[11] for row in groups])
            PruneLog.record(now_ms(), low, high)
    return count
