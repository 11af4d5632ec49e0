"""The database handle and where its calls run.

`database` is declared once, unbound, and bound by `init(config)` in the
application factory (or by the CLI and benchmarks).

Concurrency: SQLite calls block the calling OS thread (a long query, or a
writer waiting on another process's lock for up to `busy_timeout`). Under
gevent that would freeze every stream of the worker, so request code runs
database work through `call(fn, *args)`, which executes `fn` on a thread of
gevent's thread pool while the calling greenlet yields. Each pool thread
keeps its own SQLite connection (peewee keeps connection state per thread),
so connections are opened once per thread, not per request. Without gevent's
hub running (plain scripts), `call` simply runs the function on a pool
thread just the same.
"""
import sqlite3

import gevent
import peewee

database = peewee.DatabaseProxy()

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    # FULL: a commit is on disk before ingest answers 200, also across a
    # power loss; batches keep the fsync cost per request, not per entry.
    "synchronous": "full",
    "foreign_keys": 1,
    "busy_timeout": 30_000,
    # Per connection, and every database thread has one: keep it modest and
    # let the operating system's file cache hold the rest.
    "cache_size": -8_000,
    "temp_store": "memory",
}


class UnsupportedDatabase(ValueError):
    pass


def init(config):
    """Bind `database` to the store named by `config` and return it."""
    url = config.database_url
    if url and not url.startswith("sqlite"):
        raise UnsupportedDatabase(
            f"LOGSVC_DATABASE_URL={url.split(':', 1)[0]}://... is not supported; "
            "use the SQLite default"
        )
    path = config.sqlite_path
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
    else:
        config.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    bound = peewee.SqliteDatabase(
        str(path), pragmas=SQLITE_PRAGMAS, timeout=30, lock_type="IMMEDIATE",
        check_same_thread=False,
    )
    database.initialize(bound)
    _configure_pool(config.db_threads)
    return bound


def call(fn, *args, **kwargs):
    """Run `fn(*args, **kwargs)` on a database thread; the greenlet yields.
    An exception raised by `fn` is raised here, in the caller."""
    ok, value = gevent.get_hub().threadpool.apply(_capture, (fn, args, kwargs))
    if ok:
        return value
    raise value


def _capture(fn, args, kwargs):
    # Returned rather than raised, so the pool does not report it as a crash.
    try:
        return True, fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - re-raised by call()
        return False, exc


def is_locked_error(exc):
    return isinstance(exc, (peewee.OperationalError, sqlite3.OperationalError)) and (
        "locked" in str(exc) or "busy" in str(exc)
    )


def _configure_pool(size):
    pool = gevent.get_hub().threadpool
    if pool.maxsize < size:
        pool.maxsize = size
