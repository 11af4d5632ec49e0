"""How this process runs concurrent work: gevent, or operating-system threads.

logsvc runs under two kinds of WSGI server:

- **gevent** (`gunicorn -c gunicorn.conf.py`, `python -m logsvc serve`):
  one OS thread per worker runs every request as a greenlet. A blocking
  call would freeze them all, so database work goes to a pool of threads
  (`db.call`) while the greenlet yields, and the live tail's waits are
  gevent events.
- **threads** (waitress, gunicorn `-k gthread`, mod_wsgi, uWSGI with
  threads): each request has an OS thread of its own, which may block.
  Database work runs in the request's thread, and the live tail's
  background reader is a thread whose events any request thread may wait
  on. gevent's primitives belong to the thread that made them and cannot
  be shared between request threads, so none is used.

The mode is chosen once per process (`configure`): `auto` picks gevent when
gevent has patched the standard library (gunicorn's gevent worker and the
embedded server do so before the application is imported), else threads.
"""
import gc
import select
import sys
import threading
import time

GEVENT = "gevent"
THREADS = "threads"
_mode = None


def configure(setting="auto"):
    """Fix the mode for this process from LOGSVC_CONCURRENCY (`auto`,
    `gevent` or `threads`); returns it."""
    global _mode
    if setting in (GEVENT, THREADS):
        _mode = setting
    else:
        from gevent import monkey

        _mode = GEVENT if monkey.is_module_patched("socket") else THREADS
    return _mode


def mode():
    return _mode or configure()


def cooperative():
    """True under gevent: blocking work must leave the calling greenlet."""
    return mode() == GEVENT


def spawn(fn, *args, name=None):
    """Run `fn(*args)` in the background: a greenlet, or a daemon thread."""
    if cooperative():
        import gevent

        return gevent.spawn(fn, *args)
    thread = threading.Thread(target=fn, args=args, name=name or "logsvc", daemon=True)
    thread.start()
    return thread


def sleep(seconds):
    if cooperative():
        import gevent

        gevent.sleep(seconds)
    else:
        time.sleep(seconds)


def pause():
    """Let the worker's other requests run (gevent); nothing with threads,
    where the operating system shares the time."""
    if cooperative():
        import gevent

        gevent.sleep(0)


def event():
    """An event that the background tail and any request may share."""
    if cooperative():
        import gevent.event

        return gevent.event.Event()
    return threading.Event()


def kill(task):
    """Stop a task made by `spawn` (a thread cannot be stopped; it ends by itself)."""
    if task is not None and cooperative():
        task.kill()


def alive(task):
    """Whether a task made by `spawn` is still running."""
    return task.is_alive() if isinstance(task, threading.Thread) else bool(task)


def wait_readable(fileno, timeout):
    """Wait until `fileno` has something to read, or `timeout` seconds."""
    if cooperative():
        from gevent.socket import wait_read

        try:
            wait_read(fileno, timeout=timeout)
        except TimeoutError:
            pass
    else:
        select.select([fileno], [], [], timeout)


# How long a thread holding the interpreter lock keeps it while another
# waits (Python's default: 5 ms). See tune_for_serving.
SWITCH_INTERVAL_S = 0.001


def tune_for_serving():
    """For a serving process, once the application is made:

    - The objects made so far are frozen (the collector never walks them
      again), and the collector's youngest generation is collected every
      50,000 new objects instead of 700. Ingest makes a few hundred
      thousand short-lived containers per request (decoded entries, their
      rows, the counters' sums) and frees them by reference counting; at
      the default thresholds the collector ran hundreds of times per
      batch, walking the batch still in use each time: about an eighth of
      ingest's time (bench/scale.py).
    - The interpreter hands its lock to a waiting thread after 1 ms
      instead of 5 (SWITCH_INTERVAL_S). A question's database thread
      takes the lock back after each SQLite call; while an ingest batch's
      thread runs Python (its rows, its counters' sums), each of those
      waited up to 5 ms, and a question of a dozen statements waited tens
      of milliseconds behind a batch (bench/scale.py --busy)."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
