"""Retention: delete entries older than LOGSVC_RETENTION_DAYS and the oldest
ones beyond LOGSVC_MAX_ROWS.

Deletion runs in small batches, each one transaction that removes the rows,
their bodies and their share of the rollup counters together, so stats stay
exact and no writer waits long on the lock. One process at a time prunes:
each worker runs `run_forever` in a background greenlet, and a worker only
prunes while it holds the `retention` lease in the database.
"""
import logging
import os
import socket

import gevent

from logsvc.entry import now_ms

from . import db, fulltext, partitions, query, rollup
from .db import database
from .models import PruneLog

log = logging.getLogger("logsvc.retention")
BATCH = 2000
LEASE_NAME = "retention"
PRUNE_LOG_KEEP_MS = 86_400_000  # longer than any cursor snapshot lives


def prune(config, now=None, batch=BATCH):
    """Delete what retention says must go. Returns the number of entries removed."""
    now = now_ms() if now is None else now
    removed = 0
    db.call(_forget_prunes_before, now - PRUNE_LOG_KEEP_MS)
    db.call(_forget_expired_sessions, now)
    cutoff = now - config.retention_ms if config.retention_ms else None
    if db.is_postgres():
        removed += db.call(_drop_partitions, cutoff, config.max_rows)
    if cutoff is not None:
        while True:
            n = db.call(_delete_batch, "ts_ms < ? ORDER BY ts_ms LIMIT ?", (cutoff, batch))
            removed += n
            if n < batch:
                break
            gevent.sleep(0)
    while True:
        excess = db.call(_row_count) - config.max_rows
        if excess <= 0:
            break
        removed += db.call(_delete_batch, "TRUE ORDER BY id LIMIT ?", (min(excess, batch),))
        gevent.sleep(0)
    return removed


def run_forever(config, holder=None, store=None):
    """Prune every `prune_interval_s` while this process holds the lease
    (on `store`, by default the current one)."""
    if store is not None:
        db.use(store)
    holder = holder or f"{socket.gethostname()}:{os.getpid()}"
    lease_s = max(config.prune_interval_s * 3, 30)
    while True:
        try:
            if db.call(take_lease, LEASE_NAME, holder, lease_s):
                removed = prune(config)
                if removed:
                    log.info("retention removed %d entries", removed)
                if db.is_postgres():
                    db.call(partitions.analyze_stale)
        except Exception:
            log.exception("retention run failed")
        gevent.sleep(config.prune_interval_s)


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


def _drop_partitions(cutoff, max_rows):
    return partitions.drop_expired(cutoff, _row_count() - max_rows, query.high_water())


def _forget_prunes_before(ts_ms):
    PruneLog.delete().where(PruneLog.ts_ms < ts_ms).execute()


def _forget_expired_sessions(now):
    """Browser sessions and WebSocket tickets past their expiry."""
    for table in ("session", "ws_token"):
        db.execute(f"DELETE FROM {table} WHERE expires_ms <= ?", (now,))


def _row_count():
    (n,) = db.execute("SELECT CAST(coalesce(SUM(n), 0) AS BIGINT) FROM rollup_total").fetchone()
    return n


def _delete_batch(where, params):
    with database.atomic():
        rows = db.execute(
            f"SELECT id, {rollup.ROW_SQL} FROM entry WHERE {where}", params).fetchall()
        if not rows:
            return 0
        ids = [row[0] for row in rows]
        if db.is_postgres():  # one statement each, the ids as an array
            db.execute("DELETE FROM entry_body WHERE entry_id = ANY(?)", (ids,))
            db.execute("DELETE FROM entry WHERE id = ANY(?)", (ids,))
        else:
            fulltext.delete_sqlite(ids)
            db.executemany("DELETE FROM entry_body WHERE entry_id = ?", [(i,) for i in ids])
            db.executemany("DELETE FROM entry WHERE id = ?", [(i,) for i in ids])
        rollup.add([row[1:] for row in rows], sign=-1)
        PruneLog.create(ts_ms=now_ms(), min_id=min(ids), max_id=max(ids))
        return len(rows)
