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

When writes stop, the log would stay at whatever size it had reached (up
to the limit: 16 MB by default) until the next one. `keep_trimmed` runs
in every serving process and, once the log has not been written for
`LOGSVC_WAL_IDLE_S` seconds (by any process: it looks at the file's
modification time), tries a TRUNCATE checkpoint that waits for nobody: a
reader or writer active at that instant makes it a no-op, and it tries
again on its next round. Each process's rounds are a random 0.5 to 1.5
times `LOGSVC_WAL_IDLE_S / 2` apart: workers started together would
otherwise try at the same instants, each one's attempt making the other's
a no-op, round after round (a 16 MB log still there a minute after a load,
in three loads of five).

The background's writes are bounded the same way: a seal, a merge and
the work after them (the full-text indexes rewritten, free pages given
back) are many transactions, each preceded by `make_room`, and free
pages are given back GIVE_BACK_PAGES at a time. Without that, one seal
of a busy store wrote 67 MB to the log on top of its limit. The largest
left is the one that adds a merged segment with its bytes (about 80 MB
for a million entries).
"""
import logging
import os
import random
import time

from .. import runtime
from . import db

log = logging.getLogger(__name__)

CHECKPOINT_WAIT_MS = 5_000
PATIENCE_S = 60.0


def _log_path(store):
    return f"{store.database.database}-wal"


def wal_size(store):
    try:
        return os.path.getsize(_log_path(store))
    except OSError:
        return 0


def checkpoint(wait_ms=CHECKPOINT_WAIT_MS):
    """TRUNCATE checkpoint on this thread's connection. Returns True when
    the log was copied and truncated, False when a reader, a writer or
    another checkpoint kept it busy past `wait_ms`."""
    db.execute(f"PRAGMA busy_timeout = {wait_ms}")
    try:
        busy, _frames, _copied = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        db.execute(f"PRAGMA busy_timeout = {db.SQLITE_PRAGMAS['busy_timeout']}")
    return not busy


def idle_for(store):
    """Seconds since the log was last written (None: no log or empty)."""
    try:
        stat = os.stat(_log_path(store))
    except OSError:
        return None
    if not stat.st_size:
        return None
    return time.time() - stat.st_mtime


def keep_trimmed(store, idle_s):
    """Until the store closes: give the log's space back once it has been
    idle `idle_s` seconds (a task of a serving process; SQLite only)."""
    db.use(store)
    while not store.closed:
        runtime.sleep(max(idle_s / 2, 0.05) * random.uniform(0.5, 1.5))
        idle = idle_for(store)
        if idle is not None and idle >= idle_s and not store.closed:
            try:
                db.call(checkpoint, 0)
            except Exception:  # a busy or unwritable store: next round
                log.debug("idle WAL checkpoint failed", exc_info=True)


def make_room():
    """`before_write` for this thread's store (on a database thread,
    outside any transaction)."""
    before_write(db.current())


# Pages given back per step of `give_back_free_pages` (4 MB of 4 kB pages).
GIVE_BACK_PAGES = 1024


@db.only("sqlite")
def give_back_free_pages(pages=GIVE_BACK_PAGES):
    """SQLite: return the file's free pages to the file system (a store
    made with auto_vacuum=INCREMENTAL, see db.enable_wal; else a no-op),
    after a seal or a prune freed many: `pages` at a time, each step after
    `make_room` (a step moves pages from the end of the file into free
    ones and writes them to the log). Outside a transaction: executescript
    steps the pragma to its end (one step frees one page)."""
    connection = db.database.connection()
    while connection.execute("PRAGMA freelist_count").fetchone()[0]:
        make_room()
        before = connection.execute("PRAGMA page_count").fetchone()[0]
        connection.executescript(f"PRAGMA incremental_vacuum({int(pages)});")
        if connection.execute("PRAGMA page_count").fetchone()[0] >= before:
            return  # not a store made for it (auto_vacuum off)


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
        db.real_sleep(0.01)  # this runs on a database thread
