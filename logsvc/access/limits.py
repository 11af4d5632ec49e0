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
        if not self._shared_or_memory(take, (scope_key, None), self._memory.take,
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
        # `now` None: the time of the statement, not of the request. Under
        # load a request waits for a database thread, and a budget advanced
        # by a later request with an earlier time would refuse one too many.
        now = time.time() if now is None else now
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
            now = time.time() if now is None else now  # the transaction's (_take_shared)
            row = conn.execute("SELECT tat FROM bucket WHERE scope = ?", (key,)).fetchone()
            tat = max(row[0] if row else now, now)
            if tat + interval - now > 60.0:
                return False
            conn.execute("INSERT INTO bucket (scope, tat) VALUES (?, ?) "
                         "ON CONFLICT (scope) DO UPDATE SET tat = excluded.tat",
                         (key, tat + interval))
            return True

    def _connection(self):
        return db.counts_connection(
            self._local, self.path,
            "CREATE TABLE IF NOT EXISTS bucket (scope TEXT PRIMARY KEY, tat REAL)")


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
        take = self._take_shared if db.is_postgres() else self._take
        if self._shared_or_memory(take, (key, None), self._memory.take, (key, now, interval)):
            return 0
        return self.blocked(key[len(self.PREFIX):]) or 1

    def refund(self, key):
        """Give back a failure `reserve` counted (the password was right)."""
        if not self.per_minute:
            return
        args = (self.PREFIX + key, time.time(), -60.0 / self.per_minute)
        self._shared_or_memory(self._give_back, args, self._memory.give_back, args)

    def _give_back(self, key, now, interval):
        sql = ("UPDATE {table} SET tat = {greatest}(tat + ?, ?) WHERE scope = ?")
        params = (interval, now, key)
        if db.is_postgres():
            db.execute(sql.format(table="rate_bucket", greatest="greatest"), params)
        else:
            with self._connection() as conn:
                conn.execute(sql.format(table="bucket", greatest="max"), params)

    # A user's known-good sources: an address a user signed in from is
    # remembered for this long, and the limit by user name does not apply
    # to it (OWASP's advice: a flood of wrong passwords for a name from
    # elsewhere must not lock its owner out).
    GOOD_FOR_S = 30 * 86_400

    def remember_good(self, username, client):
        if not self.per_minute or not client:
            return
        key = "known-good:" + scope_key(username, client)
        args = (key, time.time() + self.GOOD_FOR_S)
        self._shared_or_memory(self._set, args, self._memory.set, args)

    def known_good(self, username, client):
        if not self.per_minute or not client:
            return False
        key = "known-good:" + scope_key(username, client)
        until = max(self._shared_or_memory(self._read, (key,), lambda: None, ()) or 0,
                    self._memory.read(key) or 0)
        return until > time.time()

    def _set(self, key, value):
        sql = ("INSERT INTO {table} (scope, tat) VALUES (?, ?) ON CONFLICT (scope) DO UPDATE "
               "SET tat = excluded.tat")
        if db.is_postgres():
            db.execute(sql.format(table="rate_bucket"), (key, value))
        else:
            with self._connection() as conn:
                conn.execute(sql.format(table="bucket"), (key, value))

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
