"""Ingest: decode a posted payload, validate each entry, store the batch.

`parse_payload` turns the request body (JSON object, JSON array or NDJSON,
optionally gzip) into a list of decoded items; `ingest` validates each item
on its own and writes the accepted ones in one transaction together with
their bodies and the stats counters, so a successful return means the whole
batch is committed and a failure stores nothing.

The per-entry path calls the domain coercers directly instead of
`EntryInSchema.load` (about four times faster); `tests/test_ingest.py` pins
that both give the same result.

Concurrency (group commit): the writes of one process to one store go
through that store's `_GroupCommit` (`db.current().committer`). A
request appends its validated entries to a queue; whichever request
finds no flush running takes everything queued (up to `GROUP_MAX_ENTRIES`)
and writes it in one transaction on a database thread, while the other
greenlets keep parsing and validating the next requests.
Each request waits until the transaction holding its entries has committed,
and learns its own contiguous id range. If that transaction fails, every
request in it fails and nothing of it is stored.

Ids and commit order: a transaction takes its ids by adding its size to the
`id_sequence` row as its first write, and holds that row's lock until it
commits. Other writers, in this process or on any host, wait on the lock,
so ids are handed out and committed in the same order: whoever can see id
N can see every id below it. That is what lets the live tail follow the
store with `id > last seen` and never skip an entry that commits late. A
transaction that fails releases the row unchanged, so its ids are taken
again by the next one and no hole is left. On SQLite the database lock
(BEGIN IMMEDIATE with a busy timeout) gives the same order.
"""
import hashlib
import zlib

import gevent.event
import gevent.lock
import orjson

from logsvc import entry, runtime

from . import db, fulltext, lookup, names, partitions, rollup, sketch, wal
from .bodies import pack_body, pack_data
from .bodies import prepare as prepare_bodies
from .db import database
from .models import IdSequence

NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonlines",
                "application/x-jsonlines", "application/json-lines")

GROUP_MAX_ENTRIES = 20_000
# Entries a request validates between two pauses (runtime.pause): about
# 5 ms of a worker's time, what another request of the worker (a question, a
# live tail's next event) may wait behind it. It was 2,000: 80 ms.
PAUSE_EVERY = 100


class PayloadError(ValueError):
    """The request as a whole cannot be used (400)."""


class PayloadTooLarge(PayloadError):
    """The request, or its decompressed body, exceeds the size cap (413)."""


MAX_REJECTIONS_LISTED = 1000
# What one request may decode into: its opening brackets, counted before
# decoding (those inside strings too, so this is an upper bound).
MAX_CONTAINERS = 1_000_000


def decoded_body(body, content_encoding="", max_bytes=16 << 20):
    """The request body as sent before its Content-Encoding (gzip or
    none), within `max_bytes` before and after."""
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"request body exceeds {max_bytes} bytes")
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("gzip", "x-gzip"):
        return _gunzip(body, max_bytes)
    if encoding not in ("", "identity"):
        raise PayloadError(f"Content-Encoding {content_encoding!r} is not supported; use gzip")
    return body


def parse_payload(body, content_type="", content_encoding="", max_bytes=16 << 20,
                  max_entries=50_000):
    """Return the posted items: decoded JSON values, or `_Malformed` markers
    for NDJSON lines that are not JSON. More than `max_entries` items is a
    PayloadTooLarge, found before the items are decoded where it can be."""
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"request body exceeds {max_bytes} bytes")
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("gzip", "x-gzip"):
        body = _gunzip(body, max_bytes)
    elif encoding not in ("", "identity"):
        raise PayloadError(f"Content-Encoding {content_encoding!r} is not supported; use gzip")
    if not body.strip():
        raise PayloadError("request body is empty")
    if body.count(b"{") + body.count(b"[") > MAX_CONTAINERS:
        # Decoded, each object or array costs 60-200 bytes of a worker's
        # memory: 16 MiB of `[[[[...` or `{},{},...` would take gigabytes.
        raise PayloadTooLarge(f"body holds more than {MAX_CONTAINERS:,} JSON objects and "
                              "arrays (counted by their opening brackets); send smaller batches")
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media not in NDJSON_TYPES:
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            if b"\n" not in body.strip():
                raise PayloadError(_json_problem(exc)) from None
        else:
            if isinstance(value, list):
                _check_count(len(value), max_entries)
                return value
            if isinstance(value, dict):
                return [value]
            raise PayloadError("body must be a JSON object, a JSON array or NDJSON")
    return _ndjson(body, max_entries)


def _check_count(count, max_entries):
    if count > max_entries:
        raise PayloadTooLarge(f"more than {max_entries} entries in one request "
                              f"(LOGSVC_MAX_ENTRIES_PER_REQUEST); send smaller batches")


class KeyReused(PayloadError):
    """An Idempotency-Key came back with another body (422)."""


class IdempotencyKey:
    """An ingest request's Idempotency-Key: the writer's scope key
    (principal.scope_key; "*" for the operator), the key, the digest of the
    body, and how long it is remembered."""

    def __init__(self, scope, key, body, window_s):
        self.scope = scope
        self.key = key
        self.digest = hashlib.sha256(body).hexdigest()
        self.window_ms = window_s * 1000
        self.answer = None  # the answer without its ids, made before it is stored
        self.replayed = False  # the answer came from an earlier request

    def replay(self):
        """The answer the first request with this key got, or None if the
        key is new (or forgotten). Raises KeyReused for another body."""
        row = db.call(lambda: db.execute(
            "SELECT digest, answer FROM ingest_key WHERE scope = ? AND key = ? AND expires_ms > ?",
            (self.scope, self.key, entry.now_ms())).fetchone())
        if row is None:
            return None
        if row[0] != self.digest:
            raise KeyReused("Idempotency-Key was already used with a different body; "
                            "use a new key for a new batch")
        return orjson.loads(row[1])

    def accept(self, answer, accepted):
        """Before the write: the answer to keep (without its ids)."""
        self.answer = dict(answer)

    def remember(self, first_id):
        """In the writing transaction: keep the answer. False if another
        request with this key committed first."""
        answer = dict(self.answer, firstId=first_id,
                      lastId=first_id + self.answer["accepted"] - 1)
        now = entry.now_ms()
        row = db.execute(
            "INSERT INTO ingest_key (scope, key, digest, answer, expires_ms) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (scope, key) DO UPDATE SET digest = excluded.digest, "
            "answer = excluded.answer, expires_ms = excluded.expires_ms "
            "WHERE ingest_key.expires_ms <= ? RETURNING 1",
            (self.scope, self.key, self.digest, orjson.dumps(answer).decode(),
             now + self.window_ms, now)).fetchone()
        return row is not None


class DocumentKeys:
    """Keys of single entries (an Elasticsearch document's `_id`), kept
    like an Idempotency-Key (in `ingest_key`, for the same window) but one
    per entry: a document sent again under its key is not stored twice.

    `keys` runs beside the items of one `ingest` call (None: no key).
    `stored(scope, keys)` tells which keys were stored, as which entry. In
    the writing transaction, `remember` adds the keys of the accepted
    entries; when another request stored one of them meanwhile, nothing of
    this request is stored and `ingest` returns AGAIN: the caller asks
    `stored` again and sends the rest."""

    AGAIN = {"again": True}

    def __init__(self, scope, keys, window_s):
        self.scope = scope
        self.keys = keys
        self.window_ms = window_s * 1000
        self.offsets = []  # (offset among the accepted entries, key)
        self.replayed = False

    @staticmethod
    def stored(scope, keys):
        """{key: entry id} of `keys` already stored in `scope`, not expired."""
        wanted = sorted({k for k in keys if k is not None})
        found = {}
        for start in range(0, len(wanted), 500):
            part = wanted[start:start + 500]
            marks = ", ".join("?" for _ in part)
            found.update(db.call(lambda part=part, marks=marks: db.execute(
                f"SELECT key, answer FROM ingest_key WHERE scope = ? AND key IN ({marks}) "
                f"AND expires_ms > ?", (scope, *part, entry.now_ms())).fetchall()))
        return {key: int(answer) for key, answer in found.items()}

    def accept(self, answer, accepted):
        """Before the write: which items were accepted (their indexes, in
        order), so that each key goes with its entry's id."""
        self.offsets = [(at, self.keys[index]) for at, index in enumerate(accepted)
                        if self.keys[index] is not None]

    def remember(self, first_id):
        if not self.offsets:
            return True
        now = entry.now_ms()
        expires = now + self.window_ms
        for start in range(0, len(self.offsets), 500):
            part = self.offsets[start:start + 500]
            values = ", ".join("(?, ?, '', ?, ?)" for _ in part)
            params = [p for at, key in part
                      for p in (self.scope, key, str(first_id + at), expires)]
            done = db.execute(
                f"INSERT INTO ingest_key (scope, key, digest, answer, expires_ms) "
                f"VALUES {values} ON CONFLICT (scope, key) DO UPDATE SET "
                f"answer = excluded.answer, expires_ms = excluded.expires_ms "
                f"WHERE ingest_key.expires_ms <= ? RETURNING 1", (*params, now)).fetchall()
            if len(done) < len(part):
                return False
        return True

    def replay(self):
        return self.AGAIN


class _Replayed(Exception):
    """Raised in the writing transaction: these requests' keys were stored
    meanwhile by a request that committed first."""

    def __init__(self, keys):
        super().__init__("idempotency keys already stored")
        self.keys = keys


def ingest(items, config, scope=None, grouped=True, key=None):
    """Validate `items` and store the accepted entries.

    `scope` is None for the operator, or the (project_id, container_id) a
    scoped writer is bound to: its entries take that scope when they name
    none, and are rejected when they name another. `key` (IdempotencyKey)
    is stored with the entries, in their transaction; when a request with
    the same key committed first, its answer is returned instead and
    nothing is stored. `grouped=False` writes
    in a transaction of its own, for callers outside the server's greenlets
    (the capture middleware's local sink thread).
    Returns {"accepted", "rejected" (the first MAX_REJECTIONS_LISTED),
    "rejectedCount", "firstId", "lastId"}.
    """
    accepted = []
    accepted_at = []
    rejected = []
    rejected_count = 0
    now = entry.now_ms()
    oldest = now - config.retention_ms if config.retention_ms else None
    for index, item in enumerate(items):
        if grouped and index and index % PAUSE_EVERY == 0:
            runtime.pause()  # a big request lets the worker's other requests run
        fields, errors = normalize(item, config.max_body_bytes, now)
        if not errors:
            errors = _check_scope(fields, scope) or _check_age(fields, oldest)
        if errors:
            rejected_count += 1
            if len(rejected) < MAX_REJECTIONS_LISTED:
                rejected.append({"index": index, "errors": errors})
        else:
            accepted.append(fields)
            accepted_at.append(index)
    answer = {"accepted": len(accepted), "rejected": rejected, "rejectedCount": rejected_count,
              "firstId": None, "lastId": None}
    if accepted:
        if key is not None:
            key.accept(answer, accepted_at)
        if grouped and runtime.cooperative():
            stored = _committer().commit(accepted, key)
        else:
            # Under a threaded server each request writes its own
            # transaction; the engine's lock orders them.
            stored = _write_alone(accepted, key)
        if isinstance(stored, dict):  # a request with the same key was first
            key.replayed = True
            return stored
        answer["firstId"], answer["lastId"] = stored
    return answer


def release_memory():
    """Hand the memory a big request used back to the system (glibc keeps
    freed memory in its arenas, so a worker would stay at its peak)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def normalize(item, max_body_bytes, now=None):
    """Coerce one posted item. Returns (entry fields, None) or (None, errors)."""
    if isinstance(item, _Malformed):
        return None, {"_schema": [item.reason]}
    if not isinstance(item, dict):
        return None, {"_schema": ["Each entry must be a JSON object."]}
    known = {}
    extra = {}
    errors = None
    rules = entry.INPUT_FIELDS
    for key, value in item.items():
        rule = rules.get(key)
        if rule is None:
            extra[key] = value
            continue
        if value is None:  # JSON null means "not given"
            continue
        try:
            known[rule[0]] = rule[1](value)
        except ValueError as exc:
            if errors is None:
                errors = {}
            errors[key] = [str(exc)]
    if errors:
        return None, errors
    try:
        return entry.finish(known, extra, max_body_bytes, now), None
    except entry.InvalidEntry as exc:
        return None, exc.errors


class _GroupCommit:
    def __init__(self):
        self._queue = []
        self._flushing = gevent.lock.Semaphore()

    def commit(self, entries, key=None):
        """Store `entries`; return their (first id, last id) once committed,
        or the stored answer of `key` when a request with the same key
        committed first."""
        done = gevent.event.AsyncResult()
        self._queue.append((entries, done, key))
        while not done.ready():
            with self._flushing:
                if not done.ready():
                    self._flush()
        return done.get()

    def _flush(self):
        group, size = [], 0
        while self._queue and (not group or size + len(self._queue[0][0]) <= GROUP_MAX_ENTRIES):
            queued = self._queue.pop(0)
            group.append(queued)
            size += len(queued[0])
        keys, offset = [], 0
        for entries, _, key in group:
            if key is not None:
                keys.append((offset, key))
            offset += len(entries)
        try:
            first, _ = db.call(_write, [e for entries, _, _ in group for e in entries], keys)
        except _Replayed as replayed:
            # Nothing of the group was stored. The requests whose key was
            # taken get the stored answer; the others go again, first.
            for _, done, key in group:
                if key in replayed.keys:
                    try:
                        done.set(key.replay())
                    except Exception as exc:  # noqa: BLE001 - the request raises it
                        done.set_exception(exc)
            self._queue[:0] = [queued for queued in group if queued[2] not in replayed.keys]
            return
        except BaseException as exc:
            # Every waiting request learns of it (also of a kill or a
            # timeout of this greenlet), so none waits for a flush forever.
            for _, done, _ in group:
                done.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for entries, done, _ in group:
            done.set((first, first + len(entries) - 1))
            first += len(entries)


def _write_alone(entries, key):
    """One request's entries in a transaction of their own: (first, last),
    or the stored answer of `key` when a request with it committed first."""
    try:
        return db.call(_write, entries, [(0, key)] if key is not None else [])
    except _Replayed:
        return key.replay()


def _committer():
    store = db.current()
    if store.committer is None:
        store.committer = _GroupCommit()
    return store.committer


class _Malformed:
    __slots__ = ("reason",)

    def __init__(self, reason):
        self.reason = reason


_ENTRY_COLUMNS = (*entry.COLUMNS, "lat_bucket")
_BODY_COLUMNS = ("entry_id", "request_body", "request_body_z", "response_body",
                 "response_body_z")
# PostgreSQL: every entry has a body row, holding its full-text document.
_PG_BODY_COLUMNS = (*_BODY_COLUMNS, "doc")


def _insert_sql(table, columns):
    """SQLite: an INSERT of rows led by their offset in the batch, to which
    `{first}`, the batch's first id, is added."""
    return (f"INSERT INTO {table} ({', '.join(columns)}) "
            f"VALUES (? + {{first}}, {', '.join('?' for _ in columns[1:])})")


# SQLite: the batch's entry rows, led by their offset, staged in a
# temporary table of the connection before the write lock (see
# _write_batch), then copied with their ids (the first id is the
# parameter).
_STAGE_ENTRY = (
    f"CREATE TEMP TABLE IF NOT EXISTS entry_staged (at, {', '.join(_ENTRY_COLUMNS[1:])})",
    f"INSERT INTO temp.entry_staged VALUES ({', '.join('?' for _ in _ENTRY_COLUMNS)})",
    f"INSERT INTO entry ({', '.join(_ENTRY_COLUMNS)}) "
    f"SELECT at + ?, {', '.join(_ENTRY_COLUMNS[1:])} FROM temp.entry_staged")
_INSERT_BODY = _insert_sql("entry_body", _BODY_COLUMNS)
TAIL_CHANNEL = "logsvc_entries"  # PostgreSQL NOTIFY channel of committed ingests


def _write(entries, keys=()):
    """Insert a batch in one transaction; return its first and last id.
    `keys`: (offset in the batch, IdempotencyKey) of its keyed requests."""
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        try:
            prepare_bodies()  # the store's compression dictionary, once
            written = _write_batch(entries, keys)
        except BaseException as exc:
            partitions.forget()  # it may have made partitions that rolled back
            if attempt < WRITE_ATTEMPTS and db.rolled_back_to_retry(exc):
                continue  # nothing of it was stored: the same batch again
            db.note_write(exc)
            raise
        db.note_write()
        return written


# PostgreSQL: a writer that creates a partition of `entry` locks the table
# while it holds the id sequence's row; should another transaction need
# them in the other order, the server rolls one back (a deadlock) and the
# batch is written again, up to this many times in all.
WRITE_ATTEMPTS = 3


def _write_batch(entries, keys):
    postgres = db.is_postgres()
    # SQLite stores names as numbers (names.py).
    numbered = None if postgres else names.numbered(
        {name for e in entries for name in (e["project_id"], e["container_id"],
                                            e["service_name"], e["method"], e["route"])})
    # Everything that does not need the ids is done before the write lock
    # is taken, so that another process can write meanwhile.
    rows, bodies, documents, lookups, counted = _prepare(entries, postgres, numbered)
    counters = rollup.summarize(counted, ids=True, deferred=False)
    if not postgres:
        # The rows go into temporary tables of this connection first, so
        # that the write lock is held while SQLite copies them, not while
        # Python binds them one value at a time (ingest's time under the
        # lock, which bounds the rate of all workers together).
        _stage(rows, counters)
    try:
        return _write_locked(entries, keys, postgres, rows, bodies, documents, lookups,
                             counters)
    finally:
        if not postgres:
            _unstage(counters)


def _stage(rows, counters):
    db.execute(_STAGE_ENTRY[0])
    db.execute("DELETE FROM temp.entry_staged")  # see rollup.stage
    db.executemany(_STAGE_ENTRY[1], rows)
    rollup.stage(counters)


def _unstage(counters):
    db.execute("DELETE FROM temp.entry_staged")
    rollup.unstage(counters)


def _write_locked(entries, keys, postgres, rows, bodies, documents, lookups, counters):
    wal.make_room()
    with database.atomic():
        last = IdSequence.take(len(entries))
        first = last - len(entries) + 1
        taken = [key for offset, key in keys if not key.remember(first + offset)]
        if taken:
            raise _Replayed(taken)
        if postgres:
            partitions.ensure(first, last)
            db.copy("entry", _ENTRY_COLUMNS, _at(first, rows))
            db.copy("entry_body", _PG_BODY_COLUMNS, _at(first, bodies))
        else:
            # Each row leads with its offset; SQLite adds the first id (a
            # number of ours, so written into the statement): no copy of
            # the rows with their ids.
            db.execute(_STAGE_ENTRY[2], (first,))
            db.executemany(_INSERT_BODY.format(first=int(first)), bodies)
            fulltext.insert_sqlite(documents, first)
            lookup.insert(lookups, first)
        rollup.write(counters, first_id=first, staged=not postgres)
        if postgres:
            # Delivered at commit: wakes the live tail of every host.
            db.execute(f"NOTIFY {TAIL_CHANNEL}")
    return first, last


def _prepare(entries, postgres, numbered=None):
    """The batch's rows without their ids, each led by its offset in the
    batch instead: entry rows, body rows and (SQLite) full-text and lookup
    documents; and the facts the counters take (rollup.ROW_SQL's columns).
    `numbered` (SQLite): the stored form of each name (names.numbered)."""
    bucket_of = sketch.bucket_of
    document, indexed_document = fulltext.document, fulltext.indexed_document
    stored = lookup.stored
    rows, bodies, documents, lookups, counted = [], [], [], [], []
    if not postgres:
        level_letter, kind_letter, source_letter = (
            names.LETTERS[c] for c in ("level", "kind", "source"))
    for offset, e in enumerate(entries):
        project, container, service, method, route = (
            e["project_id"], e["container_id"], e["service_name"], e["method"], e["route"])
        if not postgres:
            project, container, service, method, route = (
                numbered[project], numbered[container], numbered[service], numbered[method],
                numbered[route])
        has_body = e["request_body"] is not None or e["response_body"] is not None
        duration = e["duration_ms"]
        bucket = bucket_of(duration)
        trace_id, client_ip, data = e["trace_id"], e["client_ip"], e["data"]
        if not postgres:  # compact forms (lookup.stored, bodies.pack_data)
            trace_id, client_ip = stored("trace_id", trace_id), stored("client_ip", client_ip)
            data = pack_data(data)
        kind, level, source = e["kind"], e["level"], e["source"]
        if not postgres:
            kind, level, source = (kind_letter.get(kind, kind), level_letter.get(level, level),
                                   source_letter.get(source, source))
        rows.append((offset, trace_id, e["ts_ms"], kind, level,
                     project, container, service,
                     method, e["url"], client_ip, e["status"],
                     source, data, has_body,
                     e["body_truncated"], duration, route, bucket))
        text = document(e["url"], e["request_body"], e["response_body"], e["data"])
        if postgres:
            bodies.append((offset, *pack_body(e["request_body"]),
                           *pack_body(e["response_body"]), fulltext.tsvector(text)))
        else:
            documents.append((offset, indexed_document(text, project, container)))
            lookups.append((offset, lookup.document(e["trace_id"], e["client_ip"])))
            if has_body:
                bodies.append((offset, *pack_body(e["request_body"]),
                               *pack_body(e["response_body"])))
        counted.append((e["ts_ms"], project, container, service, e["level"], e["kind"],
                        e["status"], e["source"], route, bucket, duration))
    return rows, bodies, documents, lookups, counted


def _at(first, rows):
    """Rows led by their offset in the batch, led by their id instead."""
    return [(first + row[0], *row[1:]) for row in rows]


def _check_scope(fields, scope):
    """Settle the entry's scope: the writer's own, or `default` for the
    operator's entries that name no project."""
    if scope is None:
        if fields["project_id"] is None:
            fields["project_id"] = entry.DEFAULT_PROJECT
        return None
    project_id, container_id = scope
    if fields["project_id"] is None:
        fields["project_id"] = project_id
    elif fields["project_id"] != project_id:
        return {"projectId": ["Caller may only write entries of its own project."]}
    if container_id is not None:
        if fields["container_id"] is None:
            fields["container_id"] = container_id
        elif fields["container_id"] != container_id:
            return {"containerId": ["Caller may only write entries of its own container."]}
    return None


def _check_age(fields, oldest):
    if oldest is not None and fields["ts_ms"] < oldest:
        return {"tsMs": ["Older than the retention period; it would be deleted at once."]}
    return None


# A body of many gzip members is what `cat a.gz b.gz ...` makes: a few, or
# one per shipped batch. Past this many the request is refused (400), so
# that a body of empty members (20 bytes each) cannot cost a worker
# hundreds of thousands of decompressor setups.
MAX_GZIP_MEMBERS = 1024
# The compressed input is handed to each member's decompressor at most this
# much at a time: what a member leaves unused is copied once (zlib's
# `unused_data`), so the cost stays linear in the body, not in its size
# times its members.
_GZIP_FEED = 64 * 1024


def _gunzip(body, max_bytes):
    """Every member of a gzip body (several members are one stream, as
    `cat a.gz b.gz` makes); anything else after the last is refused, as is
    a body that inflates past `max_bytes` or holds more than
    MAX_GZIP_MEMBERS members. Linear in the body's size."""
    view = memoryview(body)
    end = len(body.rstrip(b"\x00"))  # gzip itself ignores zero padding at the end
    out, size, at, members = [], 0, 0, 0
    while at < end:
        if members == MAX_GZIP_MEMBERS:
            raise PayloadError(f"body has more than {MAX_GZIP_MEMBERS} gzip members; "
                               "compress a batch as one")
        if view[at:at + 2] != b"\x1f\x8b":
            raise PayloadError("body is not valid gzip (other data after its end)")
        members += 1
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        while not inflater.eof:
            if at >= len(body):
                raise PayloadError("body is not valid gzip (truncated)")
            piece = view[at:at + _GZIP_FEED]
            try:
                chunk = inflater.decompress(piece, max_bytes + 1 - size)
            except zlib.error:
                raise PayloadError("body is not valid gzip") from None
            size += len(chunk)
            out.append(chunk)
            if size > max_bytes or inflater.unconsumed_tail:
                raise PayloadTooLarge(f"decompressed body exceeds {max_bytes} bytes")
            at += len(piece) - len(inflater.unused_data)
    if not members:
        raise PayloadError("body is not valid gzip")
    return b"".join(out)


def _ndjson(body, max_entries):
    lines = body.split(b"\n")
    if len(lines) > max_entries:
        _check_count(sum(1 for line in lines if line.strip()), max_entries)
    items = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            items.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            items.append(_Malformed(f"line {number}: {_json_problem(exc)}"))
    return items


def _json_problem(exc):
    text = str(exc)
    if "utf-8" in text.lower() or "surrogate" in text.lower():
        return "body is not valid UTF-8"
    return f"malformed JSON ({text})"
