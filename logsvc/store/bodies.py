"""How bodies are stored: long ones compressed, short ones as text.

A body of BODY_COMPRESS_FROM bytes or more is kept as a zstd frame (the
`_z` columns). The bodies a proxy captures repeat the same keys and shapes
from one entry to the next, which a body compressed on its own cannot
use; so each store trains a zstd dictionary on the first bodies it
compresses and keeps it in `body_dictionary`. On bench/scale.py's JSON
bodies (0.5-2 KB) that gives 20 % of the raw size, where zlib gave 34 %
and zstd without a dictionary 35 %, and it is about twenty times faster
than zlib.

- Until a dictionary exists, bodies are compressed without one, and the
  first TRAIN_SAMPLES of them are kept as samples. Then the writer trains
  a dictionary and stores it in its own transaction, and every process
  uses the first dictionary it finds stored. A dictionary is never
  removed: each frame names its dictionary's id, and a reader finds it by
  that id, so two processes that trained at once are both read.
- Frames and dictionaries never change once written, so a reader on any
  process or host decompresses what any other wrote.
- Bodies written before schema 3 are text; from schema 3 to 5, zlib
  streams. Both are read as before (a zstd frame starts with its magic
  number, a zlib stream never does).
"""
import zlib

import zstandard

from logsvc.entry import now_ms

from . import db

# Bodies shorter than this gain too little from compression to pay for it.
BODY_COMPRESS_FROM = 128
ZSTD_LEVEL = 3
DICTIONARY_BYTES = 32 * 1024
TRAIN_SAMPLES = 500
_SAMPLE_BYTES = 8 << 20  # at most this much of samples is kept
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

_KNOWN = {}  # dict id -> dictionary: every one this process has read (ids are unique)
_local = None  # per thread: compressors and decompressors, which are not thread-safe


def _thread_local():
    global _local
    from gevent import monkey

    # Database threads are real threads, also under gevent.
    _local = monkey.get_original("threading", "local")()


_thread_local()


class Codec:
    """What a process keeps about one store's compression."""

    def __init__(self):
        self.lock = db.os_lock()
        self.checked = False  # the stored dictionaries have been looked at
        self.dictionary = None
        self.samples = []
        self.sample_bytes = 0

    def wants_sample(self):
        return self.dictionary is None and len(self.samples) < TRAIN_SAMPLES \
            and self.sample_bytes < _SAMPLE_BYTES

    def add_sample(self, raw):
        with self.lock:
            self.samples.append(raw)
            self.sample_bytes += len(raw)


def _codec():
    store = db.current()
    codec = getattr(store, "body_codec", None)
    if codec is None:
        codec = store.body_codec = Codec()
    return codec


def _compressor(dictionary):
    key = dictionary.dict_id() if dictionary is not None else 0
    cached = getattr(_local, "compressor", None)
    if cached is None or cached[0] != key:
        cached = (key, zstandard.ZstdCompressor(level=ZSTD_LEVEL, dict_data=dictionary))
        _local.compressor = cached
    return cached[1]


def pack_body(text):
    """(text, compressed) columns for a body (either may be None); runs on
    a database thread, for the current store."""
    if text is None or len(text) < BODY_COMPRESS_FROM:
        return text, None
    raw = text.encode()
    codec = _codec()
    if codec.wants_sample():
        codec.add_sample(raw)
    packed = _compressor(codec.dictionary).compress(raw)
    if len(packed) >= len(raw):
        return text, None
    return None, packed


def unpack_body(text, packed):
    if packed is None:
        return text
    packed = bytes(packed)
    if not packed.startswith(_ZSTD_MAGIC):
        return zlib.decompress(packed).decode()
    dict_id = zstandard.get_frame_parameters(packed).dict_id
    return _decompressor(dict_id).decompress(packed).decode()


def _decompressor(dict_id):
    cached = getattr(_local, "decompressors", None)
    if cached is None:
        cached = _local.decompressors = {}
    if dict_id not in cached:
        cached[dict_id] = zstandard.ZstdDecompressor(
            dict_data=(_KNOWN.get(dict_id) or _load(dict_id)) if dict_id else None)
    return cached[dict_id]


def _load(dict_id):
    """The stored dictionary `dict_id` (database thread)."""
    row = db.execute("SELECT data FROM body_dictionary WHERE id = ?", (dict_id,)).fetchone()
    if row is None:
        raise LookupError(f"body dictionary {dict_id} is not in the store")
    dictionary = _KNOWN[dict_id] = zstandard.ZstdCompressionDict(bytes(row[0]))
    return dictionary


def prepare():
    """Before a write (database thread, outside a transaction): adopt the
    store's dictionary, or train and store one once enough samples are in."""
    codec = _codec()
    if codec.dictionary is not None or (codec.checked and codec.wants_sample()):
        return
    codec.checked = True
    # Another process may have stored one meanwhile: then this one uses it.
    if _adopt_first(codec) or codec.wants_sample():
        return
    with codec.lock:
        samples, codec.samples, codec.sample_bytes = codec.samples, [], 0
    try:
        trained = zstandard.train_dictionary(DICTIONARY_BYTES, samples, level=ZSTD_LEVEL)
    except zstandard.ZstdError:
        return  # too few distinct samples: the next ones are tried
    try:
        with db.database.atomic():
            db.execute("INSERT INTO body_dictionary (id, created_ms, data) VALUES (?, ?, ?) "
                       "ON CONFLICT (id) DO NOTHING",
                       (trained.dict_id(), now_ms(), trained.as_bytes()))
    except Exception as exc:  # a store that takes no writes goes on without one
        if not db.unwritable_reason(exc):
            raise
        return
    _adopt_first(codec)


def _adopt_first(codec):
    """Use the first dictionary stored, if there is one."""
    row = db.execute("SELECT id, data FROM body_dictionary ORDER BY created_ms, id "
                     "LIMIT 1").fetchone()
    if row is None:
        return False
    dictionary = zstandard.ZstdCompressionDict(bytes(row[1]))
    dictionary.precompute_compress(level=ZSTD_LEVEL)
    _KNOWN[row[0]] = dictionary
    with codec.lock:
        codec.dictionary = dictionary
        codec.samples, codec.sample_bytes = [], 0
    return True
