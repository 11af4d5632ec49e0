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

from . import db, rollup
from .db import database
from .entry import now_ms
from .models import Lease, PruneLog

log = logging.getLogger("logsvc.retention")
BATCH = 2000
LEASE_NAME = "retention"
PRUNE_LOG_KEEP_MS = 86_400_000  # longer than any cursor snapshot lives


def prune(config, now=None, batch=BATCH):
    """Delete what retention says must go. Returns the number of entries removed."""
    now = now_ms() if now is None else now
    removed = 0
    db.call(_forget_prunes_before, now - PRUNE_LOG_KEEP_MS)
    if config.retention_ms:
        cutoff = now - config.retention_ms
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
        removed += db.call(_delete_batch, "1 ORDER BY id LIMIT ?", (min(excess, batch),))
        gevent.sleep(0)
    return removed


def run_forever(config, holder=None):
    """Prune every `prune_interval_s` while this process holds the lease."""
    holder = holder or f"{socket.gethostname()}:{os.getpid()}"
    lease_s = max(config.prune_interval_s * 3, 30)
    while True:
        try:
            if db.call(take_lease, LEASE_NAME, holder, lease_s):
                removed = prune(config)
                if removed:
                    log.info("retention removed %d entries", removed)
        except Exception:
            log.exception("retention run failed")
        gevent.sleep(config.prune_interval_s)


def take_lease(name, holder, seconds):
    """Take or renew the named lease; True if `holder` now holds it."""
    now = now_ms()
    with database.atomic():
        current = Lease.get_or_none(Lease.name == name)
        if current is None:
            Lease.create(name=name, holder=holder, expires_ms=now + int(seconds * 1000))
            return True
        if current.holder != holder and current.expires_ms > now:
            return False
        (Lease.update(holder=holder, expires_ms=now + int(seconds * 1000))
         .where(Lease.name == name).execute())
        return True


def _forget_prunes_before(ts_ms):
    PruneLog.delete().where(PruneLog.ts_ms < ts_ms).execute()


def _row_count():
    (n,) = database.execute_sql("SELECT coalesce(SUM(n), 0) FROM rollup_total").fetchone()
    return n


def _delete_batch(where, params):
    with database.atomic():
        conn = database.connection()
        rows = conn.execute(
            f"SELECT id, {rollup.ROW_SQL} FROM entry WHERE {where}", params).fetchall()
        if not rows:
            return 0
        ids = [(row[0],) for row in rows]
        conn.executemany("DELETE FROM entry_body WHERE entry_id = ?", ids)
        conn.executemany("DELETE FROM entry WHERE id = ?", ids)
        rollup.add(conn, [rollup.key_of(*row[1:]) for row in rows], sign=-1)
        PruneLog.create(ts_ms=now_ms(), min_id=min(ids)[0], max_id=max(ids)[0])
        return len(rows)
