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

A sealed entry leaves `entry`: its row, its bodies and its documents in the
full-text and lookup indexes are removed in the transaction that adds its
segment. What stays is its share of the counters (rollup.py), which go on
counting it until retention drops its segment. So:

- every question the counters answer (totals, stats and histograms of a
  scope and a time range, a level or a status class) reads no entry and no
  segment;
- a page, a search, a count or stats that the counters cannot answer read
  the hot entries in SQL and the segments that may hold a match (`read`,
  `count`): id and time ranges, projects and the Bloom filter skip the
  others; the rest are filtered with Arrow's compute functions, and `q` is
  checked by the same `fulltext.matches` the live tail uses;
- the counters' partial minutes (the edges of a time range, a container's
  route table) are counted from the entries: SQL over `entry` and, for the
  sealed ones, the same SQL over `sealed_entry`, a temporary table into
  which `stage` copies the sealed entries of that window (`twin`).

The watermark: `meta.sealed_through` is the highest sealed id: every entry
at or below it is sealed, every one above it hot. A seal is one
transaction that adds the segment, removes its entries from `entry` and
moves the watermark: a kill at any point leaves all of it or none, and
segments cover consecutive id ranges.

In the background, runs of consecutive segments are merged into one
sorted by scope as a whole (`merge_once`): a tenant's rows sit together,
and one transaction swaps the new segment in for the ones it replaces.

Segments live in the database (a BLOB on SQLite, bytea on PostgreSQL):
every host of a PostgreSQL store reads every segment, and a backup of the
database is a backup of everything. Retention drops whole segments, oldest
first, subtracting their entries from the counters in the same
transaction (`drop`).
"""
import bisect
import collections
import functools
import hashlib
import io
import re
import time

import orjson

from logsvc.entry import COLUMNS, now_ms, row_to_dict

from . import db, fulltext, lookup, names, sketch, wal
from .bodies import unpack_body, unpack_data
from .db import database

SEGMENT_ROWS = 65_536
# A row group is what a question decodes when one of its rows may match,
# and the block of rows a Bloom filter of words covers: a word found in
# few entries decodes few rows, and each row found reads the rest of its
# row group's small columns. Segments written by earlier versions have
# row groups of 8,192 rows split in four blocks; readers take either.
ROW_GROUP = 2_048
# zstd's level: a seal's, on the ingest path's time, and a merge's, in the
# background, which writes each entry once more and for good (level 9
# keeps an entry in 7 % fewer bytes than level 3 in row groups of this
# size, at 7 µs an entry instead of 2).
SEAL_LEVEL, MERGE_LEVEL = 3, 9
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
    arrow_ready()
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


@functools.cache
def schema_of(columns):
    """The fields of `columns` (a tuple) as a row group decodes them: the
    names, levels, kinds and sources as dictionaries."""
    arrow_ready()
    import pyarrow as pa

    fields = [_schema().field(name) for name in columns]
    return pa.schema([field.with_type(pa.dictionary(pa.int32(), field.type))
                      if field.name in _DICTIONARY else field for field in fields])


# --- the watermark ------------------------------------------------------------

def sealed_through():
    """The highest id in a segment (0: none sealed yet)."""
    return db.memoized("sealed_through", sealed_through_now)


def sealed_through_now():
    """The watermark as committed now, never the value a read memoized."""
    row = db.execute("SELECT value FROM meta WHERE key = 'sealed_through'").fetchone()
    return int(row[0]) if row else 0


def check_sealed_through(through):
    """Raise db.Stale when a seal has moved the watermark since a read took
    it as `through` (the call is then run again): the entries that seal
    took left the hot tier, and the read, which chose its segments up to
    `through` and its hot entries above it, may have found them in
    neither. Each statement reads its own snapshot, so a read that spans
    the two tiers asks once more after it has read them."""
    if sealed_through_now() != through:
        raise db.Stale("entries were sealed during the read")


# The watermark of the counters counted in the background (rollup.py's
# DEFERRED), read in the statement that reads them: one snapshot for both.
# (A store of schema 19 or before, not yet upgraded, has none: it counted
# every entry as it stored it.)
COUNTED_THROUGH = ("coalesce((SELECT CAST(value AS BIGINT) FROM meta WHERE key = "
                   "'counted_through'), (SELECT last_id FROM id_sequence WHERE name = 'entry'))")


def counted_through():
    """Every entry up to this id is in the counters counted in the background."""
    (value,) = db.execute(f"SELECT {COUNTED_THROUGH}").fetchone()
    return int(value or 0)


def set_counted_through(value):
    db.execute("INSERT INTO meta (key, value) VALUES ('counted_through', ?) "
               "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(value),))


# What a seal runs first with the last id it takes: the counters' readers
# add the entries not counted yet from `entry`, which the seal empties, so
# they are counted first (rollup.count_all, set by rollup.py).
count_first = None


def _set_sealed_through(value):
    db.execute("INSERT INTO meta (key, value) VALUES ('sealed_through', ?) "
               "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(value),))


# --- sealing --------------------------------------------------------------------

def due(hot_rows, segment_rows=SEGMENT_ROWS):
    """Whether `seal_once` would seal (a read: the background sealer asks
    before it takes its lease, a write, so that an idle store is not
    written to every round and its write-ahead log can be given back)."""
    (high,) = db.execute("SELECT last_id FROM id_sequence WHERE name = 'entry'").fetchone()
    return high - sealed_through() > hot_rows + segment_rows


def seal_once(hot_rows, segment_rows=SEGMENT_ROWS):
    """Seal the oldest `segment_rows` unsealed entries if more than
    `hot_rows` entries would still be newer. Returns how many were sealed
    (0: none due)."""
    through = sealed_through()
    if not due(hot_rows, segment_rows):
        return 0
    upto = through + segment_rows
    if count_first is not None:
        count_first(upto)
    columns = _rows_to_seal(through, upto)
    count = len(columns["id"])
    # Row groups of ROW_GROUP entries, at least eight to a segment.
    blob, summary = (_build(columns, max(1, min(ROW_GROUP, segment_rows // 8))) if count
                     else (b"", None))
    wal.make_room()
    with database.atomic():
        if sealed_through() != through or counted_through() < upto:
            return 0  # another sealer moved on meanwhile
        # Ids below the high-water mark are settled; only retention (or a
        # clear) may have removed some of them since they were read.
        (stored,) = db.execute("SELECT count(*) FROM entry WHERE id > ? AND id <= ?",
                               (through, upto)).fetchone()
        if stored != count:
            return 0  # read again next time
        if count:
            _insert(through + 1, upto, count, blob, summary)
            _remove_hot(through, upto, columns)
        _set_sealed_through(upto)
    if count:
        # SQLite: the removed documents' delete markers out of the indexes,
        # then the pages the removed rows and documents left, back to the
        # file system.
        for optimize in (fulltext.optimize_sqlite, lookup.optimize):
            wal.make_room()
            with database.atomic():
                optimize()
        wal.give_back_free_pages()
    return max(count, 1)


def _insert(min_id, max_id, rows, blob, summary):
    """Add a segment (`_build`'s or `_merged`'s file and summary). SQLite
    keeps its bytes in parts (`_store_parts`), PostgreSQL in `data`."""
    data, part_id, part_bytes = blob, None, None
    if not db.is_postgres() and blob:
        data, part_bytes = b"", PART_BYTES
        part_id = _store_parts(blob, part_bytes)
    db.execute(
        "INSERT INTO segment (min_id, max_id, min_ts, max_ts, rows, bytes, projects, "
        "words, data, created_ms, part_id, part_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (min_id, max_id, summary["min_ts"], summary["max_ts"], rows, len(blob),
         orjson.dumps(summary["projects"]).decode(), summary["words"], data, now_ms(),
         part_id, part_bytes))


# SQLite: a segment's bytes are kept in rows of `segment_part` of this size.
# SQLite reads a blob at an offset by walking its overflow pages from the
# start (a first read at the end of a 78 MB segment took 18-30 ms, each time
# a question opened it); a part's walk is at most 64 pages.
PART_BYTES = 256 << 10


def _store_parts(blob, part_bytes):
    """SQLite: write `blob` as consecutive `segment_part` rows of
    `part_bytes`; returns the first one's id."""
    first = None
    for at in range(0, len(blob), part_bytes):
        cursor = db.execute("INSERT INTO segment_part (data) VALUES (?)",
                            (blob[at:at + part_bytes],))
        if first is None:
            first = cursor.lastrowid
        elif cursor.lastrowid != first + at // part_bytes:  # one writer: cannot happen
            raise RuntimeError("segment parts not consecutive")
    return first


def create_parts_trigger():
    """SQLite: a segment's parts go with it (merges, retention, clearing),
    in the statement that removes it."""
    db.execute(
        "CREATE TRIGGER IF NOT EXISTS segment_parts_go AFTER DELETE ON segment "
        "WHEN old.part_id IS NOT NULL BEGIN DELETE FROM segment_part "
        "WHERE id >= old.part_id "
        "AND id < old.part_id + (old.bytes + old.part_bytes - 1) / old.part_bytes; END")


def _rows_to_seal(through, upto):
    """The entries with through < id <= upto, by id, as segment columns
    ({column of _schema(): [values]}, in the API's values), and beside them
    (SQLite) "_indexed" and "_keys", the full-text and the lookup index's
    document of each (what `_remove_hot` hands back to the indexes, made
    here, before the write lock is taken)."""
    width = len(COLUMNS)
    postgres = db.is_postgres()
    sql = (f"SELECT {', '.join('e.' + c for c in COLUMNS)}, e.lat_bucket, "
           "b.request_body, b.request_body_z, b.response_body, b.response_body_z "
           "FROM entry e LEFT JOIN entry_body b ON b.entry_id = e.id "
           "WHERE e.id > ? AND e.id <= ? ORDER BY e.id")
    columns = {name: [] for name in (*_schema().names, "_indexed", "_keys")}
    # The stored forms as the API's values (rows.render_row's, without
    # what a segment does not keep).
    name_of = names.shower()
    shown = {**{column: functools.partial(lookup.shown, column)
                for column in ("trace_id", "client_ip")},
             **{column: functools.partial(names.unlettered, column)
                for column in ("kind", "level", "source")},
             **dict.fromkeys(("project_id", "container_id", "service_name", "method", "route"),
                             name_of),
             "data": unpack_data, "has_body": bool, "body_truncated": bool}
    rows = db.execute(sql, (through, upto)).fetchall()
    if not rows:
        return columns
    # Column by column: each stored column mapped to its values at once.
    stored = list(zip(*rows))
    for at, column in enumerate(COLUMNS):
        show = shown.get(column)
        if column in _NAMED or column in _LETTERED:  # few values: each shown once
            show = {value: show(value) for value in set(stored[at])}.__getitem__
        columns[column] = list(stored[at] if show is None else map(show, stored[at]))
    columns["lat_bucket"] = list(stored[width])
    request_bodies = columns["request_body"] = list(map(unpack_body, stored[width + 1],
                                                        stored[width + 2]))
    response_bodies = columns["response_body"] = list(map(unpack_body, stored[width + 3],
                                                          stored[width + 4]))
    texts = map(fulltext.document, columns["url"], request_bodies, response_bodies,
                columns["data"])
    if not postgres:
        columns["_indexed"] = list(map(
            fulltext.indexed_document, texts, stored[COLUMNS.index("project_id")],
            stored[COLUMNS.index("container_id")]))
        columns["_keys"] = list(map(lookup.document, columns["trace_id"], columns["client_ip"]))
    return columns


def _build(columns, row_group=ROW_GROUP):
    """(Parquet bytes, summary) of segment columns (`_rows_to_seal`'s),
    sorted by scope and time, in row groups of `row_group` rows, each with
    a Bloom filter of its words."""
    arrow_ready()
    import pyarrow as pa
    import pyarrow.parquet as pq

    projects, containers = columns["project_id"], columns["container_id"]
    times, ids = columns["ts_ms"], columns["id"]
    order = sorted(range(len(ids)),
                   key=lambda i: (projects[i], containers[i] or "", times[i], ids[i]))
    schema = _schema()
    table = pa.Table.from_pydict({name: columns[name] for name in schema.names},
                                 schema=schema).take(order)
    out = io.BytesIO()
    pq.write_table(table, out, compression="zstd", compression_level=SEAL_LEVEL,
                   row_group_size=row_group, use_dictionary=_DICTIONARY, write_statistics=True)
    blooms = _block_blooms(*([columns[c][i] for i in order] for c in _BLOOMED), row_group)
    summary = {
        "min_ts": min(times),
        "max_ts": max(times),
        "projects": sorted(set(projects)),
        "words": _words_value(row_group, blooms),
    }
    return out.getvalue(), summary


# What a block's two Bloom filters are made of: its head (url, `data`, trace
# ids) and its bodies.
_BLOOMED = ("url", "data", "trace_id", "request_body", "response_body")


def _block_blooms(urls, data, traces, request_bodies, response_bodies, block):
    """The dumped Bloom filters of each `block` rows, in the segment's
    order: one of the words of their urls and `data` and of their trace
    ids, one of the words of their bodies, and one of how the words of
    their urls and `data` follow each other (`_sequence_marks`). A search
    for words that no body of a block holds then decodes only the block's
    small columns (an id in a url path, a value of `data`), and a phrase
    only the blocks where its words may follow each other."""
    blooms = []
    for start in range(0, len(urls), block):
        end = start + block
        # A block's texts read as one (a word never spans the line break).
        head = fulltext.word_bytes("\n".join(filter(None, (*urls[start:end],
                                                             *data[start:end]))))
        head.update((_TRACE_MARK + trace).encode() for trace in traces[start:end] if trace)
        body = fulltext.word_bytes("\n".join(filter(None, (*request_bodies[start:end],
                                                             *response_bodies[start:end]))))
        marks = set()
        for url, datum in zip(urls[start:end], data[start:end]):
            marks.update(_sequence_marks(url, datum))
        blooms.append((Bloom.of(head).dump(), Bloom.of(body).dump(),
                       Bloom.of(marks, _MARK_BITS, _MARK_HASHES).dump()))
    return blooms


_TRACE_MARK = "\x00trace:"
# The marks of word order in a block's third filter: two words that follow
# each other in a url or in `data`; a url's last word; a `data`'s first
# word. Asked together (every pair of a phrase, and its words), they are
# kept in fewer bits than words: 6 a mark, 4 hashes, about 5 % false
# positives (3 B an entry for the benchmark's urls and `data`).
_PAIR_MARK, _END_MARK, _START_MARK = "\x00pair:", "\x00end:", "\x00start:"
_MARK_BITS, _MARK_HASHES = 6, 4
_PAIR_BYTES, _END_BYTES, _START_BYTES = (m.encode() for m in (_PAIR_MARK, _END_MARK,
                                                               _START_MARK))


def _sequence_marks(url, data):
    """The marks of an entry's word order (_PAIR_MARK...): what `_may_run`
    asks of a phrase."""
    head, tail = fulltext.ordered_word_bytes(url), fulltext.ordered_word_bytes(data)
    marks = [_PAIR_BYTES + a + b" " + b for words in (head, tail)
             for a, b in zip(words, words[1:])]
    if head:
        marks.append(_END_BYTES + head[-1])
    if tail:
        marks.append(_START_BYTES + tail[0])
    return marks


def _may_run(split, words):
    """Whether a phrase's whole `words` (two or more) may follow each other
    in an entry of a block whose filters are `split` (a _Split with
    marks). An entry's document is its url, its bodies, then its `data`
    (fulltext.document), so the words follow each other within its url or
    its `data`, or as words[:i] ending its url, words[i:j] in its bodies
    (whose words the body filter holds; none when the url runs into
    `data`) and words[j:] starting its `data`."""
    marks, body = split.marks, split.body
    n = len(words)
    paired = [f"{_PAIR_MARK}{a} {b}" in marks for a, b in zip(words, words[1:])]
    if all(paired):
        return True
    in_body = [word in body for word in words]
    for i in range(n + 1):
        if i and not (all(paired[:i - 1]) and f"{_END_MARK}{words[i - 1]}" in marks):
            continue
        for j in range(i, n + 1):
            if j > i and not in_body[j - 1]:
                break
            if j == n or (all(paired[j:]) and f"{_START_MARK}{words[j]}" in marks):
                return True
    return False


# The high bit of a segment's `words` header: each block has two filters
# (_Split). Segments written by earlier versions have one, of all its
# words and trace ids; readers take either. The next bit: each block has a
# third filter, of its marks of word order (_sequence_marks), which
# segments written by earlier versions do not have.
_SPLIT = 1 << 31
_MARKED = 1 << 30


def _words_value(row_group, blooms):
    """A segment's `words`: the rows per block (4 bytes, _SPLIT and _MARKED
    set), then each block's three Bloom filters, each its length (4 bytes)
    and its bytes (Bloom.dump)."""
    return (row_group | _SPLIT | _MARKED).to_bytes(4, "big") + b"".join(
        len(b).to_bytes(4, "big") + b for filters in blooms for b in filters)


def _unpack_blooms(stored):
    """(rows per block, [the filter of each block], _Holding) of a
    segment's `words`: a _Split, or a Bloom of all its words (earlier
    versions). The filters are views of one copy of `stored`."""
    stored = bytes(stored)
    header = int.from_bytes(stored[:4], "big")
    view = memoryview(stored)
    blooms, places = _unpack(view[4:], 4)
    step = (3 if header & _MARKED else 2) if header & _SPLIT else 1
    # Of a _Split, its head and its body filters are asked for words.
    holding = _Holding(stored, [places[kind::step] for kind in range(min(step, 2))])
    if header & _SPLIT:
        return header & ~(_SPLIT | _MARKED), [
            _Split(*blooms[at:at + step]) for at in range(0, len(blooms), step)], holding
    return header, blooms, holding


class _Split:
    """A block's Bloom filters: of its head (url, `data`, trace ids), of
    its bodies and (None in earlier segments) of its marks of word order.
    `word in` it asks the first two."""

    __slots__ = ("head", "body", "marks")

    def __init__(self, head, body, marks=None):
        self.head, self.body, self.marks = head, body, marks

    def __contains__(self, word):
        return word in self.head or word in self.body


def _unpack(stored, base=0):
    """The filters of `stored` (each its length, then Bloom.dump's bytes),
    and where each one's bits begin (`base` + offset), how many there are
    and its hash count."""
    out, places, at = [], [], 0
    while at < len(stored):
        size = int.from_bytes(stored[at:at + 4], "big")
        bloom = Bloom.load(stored[at + 4:at + 4 + size])
        out.append(bloom)
        places.append((base + at + 8, bloom.size, bloom.hashes))
        at += 4 + size
    return out, places


class _Holding:
    """A segment's Bloom filters side by side: `blocks(word)` tells for
    every block at once (numpy) whether its filters may hold the word, as
    `word in` its filter does block by block in Python (a trace id's
    lookup asked some 1,800 filters at 1M, 2.7 ms of its 4.2). `places`:
    per kind of filter asked (a _Split's head and body, or the one Bloom),
    where each block's bits lie in `stored`, their count and hash count."""

    def __init__(self, stored, places):
        arrow_ready()
        import numpy as np

        self.bits = np.frombuffer(stored, dtype=np.uint8)
        self.kinds = []
        for kind in places:
            if len({hashes for _, _, hashes in kind}) > 1:
                self.kinds = None  # not seen: asked one by one
                return
            self.kinds.append((np.array([at for at, _, _ in kind], dtype=np.int64),
                               np.array([size for _, size, _ in kind], dtype=np.uint64),
                               kind[0][2] if kind else 0))

    def blocks(self, word, kind=None):
        """A boolean per block: may its filters hold `word` (with `kind`,
        that filter of each block only: 0 its head, 1 its bodies); None
        when the filters cannot be asked together, or lack that kind."""
        if self.kinds is None or (kind is not None and kind >= len(self.kinds)):
            return None
        import numpy as np

        first, second = _hashed(word)
        held = None
        for starts, sizes, hashes in self.kinds if kind is None else self.kinds[kind:kind + 1]:
            # Bloom's positions (first + i * second) % size, from both
            # hashes reduced by the size first: within 64 bits.
            base, step = np.uint64(first) % sizes, np.uint64(second) % sizes
            found = np.ones(len(sizes), dtype=bool)
            for i in range(hashes):
                bit = (base + np.uint64(i) * step) % sizes
                found &= ((self.bits[starts + (bit >> np.uint64(3)).astype(np.int64)]
                           >> (bit & np.uint64(7)).astype(np.uint8)) & 1).astype(bool)
            held = found if held is None else held | found
        return held


def _remove_hot(through, upto, columns):
    """Sealed entries leave `entry`, `entry_body` and the indexes
    (`columns`: `_rows_to_seal`'s, which hold the index's documents)."""
    fulltext.delete_documents(zip(columns["id"], columns["_indexed"]))
    lookup.delete_documents(zip(columns["id"], columns["_keys"]))
    db.execute("DELETE FROM entry_body WHERE entry_id > ? AND entry_id <= ?", (through, upto))
    db.execute("DELETE FROM entry WHERE id > ? AND id <= ?", (through, upto))


# --- merging -------------------------------------------------------------------

# A sealed segment holds SEGMENT_ROWS consecutive entries, so a tenant with
# few entries has a few rows in one row group of every segment: a search of
# its words decodes a row group per segment. In the background, runs of
# consecutive segments are merged into one of up to MERGE_SEGMENTS times as
# many entries, sorted by scope and time as a whole (as ClickHouse merges
# its parts): the tenant's rows then sit together in one or two row groups
# of it, and the names and texts of a scope compress together.
MERGE_SEGMENTS = 16


@db.only("sqlite", default=False)
def split_due():
    """Whether a segment keeps its bytes in its row, as before schema 19
    (SQLite; a read)."""
    # By the length of `data` (the record's header gives it), not by
    # part_id: a column after the Bloom filters is reached by walking
    # their pages.
    return db.execute("SELECT 1 FROM segment WHERE length(data) > 0 LIMIT 1").fetchone() is not None


@db.only("sqlite", default=0)
def split_once():
    """Move one such segment's bytes into parts (`_store_parts`), in one
    transaction: what an upgraded store's background work does, a segment
    a round, so that its first questions do not walk the segment's pages.
    Returns its bytes (0: none left)."""
    wal.make_room()
    with database.atomic():
        found = db.execute("SELECT id, data FROM segment WHERE length(data) > 0 "
                           "ORDER BY min_id LIMIT 1").fetchone()
        if found is None:
            return 0
        blob = bytes(found[1])
        db.execute("UPDATE segment SET data = ?, part_id = ?, part_bytes = ? WHERE id = ?",
                   (b"", _store_parts(blob, PART_BYTES), PART_BYTES, found[0]))
    wal.give_back_free_pages()
    return len(blob)


# PostgreSQL: a merge writes its segment beside the ones it replaces, and
# a deleted segment's space stays in the table (a million entries: 100 MB
# free beside 80 MB of segments). `vacuum`, run after each round of seals
# and merges and after retention, makes it reusable, so that the next
# seals fill it rather than grow the table. Past a quarter of the table and
# RECLAIM_MIN bytes free, the table is rewritten (VACUUM FULL), while its
# segments take at most RECLAIM_MAX_LIVE: the rewrite locks out sealed
# reads and seals for as long as it copies (about a second for 100 MB),
# and waits for its lock at most RECLAIM_WAIT. Past that size the free
# space is left to be filled by the next seals, and the store's size
# (retention.used_bytes) does not count it.
RECLAIM_MIN = 32 << 20
RECLAIM_MAX_LIVE = 256 << 20
RECLAIM_WAIT = "2s"
# The table's bytes for a segment's bytes: TOAST stores them in chunks of
# about 2 KB, four to a page, each with its row header and index entry.
_STORED_SHARE = 1.05


@db.only("postgresql", default=None)
def vacuum():
    """Make the space of deleted segments reusable (VACUUM: it holds up
    no read, seal or merge); outside a transaction."""
    db.execute("VACUUM segment")


@db.only("postgresql", default=0)
def free_bytes():
    """What the segment table holds beyond its segments: space that later
    segments take before the table grows (once vacuumed)."""
    total, live = _sizes()
    return max(0, total - int(live * _STORED_SHARE))


def _sizes():
    # pg_column_size: the stored size, read from the TOAST pointer.
    return db.execute(
        "SELECT pg_total_relation_size('segment'), coalesce(sum(pg_column_size(data) "
        "+ coalesce(pg_column_size(words), 0)), 0) FROM segment").fetchone()


@db.only("postgresql", default=0)
def reclaim(min_free=RECLAIM_MIN, max_live=RECLAIM_MAX_LIVE):
    """Give the segment table's free space back to the file system (see
    RECLAIM_MIN); outside a transaction. Returns the bytes given back."""
    import peewee

    total, live = _sizes()
    if total - live < max(min_free, total // 4) or live > max_live:
        return 0
    db.execute(f"SET lock_timeout = '{RECLAIM_WAIT}'")
    try:
        db.execute("VACUUM FULL segment")
    except peewee.OperationalError as exc:
        if "lock timeout" not in str(exc):
            raise
        return 0  # questions are reading segments: another round
    finally:
        db.execute("RESET lock_timeout")
    (after,) = db.execute("SELECT pg_total_relation_size('segment')").fetchone()
    return max(0, total - after)


def merge_due(merge_rows, max_bytes=0):
    """Whether `merge_once` would merge (a read)."""
    return _merge_run(merge_rows, max_bytes) is not None


def _merge_run(merge_rows, max_bytes=0):
    if merge_rows <= 0:
        return None
    return merge_plan(db.execute("SELECT id, min_id, max_id, rows, bytes FROM segment "
                                 "ORDER BY min_id").fetchall(), merge_rows, max_bytes)


def merge_plan(stored, merge_rows, max_bytes=0):
    """Of the segments `stored` ((id, min_id, max_id, rows, bytes), by
    min_id), the oldest run of consecutive ones to merge into one of at
    most `merge_rows` entries (and `max_bytes`, when not 0); None if none
    is due.

    A segment of more than half `merge_rows` is done: it is merged no more,
    so that an entry is rewritten once. A run is due once it holds seven
    eighths of `merge_rows`, or when the segment after it cannot join it;
    the newest run waits for the segments that will fill it."""
    run, rows, size = [], 0, 0
    for segment in stored:
        _, low, _, count, length = segment
        joins = (count <= merge_rows // 2 and rows + count <= merge_rows
                 and (not max_bytes or size + length <= max_bytes)
                 and (not run or low == run[-1][2] + 1))
        if joins:
            run.append(segment)
            rows += count
            size += length
            if len(run) > 1 and rows >= merge_rows - merge_rows // 8:
                return run
            continue
        if len(run) > 1:
            return run
        starts = count <= merge_rows // 2 and (not max_bytes or length <= max_bytes)
        run, rows, size = ([segment], count, length) if starts else ([], 0, 0)
    return None


def merge_once(merge_rows, max_bytes=0):
    """Merge the oldest run of segments that is due (`_merge_run`) into one
    segment. The new segment is built while the store serves; one
    transaction then adds it and removes the segments it replaces, unless
    one of them is gone meanwhile (retention), when nothing changes.
    Returns how many entries were merged (0: none due)."""
    run = _merge_run(merge_rows, max_bytes)
    if run is None:
        return 0
    metas = [{"id": i, "min_id": low, "max_id": high, "blocks": None}
             for i, low, high, _, _ in run]
    blob, summary = _merged(metas)
    ids = [meta["id"] for meta in metas]
    marks = ", ".join("?" for _ in ids)
    wal.make_room()
    with database.atomic():
        (present,) = db.execute(f"SELECT count(*) FROM segment WHERE id IN ({marks})",
                                ids).fetchone()
        if present != len(ids):
            return 0
        db.execute(f"DELETE FROM segment WHERE id IN ({marks})", ids)
        _insert(metas[0]["min_id"], metas[-1]["max_id"], summary["rows"], blob, summary)
    wal.give_back_free_pages()
    return summary["rows"]


def _merged(metas):
    """(Parquet bytes, summary) of one segment holding the rows of the
    segments `metas`, sorted by scope and time as a whole. Each source is
    already sorted so: its file is held in memory, and decoded a row group
    at a time as the merged order reaches it, so that what is held decoded
    at once is a row group of each source and the merged file, not every
    row."""
    arrow_ready()
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    files, keys = [], []
    for at, meta in enumerate(metas):
        # Each source is read whole first (together at most a merged
        # segment's entries, about 100 MB), so that no read snapshot is
        # held while the merge decodes and writes for tens of seconds: on
        # SQLite an open blob handle keeps its snapshot, and every TRUNCATE
        # checkpoint (wal.py) then waited for it, holding the write lock
        # away from ingest (30 s waits, and a 503, while loading ten
        # million entries).
        file = pq.ParquetFile(pa.BufferReader(stored_bytes(meta["id"])))
        files.append(file)
        key = file.read(columns=["project_id", "container_id", "ts_ms", "id"], use_threads=False)
        keys.append(pa.table({
            "project_id": key["project_id"],
            "container_id": pc.fill_null(key["container_id"], ""),
            "ts_ms": key["ts_ms"], "id": key["id"],
            "_src": pa.array(np.full(key.num_rows, at, dtype=np.int32)),
            "_pos": pa.array(np.arange(key.num_rows, dtype=np.int64))}))
    order = pa.concat_tables(keys).sort_by(
        [("project_id", "ascending"), ("container_id", "ascending"), ("ts_ms", "ascending"),
         ("id", "ascending")])
    sources = order["_src"].to_numpy()
    positions = order["_pos"].to_numpy()
    total = len(positions)
    # A block of rows (a Bloom filter's) is a row group; the rows are
    # merged a chunk of several at a time.
    row_group = max(1, min(ROW_GROUP, total // 8))
    chunk_rows = row_group * 4
    starts = [_layout(meta)[0] for meta in metas]
    held = {}  # source -> (its row group, decoded)
    schema = _schema()
    out = io.BytesIO()
    blooms = []
    with pq.ParquetWriter(out, schema, compression="zstd", compression_level=MERGE_LEVEL,
                          use_dictionary=_DICTIONARY, write_statistics=True) as writer:
        for start in range(0, total, chunk_rows):
            chunk_sources = sources[start:start + chunk_rows]
            chunk_positions = positions[start:start + chunk_rows]
            parts, places = [], []
            for at in np.unique(chunk_sources):
                place = np.nonzero(chunk_sources == at)[0]
                wanted = chunk_positions[place]
                groups = np.searchsorted(starts[at], wanted, side="right") - 1
                for g in np.unique(groups):
                    if held.get(at, (None,))[0] != g:
                        held[at] = (g, files[at].read_row_group(int(g), use_threads=False))
                    among = groups == g
                    parts.append(held[at][1].take(pa.array(wanted[among] - starts[at][g])))
                    places.append(place[among])
            chunk = pa.concat_tables(parts)
            back = np.empty(chunk.num_rows, dtype=np.int64)
            back[np.concatenate(places)] = np.arange(chunk.num_rows, dtype=np.int64)
            chunk = chunk.take(pa.array(back))
            writer.write_table(chunk, row_group_size=row_group)
            text = chunk.select(_BLOOMED).to_pydict()
            blooms.extend(_block_blooms(*(text[c] for c in _BLOOMED), row_group))
    projects = set()
    for meta in metas:
        projects |= _projects(meta)
    times = pc.min_max(order["ts_ms"])
    summary = {"rows": total, "min_ts": times["min"].as_py(), "max_ts": times["max"].as_py(),
               "projects": sorted(projects),
               "words": _words_value(row_group, blooms)}
    return out.getbuffer(), summary  # not copied: a merged file is large


# --- retention ---------------------------------------------------------------

def oldest_id():
    """The least id the store holds, sealed or hot (None: none)."""
    row = db.execute("SELECT min_id FROM segment ORDER BY min_id LIMIT 1").fetchone()
    if row is not None:
        return row[0]
    return db.execute("SELECT min(id) FROM entry").fetchone()[0]


def oldest_ts():
    """The earliest time of an entry the store holds (None: none)."""
    found = [db.execute("SELECT min(min_ts) FROM segment").fetchone()[0],
             db.execute("SELECT min(ts_ms) FROM entry").fetchone()[0]]
    return min((ts for ts in found if ts is not None), default=None)


def drop(segment_id):
    """Drop one segment (in the caller's transaction, which subtracts its
    entries from the counters). Returns (its entries as rollup.ROW_SQL's
    rows, its least id, its greatest id), or None if it is gone."""
    row = db.execute("SELECT min_id, max_id FROM segment WHERE id = ?", (segment_id,)).fetchone()
    if row is None:
        return None
    table = _read_groups({"id": segment_id, "min_id": row[0], "max_id": row[1]},
                         columns=frozenset(_COUNTED_COLUMNS))
    db.execute("DELETE FROM segment WHERE id = ?", (segment_id,))
    return stored_rows(table, _COUNTED_COLUMNS), row[0], row[1]


def droppable(cutoff=None):
    """The oldest segment (id), or with `cutoff` the oldest whose every
    entry is older than it; None if none."""
    if cutoff is None:
        row = db.execute("SELECT id FROM segment ORDER BY min_id LIMIT 1").fetchone()
    else:
        row = db.execute("SELECT id FROM segment WHERE max_ts < ? ORDER BY min_id LIMIT 1",
                         (cutoff,)).fetchone()
    return None if row is None else row[0]


# rollup.ROW_SQL's columns, as a segment names them.
_COUNTED_COLUMNS = ("ts_ms", "project_id", "container_id", "service_name", "level", "kind",
                    "status", "source", "route", "lat_bucket", "duration_ms")
# How each column of a segment is stored in `entry` (names.py).
_NAMED = {"project_id", "container_id", "service_name", "method", "route"}
_LETTERED = {"level", "kind", "source"}


def stored_rows(table, columns):
    """The rows of an Arrow table of sealed entries as `entry` stores them
    (tuples of `columns`; a column of another name as it is)."""
    converted = []
    for column in columns:
        if column in _NAMED:
            convert = names.stored
        elif column in _LETTERED:
            convert = functools.partial(names.lettered, column)
        else:
            convert = None
        converted.append(_values(table[column], convert))
    return list(zip(*converted))


def _values(column, convert=None):
    """A column's values as Python's, each given to `convert` when there is
    one (once per distinct value). A dictionary column's (the names) are
    made from its dictionary, a value per distinct name, not an object per
    row."""
    arrow_ready()
    import numpy as np
    import pyarrow as pa

    if not pa.types.is_dictionary(column.type):
        values = column.to_pylist()
        if convert is None:
            return values
        memo = {}
        return [memo[v] if v in memo else memo.setdefault(v, convert(v)) for v in values]
    out = []
    for chunk in getattr(column, "chunks", [column]):
        distinct = chunk.dictionary.to_pylist()
        if convert is not None:
            distinct = [convert(name) for name in distinct]
        # Each row takes its value by index (numpy), the last one a null's.
        values = np.empty(len(distinct) + 1, dtype=object)
        values[:len(distinct)] = distinct
        out.extend(values[chunk.indices.fill_null(len(distinct)).to_numpy()].tolist())
    return out


def clear():
    db.execute("DELETE FROM segment")
    _staged.clear()


# --- the counters' partial minutes: sealed entries as rows of SQL --------------

# `sealed_entry`: a temporary table (one per connection) with the columns
# of `entry` that counting reads, in `entry`'s stored forms.
_STAGED_COLUMNS = ("id", "ts_ms", "project_id", "container_id", "service_name", "level", "kind",
                   "method", "status", "source", "route", "duration_ms", "lat_bucket")
_STAGED_TYPES = ("id BIGINT PRIMARY KEY, ts_ms BIGINT, project_id TEXT, container_id TEXT, "
                 "service_name TEXT, level TEXT, kind TEXT, method TEXT, status INTEGER, "
                 "source TEXT, route TEXT, duration_ms DOUBLE PRECISION, lat_bucket SMALLINT")
# Per connection: (the segments it was filled from, the windows staged).
_staged = {}
# Past this many rows, the table is emptied before the next window.
_STAGED_MAX = 200_000


def stage(filters, bucket=None):
    """Copy into `sealed_entry` the sealed entries that may match `filters`
    (their scope, time range and the other filters Arrow applies; with
    `bucket`, only that latency bucket's). Returns whether there are any:
    the caller then adds the `twin` of its SQL over `entry`."""
    through = sealed_through()
    if not through:
        return False
    version = db.memoized("segment_version", lambda: tuple(db.execute(
        "SELECT count(*), min(id), max(id) FROM segment").fetchone()))
    if not version[0]:
        return False
    key = id(database.connection())
    state = _staged.get(key)
    if state is None or not _staging_table_exists():
        db.execute(f"CREATE TEMP TABLE IF NOT EXISTS sealed_entry ({_STAGED_TYPES})")
        state = None
    if state is None or state[0] != (through, *version) or state[2] > _STAGED_MAX:
        db.execute("DELETE FROM sealed_entry")
        state = _staged[key] = [(through, *version), {}, 0]
    window = (filters, bucket)
    if window in state[1]:
        return state[1][window]
    any_rows = False
    for meta in _segments(filters, None, through):
        table = _matching(meta, filters, None, through, columns=frozenset(_STAGED_COLUMNS),
                          bucket=bucket)
        if bucket is not None and table.num_rows:
            arrow_ready()
            import pyarrow.compute as pc

            table = table.filter(pc.equal(table["lat_bucket"], bucket))
        if not table.num_rows:
            continue
        any_rows = True
        rows = stored_rows(table, _STAGED_COLUMNS)
        marks = ", ".join("?" for _ in _STAGED_COLUMNS)
        db.executemany(f"INSERT INTO sealed_entry ({', '.join(_STAGED_COLUMNS)}) "
                       f"VALUES ({marks}) ON CONFLICT (id) DO NOTHING", rows)
        state[2] += len(rows)
    state[1][window] = any_rows
    return any_rows


def _staging_table_exists():
    return db.memoized("sealed_entry", lambda: db.temp_table_exists("sealed_entry"), bool)


def twin(sql):
    """`sql` over `entry` rewritten over `sealed_entry` (see `stage`)."""
    return _FROM_ENTRY.sub("FROM sealed_entry", sql)


_FROM_ENTRY = re.compile(r"\bFROM entry\b(?!_)")


# --- reading ---------------------------------------------------------------------

def read(filters, after_id=None, upto_id=None, order="desc", limit=None, bodies=None,
         slowest=False, memo=None, skip=None):
    """The sealed entries matching `filters` with after_id < id <= upto_id,
    as the API's entries: newest first (`desc`),
    oldest first (`asc`), or longest first (`slowest`), at most `limit`
    (None: all). `bodies`: (request wanted, response wanted), or None.
    `memo`: a dict that `read` and `count` share within one request, so
    that a segment's matching rows are found once for the page and its
    total. `skip` (not with `slowest`): a list of one number, the matches
    to pass over first (a page's offset), never read whole; what is left
    of it when the matches ran out stays there."""
    chosen = _segments(filters, after_id, upto_id, memo)
    if order == "desc" or slowest:
        chosen.reverse()
    arrow_ready()
    import pyarrow.compute as pc

    if slowest and limit is not None and not filters.q:
        return _slowest(chosen, filters, after_id, upto_id, limit, bodies, memo)
    found = []
    for meta in chosen:
        if filters.q and limit is not None and not slowest:
            # Words: the rows are searched in windows by id, until the page
            # has its matches (a common word's first page need not search
            # the whole segment).
            want = limit - len(found)
            for part in _windows(meta, filters, after_id, upto_id, memo, order):
                for batch in _batches(part, filters, bodies, meta, want, skip):
                    found.extend(batch)
                    want -= len(batch)
                if want <= 0:
                    return found[:limit]
            continue
        # The rows are found, ordered and checked by a few columns; only
        # those returned are read whole.
        table = _matching(meta, filters, after_id, upto_id, memo, _KEY_COLUMNS)
        if table.num_rows == 0:
            continue
        by_id = [("id", "descending" if order == "desc" else "ascending")]
        first = None if slowest or filters.q or limit is None else \
            limit - len(found) + (skip[0] if skip else 0)
        if first is not None and table.num_rows > 4 * first:
            # Every row a match: the first by id are selected, not all
            # sorted (a merged segment's million: 100 ms).
            table = table.take(pc.select_k_unstable(table, k=first, sort_keys=by_id))
        table = table.sort_by(_SLOWEST if slowest else by_id)
        if skip and skip[0] and not filters.q:
            passed = min(skip[0], table.num_rows)  # every row a match: passed by number
            skip[0] -= passed
            table = table.slice(passed)
        taken = 0
        want = None if limit is None or slowest else limit - len(found)
        for batch in _batches(table, filters, bodies, meta, want, skip):
            found.extend(batch)
            taken += len(batch)
            if limit is not None and len(found) >= limit and not slowest:
                return found[:limit]
            if slowest and limit is not None and taken >= limit:
                break  # this segment's longest matches: enough of it
    if slowest:
        found.sort(key=slowest_key, reverse=True)
        if limit is not None:
            found = found[:limit]
    return found


# What `order=slowest` sorts by (slowest_key), as Arrow sort keys; an entry
# without a duration has no bucket, and comes last.
_SLOWEST = [("lat_bucket", "descending"), ("duration_ms", "descending"), ("id", "descending")]


def _slowest(chosen, filters, after_id, upto_id, limit, bodies, memo):
    """The `limit` longest sealed matches of the segments `chosen`: each
    one's longest, ranked together by their key columns; only those
    returned are read whole."""
    arrow_ready()
    import pyarrow as pa
    import pyarrow.compute as pc

    ranked = []
    for at, meta in enumerate(chosen):
        table = _matching(meta, filters, after_id, upto_id, memo, _KEY_COLUMNS)
        if table.num_rows:
            keys = table.select(["lat_bucket", "duration_ms", "id", "_pos"])
            if keys.num_rows > limit:
                # The `limit` first in the order, selected without sorting
                # them all (a merged segment's million: 170 ms sorted).
                keys = keys.take(pc.select_k_unstable(keys, k=limit, sort_keys=_SLOWEST))
            top = keys.sort_by(_SLOWEST)
            ranked.append(top.append_column("_segment", pa.array([at] * top.num_rows,
                                                                  pa.int32())))
    if not ranked:
        return []
    top = pa.concat_tables(ranked).sort_by(_SLOWEST).slice(0, limit)
    picks = {}  # segment -> [(rank, place in it)]
    for rank, (at, position) in enumerate(zip(top["_segment"].to_pylist(),
                                              top["_pos"].to_pylist())):
        picks.setdefault(at, []).append((rank, position))
    found = [None] * top.num_rows
    for at, chosen_rows in picks.items():
        rows = _rows_at(chosen[at], [position for _, position in chosen_rows],
                        _ENTRY_COLUMNS if bodies is None else _WITH_BODIES)
        for (rank, _), item in zip(chosen_rows, _entries(rows, bodies)):
            found[rank] = item
    return found


def slowest_key(item):
    """What `order=slowest` sorts an entry by (its latency bucket, its
    duration, its id), as the SQL of the hot entries does."""
    duration = item["durationMs"]
    return (sketch.bucket_of(duration) if duration is not None else -1, duration or 0,
            item["id"])


def matching_arrays(filters, upto_id, columns):
    """The sealed entries matching `filters` with id <= upto_id, as numpy
    arrays of `columns`, a {column: array} a segment: what stats over
    filters the counters do not keep group (`grouped`), without making an
    entry, or even an Arrow row, of each match. A column of names, levels,
    kinds or sources (_DICTIONARY) is (its distinct values, an Arrow
    array; each row's index among them, -1 for none); a number's is a
    numpy array (float, NaN for none, where it has nulls).

    Without `q`, a trace id or a client ip, a segment whose small columns
    are warm (`_warm_columns`) is filtered as a whole with a mask, its
    names taken from their codes, kept per process (`_codes`); the others
    go through `_matching`, as a page's do."""
    arrow_ready()
    import numpy as np
    import pyarrow as pa

    parsed = fulltext.parse(filters.q) if filters.q else None
    plain = parsed is None and filters.trace_id is None and filters.client_ip is None
    for meta in _segments(filters, None, upto_id):
        warm = _warm_table(_key(meta)) if plain else None
        if warm is not None:
            mask = _mask(warm, filters, None,
                         upto_id if upto_id is not None and upto_id < meta["max_id"] else None,
                         functools.partial(_codes, meta, warm))
            picked = None if mask is None else np.flatnonzero(
                mask.fill_null(False).to_numpy(zero_copy_only=False))
            if picked is not None and not len(picked):
                continue
            arrays = {}
            for column in columns:
                if column in _DICTIONARY:
                    values, codes = _codes(meta, warm, column)
                    arrays[column] = (values, codes if picked is None else codes[picked])
                else:
                    numbers = _numbers(warm[column])
                    arrays[column] = numbers if picked is None else numbers[picked]
            yield arrays
            continue
        table = _matching(meta, filters, None, upto_id, columns=frozenset(columns))
        selected = table.select(list(columns))
        if parsed is not None and table.num_rows:
            # The rows _prefiltered decided are kept as they are; the rest
            # are checked one by one (filtered, not taken: taking from the
            # row groups' chunks copies every body).
            keep = np.zeros(table.num_rows, dtype=bool)
            if "_sure" in table.column_names:
                keep |= np.asarray(table["_sure"].to_numpy(zero_copy_only=False), dtype=bool)
            unsure = np.flatnonzero(~keep)
            if len(unsure):
                doubtful = table.select(list(_DOCUMENT)).filter(pa.array(~keep))
                for start in range(0, len(unsure), _BATCH):
                    keep[unsure[start:start + _BATCH][
                        _passing(doubtful.slice(start, _BATCH), parsed)]] = True
            if not keep.all():
                selected = selected.filter(pa.array(keep))
        if selected.num_rows:
            yield _arrays(selected, columns)


def hot_arrays(table, filters, columns):
    """`matching_arrays`'s arrays of a table of hot entries
    (hotcolumns.table) for the rows that match `filters` (neither `q`, a
    trace id nor a client ip: see matching_arrays); None when none does."""
    if table.num_rows:
        mask = _mask(table, filters, None, None)
        if mask is not None:
            table = table.filter(mask)
    return _arrays(table.select(list(columns)), columns) if table.num_rows else None


def _arrays(selected, columns):
    """{column: array} of a table's rows as `matching_arrays` gives them:
    in one chunk (a row group's each, read from a merged segment:
    hundreds), each name's codes against one dictionary."""
    selected = selected.unify_dictionaries().combine_chunks()
    return {column: _coded(selected[column].chunk(0)) if column in _DICTIONARY
            else _numbers(selected[column]) for column in columns}


def _coded(array):
    """(distinct values, each row's index among them as numpy, -1 for
    none) of a dictionary array."""
    arrow_ready()
    import pyarrow as pa
    import pyarrow.compute as pc

    if not pa.types.is_dictionary(array.type):
        array = pc.dictionary_encode(array)
    return array.dictionary, pc.fill_null(array.indices, -1).to_numpy()


def _numbers(column):
    """A numeric column as numpy: its own type without nulls, else float
    with NaN for each."""
    arrow_ready()
    import numpy as np
    import pyarrow.compute as pc

    if not column.null_count:
        return column.to_numpy()
    return pc.fill_null(column.cast("float64"), np.nan).to_numpy()


# (segment key, column) -> (values, codes): a warm segment's names as one
# dictionary and each row's index in it (`_coded` over its row groups),
# kept while its warm columns are (2 bytes a row a column, below 32,768
# names).
_warm_codes = {}


def _codes(meta, warm, column):
    """(distinct values, each row's index) of a column of names of a warm
    segment (`matching_arrays`), made once per process."""
    arrow_ready()
    import numpy as np

    key = (_key(meta), column)
    found = _warm_codes.get(key)
    if found is None:
        unified = warm.select([column]).unify_dictionaries()[column]
        values = unified.chunk(0).dictionary
        codes = np.concatenate([_coded(chunk)[1] for chunk in unified.chunks])
        found = (values, codes.astype(np.int16 if len(values) < 1 << 15 else np.int32))
        with _cache_lock:
            _warm_codes[key] = found
    return found


def grouped(arrays, keys, rows=None, extremes=None):
    """The rows of `arrays` (`matching_arrays`'; with `rows`, the rows at
    those indexes) grouped by `keys`: (key values..., count) tuples, the
    keys as `entry` stores them (`stored_rows`), with `extremes` (a numeric
    column) the least and the greatest of it after the count."""
    arrow_ready()
    import numpy as np
    import pyarrow as pa

    codes, sizes, decoders = [], [], []
    for key in keys:
        column = arrays[key]
        if isinstance(column, tuple):
            values, indexes = column
            code = indexes.astype(np.int64) + 1  # 0: none
            sizes.append(len(values) + 1)
            decoders.append(lambda c, values=values: values.take(
                pa.array(c - 1, mask=c == 0)))
        else:
            floating = column.dtype.kind == "f"
            valid = ~np.isnan(column) if floating else None
            present = column[valid] if floating else column
            low = present.min() if len(present) else 0
            code = (column - low + 1) if not floating else np.where(valid, column - low + 1, 0)
            code = code.astype(np.int64)
            sizes.append(int(code.max()) + 1 if len(code) else 1)
            whole = key not in _schema().names or pa.types.is_integer(_schema().field(key).type)
            decoders.append(lambda c, low=low, whole=whole: pa.array(
                (c - 1 + low).astype(np.int64 if whole else np.float64), mask=c == 0))
        codes.append(code if rows is None else code[rows])
    combined = codes[0]
    for code, size in zip(codes[1:], sizes[1:]):
        combined = combined * size + code
    out = {}
    if extremes is None and np.prod(sizes, dtype=np.float64) <= 1 << 22:
        counts = np.bincount(combined, minlength=1)
        present = np.flatnonzero(counts)
        counts = counts[present]
    else:  # Arrow's hash aggregation (NaN taken as none)
        table = {"key": combined}
        if extremes is not None:
            table["value"] = pa.array(arrays[extremes] if rows is None
                                      else arrays[extremes][rows], from_pandas=True)
        summed = pa.table(table).group_by("key", use_threads=False).aggregate(
            [("key", "count")] + ([("value", "min"), ("value", "max")] if extremes else []))
        present, counts = summed["key"].to_numpy(), summed["key_count"]
        if extremes is not None:
            out["least"], out["greatest"] = summed["value_min"], summed["value_max"]
    parts = []
    for size in reversed(sizes):
        parts.append(present % size)
        present = present // size
    table = {key: decode(code) for key, decode, code in zip(keys, decoders, reversed(parts))}
    table["count"] = pa.array(counts)
    table.update(out)
    return stored_rows(pa.table(table), list(table))


def count(filters, after_id=None, upto_id=None, cap=None, memo=None, rows=None):
    """(how many sealed entries match, whether that is all of them).
    Counting stops past `cap`; with `rows`, it also stops before a segment
    that `memo` does not hold yet would take the rows it decodes for the
    count (at least a row group's) past that many, or before the rows of
    a segment that a page's search of words has not reached yet (its
    windows, `_windows`) would. The segments a page has read are counted
    first, as far as it searched them, at no cost: a rare word's newest
    page need not decode every row group of the day that may hold it to
    say how many there are, nor a common word's oldest page search all of
    a merged segment's rows past the 4,096 that gave it its matches."""
    n, spent = 0, 0
    if memo is None:
        memo = {}
    parsed = fulltext.parse(filters.q) if filters.q else None

    def unread(meta):
        return (_matching_key(meta, filters, after_id, upto_id, _KEY_COLUMNS), True) not in memo \
            and not any(_windows_key(meta, filters, after_id, upto_id, order) in memo
                        for order in ("desc", "asc"))

    chosen = _segments(filters, after_id, upto_id, memo)
    if rows is not None:
        chosen.sort(key=unread)  # stable: those read first, in their order
    for meta in chosen:
        if rows is not None and unread(meta):
            parts = _parts_to_read(meta, filters)
            if not parts:
                continue
            # What it decodes, and at least a row group: opening a segment
            # and searching its rows costs about that much whatever it holds.
            cost = max(sum(end - first for _, first, end, _ in parts), max(_layout(meta)[1]))
            if spent + cost > rows:
                return n, False
            spent += cost
        if parsed is None:
            n += _matching(meta, filters, after_id, upto_id, memo, _KEY_COLUMNS).num_rows
        else:
            # In the windows a page searched, and past them (a common
            # word's count stops at the cap, having searched that many).
            order = next((order for order in ("desc", "asc")
                          if _windows_key(meta, filters, after_id, upto_id, order) in memo),
                         "asc")
            # The windows a page searched are counted at no cost; the rows
            # past them (a common word's page searches a few thousand of a
            # merged segment's hundreds of thousands) count against `rows`.
            searched = memo.get(_windows_key(meta, filters, after_id, upto_id, order))
            for at, part in enumerate(_windows(meta, filters, after_id, upto_id, memo, order)):
                for start in range(0, part.num_rows, _BATCH):
                    n += len(_passing(part.slice(start, _BATCH), parsed))
                    if cap is not None and n > cap:
                        return n, False
                if rows is not None and searched is not None \
                        and at + 1 == len(searched["parts"]) and searched["left"]:
                    if spent + searched["left"] > rows:
                        return n, False
                    spent += searched["left"]  # the rest, once
                    searched = None
        if cap is not None and n > cap:
            return n, False
    return n, True


# The rows a search of words looks at first in a segment (`_windows`), each
# window then four times the one before.
_WINDOW = 4_096
# A window whose candidates are fewer than one row in this many.
_SPARSE = 64


def _windows(meta, filters, after_id, upto_id, memo, order):
    """The rows of a segment that pass the filters and may match `q`
    (`_matching`'s, with _prefiltered's marks), in `order` of id, a window
    at a time: the rows are searched for the words one window after
    another, as the caller asks for more. A request's `read` and `count`
    share the windows searched (`memo`)."""
    arrow_ready()
    import numpy as np
    import pyarrow as pa

    key = _windows_key(meta, filters, after_id, upto_id, order)
    state = None if memo is None else memo.get(key)
    if state is None:
        table = _matching(meta, filters, after_id, upto_id, memo, _KEY_COLUMNS, prefilter=False)
        # A window's rows are picked when it is asked, by a mask of their
        # ids between its bounds (found by partition, not by sorting them
        # all): the rows hold their text, a chunk a row group, and sorting
        # or taking them whole copies every body.
        ids = table["id"].to_numpy()
        # "left": the rows not in a window searched yet.
        state = {"table": table, "ranks": -ids if order == "desc" else ids, "parts": [],
                 "left": len(ids)}
        if memo is not None:
            memo[key] = state
    table, ranks, parts = state["table"], state["ranks"], state["parts"]
    by_id = [("id", "descending" if order == "desc" else "ascending")]
    n = table.num_rows
    start, size, at, low, sparse = 0, _WINDOW, 0, None, False
    while start < n:
        # Past half the rows, or once a window held few candidates
        # (a rare word: its search will reach the rest), the rest is
        # searched at once, in place: picking a window's rows copies them,
        # bodies too.
        rest = sparse or size * 2 > n
        end = n if rest else start + size
        high = None if rest else np.partition(ranks, end - 1)[end - 1]
        if at == len(parts):
            if rest:
                part = table
            else:
                mask = ranks <= high
                if low is not None:
                    mask &= ranks > low
                part = table.filter(pa.array(mask))
            if part.num_rows > _CHECKED_ALONE:
                part = _prefiltered(part, filters.q, meta.get("rarity"), meta.get("heads"))
            if rest and low is not None:  # the windows before have these
                ids = part["id"].to_numpy()
                part = part.filter(pa.array((-ids if order == "desc" else ids) > low))
            parts.append(part.sort_by(by_id))
            state["left"] = n - end
        yield parts[at]
        sparse = parts[at].num_rows * _SPARSE < end - start
        start, size, at, low = end, size * 4, at + 1, high


def _windows_key(meta, filters, after_id, upto_id, order):
    return ("windows", order, _matching_key(meta, filters, after_id, upto_id, _KEY_COLUMNS))


def _segments(filters, after_id, upto_id, memo=None):
    """The segments (dicts) that may hold a match, oldest first (found once
    a request for `read` and `count` when they share `memo`)."""
    key = ("segments", filters, after_id, upto_id)
    if memo is not None and key in memo:
        return list(memo[key])
    chosen = _chosen_segments(filters, after_id, upto_id)
    if memo is not None:
        memo[key] = chosen
    return list(chosen)


def _chosen_segments(filters, after_id, upto_id):
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
    rows = db.execute(f"SELECT id, min_id, max_id FROM segment "
                      f"WHERE {' AND '.join(terms)} ORDER BY min_id", params).fetchall()
    chosen = []
    wanted, runs = _wanted_words(filters), _runs(filters)
    searched = _searched_words(filters)
    # Each group's positive whole words (a group without any reads bodies).
    needed = [] if searched is None else [
        {word for phrase in group.positive
         for word in _whole_words(phrase)}
        for group in fulltext.parse(filters.q)]
    # Each word's share of the blocks that may hold it, learnt from the
    # first segment with candidate blocks: a block is asked for the rarest
    # word first (most are then ruled out by one look), and the candidate
    # rows are searched for it first (_prefiltered).
    rarity = {}
    for segment_id, low, high in rows:
        meta = {"id": segment_id, "min_id": low, "max_id": high, "blocks": None}  # all
        if filters.project_id is not None and filters.project_id not in _projects(meta):
            continue
        if wanted:
            size, blooms, holding = _blooms(meta)
            # The blocks of the row groups that the project, container and
            # time range admit, and of them those that may hold the words.
            candidates = range(len(blooms))
            if filters.project_id is not None or filters.since is not None \
                    or filters.until is not None:
                starts, admitted = _admitted(meta, filters)
                candidates = [at for at in candidates
                              if bisect.bisect_right(starts, at * size) - 1 in admitted]
            held = _held(holding, blooms, candidates)
            if not rarity and candidates:
                for word in {word for group in wanted for word in group}:
                    rarity[word] = held(word).sum() / len(candidates)
                wanted = [tuple(sorted(group, key=rarity.get)) for group in wanted]
            meta["blocks"] = (size, _holding_blocks(blooms, candidates, held, wanted, runs))
            meta["rarity"] = rarity
            if not meta["blocks"][1]:
                continue
            if searched is not None and isinstance(blooms[meta["blocks"][1][0]], _Split):
                # Each word's blocks whose urls and data may hold it: the
                # others' are not searched for it (_prefiltered).
                heads = {word: holding.blocks(word, kind=0) for word in searched}
                if all(held is not None for held in heads.values()):
                    meta["heads"] = (size, heads)
                # The blocks whose bodies lack a word that each group
                # needs, and the words searched that their bodies may
                # hold: their bodies are read only for the rows that need
                # them (_with_bodies).
                lazy = {}
                for at in meta["blocks"][1]:
                    held = frozenset(w for w in searched if w in blooms[at].body)
                    if all(set(group) - held for group in needed):
                        lazy[at] = held
                if lazy:
                    meta["bodies"] = lazy
        chosen.append(meta)
    return chosen


def warm():
    """Read what questions read first of each segment, that this process
    has not read yet: the background sealer of every worker calls it each
    round, so that the first question after a start, a seal or a merge
    finds them. The stored names (names.warm); every segment's footer,
    row-group bounds and projects; its Bloom filters, which only searches
    read, while all of them fit in their budget (past that, warming would
    cycle through them every round); and the small columns of the newest
    segments (`_warm_columns`)."""
    found = db.execute("SELECT id, min_id, max_id, length(words) FROM segment "
                       "ORDER BY min_id").fetchall()
    names.warm()
    if found:
        arrow_ready()
    filters = sum(row[3] or 0 for row in found) <= _skips.budget
    metas = [{"id": segment_id, "min_id": low, "max_id": high}
             for segment_id, low, high, _ in found]
    for meta in metas:
        _layout(meta)
        _projects(meta)
        if filters:
            _blooms(meta)
    _warm_columns(metas[::-1])


# The columns a question filters, counts and sorts by (no text): what a
# question over a time range without a scope decodes of every row group
# (a scope-sorted segment holds every hour in nearly each of its row
# groups). Decoding costs about 40 µs a column of a row group whatever its
# size: 0.3 s for these of a merged segment of 917,504 entries, which
# decoded take about 62 bytes an entry.
WARM_COLUMNS = frozenset(("id", "ts_ms", "status", "duration_ms", "lat_bucket", "kind", "level",
                          "project_id", "container_id", "service_name", "method", "source",
                          "route"))
# What the warmed columns may take, beside the decoded columns' budget.
WARM_BYTES = 112 << 20
# Row groups decoded a round (a round of the background sealer, each
# LOGSVC_SEAL_INTERVAL_S): about 0.1 s of a core, so that warming a merged
# segment (448 row groups at 1M) is spread over a few rounds rather than
# taken from the questions of one moment.
WARM_GROUPS = 128
# segment key -> its WARM_COLUMNS decoded, a chunk per row group (a table).
_warm_tables = {}
# segment key -> the row groups decoded so far, of the one being warmed.
_warming = {}


def _warm_columns(metas):
    """Decode the small columns (WARM_COLUMNS) of the segments `metas`,
    newest first, while they fit in WARM_BYTES, at most WARM_GROUPS row
    groups a call, and keep them apart from the columns questions decode
    (which push each other out): each segment once per process, so that
    the first question over a time range finds them as the second does,
    and a scan of a whole segment takes them as one table rather than a
    row group at a time."""
    arrow_ready()
    import pyarrow as pa

    groups_left = WARM_GROUPS
    live = {_key(meta) for meta in metas}
    with _cache_lock:
        for kept in (_warm_tables, _warming):
            for key in [key for key in kept if key not in live]:
                del kept[key]  # merged, dropped, or another store's
        for key in [key for key in _warm_codes if key[0] not in live]:
            del _warm_codes[key]
        room = WARM_BYTES - sum(table.nbytes for table in _warm_tables.values()) - sum(
            codes.nbytes for _, codes in _warm_codes.values())
    names = [name for name in _schema().names if name in WARM_COLUMNS]
    for meta in metas:
        key = _key(meta)
        if key in _warm_tables:
            continue
        sizes = _layout(meta)[1]
        if sum(sizes) * 64 > room or groups_left <= 0:
            break
        groups = _warming.setdefault(key, [])
        try:
            file = _file(meta)
            while len(groups) < len(sizes) and groups_left > 0:
                groups.append(file.read_row_group(len(groups), columns=names,
                                                  use_threads=False))
                groups_left -= 1
        except db.Stale:
            _warming.pop(key, None)
            continue  # merged or dropped meanwhile
        if len(groups) < len(sizes):
            break  # the rest next round
        del _warming[key]
        # A chunk per row group: what `_GroupReader.group` takes by its number.
        table = pa.table([pa.chunked_array([group[name].combine_chunks() for group in groups],
                                           type=groups[0].schema.field(name).type)
                          for name in names], names=names)
        with _cache_lock:
            _warm_tables[key] = table
        room -= table.nbytes


def _warm_table(key):
    """The warmed columns of a segment (`_warm_columns`), or None."""
    return _warm_tables.get(key)


def arrow_ready():
    """Before any use of Arrow in a process: its modules are imported, and
    its first array made, here, one thread at a time under a lock of the
    operating system. Every function of this module that imports numpy or
    pyarrow calls it first.

    Under gevent, the import machinery's per-module locks and the lock
    under which Arrow's first array looks for pandas are gevent's, and the
    database threads are real threads. A thread that released such a lock
    wakes its waiter through its own event loop; when it then blocked on a
    lock of the operating system (this one, or the segments' cache), the
    waiter never woke, and every later question of the worker waited for
    it: two database threads importing pyarrow (or pyarrow.compute) at
    once stalled a worker for good. Once imported, a module is taken from
    `sys.modules` without any lock."""
    if _arrow_looked:
        return
    with _arrow_lock:
        if not _arrow_looked:
            import numpy as np
            import pyarrow as pa
            import pyarrow.compute
            import pyarrow.parquet

            pa.array(np.zeros(1, dtype=np.int64))
            _arrow_looked.append(True)


_arrow_lock = db.os_lock()
_arrow_looked = []


def _projects(meta):
    """The projects a segment holds, read once per process (a segment never
    changes): what `_segments` skips it by."""
    def load():
        found = db.execute(f"SELECT projects FROM segment WHERE {_THIS}", _this(meta)).fetchone()
        if found is None:
            raise db.Stale(f"segment {meta['id']} is gone")
        return frozenset(orjson.loads(found[0]))
    return _cached(_segment_projects, _key(meta), _CACHE_FOOTERS, load)


def _blooms(meta):
    """(rows per block, Blooms) of a segment, read only for a question with
    words or a trace id, and kept per process (`_skips`)."""
    key = _key(meta)
    found = _skips.get(key)
    if found is None:
        stored = db.execute(f"SELECT words FROM segment WHERE {_THIS}", _this(meta)).fetchone()
        if stored is None:
            raise db.Stale(f"segment {meta['id']} is gone")
        found = _skips.put(key, _unpack_blooms(stored[0]), len(stored[0]))
    return found


def _wanted_words(filters):
    """Alternatives of words a matching entry must all hold: one tuple per
    OR group of `q` (its positive words), and the trace id. () if none."""
    groups = []
    if filters.q:
        for group in fulltext.parse(filters.q):
            needed = []
            for phrase in group.positive:
                needed.extend(_whole_words(phrase))
            groups.append(tuple(needed))
    if filters.trace_id:
        trace = _TRACE_MARK + lookup.canonical("trace_id", filters.trace_id)
        groups = [(*g, trace) for g in groups] or [(trace,)]
    return groups


def _searched_words(filters):
    """Every whole word of `q`'s phrases, positive and negative (not the
    prefix a phrase may end with)."""
    if not filters.q:
        return None
    return {word for phrase in _phrases(fulltext.parse(filters.q))
            for word in _whole_words(phrase)}


def _phrases(parsed):
    """Every phrase of a parsed `q`, positive and negative."""
    return [p for group in parsed for p in (*group.positive, *group.negative)]


def _whole_words(phrase):
    """A phrase's words but the prefix it may end with."""
    return phrase.words[:-1] if phrase.prefix else phrase.words


def _single_words(parsed):
    """Whether every phrase of a parsed `q` is a single whole word: then an
    entry matches whatever text lies between its parts."""
    return all(len(p.words) == 1 and not p.prefix for p in _phrases(parsed))


def _held(holding, blooms, candidates):
    """word -> a boolean array over `candidates` (block numbers): may the
    block's filters hold the word (each word asked once)."""
    arrow_ready()
    import numpy as np

    chosen = np.asarray(candidates, dtype=np.int64)
    asked = {}

    def held(word):
        found = asked.get(word)
        if found is None:
            every = holding.blocks(word)
            found = asked[word] = (every[chosen] if every is not None else np.array(
                [word in blooms[at] for at in candidates], dtype=bool))
        return found
    return held


def _holding_blocks(blooms, candidates, held, groups, runs=None):
    """The blocks of `candidates` that may hold a match: all the words of a
    group of `groups` (`_wanted_words`; `held` asks every block for a word
    at once), and, where a block's filter has the marks of word order, the
    group's phrases in order (`runs`: the whole words of each group's
    phrases of two or more, `_runs`)."""
    import numpy as np

    kept = np.zeros(len(candidates), dtype=bool)
    for index, group in enumerate(groups):
        may = np.ones(len(candidates), dtype=bool)
        for word in group:
            may &= held(word)
            if not may.any():
                break
        phrases = runs[index] if runs is not None else ()
        if phrases:
            for at in np.flatnonzero(may):
                bloom = blooms[candidates[at]]
                if getattr(bloom, "marks", None) is not None \
                        and not all(_may_run(bloom, phrase) for phrase in phrases):
                    may[at] = False
        kept |= may
    return [candidates[at] for at in np.flatnonzero(kept)]


def _runs(filters):
    """For each group of `_wanted_words(filters)`, the whole words of its
    positive phrases of two or more of them (None: no `q`)."""
    if not filters.q:
        return None
    return [tuple(words for phrase in group.positive
                  if len(words := tuple(_whole_words(phrase))) > 1)
            for group in fulltext.parse(filters.q)]


def _matching(meta, filters, after_id, upto_id, memo=None, columns=None, bucket=None,
              prefilter=True):
    """The rows of one segment that pass the filters Arrow can apply (all
    but `q`, which `_batches` checks); kept in `memo` when one is given.
    With `columns`, the rows hold those, the ones the filters read, the
    document's when there is a `q`, and "_pos" (`_read_groups`). With
    `bucket`, only the rows of that latency bucket."""
    key = (_matching_key(meta, filters, after_id, upto_id, columns, bucket), prefilter)
    if memo is not None and key in memo:
        return memo[key]
    if columns is not None:
        columns = {*columns, *_filtered_columns(filters, after_id, upto_id)}
    table = _read_groups(meta, filters, columns, bucket)
    # Bounds that every row of the segment meets filter nothing (and
    # filtering copies every column, bodies too).
    if after_id is not None and after_id < meta["min_id"]:
        after_id = None
    if upto_id is not None and upto_id >= meta["max_id"]:
        upto_id = None
    mask = _mask(table, filters, after_id, upto_id) if table.num_rows else None
    if mask is not None:
        table = table.filter(mask)
    if "_block" in table.column_names:
        table = _with_bodies(table, filters.q, meta["bodies"],
                             lambda positions: _rows_at(meta, positions, _BODIES),
                             meta.get("rarity"))
    if filters.q and prefilter and table.num_rows > _CHECKED_ALONE:
        table = _prefiltered(table, filters.q, meta.get("rarity"), meta.get("heads"))
    if memo is not None:
        memo[key] = table
    return table


def _matching_key(meta, filters, after_id, upto_id, columns=None, bucket=None):
    """What `_matching` keeps a segment's rows by in a request's memo."""
    return (_key(meta), filters, after_id, upto_id, columns, bucket)


def _with_bodies(table, q, held, load, rarity=None):
    """The rows of `table` that may match `q`, with the bodies that can
    decide it. The rows of the blocks in `held` were read without their
    bodies (`_read_groups`; "_block" is each row's block, -1 for a block
    read whole): `held` gives the words of `q` that each one's bodies may
    hold (their Bloom filter), `load(positions)` the bodies of rows by
    `_pos`.

    Such a row may match if, for a group of `q`, each positive word is in
    its url or `data` (Arrow's case-insensitive search, as `_prefiltered`
    looks for it) or may be in its bodies: it has a body, and its block's
    filter may hold the word. The words are looked for rarest first
    (`rarity`), each among the rows that held the ones before. Of the rows
    that may match, those with a body are read with it, unless their
    block's bodies hold no phrase of `q` whole and the row matches alike
    whatever its bodies hold (always so when each phrase is a single whole
    word; a longer phrase may also run into or out of the bodies:
    `_bordering`)."""
    arrow_ready()
    import numpy as np
    import pyarrow as pa

    blocks = table["_block"].to_numpy()
    table = table.drop_columns(["_block"])
    # The rows read whole come first (_read_groups): they stay as they are,
    # not copied.
    first = int(np.count_nonzero(blocks < 0))
    if first and (blocks[:first] >= 0).any():  # not so: put them first
        order = np.argsort(blocks >= 0, kind="stable")
        table, blocks = table.take(pa.array(order)), blocks[order]
    if first:
        whole_rows, table, blocks = table.slice(0, first), table.slice(first), blocks[first:]
        return pa.concat_tables((whole_rows, _with_bodies_read(table, blocks, q, held, load,
                                                               rarity)))
    return _with_bodies_read(table, blocks, q, held, load, rarity)


def _with_bodies_read(table, blocks, q, held, load, rarity):
    """`_with_bodies` of rows all read without their bodies."""
    arrow_ready()
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = table.num_rows
    if not n:
        return table
    parsed = fulltext.parse(q)
    bodied = np.asarray(table["has_body"].to_numpy(zero_copy_only=False), dtype=bool)
    # Each row's block among the distinct ones, for per-block answers.
    kinds, inverse = np.unique(blocks, return_inverse=True)

    def per_block(test):
        return np.array([test(held[b]) for b in kinds], dtype=bool)[inverse]

    def in_head(word, among):
        """Of the rows `among` (indexes), whether each one's url or data may
        hold `word` (or start with it)."""
        # "İ" is a spelling of "i" that RE2's case folding does not see: a
        # word with an "i" is looked for by its longest part without one;
        # a word beyond ASCII is not looked for.
        part = max(word.split("i"), key=len) if word.isascii() else ""
        if not part:
            return np.ones(len(among), dtype=bool)
        rows = table.select(["url", "data"])
        if len(among) < n:
            rows = rows.take(pa.array(among, pa.int64()))
        hit = None
        for column in ("url", "data"):
            one = pc.fill_null(pc.match_substring(rows[column], part, ignore_case=True), False)
            hit = one if hit is None else pc.or_(hit, one)
        return np.asarray(hit.to_numpy(zero_copy_only=False), dtype=bool)

    may = np.zeros(n, dtype=bool)
    for group in parsed:
        tests = [(word, False) for phrase in group.positive
                 for word in _whole_words(phrase)]
        tests.sort(key=lambda test: ((rarity or {}).get(test[0], 1.0), -len(test[0])))
        tests += [(phrase.words[-1], True) for phrase in group.positive if phrase.prefix]
        ok = np.ones(n, dtype=bool)
        for word, prefix in tests:
            among = np.flatnonzero(ok)
            if not len(among):
                break
            body = bodied if prefix else bodied & per_block(lambda words, w=word: w in words)
            ok[among] = in_head(word, among) | body[among]
        may |= ok
    # The rows whose block's bodies hold no phrase searched whole (each of
    # its words): bodies that cannot decide, unless a phrase may run into
    # them from the url or out of them into `data` (_bordering).
    phrases = _phrases(parsed)
    quiet = None if _any_prefix(parsed) else bodied & ~per_block(
        lambda words: any(all(word in words for word in p.words) for p in phrases))
    if not may.all():
        table, bodied = table.filter(pa.array(may)), bodied[may]
        quiet = None if quiet is None else quiet[may]
    if quiet is not None and quiet.any():
        if _single_words(parsed):
            bodied &= ~quiet
        else:
            rows = np.flatnonzero(quiet)
            bodied[rows[~_bordering(table, rows, phrases)]] = False
    if not bodied.any():
        return table
    kept, back = table.filter(pa.array(~bodied)), table.filter(pa.array(bodied))
    bodies = load(back["_pos"].to_pylist())
    for name in _BODIES:
        back = back.set_column(back.column_names.index(name), name, bodies[name])
    return pa.concat_tables((kept, back))


def _bordering(table, rows, phrases):
    """Of `rows` (indexes of `table`), whether a phrase of several words may
    run from each one's url into its bodies, or from its bodies into its
    `data` (an entry's document is its url, bodies and data in that order):
    its url ends with a word of a phrase that another follows, or its data
    begins with one that another precedes. A row's bodies that hold no
    phrase whole and border none decide nothing: the row matches alike
    with or without them. Rows beyond ASCII border, to be safe (their
    words are Unicode's)."""
    arrow_ready()
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    leading = pa.array(sorted({w for p in phrases for w in p.words[:-1]}), pa.string())
    trailing = pa.array(sorted({w for p in phrases for w in p.words[1:]}), pa.string())
    taken = table.select(["url", "data"]).take(pa.array(rows, pa.int64()))

    def word(column, pattern, among):
        text = pc.utf8_lower(taken[column].cast(pa.string()))
        found = pc.struct_field(pc.extract_regex(text, pattern), "w")
        return pc.fill_null(pc.is_in(found, value_set=among), False)

    ends = word("url", r"(?P<w>[0-9a-z]+)[^0-9a-z]*$", leading)
    starts = word("data", r"^[^0-9a-z]*(?P<w>[0-9a-z]+)", trailing)
    wide = pc.invert(pc.and_(pc.fill_null(pc.string_is_ascii(taken["url"].cast(pa.string())), True),
                             pc.fill_null(pc.string_is_ascii(taken["data"].cast(pa.string())),
                                          True)))
    border = pc.or_(pc.or_(ends, starts), wide)
    return np.asarray(border.to_numpy(zero_copy_only=False), dtype=bool)


def _any_prefix(parsed):
    return any(p.prefix for p in _phrases(parsed))


# Rows that `fulltext.matches` checks in less time than Arrow's search
# takes to start (about a dozen compute calls, 60 µs each, against 3 µs a
# row): a small tenant's rows in each of many segments.
_CHECKED_ALONE = 256


def _filtered_columns(filters, after_id=None, upto_id=None):
    """The columns that `_mask` and `_prefiltered` read for `filters`."""
    f = filters
    columns = {"id"} if after_id is not None or upto_id is not None else set()
    for column, value in (("project_id", f.project_id), ("container_id", f.container_id),
                          ("trace_id", f.trace_id), ("client_ip", f.client_ip),
                          ("ts_ms", f.since), ("ts_ms", f.until),
                          ("duration_ms", f.min_duration_ms), ("duration_ms", f.max_duration_ms)):
        if value is not None:
            columns.add(column)
    for column, values in (("service_name", f.service_names), ("level", f.levels),
                           ("kind", f.kinds), ("method", f.methods), ("source", f.sources),
                           ("route", f.routes), ("status", f.status_ranges),
                           ("duration_ms", f.timed)):
        if values:
            columns.add(column)
    if f.q:
        columns.update(_TEXT_COLUMNS)
    return columns


# What `read` and `count` sort and check the rows by, before the rows they
# return are read whole (`_rows_at`).
_KEY_COLUMNS = frozenset(("id", "lat_bucket", "duration_ms"))

_TEXT_COLUMNS = ("url", "data", "request_body", "response_body")
_HEAD = ("url", "data")  # what a block's head filter holds the words of
_BODIES = ("request_body", "response_body")
# fulltext.document's arguments.
_DOCUMENT = ("url", "request_body", "response_body", "data")


def _prefiltered(table, q, rarity=None, heads=None):
    """The rows that may match `q`, found with Arrow's vectorised string
    search over the document's columns; `_batches` and `count` check the
    rest exactly with `fulltext.matches`.

    Each word of a group's positive phrases must appear, in any case, in
    one of a row's columns (RE2's case folding finds every spelling that
    Python's lowercasing does, but for "İ", which lowercases to "i" and a
    dot: a word with an "i" is looked for by its longest part without
    one, and a word of "i"s alone keeps the rows beyond ASCII). When every
    phrase of `q` is a single word, the rows that hold it are then searched for it
    between two characters that are not letters or digits: for ASCII text
    that is exactly the word `fulltext.matches` finds, so an ASCII row is
    decided here, and carries `_sure` true so that it is not checked again.

    A group's words are looked for rarest first (`rarity`: each word's share
    of the blocks whose Bloom filter may hold it; the longest first where
    that is not known), each among the rows that held the words before it:
    the others then search few rows (an id in a path beside `v1` and
    `users`).

    `heads`: (rows per block, {word: for each block of the segment,
    whether the filter of its urls and data may hold the word}); the urls
    and data of the other blocks' rows (by "_pos") are not searched for
    that whole word, which they cannot hold (a word only in bodies)."""
    arrow_ready()
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    parsed = fulltext.parse(q)
    single = all(len(p.words) == 1 and p.words[0].isascii()
                 for group in parsed for p in (*group.positive, *group.negative))
    if not all(any(p.words[0].isascii() for p in group.positive) for group in parsed):
        return table  # a group without an ASCII word: every row may match

    def each(rows, test, word=None):
        """Which of `rows` pass `test` in a text column; with `word` (a
        whole word), the urls and data are asked only where their block's
        filter may hold it."""
        head = None
        if word is not None and heads is not None and word in heads[1] \
                and "_pos" in rows.column_names:
            size, held = heads
            head = held[word][rows["_pos"].to_numpy() // size]
        found = None
        for column in _TEXT_COLUMNS:
            if head is None or column not in _HEAD or head.all():
                one = pc.fill_null(test(rows[column]), False)
            elif not head.any():
                continue
            else:
                asked = np.zeros(rows.num_rows, dtype=bool)
                asked[np.flatnonzero(head)] = pc.fill_null(
                    test(rows[column].filter(pa.array(head))), False).to_numpy(
                    zero_copy_only=False)
                one = pa.array(asked)
            found = one if found is None else pc.or_(found, one)
        return found

    def ascii(rows):
        return pc.invert(each(rows, lambda c: pc.invert(pc.string_is_ascii(c))))

    def pattern(phrase, word):
        return (f"(?i)(?:^|[^0-9A-Za-z]){re.escape(word)}"
                + ("" if phrase.prefix else "(?:[^0-9A-Za-z]|$)"))

    def kept(rows, phrase, word):
        """Which of `rows` may hold `word` (exactly, for ASCII rows)."""
        # "İ" is a spelling of "i" that RE2 does not fold: a word with an
        # "i" is looked for by its longest part without one.
        part = max(word.split("i"), key=len)
        whole = None if phrase.prefix and word == phrase.words[-1] else word
        hit = each(rows, lambda c: pc.match_substring(c, part or word, ignore_case=True), whole)
        if not part:  # "i", "ii": and every row beyond ASCII
            hit = pc.or_(hit, pc.invert(ascii(rows)))
        if single:
            # The exact search runs several times slower than the plain
            # one: only over the rows that hold the word somewhere.
            held = rows.filter(hit)
            exact = pc.or_(each(held, lambda c: pc.match_substring_regex(
                c, pattern(phrase, word)), whole), pc.invert(ascii(held)))
            mask = np.zeros(rows.num_rows, dtype=bool)
            mask[np.flatnonzero(hit.to_numpy(zero_copy_only=False))] = exact.to_numpy(
                zero_copy_only=False)
            hit = pa.array(mask)
        return hit

    if len(parsed) > 1:  # alternatives: which rows each keeps, in table order
        table = table.append_column("_row", pa.array(range(table.num_rows), pa.int64()))
    found = []
    for group in parsed:
        wanted = sorted(((p, word) for p in group.positive for word in p.words
                         if word.isascii()),
                        key=lambda pw: ((rarity or {}).get(pw[1], 1.0), -len(pw[1])))
        rows = table
        for phrase, word in wanted:
            if rows.num_rows:
                rows = rows.filter(kept(rows, phrase, word))
        for phrase in group.negative if single else ():
            if rows.num_rows:
                held = each(rows, lambda c, p=phrase: pc.match_substring_regex(
                    c, pattern(p, p.words[0])))
                rows = rows.filter(pc.or_(pc.invert(held), pc.invert(ascii(rows))))
        found.append(rows)
    rows = found[0]
    if len(found) > 1:
        keep = np.zeros(table.num_rows, dtype=bool)  # filtered: a take copies every body
        for rows in found:
            keep[rows["_row"].to_numpy()] = True
        rows = table.filter(pa.array(keep)).drop_columns(["_row"])
    if single:
        rows = rows.append_column("_sure", ascii(rows) if rows.num_rows else
                                  pa.array([], pa.bool_()))
    return rows


def _mask(table, filters, after_id, upto_id, coded=None):
    """The rows of `table` that pass every filter but `q`, as a boolean
    array (None: no filter), computed column by column (filtering by an
    expression plans a query first: 0.7 ms a call on a row group). With
    `coded`, `_among` compares names by `coded(column)`'s codes."""
    arrow_ready()
    import pyarrow.compute as pc

    terms = []
    if after_id is not None:
        terms.append(pc.greater(table["id"], after_id))
    if upto_id is not None:
        terms.append(pc.less_equal(table["id"], upto_id))
    f = filters
    for column, values in (("project_id", f.project_id is not None and (f.project_id,)),
                           ("container_id", f.container_id is not None and (f.container_id,)),
                           ("service_name", f.service_names), ("level", f.levels),
                           ("kind", f.kinds), ("method", f.methods), ("source", f.sources),
                           ("route", f.routes)):
        if values:
            terms.append(_among(table, column, values, coded))
    if f.trace_id is not None:
        terms.append(pc.equal(table["trace_id"], lookup.canonical("trace_id", f.trace_id)))
    if f.client_ip is not None:
        terms.append(pc.equal(table["client_ip"], lookup.canonical("client_ip", f.client_ip)))
    if f.status_ranges:
        alternatives = None
        for low, high in f.status_ranges:
            one = pc.and_kleene(pc.greater_equal(table["status"], low),
                                pc.less_equal(table["status"], high))
            alternatives = one if alternatives is None else pc.or_kleene(alternatives, one)
        terms.append(alternatives)
    if f.since is not None:
        terms.append(pc.greater_equal(table["ts_ms"], f.since))
    if f.until is not None:
        terms.append(pc.less(table["ts_ms"], f.until))
    if f.min_duration_ms is not None:
        terms.append(pc.greater_equal(table["duration_ms"], f.min_duration_ms))
    if f.max_duration_ms is not None:
        terms.append(pc.less_equal(table["duration_ms"], f.max_duration_ms))
    if f.timed:
        terms.append(pc.is_valid(table["duration_ms"]))
    if not terms:
        return None
    mask = terms[0]
    for term in terms[1:]:
        mask = pc.and_kleene(mask, term)
    return mask


def _among(table, column, values, coded=None):
    """Whether each row's `column` of names is one of `values` (a boolean
    Arrow array, false for none). A dictionary column is compared by its
    distinct values, each row taking its answer by index: with `coded`,
    by the codes `coded(column)` gives (`_codes`), else a row group's
    dictionary at a time (comparing the decoded text took twice as long)."""
    arrow_ready()
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    wanted = pa.array(list(values), pa.string())
    if coded is not None:
        distinct, codes = coded(column)
        # Each code's answer, and a last one (False) that -1 (none) takes.
        answers = np.zeros(len(distinct) + 1, dtype=bool)
        answers[:-1] = pc.is_in(distinct, value_set=wanted).to_numpy(zero_copy_only=False)
        return pa.array(answers[codes])
    data = table[column]
    if not pa.types.is_dictionary(data.type):
        return pc.is_in(data, value_set=wanted)
    return pa.chunked_array(
        [pc.fill_null(pc.take(pc.is_in(chunk.dictionary, value_set=wanted), chunk.indices),
                      False) for chunk in data.chunks], pa.bool_())


_BATCH = 500


# What an entry of the API is made of, without and with its bodies.
_ENTRY_COLUMNS = frozenset(COLUMNS)
_WITH_BODIES = _ENTRY_COLUMNS | {"request_body", "response_body"}


def _batches(table, filters, bodies, meta=None, want=None, skip=None):
    """The API's entries of `table`'s rows, in its order, that pass `q`,
    a batch at a time (with `want`, no more than that many in all; with
    `skip`, past as many as it says, as `read` takes it). With `meta`,
    `table` holds some columns of that segment's rows (`_matching`'s), and
    the rows that pass are read whole."""
    parsed = fulltext.parse(filters.q) if filters.q else None
    for start in range(0, table.num_rows, _BATCH):
        part = table.slice(start, _BATCH)
        if parsed is not None:
            passing = _passing(part, parsed)
            if not passing:
                continue
            if len(passing) < part.num_rows:
                part = part.take(passing)
        if skip and skip[0]:
            passed = min(skip[0], part.num_rows)
            skip[0] -= passed
            part = part.slice(passed)
            if not part.num_rows:
                continue
        if want is not None and part.num_rows > want:
            part = part.slice(0, want)  # read whole only the rows returned
        if meta is not None:
            part = _rows_at(meta, part["_pos"].to_pylist(),
                            _ENTRY_COLUMNS if bodies is None else _WITH_BODIES)
        if want is not None:
            want -= part.num_rows
        yield _entries(part, bodies)
        if want is not None and want <= 0:
            return


def _passing(part, parsed):
    """The indexes of `part`'s rows that match `parsed` (a parsed `q`):
    those `_prefiltered` decided (`_sure`), and those `fulltext.matches`
    finds matching."""
    sure = part["_sure"].to_pylist() if "_sure" in part.column_names else None
    if sure is not None and all(sure):
        return list(range(part.num_rows))
    texts = part.select(_DOCUMENT).to_pydict()
    return [i for i, document in enumerate(zip(*(texts[c] for c in _DOCUMENT)))
            if (sure is not None and sure[i])
            or fulltext.matches(parsed, fulltext.document(*document))]


def _entries(table, bodies):
    """The API's entries of `table`'s rows (`bodies` as `read` takes it)."""
    rows = {name: _values(table[name]) for name in table.column_names}
    entries = []
    for i in range(len(rows["id"])):
        item = row_to_dict(tuple(rows[c][i] for c in COLUMNS), None if bodies is None else
                           (rows["request_body"][i], rows["response_body"][i], *bodies))
        item["data"] = orjson.Fragment(rows["data"][i] or "{}")
        entries.append(item)
    return entries


# Per process: each segment's Parquet file (its bytes and metadata), and
# the columns of row groups decoded from them, the most recently used kept
# within 224 MiB (`_groups`). A row group (ROW_GROUP entries) decodes to
# about a MB, most of it its bodies; its other columns take a tenth of that, so
# that the columns questions sort and filter by stay kept for many groups.
_CACHE_FOOTERS = 4096
# Taken by the database threads (real threads): a lock of the operating
# system, not gevent's (a gevent lock contended between two of them left a
# question waiting forever).
_cache_lock = db.os_lock()


class _Budgeted:
    """Values kept per process, the most recently used, within a budget of
    bytes (each value's size given when it is put).

    Full, it makes room for a new value only with values unused for
    `stale_s` seconds; else the new one is not kept. A question that
    decodes more than the budget (a common word searched oldest first in a
    merged segment of 917,504 entries: 295 MB of urls, data and bodies)
    would otherwise evict each value it put before it needed it again, in
    the order it needs them, and find none of them the next time it is
    asked (least recently used under a scan larger than the cache): it now
    finds the part that fits (953 ms → 307 ms with everything kept)."""

    def __init__(self, budget, stale_s=2.0):
        self.budget, self.held, self.stale_s = budget, 0, stale_s
        self.values = collections.OrderedDict()  # key -> [value, size, last used]

    def get(self, key):
        with _cache_lock:
            found = self.values.get(key)
            if found is None:
                return None
            self.values.move_to_end(key)
            found[2] = time.monotonic()
            return found[0]

    def clear(self):
        with _cache_lock:
            self.values.clear()
            self.held = 0

    def put(self, key, value, size):
        """Keep `value` (unless another thread kept one first, or the
        budget is held by values in use); returns the value kept, else
        `value`."""
        with _cache_lock:
            found = self.values.get(key)
            if found is not None:
                return found[0]
            now = time.monotonic()
            while self.held + size > self.budget and self.values:
                oldest = next(iter(self.values.values()))
                if now - oldest[2] < self.stale_s:
                    return value  # the values held are in use
                self.held -= self.values.popitem(last=False)[1][1]
            self.values[key] = [value, size, now]
            self.held += size
            return value


_footers = collections.OrderedDict()
_bounds = collections.OrderedDict()  # _layout of each segment
_groups = _Budgeted(224 << 20)  # (store, segment, row group, column) -> column
# Segments' Bloom filters (about 10 B an entry: 650 KB a segment of
# 65,536), about 200 segments: a search of 13 million sealed entries asks
# its filters from memory.
_skips = _Budgeted(128 << 20)
_segment_projects = collections.OrderedDict()
_segment_parts = collections.OrderedDict()
_project_bounds = collections.OrderedDict()  # _groups_of_project of each segment


# The segment `meta` names, unless it is gone (merged or dropped, its id
# perhaps given to another).
_THIS = "id = ? AND min_id = ? AND max_id = ?"


def _this(meta):
    return (meta["id"], meta["min_id"], meta["max_id"])


def _key(meta):
    """What a segment's kept parts are known by in this process: its store,
    its id and its id range (SQLite may give a merged segment the id of
    one it replaced; never with the same range)."""
    return (id(db.current()), meta["id"], meta["min_id"], meta["max_id"])


def _cached(cache, key, limit, make):
    with _cache_lock:
        found = cache.get(key)
        if found is not None:
            cache.move_to_end(key)
            return found
    found = make()
    with _cache_lock:
        cache[key] = found
        while len(cache) > limit:
            cache.popitem(last=False)
    return found


def _file(meta, dictionaries=True):
    """The segment's Parquet file, its names (_DICTIONARY) read as
    dictionaries unless `dictionaries` is false. It is read in place, so
    that a question reads the bytes of the row groups it decodes, not the
    whole segment (its footer, the metadata, is kept per process): SQLite
    through its incremental blob I/O, PostgreSQL by ranges of the bytea
    (stored uncompressed out of line, so that a range reads its own pages:
    migrations.py)."""
    arrow_ready()
    import pyarrow.parquet as pq

    return pq.ParquetFile(_open(meta), metadata=_metadata(meta), pre_buffer=False,
                          read_dictionary=_DICTIONARY if dictionaries else None)


def _open(meta):
    """The segment's Parquet bytes as a file (db.Stale if the segment is
    gone: merged or dropped since the question chose it)."""
    arrow_ready()
    if db.is_postgres():
        return _RangeFile(meta)
    return _sqlite_file(meta, *_parts(meta))


def stored_bytes(segment_id):
    """A segment's Parquet file, whole, wherever it is kept."""
    found = db.execute("SELECT id, min_id, max_id, part_id, part_bytes, bytes FROM segment "
                       "WHERE id = ?", (segment_id,)).fetchone()
    if found is None:
        raise db.Stale(f"segment {segment_id} is gone")
    meta = dict(zip(("id", "min_id", "max_id"), found))
    with (_RangeFile(meta) if db.is_postgres() else _sqlite_file(meta, *found[3:])) as file:
        # In one read (a plain read() asks 8 KB at a time: on PostgreSQL a
        # query each).
        return file.read(file.size)


def _sqlite_file(meta, part_id, part_bytes, size):
    """SQLite: a segment's bytes as a file: its parts, or the `data` of its
    row (an earlier version's segment), read as one part."""
    if part_id is None:
        return _PartFile(meta, "segment", meta["id"], max(1, size), size)
    return _PartFile(meta, "segment_part", part_id, part_bytes, size)


def _parts(meta):
    """SQLite: (first part id, part size, total bytes) of a segment; the
    first is None when its bytes are in `data`. Kept per process."""
    def load():
        found = db.execute(f"SELECT part_id, part_bytes, bytes FROM segment WHERE {_THIS}",
                           _this(meta)).fetchone()
        if found is None:
            raise db.Stale(f"segment {meta['id']} is gone")
        return tuple(found)
    return _cached(_segment_parts, _key(meta), _CACHE_FOOTERS, load)


def _metadata(meta):
    """The segment's Parquet metadata (its footer), kept per process."""
    arrow_ready()
    import pyarrow.parquet as pq

    def load():
        with _open(meta) as file:
            return pq.read_metadata(file)
    return _cached(_footers, _key(meta), _CACHE_FOOTERS, load)


def _layout(meta):
    """(the first row of each row group, their sizes, their _group_bounds)
    of a segment, kept per process."""
    def load():
        metadata = _metadata(meta)
        starts, sizes, at = [], [], 0
        for g in range(metadata.num_row_groups):
            starts.append(at)
            sizes.append(metadata.row_group(g).num_rows)
            at += sizes[-1]
        return starts, sizes, [_group_bounds(metadata.row_group(g)) for g in range(len(starts))]
    return _cached(_bounds, _key(meta), _CACHE_FOOTERS,
                   load)


class _RangeFile(io.RawIOBase):
    """PostgreSQL: a segment's Parquet bytes as a file, each read a range of
    its bytea (on the thread whose connection asks)."""

    def __init__(self, meta):
        super().__init__()
        self.meta, self.at = meta, 0
        found = db.execute(f"SELECT bytes FROM segment WHERE {_THIS}", _this(meta)).fetchone()
        if found is None:
            raise db.Stale(f"segment {meta['id']} is gone")
        self.size = found[0]

    def readable(self):
        return True

    def seekable(self):
        return True

    def readinto(self, buffer):
        wanted = min(len(buffer), self.size - self.at)
        if wanted <= 0:
            return 0
        found = db.execute(f"SELECT substring(data FROM ? FOR ?) FROM segment WHERE {_THIS}",
                           (self.at + 1, wanted, *_this(self.meta))).fetchone()
        if found is None:
            raise db.Stale(f"segment {self.meta['id']} is gone")
        data = bytes(found[0])
        buffer[:len(data)] = data
        self.at += len(data)
        return len(data)

    def seek(self, offset, whence=0):
        self.at = offset if whence == 0 else self.at + offset if whence == 1 else \
            self.size + offset
        return self.at

    def tell(self):
        return self.at


class _PartFile(io.RawIOBase):
    """SQLite: a segment's bytes as the file pyarrow reads, in parts of
    `part_bytes`: the `data` of `table`'s rows from `first` on, each read
    through a blob handle of its own (on the thread that opened it:
    pyarrow is asked to read with no threads of its own). One handle stays
    open from the first read on: the connection's snapshot, in which the
    segment was found, is the one every part is read in."""

    def __init__(self, meta, table, first, part_bytes, size):
        super().__init__()
        self.meta, self.table, self.first = meta, table, first
        self.part_bytes, self.size = part_bytes, size
        self.at, self.part, self.blob = 0, None, None

    def readable(self):
        return True

    def seekable(self):
        return True

    def _use(self, part):
        import sqlite3

        try:
            blob = database.connection().blobopen(self.table, "data", self.first + part,
                                                  readonly=True)
        except sqlite3.OperationalError as exc:
            raise db.Stale(f"segment {self.meta['id']} is gone") from exc
        if self.blob is None:
            # Now that a handle holds the snapshot: the segment is still
            # there (its id range is its own; the columns before its Bloom
            # filters are read, not those behind their pages), and its
            # bytes are where this process remembered them (an earlier
            # version's row may have been moved into parts since:
            # split_once; the question is then asked again).
            found = db.execute(f"SELECT 1 FROM segment WHERE {_THIS}", _this(self.meta)).fetchone()
            if found is None or len(blob) != min(self.part_bytes,
                                                 self.size - part * self.part_bytes):
                blob.close()
                with _cache_lock:
                    _segment_parts.pop(_key(self.meta), None)
                raise db.Stale(f"segment {self.meta['id']} is gone or moved")
        else:
            self.blob.close()
        self.blob, self.part = blob, part

    def readinto(self, buffer):
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self.at < self.size:
            part, offset = divmod(self.at, self.part_bytes)
            if part != self.part:
                self._use(part)
            self.blob.seek(offset)
            data = self.blob.read(min(len(view) - done, self.part_bytes - offset))
            if not data:
                break
            view[done:done + len(data)] = data
            done += len(data)
            self.at += len(data)
        return done

    def seek(self, offset, whence=0):
        base = (0, self.at, self.size)[whence]
        self.at = max(0, base + offset)
        return self.at

    def tell(self):
        return self.at

    def close(self):
        if not self.closed and self.blob is not None:
            self.blob.close()
            self.blob = None
        super().close()


def _admitted(meta, filters):
    """(the first row of each row group, the row groups whose statistics
    admit the filters' project, container and time range) of a segment."""
    starts, _, bounds = _layout(meta)
    return starts, {g for g in _groups_of_project(meta, filters.project_id)
                    if _admits(bounds[g], filters)}


def _groups_of_project(meta, project):
    """The row groups whose project bounds hold `project` (None: every row
    group): a segment's rows are sorted by project, so these are
    consecutive, found by bisection (a merged segment has 512 row groups,
    and a search of a tenant asks each segment of the day)."""
    bounds = _layout(meta)[2]

    def load():
        if not all("project_id" in group for group in bounds):
            return False  # kept: `_cached` keeps any value but None
        lows = [group["project_id"][0] for group in bounds]
        highs = [group["project_id"][1] for group in bounds]
        if lows != sorted(lows) or highs != sorted(highs):
            return False  # not sorted by project (never written so)
        return lows, highs
    index = _cached(_project_bounds, _key(meta), _CACHE_FOOTERS, load) \
        if project is not None else False
    if not index:
        return range(len(bounds))
    lows, highs = index
    return range(bisect.bisect_left(highs, project), bisect.bisect_right(lows, project))


def _parts_to_read(meta, filters=None, bucket=None):
    """What `_read_groups` decodes of a segment: (row group, first row, end
    row, block) of each part, rows counted within the group."""
    starts, sizes, bounds = _layout(meta)
    parts = [(g, 0, sizes[g], None) for g in _groups_of_project(
        meta, filters.project_id if filters is not None else None)]
    if meta.get("blocks") is not None:
        size, kept = meta["blocks"]
        parts = []
        for block in kept:
            low = block * size
            g = bisect.bisect_right(starts, low) - 1
            end = min(low + size, starts[g] + sizes[g])
            parts.append((g, low - starts[g], end - starts[g], block))
    if filters is not None:
        admitted = {g: _admits(bounds[g], filters, bucket) for g in {part[0] for part in parts}}
        parts = [part for part in parts if admitted[part[0]]]
    return parts


def _read_groups(meta, filters=None, columns=None, bucket=None):
    """The segment's rows (an Arrow table) that may hold a match: the row
    groups whose statistics admit the filters' project, container and time
    range, and of them the blocks of rows whose Bloom filters hold the
    words asked for (meta["blocks"]: rows per block, the blocks kept).
    With `columns` (a set), only those columns, and "_pos", each row's
    place in the segment (what `_rows_at` reads the rest of a row by).
    With `bucket`, only the row groups that hold durations of that latency
    bucket."""
    arrow_ready()
    import numpy as np
    import pyarrow as pa

    starts = _layout(meta)[0]
    parts = _parts_to_read(meta, filters, bucket)
    schema = _schema()
    names = schema.names if columns is None else [c for c in schema.names if c in columns]
    # A search of segments whose blocks have a filter of their bodies
    # (meta["bodies"]): the bodies are left empty, read by `_with_bodies`
    # for the rows that need them, and "_block" is each row's block.
    lazy = meta.get("bodies") if columns is not None and _BODIES[0] in names else None
    if lazy:
        if "has_body" not in names:
            names = [c for c in schema.names if c in columns or c == "has_body"]
        # The blocks read whole first (`_with_bodies` leaves them as they are).
        parts.sort(key=lambda part: part[3] in lazy)
    reader = _GroupReader(meta)
    warm = _warm_table(reader.key) if not lazy and parts and WARM_COLUMNS.issuperset(names) \
        else None
    if warm is not None:
        return _warm_ranges(warm.select(names), [
            (starts[g] + first, starts[g] + end) for g, first, end, _ in parts], columns)
    tables = []
    for g, first, end, block in parts:
        if lazy and block in lazy:
            read = reader.group(g, [n for n in names if n not in _BODIES]).slice(first, end - first)
            table = pa.table([read[n] if n not in _BODIES else
                              pa.nulls(read.num_rows, schema.field(n).type) for n in names],
                             names=names)
        else:
            table = reader.group(g, names).slice(first, end - first)
        if columns is not None:
            table = table.append_column("_pos", pa.array(
                np.arange(starts[g] + first, starts[g] + end, dtype=np.int64)))
        if lazy:
            table = table.append_column("_block", pa.array(
                np.full(table.num_rows, block if block in lazy else -1, dtype=np.int64)))
        tables.append(table)
    if not tables:
        empty = schema.empty_table().select(names)
        if columns is not None:
            empty = empty.append_column("_pos", pa.array([], pa.int64()))
        return empty
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


def _warm_ranges(table, ranges, columns):
    """The rows of a segment's warmed columns (`table`) in `ranges` (rows
    of the segment, ascending), consecutive ranges taken as one slice,
    with "_pos" when `columns` were asked (see _read_groups)."""
    arrow_ready()
    import numpy as np
    import pyarrow as pa

    runs = []
    for low, high in ranges:
        if runs and runs[-1][1] == low:
            runs[-1][1] = high
        else:
            runs.append([low, high])
    tables = []
    for low, high in runs:
        part = table.slice(low, high - low)
        if columns is not None:
            part = part.append_column("_pos", pa.array(np.arange(low, high, dtype=np.int64)))
        tables.append(part)
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


def _rows_at(meta, positions, columns):
    """The `columns` of the segment's rows at `positions` (`_pos` values),
    in that order."""
    arrow_ready()
    import pyarrow as pa

    starts, _, _ = _layout(meta)
    wanted = {}  # row group -> [row within it]
    picks = []  # (row group, index among its wanted rows) of each position
    for position in positions:
        g = bisect.bisect_right(starts, position) - 1
        rows = wanted.setdefault(g, [])
        picks.append((g, len(rows)))
        rows.append(position - starts[g])
    reader = _GroupReader(meta)
    names = [name for name in _schema().names if name in columns]
    offsets, tables, at = {}, [], 0
    for g, rows in wanted.items():
        tables.append(reader.group(g, names).take(pa.array(rows, pa.int64())))
        offsets[g] = at
        at += len(rows)
    if not tables:
        return _schema().empty_table().select(names)
    if len(tables) == 1:  # its rows taken in the order asked
        return tables[0]
    return pa.concat_tables(tables).take(pa.array([offsets[g] + k for g, k in picks],
                                                  pa.int64()))


class _GroupReader:
    """A segment's row groups, decoded column by column: each column of a
    row group is kept per process (the most recently used), so that a
    question decodes the columns it needs, and the next one asking for
    them finds them."""

    def __init__(self, meta):
        self.meta = meta
        self.key = _key(meta)
        self.file = None  # opened for the first column not kept

    def group(self, g, names):
        arrow_ready()
        import pyarrow as pa

        warm = _warm_table(self.key)
        found = {name: warm[name].chunk(g) if warm is not None and name in WARM_COLUMNS
                 else _groups.get((*self.key, g, name)) for name in names}
        missing = [name for name, column in found.items() if column is None]
        if missing:
            if self.file is None:
                self.file = _file(self.meta)
            read = self.file.read_row_group(g, columns=missing, use_threads=False)
            for name in missing:
                found[name] = _groups.put((*self.key, g, name), read[name], read[name].nbytes)
        # Names (_DICTIONARY) come decoded as dictionaries: a row group's
        # few distinct values and an index a row, not a string each.
        return pa.table([found[name] for name in names], names=names)


def _group_bounds(group):
    """{column: (least, greatest)} of a row group's project, container,
    time and latency bucket (its statistics), where the file holds them."""
    bounds = {}
    for at in range(group.num_columns):
        column = group.column(at)
        if column.path_in_schema in ("project_id", "container_id", "ts_ms", "lat_bucket"):
            stats = column.statistics
            if stats is not None and stats.has_min_max:
                bounds[column.path_in_schema] = (stats.min, stats.max)
    return bounds


def _admits(bounds, filters, bucket=None):
    """Whether a row group's bounds (_group_bounds) admit the filters'
    project, container and time range, and latency bucket `bucket`."""
    low, high = bounds.get("lat_bucket", (None, None))
    if bucket is not None and low is not None and not low <= bucket <= high:
        return False
    for name, value in (("project_id", filters.project_id),
                        ("container_id", filters.container_id)):
        if value is not None and name in bounds and not bounds[name][0] <= value <= bounds[name][1]:
            return False
    if "ts_ms" in bounds:
        low, high = bounds["ts_ms"]
        if filters.since is not None and high < filters.since:
            return False
        if filters.until is not None and low >= filters.until:
            return False
    return True


# --- the Bloom filter of a segment's words ------------------------------------------

def _digest(word):
    """The 16 bytes a word's two hashes are read from (`_hashed`); `word`
    as str or as its UTF-8."""
    if isinstance(word, str):
        word = word.encode()
    return hashlib.blake2b(word, digest_size=16).digest()


@functools.lru_cache(maxsize=4096)
def _hashed(word):
    """The two hashes a word's bit positions are made of: the halves of its
    digest, the second made odd (a question asks each block of every
    segment for the same few words)."""
    digest = _digest(word)
    return int.from_bytes(digest[:8], "big"), int.from_bytes(digest[8:], "big") | 1


class Bloom:
    """A Bloom filter of words: `dump` gives its bytes (4 bytes of its
    hash count, then the bits), `load` reads them back."""

    def __init__(self, bits, hashes, size):
        self.bits, self.hashes, self.size = bits, hashes, size

    @classmethod
    def of(cls, words, bits_per_word=_BITS_PER_WORD, hashes=_HASHES):
        """The filter of `words` (distinct), its bits set all at once: each
        word's two hashes (`_hashed`'s, unchanged), then its positions
        (first + i * second) % size, computed from both hashes reduced by
        `size` so that they stay within 64 bits."""
        arrow_ready()
        import numpy as np

        size = -(-max(64, len(words) * bits_per_word) // 8) * 8  # whole bytes
        if not words:
            return cls(bytearray(size // 8), hashes, size)
        digests = b"".join([_digest(word) for word in words])
        pairs = np.frombuffer(digests, dtype=">u8").reshape(-1, 2).astype(np.uint64)
        first = pairs[:, 0] % np.uint64(size)
        second = (pairs[:, 1] | np.uint64(1)) % np.uint64(size)
        steps = np.arange(hashes, dtype=np.uint64)
        positions = ((first[:, None] + steps[None, :] * second[:, None])
                     % np.uint64(size)).ravel()
        marks = np.zeros(size, dtype=np.uint8)
        marks[positions] = 1
        # Bit p is bit p & 7 of byte p >> 3: little-endian bit order.
        return cls(bytearray(np.packbits(marks, bitorder="little").tobytes()), hashes, size)

    def dump(self):
        return self.hashes.to_bytes(4, "big") + bytes(self.bits)

    @classmethod
    def load(cls, stored):
        """The filter of Bloom.dump's bytes (a view of them when `stored`
        is a memoryview: no copy)."""
        bits = stored[4:]
        return cls(bits, int.from_bytes(stored[:4], "big"), len(bits) * 8)

    def __contains__(self, word):
        # A question asks every block of every segment for its few words:
        # the positions are kept per word and filter size, and the first
        # bit not set answers.
        bits = self.bits
        return all(bits[byte] & mask for byte, mask in _positions(word, self.size, self.hashes))


@functools.lru_cache(maxsize=65536)
def _positions(word, size, hashes):
    """(byte, bit mask) of each of a word's bit positions in a filter of
    `size` bits."""
    first, second = _hashed(word)
    return tuple(((first + i * second) % size >> 3, 1 << ((first + i * second) % size & 7))
                 for i in range(hashes))
