"""Keeping SQLite's write-ahead log bounded under sustained ingest.

SQLite's own checkpoint runs after commits in PASSIVE mode: it copies
what it can into the database file but never waits for readers or
writers, and the log only starts over from its beginning once nobody is
using it. A busy node always has someone (live tails poll every 50 ms,
dashboards query, and under sustained ingest the workers' writers take
turns without a gap), so the log never starts over and grows by every page
written: 1.2 GB while loading ten million entries when a background
checkpoint competed with the writers for the write lock.

So the writers keep it bounded themselves: before each write transaction
(`before_write`, on the database thread, outside any transaction) a
writer looks at the log's size and, past the store's `wal_limit`
(`LOGSVC_WAL_CHECKPOINT_MB`), runs a TRUNCATE checkpoint before writing.
Every writer of every process does the same, so while the log is too big
no write starts; the checkpoint then waits only for the statements that
read older snapshots (single statements: milliseconds), copies the log
into the database and cuts the file to zero. A writer that finds another
process checkpointing waits for it. The log stays under the limit plus
what one write transaction per process adds.
"""
import logging
import os
import time

from gevent import monkey

from . import db

log = logging.getLogger(__name__)

CHECKPOINT_WAIT_MS = 5_000
PATIENCE_S = 60.0
_sleep = monkey.get_original("time", "sleep")  # this runs on a real thread


def wal_size(store):
    try:
        return os.path.getsize(f"{store.database.database}-wal")
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


def before_write(store):
    """Checkpoint first if the log outgrew the store's limit (SQLite)."""
    if not store.wal_limit or wal_size(store) <= store.wal_limit:
        return
    deadline = time.monotonic() + PATIENCE_S
    while wal_size(store) > store.wal_limit:
        if checkpoint():
            return
        if time.monotonic() > deadline:
            # Write anyway: losing the batch would be worse than a big log.
            log.warning("WAL checkpoint kept busy for %.0f s; writing anyway", PATIENCE_S)
            return
        _sleep(0.01)
