"""Rate limits shared by every process on the host: reads per scope, and
failed password checks per client address and per user name.

A scoped caller may make LOGSVC_RATE_LIMIT_PER_MIN reads a minute (list,
stats, histogram; stream and WebSocket connects; ws-token), with bursts up
to that many. The limit is a GCRA token bucket: one row per scope holding
its "theoretical arrival time", updated in one short transaction.

Where the rows live depends on the store:

- SQLite: `<data dir>/limits.db`, a small SQLite file of their own, so every
  gunicorn worker of the host counts against the same budget without
  touching the log store's write lock.
- PostgreSQL: the `rate_bucket` table of the store, updated by one
  statement (row lock, no transaction of its own), so every worker of every
  host shares one budget per scope.
"""
import sqlite3
import threading
import time
from pathlib import Path

from logsvc.store import db

RETRY_AFTER_S = 2


class RateLimited(Exception):
    def __init__(self, retry_after=RETRY_AFTER_S, message="Rate limit exceeded for this scope"):
        super().__init__(message)
        self.retry_after = retry_after


class RateLimiter:
    def __init__(self, data_dir, per_minute):
        self.path = str(Path(data_dir) / "limits.db")
        self.per_minute = per_minute
        self._local = threading.local()
        # Where the budgets are kept while the store takes no writes (a
        # read-only store): this process's memory.
        self._memory = _MemoryBuckets()

    def hit(self, scope_key):
        """Count one read for `scope_key`; raise RateLimited when over."""
        if not self.per_minute:
            return
        take = self._take_shared if db.is_postgres() else self._take
        now, interval = time.time(), 60.0 / self.per_minute
        if not self._shared_or_memory(take, (scope_key, now), self._memory.take,
                                      (scope_key, now, interval)):
            raise RateLimited()

    def _shared_or_memory(self, shared, args, memory, memory_args):
        """`shared(*args)` on a database thread; `memory(*memory_args)`
        instead when the shared budgets cannot be written (a read-only
        store or data directory)."""
        try:
            return db.call(shared, *args)
        except Exception as exc:
            if not _unusable(exc):
                raise
            return memory(*memory_args)

    def _take_shared(self, key, now):
        interval = 60.0 / self.per_minute
        row = db.execute(
            "INSERT INTO rate_bucket (scope, tat) VALUES (?, ?) ON CONFLICT (scope) DO UPDATE "
            "SET tat = greatest(rate_bucket.tat, ?) + ? "
            "WHERE greatest(rate_bucket.tat, ?) + ? - ? <= 60 RETURNING tat",
            (key, now + interval, now, interval, now, interval, now)).fetchone()
        return row is not None

    def _take(self, key, now):
        conn = self._connection()
        interval = 60.0 / self.per_minute
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute("SELECT tat FROM bucket WHERE scope = ?", (key,)).fetchone()
            tat = max(row[0] if row else now, now)
            if tat + interval - now > 60.0:
                return False
            conn.execute("INSERT INTO bucket (scope, tat) VALUES (?, ?) "
                         "ON CONFLICT (scope) DO UPDATE SET tat = excluded.tat",
                         (key, tat + interval))
            return True

    def _connection(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            db.enable_wal(self.path)
            conn = sqlite3.connect(self.path, timeout=10, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA synchronous=off")  # losing a count on power loss is fine
            conn.execute("CREATE TABLE IF NOT EXISTS bucket (scope TEXT PRIMARY KEY, tat REAL)")
            self._local.conn = conn
        return conn


class FailureLimiter(RateLimiter):
    """Failed password checks: LOGSVC_AUTH_FAILURES_PER_MIN per key (a
    client address, a user name), with bursts up to that many. `blocked`
    is asked before the slow password check, so a flood of wrong
    passwords costs one row read each, not a hash."""

    PREFIX = "auth-failure:"

    def blocked(self, key):
        """Seconds until `key` may try again (0: it may now)."""
        if not self.per_minute:
            return 0
        key = self.PREFIX + key
        tat = max(self._shared_or_memory(self._read, (key,), lambda: None, ()) or 0,
                  self._memory.read(key) or 0)
        interval = 60.0 / self.per_minute
        wait = tat - time.time() - (60.0 - interval)
        return int(wait) + 1 if wait > 0 else 0

    def failed(self, key):
        """Count one failure for `key`."""
        if not self.per_minute:
            return
        args = (self.PREFIX + key, time.time(), 60.0 / self.per_minute)
        self._shared_or_memory(self._add, args, self._memory.add, args)

    def _read(self, key):
        if db.is_postgres():
            row = db.execute("SELECT tat FROM rate_bucket WHERE scope = ?", (key,)).fetchone()
        else:
            row = self._connection().execute(
                "SELECT tat FROM bucket WHERE scope = ?", (key,)).fetchone()
        return row[0] if row else None

    def _add(self, key, now, interval):
        # Failures are never refused: the bucket keeps filling, so a client
        # that goes on guessing stays blocked.
        sql = ("INSERT INTO {table} (scope, tat) VALUES (?, ?) ON CONFLICT (scope) DO UPDATE "
               "SET tat = {greatest}({table}.tat, ?) + ?")
        params = (key, now + interval, now, interval)
        if db.is_postgres():
            db.execute(sql.format(table="rate_bucket", greatest="greatest"), params)
        else:
            with self._connection() as conn:
                conn.execute(sql.format(table="bucket", greatest="max"), params)


def _unusable(exc):
    """Whether the shared budgets cannot be written (a read-only store or
    data directory); the process then counts in memory."""
    return bool(db.unwritable_reason(exc)) or isinstance(exc, OSError) or (
        isinstance(exc, sqlite3.OperationalError) and "unable to open" in str(exc))


class _MemoryBuckets:
    """The same GCRA buckets in this process's memory."""

    def __init__(self):
        self._tat = {}

    def take(self, key, now, interval):
        tat = max(self._tat.get(key, now), now)
        if tat + interval - now > 60.0:
            return False
        self._tat[key] = tat + interval
        return True

    def read(self, key):
        return self._tat.get(key)

    def add(self, key, now, interval):
        self._tat[key] = max(self._tat.get(key, now), now) + interval
        if len(self._tat) > 100_000:  # forget the buckets that have drained
            self._tat = {k: v for k, v in self._tat.items() if v > now}
