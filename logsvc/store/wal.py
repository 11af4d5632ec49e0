"""Keeping SQLite's write-ahead log bounded under sustained ingest.

SQLite's own checkpoint runs after commits in PASSIVE mode: it copies
what it can into the database file but never waits for readers, and the
log only starts over from its beginning once no reader is using it. A
busy node always has a reader (live tails poll every 50 ms, dashboards
query), so the log never starts over and grows by every committed page.

`run_forever` (one greenlet per serving process, SQLite only) watches the
size of `logs.db-wal` and, past `limit_bytes`, runs a TRUNCATE checkpoint:
it waits (at most CHECKPOINT_WAIT_MS) for the readers of older snapshots
to finish their statement, which takes milliseconds since every read is a
single statement, copies the log into the database and truncates it to
zero. Writers wait while it runs; readers do not. When several processes
try at once, one does the work and the others find it done.
`journal_size_limit` (see db.SQLITE_PRAGMAS) additionally caps what a log
that SQLite restarted on its own keeps on disk.
"""
import logging
import os

import gevent

from . import db

log = logging.getLogger(__name__)

CHECK_S = 0.25
CHECKPOINT_WAIT_MS = 5_000


def wal_path(store):
    return f"{store.database.database}-wal"


def wal_size(store):
    try:
        return os.path.getsize(wal_path(store))
    except OSError:
        return 0


def checkpoint():
    """TRUNCATE checkpoint on this thread's connection. Returns True when
    the log was copied and truncated, False when a reader or another
    checkpoint kept it busy past the wait."""
    db.execute(f"PRAGMA busy_timeout = {CHECKPOINT_WAIT_MS}")
    try:
        busy, _frames, _copied = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        db.execute(f"PRAGMA busy_timeout = {db.SQLITE_PRAGMAS['busy_timeout']}")
    return not busy


def run_forever(store, limit_bytes, check_s=CHECK_S):
    """Checkpoint whenever the log outgrows `limit_bytes`, until the store closes."""
    if store.postgres or limit_bytes <= 0:
        return
    db.use(store)
    while not store.closed:
        gevent.sleep(check_s)
        if wal_size(store) <= limit_bytes:
            continue
        try:
            if not db.call(checkpoint):
                log.info("WAL checkpoint postponed: readers or another checkpoint busy")
        except Exception as exc:  # noqa: BLE001 - tried again at the next check
            log.warning("WAL checkpoint failed: %s", exc)
