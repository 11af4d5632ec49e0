"""Retention: delete entries older than LOGSVC_RETENTION_DAYS and the oldest
ones beyond LOGSVC_MAX_ROWS, or beyond what fits in LOGSVC_MAX_DISK_BYTES at
the store's present bytes per entry (sealed entries take a fraction of hot
ones, so the estimate follows what sealing saves).

Deletion runs in small batches, each one transaction that removes the rows,
their bodies and their share of the rollup counters together, so stats stay
exact and no writer waits long on the lock. One prune at a time, on any
host: `prune` runs only while it holds the `retention` lease in the
database, renews it between batches and releases it when done (each
worker's `run_forever`, `POST /_admin/prune` and `python -m logsvc prune`
alike; a prune that finds another one running raises PruneBusy). Each
batch subtracts from the counters the rows its DELETE removed (RETURNING),
so even a prune that raced another could not count a row twice.
"""
import logging
import os
import socket
import time
import uuid

from logsvc import runtime
from logsvc.entry import now_ms

from . import db, fulltext, horizon, hotcolumns, lookup, partitions, query, rollup, segments, wal
from .db import database
from .models import PruneLog

log = logging.getLogger("logsvc.retention")
BATCH = 2000
LEASE_NAME = "retention"
PRUNE_LOG_KEEP_MS = 86_400_000  # longer than any cursor snapshot lives


class PruneBusy(RuntimeError):
    """Another prune holds the retention lease."""


def prune(config, now=None, batch=BATCH, holder=None, wait_s=0.0):
    """Delete what retention says must go. Returns the number of entries
    removed. Another prune running: wait up to `wait_s` seconds for it to
    end, then raise PruneBusy."""
    holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    lease_s = _lease_seconds(config)
    deadline = time.monotonic() + wait_s
    while not db.call(take_lease, LEASE_NAME, holder, lease_s):
        if time.monotonic() >= deadline:
            raise PruneBusy("retention is already running (the retention lease is held); "
                            "try again shortly")
        runtime.sleep(0.2)
    try:
        return _prune(config, now, batch, holder, lease_s)
    finally:
        db.call(release_lease, LEASE_NAME, holder)


def _lease_seconds(config):
    return max(config.prune_interval_s * 3, 30)


def _renew(holder, lease_s):
    if not db.call(take_lease, LEASE_NAME, holder, lease_s):
        raise PruneBusy("the retention lease was lost; another prune took over")


def _prune(config, now, batch, holder, lease_s):
    now = now_ms() if now is None else now
    removed = 0
    db.call(_forget_prunes_before, now - PRUNE_LOG_KEEP_MS)
    db.call(_forget_expired_sessions, now)
    cutoff = now - config.retention_ms if config.retention_ms else None
    max_rows = config.max_rows
    if config.max_disk_bytes:
        max_rows = min(max_rows, db.call(_rows_within, config.max_disk_bytes))
    removed += db.call(_drop_partitions, cutoff, max_rows)
    if cutoff is not None:
        # Sealed entries go a segment at a time, once all of it is older.
        while (n := db.call(_drop_segment, cutoff)) is not None:
            removed += n
            _renew(holder, lease_s)
            runtime.pause()
        while True:
            n = db.call(_delete_batch, "ts_ms < ? ORDER BY ts_ms LIMIT ?", (cutoff, batch))
            removed += n
            if n < batch:
                break
            _renew(holder, lease_s)
            runtime.pause()
    while True:
        excess = db.call(_row_count) - max_rows
        if excess <= 0:
            break
        n = db.call(_drop_segment)  # the oldest segment first, whole
        if n is None:
            n = db.call(_delete_batch, "TRUE ORDER BY id LIMIT ?", (min(excess, batch),))
        removed += n
        _renew(holder, lease_s)
        runtime.pause()
    if removed:
        # SQLite: the file shrinks by what was removed (else it stays at its
        # largest, and LOGSVC_MAX_DISK_BYTES would bound only what is used).
        # PostgreSQL: the dropped segments' space is reused by the next.
        db.call(wal.give_back_free_pages)
        db.call(segments.vacuum)
    return removed


def run_forever(config, holder=None, store=None):
    """Prune every `prune_interval_s` while this process holds the lease
    (on `store`, by default the current one)."""
    if store is not None:
        db.use(store)
    holder = holder or f"{socket.gethostname()}:{os.getpid()}"
    while True:
        try:
            removed = prune(config, holder=holder)
            if removed:
                log.info("retention removed %d entries", removed)
            db.call(partitions.analyze_stale)
            db.call(partitions.vacuum_updated)
        except PruneBusy:
            pass  # another process prunes this time
        except Exception as exc:
            reason = db.unwritable_reason(exc)
            if reason:
                db.note_write(exc)
                log.warning("retention skipped: %s", reason)
            elif db.is_transient_error(exc):
                log.warning("retention run interrupted, tried again next round: %s",
                            str(exc).splitlines()[0])
            else:
                log.exception("retention run failed")
        runtime.sleep(config.prune_interval_s)


# Set in a gunicorn master's environment once it started a sealing process
# (sealer.py), so that the workers it forks next know one is there: they
# leave the seal lease to it (seal_forever's `wait_s`), taking it only
# should it stay unheld for a whole lease (the process cannot start).
SEALER_STARTED = "LOGSVC_SEALER_STARTED"


def seal_forever(config, store=None, holder=None, keep=False, parent=None, wait_s=0):
    """Seal (segments.py) in the background while this process holds the
    seal lease. A serving worker warms its caches each round and releases
    the lease after each round of sealing. `keep` (the sealing process,
    sealer.py): the lease is kept from round to round, renewed between
    steps, and released when the process ends; it ends when its `parent`
    is gone. `wait_s`: the lease is not taken before that many seconds
    have passed (a worker beside a sealing process; caches are warmed
    meanwhile)."""
    if store is not None:
        db.use(store)
    holder = holder or f"{socket.gethostname()}:{os.getpid()}"
    lease_s = seal_lease_s(config)

    held_until = [0.0]  # monotonic: when the lease this process holds expires
    not_before = time.monotonic() + wait_s

    def renew():
        """Renew the lease once half of it is gone (between steps, and each
        round of the sealing process: a write, which an idle store is
        spared in between)."""
        if time.monotonic() < held_until[0] - lease_s / 2:
            return
        if not db.call(take_lease, segments.LEASE_NAME, holder, lease_s):
            held_until[0] = 0.0
            raise PruneBusy("the seal lease was lost; another sealer took over")
        held_until[0] = time.monotonic() + lease_s

    try:
        while parent is None or os.getppid() == parent:
            try:
                if not keep:
                    db.call(segments.warm)
                    db.call(hotcolumns.warm)
                due = (db.call(segments.due, config.hot_rows, max(1, config.segment_rows))
                       or db.call(segments.merge_due, config.merge_rows, config.merge_bytes)
                       or db.call(segments.split_due)
                       or db.call(horizon.due, config.minute_counters_hours,
                                  horizon.grace_ms(config)))
                if keep and not due:
                    renew()  # held from round to round
                due = due and time.monotonic() >= not_before
                if due and db.call(take_lease, segments.LEASE_NAME, holder, lease_s):
                    held_until[0] = time.monotonic() + lease_s
                    try:
                        seal_due(config, renew)
                    finally:
                        if not keep:
                            db.call(release_lease, segments.LEASE_NAME, holder)
            except PruneBusy:
                pass  # another process seals
            except Exception as exc:  # noqa: BLE001 - logged by _failed
                _failed("sealing", exc)
            runtime.sleep(config.seal_interval_s)
    finally:
        if keep:
            try:
                db.call(release_lease, segments.LEASE_NAME, holder)
            except Exception:  # noqa: BLE001 - ending anyway; the lease expires
                pass


# How often the entries not yet in the counters counted in the background
# are added to them (rollup.DEFERRED): what a reader adds from `entry` in
# the meantime, about this many seconds of ingest.
COUNT_INTERVAL_S = 1.0
COUNT_LEASE = "count"
COUNT_LEASE_S = 30


def count_forever(config, store=None, holder=None, wait_s=0, parent=None):
    """Count the counters counted in the background (rollup.count_pending)
    every COUNT_INTERVAL_S: in the sealing process (sealer.py, at its
    lower priority), else in the workers. One process of all counts at a
    time, under a lease taken only while something is left to count (an
    idle store is not written to); `wait_s`: not before that many seconds
    have passed (a worker beside a sealing process, which counts). Ends
    when its `parent` is gone."""
    if store is not None:
        db.use(store)
    holder = holder or f"{socket.gethostname()}:{os.getpid()}:count"
    not_before = time.monotonic() + wait_s
    while parent is None or os.getppid() == parent:
        try:
            if (time.monotonic() >= not_before and db.call(rollup.pending)
                    and db.call(take_lease, COUNT_LEASE, holder, COUNT_LEASE_S)):
                db.call(rollup.count_all)
        except Exception as exc:  # noqa: BLE001 - logged by _failed
            _failed("counting", exc)
        runtime.sleep(COUNT_INTERVAL_S)


def _failed(doing, exc):
    """A round of background work that raised: a store that refuses
    writes is noted (and the round skipped), a passing error waits for the
    next round, any other is logged."""
    reason = db.unwritable_reason(exc)
    if reason:
        db.note_write(exc)
        log.warning("%s skipped: %s", doing, reason)
    elif not db.is_transient_error(exc):
        log.exception("%s failed", doing)


# How long a seal lease lasts unless renewed (at least four rounds).
SEAL_LEASE_S = 120


def seal_lease_s(config):
    return max(SEAL_LEASE_S, 4 * config.seal_interval_s)


def seal_due(config, renew=None):
    """Seal every segment that is due (under the seal lease). On
    PostgreSQL, make the next partitions ahead of the writers and drop
    each partition a seal emptied (a store that seals has a segment's ids
    in a partition: config.store_partition_rows). `renew`:
    called between steps, to keep the lease. Returns the entries sealed."""
    renew = renew or (lambda: None)
    total = 0
    high_water = db.call(query.high_water)
    ahead = db.call(partitions.ahead_count, high_water, config.seal_interval_s)
    db.call(partitions.prepare, high_water, ahead)
    while sealed := db.call(segments.seal_once, config.hot_rows, max(1, config.segment_rows)):
        total += sealed
        db.call(lambda: partitions.prepare(query.high_water(), ahead))
        db.call(lambda: partitions.drop_sealed(segments.sealed_through()))
        renew()
        runtime.pause()
    while db.call(segments.merge_once, config.merge_rows, config.merge_bytes):
        renew()
        runtime.pause()
    # Every round, not only after a merge: under a steady ingest, the
    # transactions running when a merge ends keep its old segments' space
    # from being freed until they end.
    db.call(segments.vacuum)
    while db.call(segments.split_once):
        renew()
        runtime.pause()
    db.call(segments.reclaim)
    horizon.trim(config.minute_counters_hours, horizon.grace_ms(config))
    return total


def take_lease(name, holder, seconds):
    """Take or renew the named lease; True if `holder` now holds it."""
    now = now_ms()
    with database.atomic():
        # One statement: processes on other hosts may race for the lease.
        db.execute("INSERT INTO lease (name, holder, expires_ms) VALUES (?, ?, ?) "
                   "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
                   "expires_ms = excluded.expires_ms "
                   "WHERE lease.holder = excluded.holder OR lease.expires_ms <= ?",
                   (name, holder, now + int(seconds * 1000), now))
        (current,) = db.execute("SELECT holder FROM lease WHERE name = ?", (name,)).fetchone()
        return current == holder


def take_over_lease(name, dead, holder, seconds):
    """Take the named lease from `dead`, a holder known to be gone (a
    sealing process its master saw end), without waiting for it to
    expire. True if `holder` now holds it; False if it is not `dead`'s."""
    with database.atomic():
        db.execute("UPDATE lease SET holder = ?, expires_ms = ? WHERE name = ? AND holder = ?",
                   (holder, now_ms() + int(seconds * 1000), name, dead))
        found = db.execute("SELECT holder FROM lease WHERE name = ?", (name,)).fetchone()
        return found is not None and found[0] == holder


def release_lease(name, holder):
    db.execute("UPDATE lease SET expires_ms = 0 WHERE name = ? AND holder = ?", (name, holder))


@db.only("postgresql", 0)
def _drop_partitions(cutoff, max_rows):
    return partitions.drop_expired(cutoff, _row_count() - max_rows, query.high_water(),
                                   segments.sealed_through())


def _drop_segment(cutoff=None):
    """Drop the oldest segment (with `cutoff`: the oldest whose entries are
    all older), its entries subtracted from the counters in the same
    transaction. Returns how many entries it held, None if none was due."""
    with database.atomic():
        segment_id = segments.droppable(cutoff)
        if segment_id is None:
            return None
        dropped = segments.drop(segment_id)
        if dropped is None:
            return None
        rows, low, high = dropped
        if rows:
            rollup.add(rows, sign=-1)
        PruneLog.record(now_ms(), low, high)
        return len(rows)


def _forget_prunes_before(ts_ms):
    PruneLog.delete().where(PruneLog.ts_ms < ts_ms).execute()


def _forget_expired_sessions(now):
    """Browser sessions, WebSocket tickets and ingest idempotency keys
    past their expiry."""
    for table in ("session", "ws_token", "ingest_key"):
        db.execute(f"DELETE FROM {table} WHERE expires_ms <= ?", (now,))


def _rows_within(max_bytes):
    """How many entries fit in `max_bytes` at the store's present bytes per
    entry (LOGSVC_MAX_DISK_BYTES): retention keeps the newest that many."""
    rows = _row_count()
    used = used_bytes()
    if not rows or used <= max_bytes:
        return rows
    return int(rows * max_bytes / used)


def used_bytes():
    """What LOGSVC_MAX_DISK_BYTES bounds: the store's bytes (db.used_bytes)
    less, on PostgreSQL, the segment table's free space, which the next
    segments take before the table grows (segments.free_bytes)."""
    return db.used_bytes() - segments.free_bytes()


def _row_count():
    (n,) = db.execute(
        "SELECT CAST(coalesce(SUM(n), 0) AS BIGINT) FROM rollup_total_all").fetchone()
    return n


def _delete_batch(where, params):
    with database.atomic():
        ids = [row[0] for row in db.execute(f"SELECT id FROM entry WHERE {where}", params)]
        if not ids:
            return 0
        # Counted first, if they are not yet: what is subtracted below
        # must be in every tier.
        rollup.count_all(max(ids))
        # What the counters lose is what the DELETE removed, not what was
        # selected: on PostgreSQL another prune may have removed some first.
        fulltext.delete_sqlite(ids)  # SQLite's side indexes first (db.only)
        lookup.delete(ids)
        where, params = db.one_of("entry_id", ids)
        db.execute(f"DELETE FROM entry_body WHERE {where}", params)
        where, params = db.one_of("id", ids)
        deleted = db.execute(f"DELETE FROM entry WHERE {where} RETURNING {rollup.ROW_SQL}",
                             params).fetchall()
        if not deleted:
            return 0
        rollup.add(deleted, sign=-1)
        PruneLog.record(now_ms(), min(ids), max(ids))
        return len(deleted)
