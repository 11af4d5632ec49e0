"""The live tail: one tailer per process, many subscriptions.

Ownership and flow:
- The `Tailer` greenlet (one per process, started by the first subscriber)
  follows the database by id: it reads the entries with an id above the
  last one it saw, in id order, renders each once, and appends it to the
  `ring` of the LOGSVC_RING_SIZE most recent entries. It runs its query on a
  database thread, wakes at once when this process commits an ingest
  (`notify`), and otherwise polls every LOGSVC_TAIL_POLL_S, so entries
  written by other workers or hosts arrive within that delay. On PostgreSQL
  every committed ingest also sends NOTIFY, and a listener greenlet per
  process wakes the tailer on it, so other hosts' entries arrive at once;
  the poll remains as the fallback. On SQLite, the workers of a host ring
  each other's doorbell (a Unix datagram socket per tailer, in a directory
  named after the data directory) after each commit, with the same effect
  for the other workers of the host. Ids become visible in the order they
  were handed out on both engines (see ingest.py), so following "id > last
  seen" never skips an entry.
- A `Subscription` (one per SSE or WebSocket client) keeps only its
  position: the highest id it has examined. When its position is inside
  the ring it reads the ring; when it has fallen behind the ring (a slow
  client, or a resume from long ago) it reads pages from the database until
  it is back inside. Nothing is queued per subscriber, so a slow or stalled
  client holds no more than one page and never slows ingest, the tailer or
  other subscribers; and because positions are ids, nothing is skipped or
  repeated.
- Fan-out follows what is delivered, not the number of open streams: the
  ring is also kept per project and per container (`keyed`, the same items,
  in id order), and a subscription of one project or container reads and
  tests only its scope's entries, and is woken only when its scope has new
  ones (an event per scope). A subscription of every project reads the
  whole ring.
- A clear by the operator is seen by the tailer (the `cleared` record in
  `meta` changes): every subscription ends with a reset.
- `StreamSlots` caps the open streams of each scope on this host
  (LOGSVC_MAX_STREAMS_PER_SCOPE, counted by every worker in limits.db)
  and of this process (LOGSVC_MAX_STREAMS_PER_WORKER); a stream holds its
  slots until it ends.
- The tailer and its listener are greenlets of their own: they work on the
  store the tailer was made for (`db.use`), not on whatever store the
  greenlet that started them had.
"""
import atexit
import bisect
import collections
import contextlib
import hashlib
import logging
import os
import socket
import sqlite3
import tempfile
import threading
import time

import orjson

from logsvc import runtime

from . import db, operations, query, segments
from .filters import matches
from .ingest import TAIL_CHANNEL

log = logging.getLogger("logsvc.tail")
POLL_S = 0.05
FETCH = 1000
PAGE = 500  # most entries one subscription handles at a time


class Reset(Exception):
    """The store was cleared, or the client's position is ahead of it."""


class ScopeDestroyed(Exception):
    """The container the stream is scoped to was destroyed (410)."""


class TooManyStreams(Exception):
    """The scope has as many open streams on this host as it may, or this
    worker as many as it may hold (429)."""


class StreamSlots:
    """Caps on open streams: at most `per_scope` of one scope on this host
    (every worker counts in `<data dir>/limits.db`, so a scope's cap does
    not depend on how the workers happen to be filled), and at most
    `per_worker` in this process, the operator's included, so that a
    stream beyond what a worker can hold gets a 429 rather than no answer.
    The operator's streams (key None) have no scope cap."""

    CLEAN_EVERY_S = 10.0

    def __init__(self, per_scope, per_worker=0, path=None):
        self.per_scope = per_scope
        self.per_worker = per_worker
        self.path = path
        self._open = collections.Counter()
        self._total = 0
        self._lock = threading.Lock()  # request threads share it under a threaded server
        self._local = threading.local()
        self._cleaned = 0.0
        self._pid = None

    def take(self, key):
        """A slot for one more stream of `key`; raises TooManyStreams."""
        with self._lock:
            if self.per_worker and self._total >= self.per_worker:
                raise TooManyStreams("This worker holds as many open streams as it may "
                                     "(LOGSVC_MAX_STREAMS_PER_WORKER); retry shortly")
            self._total += 1
        try:
            if key is not None and self.per_scope and not self._take_scope(key):
                raise TooManyStreams("Too many open streams for this scope "
                                     "(LOGSVC_MAX_STREAMS_PER_SCOPE)")
        except BaseException:
            with self._lock:
                self._total -= 1
            raise
        return _Slot(self, key)

    def _take_scope(self, key):
        if self.path is not None:
            try:
                return db.call(self._take_shared, key)
            except (OSError, sqlite3.Error):
                pass  # a data directory that cannot be written: count here
        with self._lock:
            if self._open[key] >= self.per_scope:
                return False
            self._open[key] += 1
            return True

    def _release(self, key):
        with self._lock:
            self._total -= 1
            if key is None or not self.per_scope:
                return
            if self._open.get(key):
                self._open[key] -= 1
                if self._open[key] <= 0:
                    del self._open[key]
                return
        if self.path is not None:
            try:
                db.call(self._release_shared, key)
            except (OSError, sqlite3.Error):
                log.warning("could not give back a stream slot")

    def _connection(self):
        return db.counts_connection(
            self._local, self.path, "CREATE TABLE IF NOT EXISTS stream_slot (scope TEXT, "
            "pid INTEGER, n INTEGER, PRIMARY KEY (scope, pid))")

    def _take_shared(self, key):
        conn = self._connection()
        pid = os.getpid()
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            if self._pid != pid:  # a new worker: rows of an earlier process with this pid
                conn.execute("DELETE FROM stream_slot WHERE pid = ?", (pid,))
                self._pid = pid
            if time.monotonic() > self._cleaned + self.CLEAN_EVERY_S:
                self._cleaned = time.monotonic()
                for (other,) in conn.execute("SELECT DISTINCT pid FROM stream_slot").fetchall():
                    if not _alive(other):  # a worker that died holding streams
                        conn.execute("DELETE FROM stream_slot WHERE pid = ?", (other,))
            (held,) = conn.execute("SELECT coalesce(sum(n), 0) FROM stream_slot WHERE scope = ?",
                                   (key,)).fetchone()
            if held >= self.per_scope:
                return False
            conn.execute("INSERT INTO stream_slot (scope, pid, n) VALUES (?, ?, 1) "
                         "ON CONFLICT (scope, pid) DO UPDATE SET n = n + 1", (key, pid))
            return True

    def _release_shared(self, key):
        conn = self._connection()
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE stream_slot SET n = n - 1 WHERE scope = ? AND pid = ?",
                         (key, os.getpid()))
            conn.execute("DELETE FROM stream_slot WHERE n <= 0")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Slot:
    def __init__(self, slots, key):
        self._slots, self._key, self._open = slots, key, True

    def close(self):
        """Give the slot back (once; later calls do nothing)."""
        if not self._open:
            return
        self._open = False
        self._slots._release(self._key)


def subscribe(tailer, filters, last_event_id=None, replay=100):
    """Open a subscription. Returns (opening events, Subscription).

    A stream whose filters name one container ends when that container is
    destroyed; if it already is, ScopeDestroyed is raised here.

    Without `last_event_id` the opening is ("replay", (entries, id)): the
    newest `replay` matching entries, and the id to resume from. With it,
    the subscription resumes right after that id, and the opening holds a
    ("gap", {"fromId", "toId"}) event when retention already removed
    entries of that range. Raises Reset when the id is ahead of the store
    or from before the last clear.
    """
    destroyed_scope = None
    if filters.project_id and filters.container_id:
        destroyed_scope = (filters.project_id, filters.container_id)
        if db.call(operations.is_destroyed, *destroyed_scope):
            raise ScopeDestroyed("This container's scope was destroyed")
    tailer.start()
    # Taken before the position is read: a clear that lands after this
    # point is seen by the subscription as a generation change (Reset),
    # whether or not the read below already reflects it.
    generation = tailer.generation
    high, cleared_through = db.call(_position_and_clear)
    if last_event_id is None:
        entries = query.last_entries(filters, replay, high) if replay else []
        newest = entries[-1]["id"] if entries else high
        subscription = Subscription(tailer, filters, high, destroyed_scope, generation)
        return [("replay", (entries, newest))], subscription
    if last_event_id > high or 0 < last_event_id <= cleared_through:
        raise Reset()
    opening = []
    gap = db.call(_gap_after, last_event_id, high)
    if gap:
        opening.append(("gap", {"fromId": gap[0], "toId": gap[1]}))
    return opening, Subscription(tailer, filters, last_event_id, destroyed_scope, generation)


START_TIMEOUT_S = 10.0


class StoreUnavailable(RuntimeError):
    """The store did not answer (503 with Retry-After)."""


class Tailer:
    def __init__(self, ring_size, poll_s=POLL_S, store=None):
        self.store = store or db.current()
        self.ring_size = ring_size
        self.poll_s = poll_s
        # (ids ascending, [(entry dict, rendered JSON bytes)] in the same
        # order, {scope key: (ids, items) of that scope}), replaced as one
        # value when it is cut or reset, so that a reader in another thread
        # always sees the lists match.
        self.ring = ([], [], {})
        self.position = None  # highest id seen
        self.generation = 0  # bumped by a clear
        self.changed = runtime.event()
        self._scoped_events = {}  # scope key -> the event its subscribers wait on
        self._wake = runtime.event()
        self._cleared = None
        self._task = None
        self._ready = runtime.event()
        self._starting = threading.Lock()
        self._doorbells = Doorbells(None if self.store.postgres else self.store.database.database)

    def start(self, timeout=None):
        """Start following (once per process); return when positioned.
        Raises StoreUnavailable when the store does not answer in time
        (the tailer keeps trying; a later subscriber may succeed)."""
        with self._starting:
            if self._task is None:
                self._task = runtime.spawn(self._run, name="logsvc-tail")
                if self.store.postgres:
                    runtime.spawn(self._listen, name="logsvc-tail-listen")
                else:
                    runtime.spawn(self._doorbells.answer, self._wake, self.store,
                                  name="logsvc-tail-doorbell")
        if not self._ready.wait(START_TIMEOUT_S if timeout is None else timeout):
            raise StoreUnavailable("the store does not answer; the live tail cannot start")
        return self

    def notify(self):
        """Entries were committed: wake this tailer, and on SQLite the
        other workers' (their doorbells)."""
        self._wake.set()
        if not self.store.postgres:
            self._doorbells.ring()

    def since(self, position, limit, key=None, upto=None):
        """(items, examined): the ring items with position < id <= upto
        (default: the ring's last), of the scope `key` (scope_key; None:
        every scope), at most `limit`, and the id up to which the ring was
        examined for them. None when the ring no longer holds the entry
        right after `position` (or is empty): that reader must go to the
        database."""
        ids, items, keyed = self.ring
        if not ids or position < ids[0] - 1:
            return None
        upto = ids[-1] if upto is None else min(upto, ids[-1])
        if key is not None:
            ids, items = keyed.get(key, _NOTHING)
        start = bisect.bisect_right(ids, position)
        end = bisect.bisect_right(ids, upto)
        if end - start > limit:
            chosen = items[start:start + limit]
            return chosen, chosen[-1][0]["id"]
        return items[start:end], upto

    def changed_for(self, key):
        """The event set when the scope `key` has new entries (or the ring
        was reset); None: the event of every change."""
        if key is None:
            return self.changed
        event = self._scoped_events.get(key)
        if event is None:  # setdefault: two subscribers of a scope share one
            event = self._scoped_events.setdefault(key, runtime.event())
        return event

    def _run(self):
        db.use(self.store)
        while not self._ready.is_set():
            try:
                self.position, self._cleared = db.call(_high_water_and_clear)
                self._ready.set()
            except Exception:  # noqa: BLE001 - retried until the store answers
                runtime.sleep(1)
        while not self.store.closed:
            try:
                self._step()
            except Exception:  # noqa: BLE001 - the tailer must outlive a bad moment
                runtime.sleep(1)
                continue
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def _listen(self):
        """PostgreSQL: wake the tailer whenever any host commits an ingest.
        One connection of its own per process, waited on by the hub (or a
        thread of its own); if it breaks, the poll carries on alone until it
        is back."""
        db.use(self.store)
        database = self.store.database
        while not self.store.closed:
            conn = None
            try:
                conn = db.call(_listen_connection, database)
                while not self.store.closed:
                    # Then poll anyway: that notices a broken connection.
                    runtime.wait_readable(conn.fileno(), 30)
                    conn.poll()
                    if conn.notifies:
                        conn.notifies.clear()
                        self.notify()
            except Exception as exc:  # noqa: BLE001 - the poll covers the gap
                log.warning("live tail listener: %s; retrying", type(exc).__name__)
                runtime.sleep(1)
            finally:
                if conn is not None:
                    conn.close()

    def _step(self):
        while True:
            entries, cleared = db.call(_fetch, self.position, FETCH)
            if cleared != self._cleared:
                self._cleared = cleared
                self.ring = ([], [], {})
                self.generation += 1
                self.position = db.call(_high_water_and_clear)[0]
                self._broadcast(None)
                return
            if not entries:
                return
            new_items = [(entry, orjson.dumps(entry)) for entry in entries]
            new_ids = [entry["id"] for entry in entries]
            ids, items, keyed = self.ring
            if len(ids) + len(entries) > self.ring_size * 2:
                keep = self.ring_size
                ids, items = (ids + new_ids)[-keep:], (items + new_items)[-keep:]
                self.ring = (ids, items, _keyed(items, {}))
            else:
                # The items first: a reader finds no id without its item.
                _keyed(new_items, keyed)
                items.extend(new_items)
                ids.extend(new_ids)
            self.position = new_ids[-1]
            self._broadcast({key for entry in entries for key in _scope_keys(entry)})
            if len(entries) < FETCH:
                return

    def _broadcast(self, keys):
        """Wake the subscribers of every scope (and of each scope of
        `keys`; None: every scope, after a reset)."""
        changed, self.changed = self.changed, runtime.event()
        changed.set()
        events = self._scoped_events
        for key in list(events) if keys is None else keys:
            event = events.pop(key, None)
            if event is not None:
                event.set()


class Doorbells:
    """SQLite: how the workers of a host wake each other's tailer at once
    after a commit, rather than at their next poll. Each tailer that runs
    binds a Unix datagram socket named after its process in a directory of
    the temporary directory named after the database file; `ring` sends a
    byte to every other socket there (a socket whose process is gone is
    removed). Anything that fails leaves the poll to do the work."""

    REFRESH_S = 1.0

    def __init__(self, database_path):
        self.directory = None
        if database_path:
            digest = hashlib.sha1(os.path.realpath(database_path).encode()).hexdigest()[:16]
            self.directory = os.path.join(tempfile.gettempdir(), f"logsvc-tail-{digest}")
        self._others, self._listed = [], 0.0

    def answer(self, wake, store):
        """Bind this process's doorbell and set `wake` whenever it rings,
        until `store` is closed."""
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            path = os.path.join(self.directory, f"{os.getpid()}.sock")
            if os.path.exists(path):
                os.unlink(path)
            bell = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            bell.bind(path)
            bell.setblocking(False)
        except OSError as exc:
            log.info("live tail: no doorbell (%s); other workers' entries arrive by polling",
                     exc)
            return
        try:
            while not store.closed:
                runtime.wait_readable(bell.fileno(), 5)
                rang = False
                try:
                    while bell.recv(64):
                        rang = True
                except OSError:
                    pass
                if rang:
                    wake.set()
        finally:
            bell.close()
            with contextlib.suppress(OSError):
                os.unlink(path)

    def ring(self):
        if self.directory is None:
            return

        now = time.monotonic()
        if now > self._listed + self.REFRESH_S:
            self._listed = now
            try:
                self._others = [os.path.join(self.directory, name)
                                for name in os.listdir(self.directory)
                                if name.endswith(".sock") and name != f"{os.getpid()}.sock"]
            except OSError:
                self._others = []
        if not self._others:
            return
        sender = _sender()
        for path in self._others:
            try:
                sender.sendto(b"!", path)
            except BlockingIOError:
                pass  # its queue is full: it has been rung already
            except (ConnectionRefusedError, FileNotFoundError):
                pid = os.path.basename(path)[:-5]
                if pid.isdigit() and not _alive(int(pid)):
                    with contextlib.suppress(OSError):
                        os.unlink(path)
            except OSError:
                pass


_SENDER = []


def _sender():
    """The process's one socket for ringing doorbells (closed at exit)."""
    if not _SENDER:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        _SENDER.append(sock)
        atexit.register(sock.close)
    return _SENDER[0]


_NOTHING = ((), ())


def scope_key(filters):
    """The ring a subscription of `filters` reads: its container's, its
    project's, or None (every scope)."""
    if isinstance(filters.project_id, str):
        return (filters.project_id,
                filters.container_id if isinstance(filters.container_id, str) else None)
    return None


def _scope_keys(entry):
    project = entry["projectId"]
    container = entry["containerId"]
    return ((project, None), (project, container)) if container is not None else \
        ((project, None),)


def _keyed(items, keyed):
    """Add `items` (in id order) to the per-scope lists of `keyed` (item
    first, then id, as the ring itself); return it."""
    for item in items:
        entry = item[0]
        for key in _scope_keys(entry):
            lists = keyed.get(key)
            if lists is None:
                lists = keyed[key] = ([], [])
            lists[1].append(item)
            lists[0].append(entry["id"])
    return keyed


class Subscription:
    """What one client is owed: entries matching `filters` after `position`.

    `next_event(heartbeat_s)` returns ("entries", [(entry, json), ...]),
    ("heartbeat", None) or ("scope-destroyed", None) (the last), and raises
    Reset when the store was cleared under it; `events(heartbeat_s)`
    yields the same. A stream that waits in `next_event`, a plain call,
    holds less of its greenlet's stack than one resuming a generator in a
    generator (each resumption is a level of the C stack, saved with it).
    """

    __slots__ = ("tailer", "filters", "key", "position", "generation", "destroyed_scope",
                 "_ending")

    def __init__(self, tailer, filters, position, destroyed_scope, generation):
        self.tailer = tailer
        self.filters = filters
        self.key = scope_key(filters)
        self.position = position
        self.generation = generation  # the tailer's, taken before `position` was read
        self.destroyed_scope = destroyed_scope  # (project, container) that ends it
        self._ending = False  # the last entries were sent: scope-destroyed is next

    def next_event(self, heartbeat_s):
        if self._ending:
            return "scope-destroyed", None
        while True:
            # Taken before looking: what arrives after the look sets it.
            changed = self.tailer.changed_for(self.key)
            if self.tailer.generation != self.generation:
                raise Reset()
            batch = self._next_batch()
            if batch:
                ending = self._destroy_event(batch)
                if ending is None:
                    return "entries", batch
                if not ending:
                    return "scope-destroyed", None
                self._ending = True
                return "entries", batch[:ending]
            if not changed.wait(heartbeat_s):
                return "heartbeat", None

    def events(self, heartbeat_s):
        while True:
            kind, value = self.next_event(heartbeat_s)
            yield kind, value
            if kind == "scope-destroyed":
                return

    def _next_batch(self):
        tailer = self.tailer
        upto = tailer.position
        if self.position >= upto:
            return []
        # The ring holds entries without their bodies: a full-text search
        # asks the database, which has them (and their index).
        if self.filters.q:
            return self._from_database(upto)
        batch = []
        while not batch and self.position < upto:
            found = tailer.since(self.position, PAGE, self.key, upto)
            if found is None:  # fell behind the ring
                return self._from_database(upto)
            items, self.position = found
            batch = [item for item in items if matches(self.filters, item[0])]
        return batch

    def _from_database(self, upto):
        entries = query.entries_after(self.filters, self.position, PAGE, upto)
        if len(entries) < PAGE:
            self.position = upto
        else:
            self.position = entries[-1]["id"]
        return [(entry, orjson.dumps(entry)) for entry in entries]

    def _destroy_event(self, batch):
        """Index just past the entry that destroys this subscription's
        container, or None."""
        if self.destroyed_scope is None:
            return None
        project_id, container_id = self.destroyed_scope
        for index, (entry, rendered) in enumerate(batch):
            if (entry["kind"] == "event" and entry["projectId"] == project_id
                    and entry["containerId"] == container_id
                    and b"scope-destroyed" in rendered
                    and orjson.loads(rendered)["data"].get("event") == "scope-destroyed"):
                return index + 1
        return None


def _listen_connection(database):
    import psycopg2

    conn = psycopg2.connect(database=database.database, **database.connect_params)
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(f"LISTEN {TAIL_CHANNEL}")
    return conn


def _position_and_clear():
    return query.high_water(), operations.cleared_through()


def _gap_after(last_id, high):
    """(first, last) id of the entries after `last_id` that are gone
    (retention removed them), or None. The range may hold entries that a
    filter would not have passed: it says where loss is possible."""
    (pruned_to,) = db.execute(
        "SELECT max(max_id) FROM prune_log WHERE max_id > ?", (last_id,)).fetchone()
    oldest = segments.oldest_id()
    missing_to = high if oldest is None else oldest - 1
    marker = operations.cleared_marker()
    if marker:
        # Ids between the last clear's highest and its next id never existed.
        cleared = orjson.loads(marker)
        if cleared["throughId"] <= last_id and missing_to < cleared["nextId"]:
            missing_to = last_id
    end = max(pruned_to or 0, missing_to)
    return (last_id + 1, end) if end > last_id else None


def _fetch(after_id, limit):
    return query.entries_from(after_id, limit), operations.cleared_marker()


def _high_water_and_clear():
    return query.high_water(), operations.cleared_marker()
