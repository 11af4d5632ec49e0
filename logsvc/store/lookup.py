"""Exact lookups of entries by trace id and client address (SQLite).

Both values are close to random from one entry to the next, and a b-tree
index over them takes each new entry to another page: ingest wrote a page
of the write-ahead log per entry for each such index, and at a million
entries those two indexes alone cost a third of the ingest rate. Here both
go into `entry_keys`, an FTS5 table of one or two tokens per entry, whose
index grows by appending sorted segments that FTS5 merges in the
background of later writes; a lookup finds the candidate entries by their
token and compares the stored value whole:

- a trace id is the token `t` + the last 12 letters and digits of the id
  (lowercased): `4bf92f3577b34da6a3ce929d0e0e4736` -> `t929d0e0e4736`;
- a client address is `i` + its bytes in hex when it is an IP address
  (`10.1.2.3` -> `i0a010203`), else + its text's UTF-8 in hex.

A value without a letter or digit has no token and is looked up by a scan.
PostgreSQL indexes both columns with b-trees (its pages are written out by
its own checkpoints, not per commit).

From schema 7, SQLite also stores both values compactly (`stored`): a
trace id of lowercase hex as its bytes (16 instead of 32 for a W3C trace
id), an address whose text is the canonical form as its 4 or 16 bytes.
Anything else stays text, and so do the rows written before schema 7, so
a lookup compares the column with both forms; `shown` turns either back
into the text the entry came with.
"""
import functools
import ipaddress
import re
import socket

from . import db
from .fulltext import words

TRACE_TAIL = 12
_FTS5 = ("fts5(doc, content='', detail=none, columnsize=0, "
         "tokenize='unicode61 remove_diacritics 0')")


def trace_token(trace_id):
    tail = "".join(words(trace_id))[-TRACE_TAIL:]
    return f"t{tail}" if tail else None


def ip_token(client_ip):
    if not client_ip:
        return None
    packed, _ = _address(client_ip)
    return "i" + (packed if packed is not None else client_ip.encode()).hex()


@functools.lru_cache(maxsize=4096)
def _address(text):
    """(its bytes, whether `text` is their canonical form) when `text` is
    an IP address, else (None, False). A canonical IPv4 address is read
    without `ipaddress` (ingest asks twice per entry)."""
    try:
        packed = socket.inet_pton(socket.AF_INET, text)
    except (OSError, ValueError):
        pass
    else:
        if socket.inet_ntop(socket.AF_INET, packed) == text:
            return packed, True
    try:
        packed = ipaddress.ip_address(text).packed
    except ValueError:
        return None, False
    # `2001:DB8::1` or `fe80::1%eth0` (whose zone the bytes do not hold)
    # read back otherwise.
    return packed, str(ipaddress.ip_address(packed)) == text


_HEX = re.compile(r"(?:[0-9a-f]{2})+")


def stored(column, value):
    """How SQLite stores `value` of `column` ('trace_id' or 'client_ip')."""
    if not value:
        return value
    if column == "trace_id":
        return bytes.fromhex(value) if _HEX.fullmatch(value) else value
    packed, canonical = _address(value)
    return packed if canonical else value


def shown(column, value):
    """The text of a stored trace id or address (either form)."""
    if not isinstance(value, (bytes, memoryview)):
        return value
    value = bytes(value)
    return value.hex() if column == "trace_id" else str(ipaddress.ip_address(value))


def canonical(column, value):
    """The text a sealed entry holds for `value` of `column` (a filter's
    value): on SQLite, what its stored form (`stored`) reads back as; on
    PostgreSQL, the text itself."""
    return value if db.is_postgres() else shown(column, stored(column, value))


def document(trace_id, client_ip):
    return " ".join(t for t in (trace_token(trace_id), ip_token(client_ip)) if t)


def where_sql(column, value):
    """(condition over `entry e`, params): `column` ('trace_id' or
    'client_ip') equals `value`."""
    token = trace_token(value) if column == "trace_id" else ip_token(value)
    if db.is_postgres():
        return f"e.{column} = ?", [value]
    compact = stored(column, value)
    if compact == value:
        equal, params = f"e.{column} = ?", [value]
    else:
        equal, params = f"e.{column} IN (?, ?)", [compact, value]
    if token is None:
        return equal, params
    return (f"e.id IN (SELECT rowid FROM entry_keys WHERE entry_keys MATCH ?) AND {equal}",
            [f'"{token}"', *params])


def _stored_document(trace_id, client_ip):
    return document(shown("trace_id", trace_id), shown("client_ip", client_ip))


@db.only("sqlite")
def create():
    db.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS entry_keys USING {_FTS5}")


def insert(rows, first=0):
    """Index (entry id - `first`, `document`) rows."""
    db.executemany(f"INSERT INTO entry_keys (rowid, doc) VALUES (? + {int(first)}, ?)", rows)


@db.only("sqlite")
def delete(ids):
    """Remove entries from the index before their rows are deleted (FTS5
    needs each one's tokens again to find them)."""
    marks = ", ".join("?" for _ in ids)
    rows = db.execute(f"SELECT id, trace_id, client_ip FROM entry WHERE id IN ({marks})",
                      list(ids)).fetchall()
    db.executemany("INSERT INTO entry_keys (entry_keys, rowid, doc) VALUES ('delete', ?, ?)",
                   [(i, _stored_document(trace, ip)) for i, trace, ip in rows])


@db.only("sqlite")
def delete_documents(rows):
    """Take (entry id, `document` of its trace id and address, as the API
    shows them) out of the index."""
    db.executemany("INSERT INTO entry_keys (entry_keys, rowid, doc) VALUES ('delete', ?, ?)",
                   rows)


@db.only("sqlite")
def optimize():
    """Rewrite the index in one piece (see fulltext.optimize_sqlite)."""
    db.execute("INSERT INTO entry_keys (entry_keys) VALUES ('optimize')")


@db.only("sqlite")
def clear():
    db.execute("INSERT INTO entry_keys (entry_keys) VALUES ('delete-all')")


def rebuild():
    """Index every stored entry (the upgrade to schema 6)."""
    after = 0
    while True:
        rows = db.execute("SELECT id, trace_id, client_ip FROM entry WHERE id > ? "
                          "ORDER BY id LIMIT 20000", (after,)).fetchall()
        if not rows:
            return
        insert([(i, _stored_document(trace, ip)) for i, trace, ip in rows])
        after = rows[-1][0]
