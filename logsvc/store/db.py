"""The database handle, its two engines, and where its calls run.

`init(config)` opens a `Store`: one database, SQLite or PostgreSQL, and
what this process keeps about it (the ingest group commit, the partition
bookkeeping). The models and the hand-written SQL reach it through
`database`, a proxy declared once that resolves to the *current* store:

- the store the calling code selected with `use(store)` (the application
  selects its own before each request, so two applications in one process
  each work on their own store), else
- the store opened last by `init` (the CLI, benchmarks, scripts).

`call(fn)` runs `fn` on a database thread with the caller's current store.

Engines:
- SQLite (the default): `<data dir>/logs.db`, or `sqlite:///path`;
- PostgreSQL: `postgresql://user@host:port/dbname?options=...`, for several
  hosts over one store.

Concurrency (under gevent; see runtime.py for threaded servers): a
database call blocks the calling OS thread (a long query, a
writer waiting on another process's lock, a PostgreSQL round trip). Under
gevent that would freeze every stream of the worker, so request code runs
database work through `call(fn, *args)`, which executes `fn` on a thread of
gevent's thread pool while the calling greenlet yields. Each pool thread
keeps its own connection (peewee keeps connection state per thread), so the
pool of `LOGSVC_DB_THREADS` threads is also the worker's connection pool:
connections are opened once per thread, never per request, and at most that
many per worker. psycopg2 releases the GIL while it waits on the server.

Hand-written SQL uses `?` placeholders; `sql()` turns them into psycopg2's
`%s` on PostgreSQL, and `execute`/`executemany` run it on either engine.
"""
import contextlib
import contextvars
import fcntl
import functools
import io
import os
import sqlite3
import threading
import time
import weakref
from urllib.parse import quote, unquote, urlsplit

import gevent
import peewee
from gevent import monkey

from logsvc import runtime


class _CurrentDatabase(peewee.DatabaseProxy):
    """The database of the current store (see `current`)."""

    __slots__ = ()

    @property
    def obj(self):
        store = current()
        return None if store is None else store.database

    def __setattr__(self, name, value):
        if name == "obj":  # peewee's initialize(None) at construction
            if value is not None:
                raise TypeError("open a store with db.init(config), select one with db.use(store)")
            return
        object.__setattr__(self, name, value)


database = _CurrentDatabase()
_selected = contextvars.ContextVar("logsvc_store", default=None)
_last_opened = None

# Set on every connection. WAL mode is set once, by `enable_wal`: it is
# kept in the file, and asking for it on each connect can fail at once with
# "database is locked" while another process opens the file.
SQLITE_PRAGMAS = {
    # FULL: a commit is on disk before ingest answers 200, also across a
    # power loss; batches keep the fsync cost per request, not per entry.
    "synchronous": "full",
    "foreign_keys": 1,
    "busy_timeout": 30_000,
    # Per connection, and every database thread has one: keep it modest and
    # let the operating system's file cache hold the rest.
    "cache_size": -8_000,
    "temp_store": "memory",
    # After a checkpoint lets the write-ahead log start over, SQLite cuts
    # the file back to this size (wal.py keeps it from outgrowing it).
    "journal_size_limit": 16 * 1024 * 1024,
}


SQLITE_READ_ONLY_PRAGMAS = {key: value for key, value in SQLITE_PRAGMAS.items()
                            if key not in ("synchronous", "journal_size_limit")}


def only(engine, default=None):
    """Declare a function as one engine's ("sqlite" or "postgresql"): on
    the other engine's store, calling it does nothing and returns
    `default`. The parts of the store that one engine alone has (SQLite's
    side indexes, PostgreSQL's partitions) are marked where they are
    defined, and the code that calls them does not ask which engine it
    runs on."""
    postgres = {"sqlite": False, "postgresql": True}[engine]

    def decorate(fn):
        @functools.wraps(fn)
        def on_engine(*args, **kwargs):
            if is_postgres() != postgres:
                return default
            return fn(*args, **kwargs)
        return on_engine
    return decorate


class UnsupportedDatabase(ValueError):
    pass


class PostgresDatabase(peewee.PostgresqlDatabase):
    """peewee's PostgreSQL database that remembers every connection it
    opens, so that `close_all` can close them from any thread."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Weakly: a connection belongs to its thread's state, and goes
        # (closed by psycopg2) with a thread that ends.
        self._opened = weakref.WeakSet()
        self._opened_lock = os_lock()

    def _connect(self):
        conn = super()._connect()
        with self._opened_lock:
            self._opened.add(conn)
        return conn

    def close_all(self):
        with self._opened_lock:
            opened, self._opened = list(self._opened), weakref.WeakSet()
        for conn in opened:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass


# SQL functions of ours that SQLite connections have (see sqlite_function).
SQLITE_FUNCTIONS = {}


def sqlite_function(name, arity):
    """Register the decorated function as the SQL function `name` on every
    SQLite store opened after (the modules that use one define it)."""
    def register(fn):
        SQLITE_FUNCTIONS[name] = (fn, arity)
        return fn
    return register


def os_lock():
    """A lock of the operating system, also when gevent has patched
    `threading`: the database threads are real threads, and a gevent lock
    shared between them can stall."""
    return monkey.get_original("_thread", "allocate_lock")()


class _TakingTurns(peewee.SqliteDatabase):
    """SQLite's database, whose writers take turns.

    A writer that finds the write lock taken would wait in SQLite's busy
    handler, which looks again after 1, 2, 5 ... then every 100 ms. A
    process that writes transaction after transaction (the background's
    seal, its index rewrites and the pages it gives back; a worker whose
    queue never empties) leaves the lock free for microseconds between two
    of them, and the waiter almost never looks at that instant: on a
    loaded machine an ingest waited out its 30 s and was refused while a
    seal ran. So a writer that finds the lock taken says that it waits (a
    shared lock on `<file>-writers`) and tries again every millisecond; a
    thread that committed less than TURN_S ago lets those that wait go
    first (for at most TURN_S) before it begins again. When nobody waits,
    a transaction costs two pragmas more."""

    TURN_S = 0.25
    RETRY_S = 0.001

    def __init__(self, database, *args, **kwargs):
        super().__init__(database, *args, **kwargs)
        self._turns = _TurnFile(f"{database}-writers")
        self._patience_s = kwargs.get("timeout", 30)

    def begin(self, lock_type=None):
        self._turns.let_waiters_in()
        cursor = self.cursor()
        statement = f"BEGIN {lock_type or self._lock_type}"
        with peewee.__exception_wrapper__:
            cursor.execute("PRAGMA busy_timeout = 0")
            try:
                if self._began(cursor, statement):
                    return
                deadline = time.monotonic() + self._patience_s
                with self._turns.waiting():
                    while True:
                        real_sleep(self.RETRY_S)
                        if self._began(cursor, statement, time.monotonic() > deadline):
                            return
            finally:
                cursor.execute(f"PRAGMA busy_timeout = {SQLITE_PRAGMAS['busy_timeout']}")

    @staticmethod
    def _began(cursor, statement, last=False):
        try:
            cursor.execute(statement)
        except sqlite3.OperationalError as exc:
            if last or not _is_locked(exc):
                raise
            return False
        return True

    def commit(self):
        try:
            super().commit()
        finally:
            self._turns.ended()

    def rollback(self):
        try:
            super().rollback()
        finally:
            self._turns.ended()


class _TurnFile:
    """The lock file of `_TakingTurns`, and when this thread last committed.
    A lock is taken on a descriptor opened for it (flock locks belong to
    an open file: threads of one process see each other's)."""

    def __init__(self, path):
        self.path = path
        self.thread = _os_local()  # .ended: when it last committed or rolled back

    def _open(self):
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:  # a directory it cannot write to: no turns
            return None

    @contextlib.contextmanager
    def waiting(self):
        fd = self._open()
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            if fd is not None:
                os.close(fd)  # and its lock with it

    def ended(self):
        self.thread.ended = time.monotonic()

    def let_waiters_in(self):
        ended = getattr(self.thread, "ended", None)
        if ended is None or time.monotonic() >= ended + _TakingTurns.TURN_S:
            return
        fd = self._open()
        if fd is None:
            return
        try:
            while time.monotonic() < ended + _TakingTurns.TURN_S:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # someone waits for the write lock
                    real_sleep(_TakingTurns.RETRY_S)
                    continue
                fcntl.flock(fd, fcntl.LOCK_UN)
                return
        finally:
            os.close(fd)


# The operating system's sleep and thread-local values, also once gevent
# has patched them: for code that runs on the database threads (real
# threads), where gevent's would be per greenlet or yield to its hub.
real_sleep = monkey.get_original("time", "sleep")
_os_local = monkey.get_original("threading", "local")


_converted = {}


class Store:
    """One opened database and what this process keeps about it."""

    def __init__(self, database, postgres):
        self.database = database
        self.postgres = postgres
        self.committer = None  # ingest's group commit, made by the first write
        self.hot_columns = None  # the hot entries' columns, see hotcolumns.py
        self.hot_columns_wanted = None  # when a question last asked for them
        self.hot_columns_making = None  # the task that makes them, see hotcolumns.py
        self.hot_columns_rows = 0  # hot entries past which none are kept (0: none)
        self.partitions = {"rows": None, "covered": -1}  # see partitions.py
        self.lock = os_lock()
        self.closed = False
        # SQLite: checkpoint the write-ahead log before a write once it is
        # larger than this (bytes; 0: leave it to SQLite). See wal.py.
        self.wal_limit = 0
        # None while it is working, else why the store refuses writes (it
        # is read-only or full): set by a write that failed so, cleared by
        # one that succeeded. Reads go on either way.
        self.unwritable = None
        self.probe_after = 0.0  # when /healthz may next try a write (ops.py)
        # Seconds a read asked by a caller (`read`) may run (0: no limit).
        self.query_timeout_s = 0.0
        # Sealed rows a page's count may decode beyond its page's (0: no limit).
        self.sealed_count_rows = 0

    def close(self):
        """Close this store's connections (every thread's, on PostgreSQL),
        once the table of hot entries being made from them is made."""
        self.closed = True
        making = self.hot_columns_making
        if making is not None and runtime.alive(making):
            making.join(30)
        if isinstance(self.database, PostgresDatabase):
            self.database.close_all()


def init(config):
    """Open the store named by `config`, make it the current one, and return it."""
    global _last_opened
    url = config.database_url or ""
    if url.startswith(("postgresql://", "postgres://")):
        bound = _postgres_database(url, config.read_only)
        postgres = True
    elif url and not url.startswith("sqlite:///"):
        raise UnsupportedDatabase(
            f"LOGSVC_DATABASE_URL={url.split(':', 1)[0]}://... is not supported; "
            "use sqlite:///path or postgresql://..."
        )
    else:
        path = config.sqlite_path
        if url.startswith("sqlite:///"):
            path = url[len("sqlite:///"):]
        elif not config.read_only:
            private_dir(config.sqlite_path.parent)
        if config.read_only:
            # Opened read-only: nothing here writes the file (a snapshot,
            # a volume mounted read-only, a copy under investigation).
            if not os.path.exists(path):
                raise UnsupportedDatabase(f"LOGSVC_READ_ONLY is set but there is no store at {path}")
            bound = peewee.SqliteDatabase(
                f"file:{quote(str(path))}?mode=ro", uri=True, pragmas=SQLITE_READ_ONLY_PRAGMAS,
                timeout=30, check_same_thread=False)
        else:
            try:
                enable_wal(str(path))
            except (OSError, sqlite3.Error) as exc:
                if not unwritable_reason(exc) and not isinstance(exc, PermissionError):
                    raise  # an unwritable store still serves reads; see probe_unwritable
            bound = _TakingTurns(
                str(path), pragmas=SQLITE_PRAGMAS, timeout=30, lock_type="IMMEDIATE",
                check_same_thread=False,
            )
        from . import sketch  # the latency counters' merge (PostgreSQL: models.py)

        bound.register_function(sketch.merge_stored, "logsvc_sketch_add", 2, deterministic=True)
        for name, (fn, arity) in SQLITE_FUNCTIONS.items():
            bound.register_function(fn, name, arity, deterministic=True)
        postgres = False
    # peewee serialises connect/close with a threading.Lock, which is
    # gevent's once gevent has patched threading: shared between database
    # threads, it can stall them. Give it a lock of the operating system.
    bound._lock = os_lock()
    store = Store(bound, postgres)
    store.query_timeout_s = float(getattr(config, "query_timeout_s", 0) or 0)
    store.sealed_count_rows = int(getattr(config, "sealed_count_rows", 0) or 0)
    store.hot_columns_rows = int(getattr(config, "hot_columns_rows", 0) or 0)
    if not postgres:
        store.wal_limit = config.wal_checkpoint_mb * 1024 * 1024
    _last_opened = store
    use(store)
    _configure_pool(config.db_threads)
    return store


def current():
    """The store that code running here works on (see the module's docstring)."""
    return _selected.get() or _last_opened


def use(store):
    """Make `store` current for the rest of this greenlet or thread."""
    _selected.set(store)


@contextlib.contextmanager
def using(store):
    """Make `store` current inside the block."""
    token = _selected.set(store)
    try:
        yield store
    finally:
        _selected.reset(token)


def _is_locked(exc):
    return "locked" in str(exc) or "busy" in str(exc)


def private_dir(path):
    """Make the data directory, readable by its owner only (0700)."""
    os.makedirs(path, mode=0o700, exist_ok=True)


def private_file(path):
    """Create a database file readable by its owner only (0600) before
    SQLite opens it; SQLite gives its -wal and -shm files the same mode."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


def enable_wal(path, patience_s=30.0):
    private_file(path)
    deadline = time.monotonic() + patience_s
    conn = sqlite3.connect(path, timeout=patience_s)
    try:
        # A new file gives the pages that sealing and retention free back
        # to the file system (segments.py runs the incremental vacuum); on
        # a file that already has tables this changes nothing.
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        while True:
            try:
                conn.execute("PRAGMA journal_mode=wal")
                return
            except sqlite3.OperationalError as exc:
                if not _is_locked(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        conn.close()


def used_bytes():
    """What the store takes: SQLite's pages in use (free pages are reused
    before the file grows), PostgreSQL's tables and indexes in its schema."""
    if is_postgres():
        (n,) = execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'm')").fetchone()
        return int(n)
    (pages,) = execute("PRAGMA page_count").fetchone()
    (free,) = execute("PRAGMA freelist_count").fetchone()
    (size,) = execute("PRAGMA page_size").fetchone()
    return (pages - free) * size


def counts_connection(local, path, table_sql):
    """This thread's connection (kept on `local`) to a small SQLite file of
    counts that every worker of the host shares (`<data dir>/limits.db`:
    rate budgets, open streams), with the table `table_sql` creates.
    Autocommit; not synchronous: a count lost on power loss is fine."""
    conn = getattr(local, "conn", None)
    if conn is None:
        enable_wal(path)
        conn = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA synchronous=off")
        conn.execute(table_sql)
        local.conn = conn
    return conn


def _postgres_database(url, read_only=False):
    try:
        import psycopg2.extensions  # fail here, with a clear message
    except ImportError:  # pragma: no cover - psycopg2 is in requirements.txt
        raise UnsupportedDatabase("PostgreSQL needs psycopg2: pip install -r requirements.txt") from None
    parts = urlsplit(url)
    name = unquote(parts.path.lstrip("/"))
    if not name:
        raise UnsupportedDatabase("LOGSVC_DATABASE_URL must name the database: postgresql://host/dbname")
    # The whole URL goes to libpq as the connection string; peewee needs the
    # name. Its own `options` (a search_path, say) follow ours, so they win;
    # read-only comes last.
    settings = [*_SESSION_SETTINGS, psycopg2.extensions.parse_dsn(url).get("options", "")]
    if read_only:  # every transaction of this process is read-only
        settings.append("-c default_transaction_read_only=on")
    return PostgresDatabase(name, dsn=url, options=" ".join(s for s in settings if s))


# Every statement of ours is short and many run at once. A parallel plan's
# workers take a few milliseconds to start, more than the statements they
# would share (the last hour's errors: 7.7 ms with two, 4.1 without, at a
# million entries), and the cores the other requests need.
_SESSION_SETTINGS = ("-c max_parallel_workers_per_gather=0",)


def is_postgres():
    store = current()
    return store is not None and store.postgres


def sql(text):
    """`text` with `?` placeholders in the current engine's parameter style."""
    if not is_postgres():
        return text
    converted = _converted.get(text)
    if converted is None:
        converted = _converted[text] = text.replace("%", "%%").replace("?", "%s")
    return converted


def one_of(column, values):
    """(condition, params): `column` is one of `values` (a list), as one
    parameter on PostgreSQL (an array) and one per value on SQLite."""
    if is_postgres():
        return f"{column} = ANY(?)", [list(values)]
    return f"{column} IN ({', '.join('?' for _ in values)})", list(values)


def unindexed(column, text=True):
    """`column` written so that the database uses no index for it (see
    planner.py): SQLite's unary + leaves any value as it is; PostgreSQL has
    no unary + for `text` columns, and appending '' leaves them as they are."""
    return f"({column} || '')" if text and is_postgres() else f"+{column}"


def temp_table_exists(name):
    """Whether this connection has the temporary table `name`."""
    if is_postgres():
        return execute("SELECT to_regclass(?)", (f"pg_temp.{name}",)).fetchone()[0] is not None
    return execute("SELECT 1 FROM sqlite_temp_master WHERE name = ?", (name,)).fetchone() \
        is not None


def execute(text, params=()):
    """Run one statement (`?` placeholders) and return its cursor."""
    return database.execute_sql(sql(text), params)


def execute_literal(text):
    """PostgreSQL: run `text`, one statement or several separated by `;`,
    with its values written in it (no placeholders: nothing in it is
    taken as one), in one exchange with the server."""
    with database.connection().cursor() as cursor:
        cursor.execute(text)


def table_exists(name):
    """Whether the store has table `name` (in the schema it works in): one
    catalog lookup. (peewee's table_exists lists every table of the
    database through information_schema, slow on a PostgreSQL database of
    many schemas.)"""
    if is_postgres():
        return execute("SELECT to_regclass(?) IS NOT NULL", (name,)).fetchone()[0]
    return execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                   (name,)).fetchone() is not None


def executemany(text, rows):
    """Run one statement (`?` placeholders) once per row, in as few round
    trips as the engine allows."""
    if not rows:
        return
    if is_postgres():
        from psycopg2.extras import execute_batch

        with database.connection().cursor() as cursor:
            execute_batch(cursor, sql(text), rows, page_size=1000)
    else:
        database.connection().executemany(text, rows)


def copy(table, columns, rows):
    """PostgreSQL: stream the rows with COPY (about three times the speed of
    multi-row INSERTs), in the same transaction."""
    if not rows:
        return
    text = _copy_text
    lines = ["\t".join([text(value) for value in row]) for row in rows]
    lines.append("")
    with database.connection().cursor() as cursor:
        cursor.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN",
                           io.StringIO("\n".join(lines)))


_COPY_NULL = "\\N"
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(value):
    """One value in COPY's text format."""
    kind = type(value)
    if kind is str:
        if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
            return value.translate(_COPY_ESCAPES)
        return value
    if kind is int:
        return str(value)
    if value is None:
        return _COPY_NULL
    if kind is bool:
        return "t" if value else "f"
    if kind is bytes:  # bytea, hex format; COPY itself takes one backslash
        return "\\\\x" + value.hex()
    return str(value)


class Stale(Exception):
    """What a read chose is gone: a sealed segment merged or dropped since
    (segments.py). `call` runs the read again, which then chooses anew."""


# Runs of a call that found its segments gone, before the error is raised.
_STALE_TRIES = 3


def call(fn, *args, **kwargs):
    """Run `fn(*args, **kwargs)` on a database thread, on the caller's
    current store; the greenlet yields. An exception raised by `fn` is
    raised here, in the caller. Under a threaded server (see runtime.py)
    the request's own thread runs it. A call that raises Stale is run
    again (a read that chose segments a merge has since replaced)."""
    for attempt in range(_STALE_TRIES):
        if runtime.cooperative():
            ok, value = gevent.get_hub().threadpool.apply(_capture,
                                                          (current(), fn, args, kwargs))
        else:
            ok, value = _capture(current(), fn, args, kwargs)
        if ok:
            return value
        if not isinstance(value, Stale) or attempt == _STALE_TRIES - 1:
            raise value


class QueryTimeout(Exception):
    """A caller's read ran past LOGSVC_QUERY_TIMEOUT_S and was stopped."""

    def __init__(self, seconds):
        super().__init__(f"The query ran longer than {seconds:g} s (LOGSVC_QUERY_TIMEOUT_S) and "
                         "was stopped; narrow it with a scope, a time range or fewer words")
        self.seconds = seconds


def read(fn, *args, **kwargs):
    """`call(fn, ...)` for a read a caller asked for (a search, a count, a
    histogram): each statement it runs is stopped once the call has taken
    the store's `query_timeout_s`, and QueryTimeout is raised. SQLite
    checks the time every few thousand steps of its virtual machine (a
    progress handler, as datasette's time limit does); PostgreSQL by its
    `statement_timeout`. What `memoized` keeps is kept for the call."""
    limit = current().query_timeout_s if current() is not None else 0
    if not limit:
        return call(_memoizing, fn, args, kwargs)
    return call(_limited, limit, _memoizing, (fn, args, kwargs), {})


_memo = threading.local()


def _memoizing(fn, args, kwargs):
    previous = getattr(_memo, "values", None)
    _memo.values = {}
    try:
        return fn(*args, **kwargs)
    finally:
        _memo.values = previous


def memoized(key, compute, keep=lambda value: True):
    """compute(), once per `key` within a caller's read (`read`; each run
    of it, when a stale read is run again): the watermark, the minute
    floor, the segments' version, which a question's parts each asked
    again (a dozen statements of a scope's stats, 1.3 ms on PostgreSQL).
    Elsewhere (writes, the sealer, which look again on purpose) computed
    each time. `keep(value)` false: not kept (a table not there yet)."""
    values = getattr(_memo, "values", None)
    if values is None:
        return compute()
    if key in values:
        return values[key]
    value = compute()
    if keep(value):
        values[key] = value
    return value


# SQLite's virtual machine steps between two looks at the clock: about a
# millisecond of work.
_PROGRESS_STEPS = 20_000


def _limited(limit, fn, args, kwargs):
    deadline = time.monotonic() + limit
    if is_postgres():
        _postgres_timeout(int(limit * 1000))
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if getattr(exc, "pgcode", None) == "57014" or getattr(
                    getattr(exc, "orig", None), "pgcode", None) == "57014" or "statement timeout" in str(exc):
                raise QueryTimeout(limit) from None
            raise
        finally:
            _postgres_timeout(0)
    conn = database.connection()
    conn.set_progress_handler(lambda: time.monotonic() > deadline, _PROGRESS_STEPS)
    try:
        return fn(*args, **kwargs)
    except (sqlite3.OperationalError, peewee.OperationalError) as exc:
        if "interrupted" in str(exc):
            raise QueryTimeout(limit) from None
        raise
    finally:
        conn.set_progress_handler(None, 0)


def _postgres_timeout(ms):
    """Set the statement_timeout of this thread's connection (autocommit:
    a session setting, kept until it is set again)."""
    with database.connection().cursor() as cursor:
        cursor.execute("SET statement_timeout = %s", (ms,))


def _capture(store, fn, args, kwargs):
    # Returned rather than raised, so the pool does not report it as a crash.
    with using(store):
        try:
            return True, fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised by call()
            _drop_broken_connection()
            return False, exc


def _drop_broken_connection():
    """After a lost PostgreSQL connection (server restart, network), forget
    it so that this thread's next call connects again."""
    if not is_postgres():
        return
    conn = getattr(database.obj._state, "conn", None)
    if conn is not None and conn.closed:
        database.obj._state.reset()


def is_transient_error(exc):
    """Whether a retry shortly may succeed: SQLite busy past its timeout, or
    on PostgreSQL a lost connection, a deadlock or a serialization failure."""
    if is_postgres():
        import psycopg2

        return isinstance(exc, (peewee.OperationalError, peewee.InterfaceError,
                                psycopg2.OperationalError, psycopg2.InterfaceError))
    return isinstance(exc, (peewee.OperationalError, sqlite3.OperationalError)) and _is_locked(exc)


def _causes(exc):
    """`exc` and the exceptions behind it, each once."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        # peewee wraps the driver's exception: it is the first argument.
        inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
        exc = inner or exc.__cause__ or exc.__context__


def unwritable_reason(exc):
    """Why `exc` says the store takes no writes at all for now (read-only,
    disk full), or None when it says something else."""
    for cause in _causes(exc):
        code = getattr(cause, "sqlite_errorname", None) or getattr(cause, "pgcode", None)
        if code in ("SQLITE_READONLY", "25006") or "readonly database" in str(cause):
            return "the store is read-only"
        if code in ("SQLITE_FULL", "53100") or "database or disk is full" in str(cause):
            return "the store's disk is full"
        if isinstance(cause, sqlite3.OperationalError) and "read-only" in str(cause):
            return "the store is read-only"
    return None


def has_pgcode(exc, *codes):
    """Whether PostgreSQL raised `exc` (or an exception behind it) with one
    of the error `codes`."""
    return any(getattr(cause, "pgcode", None) in codes for cause in _causes(exc))


def rolled_back_to_retry(exc):
    """Whether PostgreSQL rolled the transaction back to break a deadlock
    or a serialization conflict: nothing of it stays, and it may be run
    again."""
    return has_pgcode(exc, "40P01", "40001")


def probe_unwritable(config):
    """At start: why the current store cannot take writes, as far as can be
    told without writing (None: it looks writable)."""
    if config.read_only:
        return "the store is opened read-only (LOGSVC_READ_ONLY)"
    if is_postgres():
        (read_only,) = execute("SHOW transaction_read_only").fetchone()
        return "the store is read-only" if read_only == "on" else None
    path = database.obj.database
    if not os.access(path, os.W_OK) or not os.access(os.path.dirname(os.path.abspath(path)), os.W_OK):
        return "the store is read-only"
    return None


def probe_write():
    """Write one row as it is (the id sequence's, in its own short
    transaction): raises when the store takes no writes."""
    with database.atomic():
        execute("UPDATE id_sequence SET last_id = last_id WHERE name = 'entry'")


def note_write(failure=None):
    """Record the outcome of a write to the current store (see `Store.unwritable`)."""
    store = current()
    if store is None:
        return
    if failure is None:
        store.unwritable = None
    else:
        store.unwritable = unwritable_reason(failure) or store.unwritable


def _configure_pool(size):
    """Under gevent: at least `size` database threads, kept for the life of
    the process. gevent's pool lets a thread idle for 5 s go by default
    (GEVENT_THREADPOOL_IDLE_TASK_TIMEOUT), and the next call made another,
    which opened another connection: on PostgreSQL, a worker that was idle
    at times between bursts had opened a connection more every few seconds
    until the server refused new clients."""
    if not runtime.cooperative():
        return
    pool = gevent.get_hub().threadpool
    # gevent's setting takes positive numbers only; -1 (no timeout) is what
    # the pool takes as its own. Each thread reads it when it starts (one
    # started before may still end once; its replacement stays).
    if hasattr(pool, "_idle_task_timeout"):
        pool._idle_task_timeout = -1
    if pool.maxsize < size:
        pool.maxsize = size
