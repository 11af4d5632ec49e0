"""Rate limits shared by every process on the host: reads per scope, and
failed password checks per client address and per user name; and, per
worker, how many queries of one scope run at once (`QueryGate`).

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
import contextlib
import sqlite3
import threading
import time
from pathlib import Path

from logsvc.store import db

from .principal import scope_key

RETRY_AFTER_S = 2


class RateLimited(Exception):
    def __init__(self, retry_after=RETRY_AFTER_S, message="Rate limit exceeded for this scope"):
        super().__init__(message)
        self.retry_after = retry_after


class RateLimiter:
    def __init__(self, data_dir, per_minute):
        self.per_minute = per_minute
        # Where the budgets are kept: the store's table (PostgreSQL) or the
        # host's file (SQLite), chosen by the store at each use; and while
        # the store takes no writes (a read-only store), this process's
        # memory.
        self._stored = {True: _TableBuckets(), False: _FileBuckets(Path(data_dir) / "limits.db")}
        self._memory = _MemoryBuckets()

    def hit(self, scope_key):
        """Count one read for `scope_key`; raise RateLimited when over."""
        if not self.per_minute:
            return
        now, interval = time.time(), 60.0 / self.per_minute
        if not self._shared_or_memory("take", (scope_key, None, interval),
                                      (scope_key, now, interval)):
            raise RateLimited()

    def _shared_or_memory(self, operation, args, memory_args=None):
        """The buckets' `operation(*args)` on a database thread; the same
        in this process's memory (with `memory_args`, or `args`) when the
        shared budgets cannot be written (a read-only store or data
        directory)."""
        buckets = self._stored[db.is_postgres()]
        try:
            return db.call(getattr(buckets, operation), *args)
        except Exception as exc:
            if not _unusable(exc):
                raise
            return getattr(self._memory, operation)(*(args if memory_args is None
                                                      else memory_args))


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
        tat = max(self._shared_or_memory("read", (key,)) or 0, self._memory.read(key) or 0)
        interval = 60.0 / self.per_minute
        wait = tat - time.time() - (60.0 - interval)
        return int(wait) + 1 if wait > 0 else 0

    def reserve(self, key):
        """Count one failure for `key` before the password is checked,
        unless `key` is blocked: 0 once counted, else the seconds to wait.
        Counting first keeps the limit exact under concurrency (parallel
        attempts cannot all pass `blocked` before any of them fails); a
        check that succeeds gives it back (`refund`)."""
        if not self.per_minute:
            return 0
        now, interval = time.time(), 60.0 / self.per_minute
        key = self.PREFIX + key
        if self._shared_or_memory("take", (key, None, interval), (key, now, interval)):
            return 0
        return self.blocked(key[len(self.PREFIX):]) or 1

    def refund(self, key):
        """Give back a failure `reserve` counted (the password was right)."""
        if not self.per_minute:
            return
        self._shared_or_memory("give_back", (self.PREFIX + key, time.time(),
                                             -60.0 / self.per_minute))

    # A user's known-good sources: an address a user signed in from is
    # remembered for this long, and the limit by user name does not apply
    # to it (OWASP's advice: a flood of wrong passwords for a name from
    # elsewhere must not lock its owner out).
    GOOD_FOR_S = 30 * 86_400

    def remember_good(self, username, client):
        if not self.per_minute or not client:
            return
        key = "known-good:" + scope_key(username, client)
        self._shared_or_memory("set", (key, time.time() + self.GOOD_FOR_S))

    def known_good(self, username, client):
        if not self.per_minute or not client:
            return False
        key = "known-good:" + scope_key(username, client)
        until = max(self._shared_or_memory("read", (key,)) or 0, self._memory.read(key) or 0)
        return until > time.time()

    def failed(self, key):
        """Count one failure for `key`."""
        if not self.per_minute:
            return
        self._shared_or_memory("add", (self.PREFIX + key, time.time(),
                                       60.0 / self.per_minute))


class _StoredBuckets:
    """GCRA buckets in a table `scope, tat` (the time a bucket is empty
    again): the statements both stores share, each run by `_run`."""

    TABLE = GREATEST = None

    def read(self, key):
        row = self._run(f"SELECT tat FROM {self.TABLE} WHERE scope = ?", (key,)).fetchone()
        return row[0] if row else None

    def set(self, key, value):
        self._run(f"INSERT INTO {self.TABLE} (scope, tat) VALUES (?, ?) ON CONFLICT (scope) "
                  f"DO UPDATE SET tat = excluded.tat", (key, value))

    def give_back(self, key, now, interval):
        self._run(f"UPDATE {self.TABLE} SET tat = {self.GREATEST}(tat + ?, ?) WHERE scope = ?",
                  (interval, now, key))

    def add(self, key, now, interval):
        # Failures are never refused: the bucket keeps filling, so a client
        # that goes on guessing stays blocked.
        self._run(f"INSERT INTO {self.TABLE} (scope, tat) VALUES (?, ?) ON CONFLICT (scope) "
                  f"DO UPDATE SET tat = {self.GREATEST}({self.TABLE}.tat, ?) + ?",
                  (key, now + interval, now, interval))


class _TableBuckets(_StoredBuckets):
    """PostgreSQL: the store's `rate_bucket` table, each change one
    statement (a row lock): every host shares the budgets."""

    TABLE, GREATEST = "rate_bucket", "greatest"

    def _run(self, sql, params):
        return db.execute(sql, params)

    def take(self, key, now, interval):
        # `now` None: the time of the statement, not of the request. Under
        # load a request waits for a database thread, and a budget advanced
        # by a later request with an earlier time would refuse one too many.
        now = time.time() if now is None else now
        row = db.execute(
            "INSERT INTO rate_bucket (scope, tat) VALUES (?, ?) ON CONFLICT (scope) DO UPDATE "
            "SET tat = greatest(rate_bucket.tat, ?) + ? "
            "WHERE greatest(rate_bucket.tat, ?) + ? - ? <= 60 RETURNING tat",
            (key, now + interval, now, interval, now, interval, now)).fetchone()
        return row is not None


class _FileBuckets(_StoredBuckets):
    """SQLite: `limits.db` in the data directory, a file of its own, so
    every worker of the host counts against the same budgets without
    taking the log store's write lock."""

    TABLE, GREATEST = "bucket", "max"

    def __init__(self, path):
        self.path = str(path)
        self._local = threading.local()

    def _connection(self):
        return db.counts_connection(
            self._local, self.path,
            "CREATE TABLE IF NOT EXISTS bucket (scope TEXT PRIMARY KEY, tat REAL)")

    def _run(self, sql, params):
        with self._connection() as conn:
            return conn.execute(sql, params)

    def take(self, key, now, interval):
        conn = self._connection()
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            now = time.time() if now is None else now  # the transaction's (_TableBuckets)
            row = conn.execute("SELECT tat FROM bucket WHERE scope = ?", (key,)).fetchone()
            tat = max(row[0] if row else now, now)
            if tat + interval - now > 60.0:
                return False
            conn.execute("INSERT INTO bucket (scope, tat) VALUES (?, ?) "
                         "ON CONFLICT (scope) DO UPDATE SET tat = excluded.tat",
                         (key, tat + interval))
            return True


class QueryGate:
    """At most `per_scope` searches, counts and histograms of one scope run
    at once in this worker; the others wait their turn, up to `patience_s`,
    then get a 429. A burst of costly questions from one tenant thus holds
    at most that many of the worker's database threads, and the other
    tenants' questions go on beside it."""

    def __init__(self, per_scope, patience_s):
        self.per_scope = per_scope
        self.patience_s = patience_s or 30.0
        self._gates = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def turn(self, scope_key):
        if not self.per_scope:
            yield
            return
        with self._lock:
            gate = self._gates.get(scope_key)
            if gate is None:
                gate = self._gates[scope_key] = [threading.Semaphore(self.per_scope), 0]
            gate[1] += 1
        try:
            if not gate[0].acquire(timeout=self.patience_s):
                raise RateLimited(RETRY_AFTER_S, f"More than {self.per_scope} queries of this "
                                                 "scope are running; retry when one has ended "
                                                 "(LOGSVC_QUERIES_PER_SCOPE)")
            try:
                yield
            finally:
                gate[0].release()
        finally:
            with self._lock:
                gate[1] -= 1
                if not gate[1]:
                    del self._gates[scope_key]


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

    def set(self, key, value):
        self._tat[key] = value

    def give_back(self, key, now, interval):
        if key in self._tat:
            self._tat[key] = max(self._tat[key] + interval, now)

    def add(self, key, now, interval):
        self._tat[key] = max(self._tat.get(key, now), now) + interval
        if len(self._tat) > 100_000:  # forget the buckets that have drained
            self._tat = {k: v for k, v in self._tat.items() if v > now}
