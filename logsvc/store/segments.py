"""Sealed segments: what the store keeps of its older entries, compactly.

Recent entries live whole in `entry` (rows, b-tree indexes, the full-text
and lookup indexes, bodies in `entry_body`): what ingest writes, the live
tail follows and most questions read. Once more than LOGSVC_HOT_ROWS
entries are newer than the oldest unsealed one, the background sealer moves
the next SEGMENT_ROWS into one immutable *segment*: a Parquet file
(pyarrow; zstd, dictionary-encoded names, row groups of ROW_GROUP rows
sorted by project, container and time) stored as a row of the `segment`
table beside what lets a question skip it: its id and time ranges, the
projects it holds, and a Bloom filter of its words (url, bodies, `data`;
`fulltext.words`) and trace ids.

What a sealed entry keeps in `entry` is its *skeleton*: id, time, scope,
service, level, kind, method, status, source, route and duration, the
columns every count, histogram, page order and tier of the counters
reads. Its url, trace id, client address and `data` are emptied there,
its bodies and its documents in the full-text and lookup indexes removed:
those, the bulk of an entry, live in the segment only. So:

- every question whose filters are among the skeleton's columns (scope,
  level, status, service, time, duration, route...) runs in SQL as
  before, over hot and sealed entries alike, and its pages are completed
  from the segments (`fill`);
- a search (`q`), a trace id or a client address finds the hot entries
  through the indexes and the sealed ones through the segments (`read`,
  `count`): the segments that may match (ranges, projects, Bloom filter)
  are decoded, filtered with Arrow's compute functions, and checked by the
  same `filters.matches` the live tail uses.

The watermark: `meta.sealed_through` is the highest sealed id: every entry
at or below it is sealed, every one above it hot. A seal is one
transaction that adds the segment, empties its entries' heavy columns and
index documents and moves the watermark: a kill at any point leaves all of
it or none, and segments cover consecutive id ranges.

Segments live in the database (a BLOB on SQLite, bytea on PostgreSQL):
every host of a PostgreSQL store reads every segment, and a backup of the
database is a backup of everything. Retention deletes skeletons as it
deleted rows (the counters subtract them exactly) and drops a segment once
none of its entries is left.
"""
import bisect
import collections
import functools
import hashlib
import io
import threading

import orjson

from logsvc.entry import COLUMNS, now_ms, row_to_dict

from . import db, fulltext, lookup, sketch
from .bodies import unpack_body, unpack_data
from .db import database
from .models import IdSequence
from .rows import render_row

SEGMENT_ROWS = 65_536
ROW_GROUP = 8_192
LEASE_NAME = "seal"
# Bloom filter: bits per distinct word and hash functions (about 1 % false
# positives).
_BITS_PER_WORD = 10
_HASHES = 7

# What a segment keeps of an entry: the API's values (names as text), the
# bodies as text (Parquet's zstd compresses them across entries), and the
# latency bucket that `order=slowest` sorts by. pyarrow is imported where
# it is used: a store that seals nothing never loads it.
@functools.cache
def _schema():
    import pyarrow as pa

    return pa.schema([
        ("id", pa.int64()), ("trace_id", pa.string()), ("ts_ms", pa.int64()),
        ("kind", pa.string()), ("level", pa.string()), ("project_id", pa.string()),
        ("container_id", pa.string()), ("service_name", pa.string()), ("method", pa.string()),
        ("url", pa.string()), ("client_ip", pa.string()), ("status", pa.int32()),
        ("source", pa.string()), ("data", pa.string()), ("has_body", pa.bool_()),
        ("body_truncated", pa.bool_()), ("duration_ms", pa.float64()), ("route", pa.string()),
        ("lat_bucket", pa.int16()), ("request_body", pa.string()),
        ("response_body", pa.string()),
    ])


_DICTIONARY = ["kind", "level", "project_id", "container_id", "service_name", "method",
               "source", "route"]


# --- the watermark ------------------------------------------------------------

def sealed_through():
    """The highest id in a segment (0: none sealed yet)."""
    row = db.execute("SELECT value FROM meta WHERE key = 'sealed_through'").fetchone()
    return int(row[0]) if row else 0


def _set_sealed_through(value):
    db.execute("INSERT INTO meta (key, value) VALUES ('sealed_through', ?) "
               "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(value),))


# --- sealing --------------------------------------------------------------------

def seal_once(hot_rows, segment_rows=SEGMENT_ROWS):
    """Seal the oldest `segment_rows` unsealed entries if more than
    `hot_rows` entries would still be newer. Returns how many were sealed
    (0: none due)."""
    through = sealed_through()
    high = IdSequence.high_water()
    if high - through <= hot_rows + segment_rows:
        return 0
    upto = through + segment_rows
    rows = _rows_to_seal(through, upto)
    blob, summary = _build(rows) if rows else (b"", None)
    with database.atomic():
        if sealed_through() != through:
            return 0  # another sealer moved on meanwhile
        # Ids below the high-water mark are settled; only retention (or a
        # clear) may have removed some of them since they were read.
        (count,) = db.execute("SELECT count(*) FROM entry WHERE id > ? AND id <= ?",
                              (through, upto)).fetchone()
        if count != len(rows):
            return 0  # read again next time
        if rows:
            db.execute(
                "INSERT INTO segment (min_id, max_id, min_ts, max_ts, rows, bytes, projects, "
                "words, data, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (through + 1, upto, summary["min_ts"], summary["max_ts"], len(rows), len(blob),
                 orjson.dumps(summary["projects"]).decode(), summary["words"], blob, now_ms()))
            _empty_hot(through, upto)
        _set_sealed_through(upto)
    if not db.is_postgres():
        # The pages the emptied rows and documents left, back to the file
        # system (a store made with auto_vacuum=INCREMENTAL; else a no-op).
        # executescript steps the pragma to its end (one step frees one page).
        database.connection().executescript("PRAGMA incremental_vacuum;")
    return max(len(rows), 1)


def _rows_to_seal(through, upto):
    """The entries with through < id <= upto as segment rows (dicts of
    _SCHEMA's columns), in the API's values."""
    width = len(COLUMNS)
    sql = (f"SELECT {', '.join('e.' + c for c in COLUMNS)}, e.lat_bucket, "
           "b.request_body, b.request_body_z, b.response_body, b.response_body_z "
           "FROM entry e LEFT JOIN entry_body b ON b.entry_id = e.id "
           "WHERE e.id > ? AND e.id <= ? ORDER BY e.id")
    out = []
    for row in db.execute(sql, (through, upto)).fetchall():
        item = render_row(row[:width])
        out.append({
            "id": item["id"], "trace_id": item["traceId"], "ts_ms": item["tsMs"],
            "kind": item["kind"], "level": item["level"], "project_id": item["projectId"],
            "container_id": item["containerId"], "service_name": item["serviceName"],
            "method": item["method"], "url": item["url"], "client_ip": item["clientIp"],
            "status": item["status"], "source": item["source"],
            "data": unpack_data(row[13]), "has_body": bool(row[14]),
            "body_truncated": bool(row[15]), "duration_ms": row[16], "route": item["route"],
            "lat_bucket": row[width],
            "request_body": unpack_body(row[width + 1], row[width + 2]),
            "response_body": unpack_body(row[width + 3], row[width + 4]),
        })
    return out


def _build(rows):
    """(Parquet bytes, summary) of segment rows."""
    rows.sort(key=lambda r: (r["project_id"], r["container_id"] or "", r["ts_ms"], r["id"]))
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=_schema())
    out = io.BytesIO()
    pq.write_table(table, out, compression="zstd", compression_level=3,
                   row_group_size=ROW_GROUP, use_dictionary=_DICTIONARY, write_statistics=True)
    words = set()
    for r in rows:
        words.update(fulltext.words(fulltext.document(r["url"], r["request_body"],
                                                      r["response_body"], r["data"])))
        if r["trace_id"]:
            words.add(_TRACE_MARK + r["trace_id"])
    summary = {
        "min_ts": min(r["ts_ms"] for r in rows),
        "max_ts": max(r["ts_ms"] for r in rows),
        "projects": sorted({r["project_id"] for r in rows}),
        "words": Bloom.of(words).dump(),
    }
    return out.getvalue(), summary


_TRACE_MARK = "\x00trace:"


def _empty_hot(through, upto):
    """What sealing leaves of the entries in `entry`: their skeletons."""
    if not db.is_postgres():
        fulltext.delete_range(through, upto)
        lookup.delete_range(through, upto)
    db.execute("DELETE FROM entry_body WHERE entry_id > ? AND entry_id <= ?", (through, upto))
    db.execute("UPDATE entry SET trace_id = '', url = NULL, client_ip = NULL, data = '' "
               "WHERE id > ? AND id <= ?", (through, upto))


# --- retention ---------------------------------------------------------------

def forget_emptied():
    """Drop the segments none of whose entries is left (retention deleted
    their skeletons); returns how many."""
    (oldest,) = db.execute("SELECT min(id) FROM entry").fetchone()
    if oldest is None:
        return db.execute("DELETE FROM segment").rowcount
    return db.execute("DELETE FROM segment WHERE max_id < ?", (oldest,)).rowcount


def clear():
    db.execute("DELETE FROM segment")


# --- reading ---------------------------------------------------------------------

def heavy(filters):
    """Whether `filters` test what sealed entries keep only in their
    segments (words, trace id, client address)."""
    return bool(filters.q or filters.trace_id or filters.client_ip)


def fill(entries, through, bodies=None):
    """Complete the sealed entries (id <= `through`) of a page read from
    `entry`: their url, trace id, client address, `data` and, with
    `bodies` (request wanted, response wanted), their bodies."""
    sealed = [item for item in entries if item["id"] <= through]
    if not sealed:
        return
    ids = [item["id"] for item in sealed]
    covering = db.execute("SELECT id, min_id, max_id FROM segment WHERE max_id >= ? "
                          "AND min_id <= ? ORDER BY min_id", (min(ids), max(ids))).fetchall()
    starts = [row[1] for row in covering]
    for item in sealed:
        at = bisect.bisect_right(starts, item["id"]) - 1
        found = None
        if at >= 0 and covering[at][2] >= item["id"]:
            segment_id, low, high = covering[at]
            table, positions = _decoded({"id": segment_id, "min_id": low, "max_id": high})
            row = positions.get(item["id"])
            found = None if row is None else (table, row)
        if found is None:  # retention dropped its segment meanwhile
            item["data"] = orjson.Fragment(b"{}")
            continue
        table, row = found
        item["url"] = table["url"][row].as_py()
        item["traceId"] = table["trace_id"][row].as_py()
        item["clientIp"] = table["client_ip"][row].as_py()
        item["data"] = orjson.Fragment(table["data"][row].as_py() or "{}")
        if bodies is not None:
            if bodies[0]:
                item["requestBody"] = table["request_body"][row].as_py()
            if bodies[1]:
                item["responseBody"] = table["response_body"][row].as_py()


def read(filters, after_id=None, upto_id=None, order="desc", limit=None, bodies=None,
         slowest=False):
    """The sealed entries matching `filters` with after_id < id <= upto_id
    that `entry` still holds, as the API's entries: newest first (`desc`),
    oldest first (`asc`), or longest first (`slowest`), at most `limit`
    (None: all). `bodies`: (request wanted, response wanted), or None."""
    chosen = _segments(filters, after_id, upto_id)
    if order == "desc" or slowest:
        chosen.reverse()
    found = []
    for meta in chosen:
        table = _matching(meta, filters, after_id, upto_id)
        if table.num_rows == 0:
            continue
        if slowest:
            keys = [("lat_bucket", "descending"), ("duration_ms", "descending"),
                    ("id", "descending")]
        else:
            keys = [("id", "descending" if order == "desc" else "ascending")]
        table = table.sort_by(keys)
        for batch in _batches(table, filters, bodies):
            found.extend(batch)
            if not slowest and limit is not None and len(found) >= limit:
                return found[:limit]
    if slowest:
        found.sort(key=slowest_key, reverse=True)
        if limit is not None:
            found = found[:limit]
    return found


def slowest_key(item):
    """What `order=slowest` sorts an entry by (its latency bucket, its
    duration, its id), as the SQL of the hot entries does."""
    duration = item["durationMs"]
    return (sketch.bucket_of(duration) if duration is not None else -1, duration or 0,
            item["id"])


def count(filters, after_id=None, upto_id=None, cap=None):
    """How many sealed entries that `entry` still holds match (counting
    stops past `cap`)."""
    n = 0
    for meta in _segments(filters, after_id, upto_id):
        table = _matching(meta, filters, after_id, upto_id)
        for batch in _batches(table, filters, None):
            n += len(batch)
            if cap is not None and n > cap:
                return n
    return n


def _segments(filters, after_id, upto_id):
    """The segments (dicts) that may hold a match, oldest first."""
    terms, params = ["TRUE"], []
    if after_id is not None:
        terms.append("max_id > ?")
        params.append(after_id)
    if upto_id is not None:
        terms.append("min_id <= ?")
        params.append(upto_id)
    if filters.since is not None:
        terms.append("max_ts >= ?")
        params.append(filters.since)
    if filters.until is not None:
        terms.append("min_ts < ?")
        params.append(filters.until)
    rows = db.execute(f"SELECT id, min_id, max_id, projects, words FROM segment "
                      f"WHERE {' AND '.join(terms)} ORDER BY min_id", params).fetchall()
    chosen = []
    wanted = _wanted_words(filters)
    for segment_id, low, high, projects, words in rows:
        if filters.project_id is not None and filters.project_id not in orjson.loads(projects):
            continue
        if wanted and not _may_hold(Bloom.load(words), wanted):
            continue
        chosen.append({"id": segment_id, "min_id": low, "max_id": high})
    return chosen


def _wanted_words(filters):
    """Alternatives of words a matching entry must all hold: one tuple per
    OR group of `q` (its positive words), and the trace id. () if none."""
    groups = []
    if filters.q:
        for group in fulltext.parse(filters.q):
            needed = []
            for phrase in group.positive:
                needed.extend(phrase.words[:-1] if phrase.prefix else phrase.words)
            groups.append(tuple(needed))
    if filters.trace_id:
        trace = _TRACE_MARK + _shown_trace(filters.trace_id)
        groups = [(*g, trace) for g in groups] or [(trace,)]
    return groups


def _may_hold(bloom, groups):
    return any(all(word in bloom for word in group) for group in groups)


def _matching(meta, filters, after_id, upto_id):
    """The rows of one segment that pass the filters Arrow can apply (all
    but `q`, which `_batches` checks)."""
    table, _ = _decoded(meta)
    expression = _expression(filters, after_id, upto_id)
    if expression is not None:
        table = table.filter(expression)
    if filters.q and table.num_rows:
        table = _prefiltered(table, filters.q)
    return table


_TEXT_COLUMNS = ("url", "data", "request_body", "response_body")


def _prefiltered(table, q):
    """The rows that may match `q`: each word of a group's positive phrases
    appears, in any case, in one of the document's columns (Arrow's
    vectorised substring search; `_batches` then checks words and phrases
    exactly). Words beyond ASCII are left to that check."""
    import pyarrow.compute as pc

    keep = None
    for group in fulltext.parse(q):
        group_mask = None
        for phrase in group.positive:
            for word in phrase.words:
                if not word.isascii():
                    continue
                found = None
                for column in _TEXT_COLUMNS:
                    hit = pc.fill_null(pc.match_substring(table[column], word, ignore_case=True),
                                       False)
                    found = hit if found is None else pc.or_(found, hit)
                group_mask = found if group_mask is None else pc.and_(group_mask, found)
        if group_mask is None:
            return table  # a group of words beyond ASCII: every row may match
        keep = group_mask if keep is None else pc.or_(keep, group_mask)
    return table.filter(keep)


def _expression(filters, after_id, upto_id):
    import pyarrow.compute as pc

    field = pc.field
    terms = []
    if after_id is not None:
        terms.append(field("id") > after_id)
    if upto_id is not None:
        terms.append(field("id") <= upto_id)
    f = filters
    if f.project_id is not None:
        terms.append(field("project_id") == f.project_id)
    if f.container_id is not None:
        terms.append(field("container_id") == f.container_id)
    for column, values in (("service_name", f.service_names), ("level", f.levels),
                           ("kind", f.kinds), ("method", f.methods), ("source", f.sources),
                           ("route", f.routes)):
        if values:
            terms.append(field(column).isin(list(values)))
    if f.trace_id is not None:
        terms.append(field("trace_id") == _shown_trace(f.trace_id))
    if f.client_ip is not None:
        terms.append(field("client_ip") == _shown_ip(f.client_ip))
    if f.status_ranges:
        alternatives = None
        for low, high in f.status_ranges:
            one = (field("status") >= low) & (field("status") <= high)
            alternatives = one if alternatives is None else alternatives | one
        terms.append(alternatives)
    if f.since is not None:
        terms.append(field("ts_ms") >= f.since)
    if f.until is not None:
        terms.append(field("ts_ms") < f.until)
    if f.min_duration_ms is not None:
        terms.append(field("duration_ms") >= f.min_duration_ms)
    if f.max_duration_ms is not None:
        terms.append(field("duration_ms") <= f.max_duration_ms)
    if f.timed:
        terms.append(field("duration_ms").is_valid())
    if not terms:
        return None
    expression = terms[0]
    for term in terms[1:]:
        expression = expression & term
    return expression


def _shown_trace(value):
    return value if db.is_postgres() else lookup.shown("trace_id", lookup.stored("trace_id", value))


def _shown_ip(value):
    return value if db.is_postgres() else lookup.shown("client_ip", lookup.stored("client_ip", value))


_BATCH = 500


def _batches(table, filters, bodies):
    """The API's entries of `table`'s rows, in its order, that pass `q`
    and that `entry` still holds (retention may have deleted some), a
    batch at a time."""
    parsed = fulltext.parse(filters.q) if filters.q else None
    for start in range(0, table.num_rows, _BATCH):
        part = table.slice(start, _BATCH).to_pydict()
        candidates = []
        for i in range(len(part["id"])):
            request_body, response_body = part["request_body"][i], part["response_body"][i]
            data = part["data"][i]
            if parsed is not None and not fulltext.matches(parsed, fulltext.document(
                    part["url"][i], request_body, response_body, data)):
                continue
            item = row_to_dict(tuple(part[c][i] for c in COLUMNS),
                               None if bodies is None else (request_body, response_body, *bodies))
            item["data"] = orjson.Fragment(data or "{}")
            candidates.append(item)
        if not candidates:
            continue
        ids = [item["id"] for item in candidates]
        marks = ", ".join("?" for _ in ids)
        kept = {row[0] for row in db.execute(f"SELECT id FROM entry WHERE id IN ({marks})", ids)}
        batch = [item for item in candidates if item["id"] in kept]
        if batch:
            yield batch


# Decoded segments, per process: (store, segment id, first id) -> (table,
# {entry id: row}). A few, most recently used: a segment's decoded columns
# take some tens of MB.
_CACHE_SEGMENTS = 4
_cache = collections.OrderedDict()
_cache_lock = threading.Lock()


def _decoded(meta):
    key = (id(db.current()), meta["id"], meta["min_id"])
    with _cache_lock:
        found = _cache.get(key)
        if found is not None:
            _cache.move_to_end(key)
            return found
    import pyarrow.parquet as pq

    (blob,) = db.execute("SELECT data FROM segment WHERE id = ?", (meta["id"],)).fetchone()
    table = pq.read_table(io.BytesIO(bytes(blob)))
    positions = {entry_id: at for at, entry_id in enumerate(table["id"].to_pylist())}
    with _cache_lock:
        _cache[key] = (table, positions)
        while len(_cache) > _CACHE_SEGMENTS:
            _cache.popitem(last=False)
    return table, positions


# --- the Bloom filter of a segment's words ------------------------------------------

class Bloom:
    """A Bloom filter of words: `dump` gives its bytes (4 bytes of its
    hash count, then the bits), `load` reads them back."""

    def __init__(self, bits, hashes, size):
        self.bits, self.hashes, self.size = bits, hashes, size

    @classmethod
    def of(cls, words):
        size = -(-max(64, len(words) * _BITS_PER_WORD) // 8) * 8  # whole bytes
        bits = bytearray(size // 8)
        bloom = cls(bits, _HASHES, size)
        for word in words:
            for position in bloom._positions(word):
                bits[position >> 3] |= 1 << (position & 7)
        return bloom

    def dump(self):
        return self.hashes.to_bytes(4, "big") + bytes(self.bits)

    @classmethod
    def load(cls, stored):
        stored = bytes(stored)
        bits = stored[4:]
        return cls(bits, int.from_bytes(stored[:4], "big"), len(bits) * 8)

    def _positions(self, word):
        digest = hashlib.blake2b(word.encode(), digest_size=16).digest()
        first, second = int.from_bytes(digest[:8], "big"), int.from_bytes(digest[8:], "big") | 1
        return [(first + i * second) % self.size for i in range(self.hashes)]

    def __contains__(self, word):
        bits = self.bits
        return all(bits[p >> 3] & (1 << (p & 7)) for p in self._positions(word))
