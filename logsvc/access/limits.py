"""Per-scope rate limit on reads, shared by every process on the host.

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
    def __init__(self, retry_after=RETRY_AFTER_S):
        super().__init__("Rate limit exceeded for this scope")
        self.retry_after = retry_after


class RateLimiter:
    def __init__(self, data_dir, per_minute):
        self.path = str(Path(data_dir) / "limits.db")
        self.per_minute = per_minute
        self._local = threading.local()

    def hit(self, scope_key):
        """Count one read for `scope_key`; raise RateLimited when over."""
        if not self.per_minute:
            return
        take = self._take_shared if db.is_postgres() else self._take
        if not db.call(take, scope_key, time.time()):
            raise RateLimited()

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
