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
"""
import ipaddress

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
    try:
        return "i" + ipaddress.ip_address(client_ip).packed.hex()
    except ValueError:
        return "i" + client_ip.encode().hex()


def document(trace_id, client_ip):
    return " ".join(t for t in (trace_token(trace_id), ip_token(client_ip)) if t)


def where_sql(column, value):
    """(condition over `entry e`, params): `column` ('trace_id' or
    'client_ip') equals `value`."""
    token = trace_token(value) if column == "trace_id" else ip_token(value)
    if db.is_postgres() or token is None:
        return f"e.{column} = ?", [value]
    return (f"e.id IN (SELECT rowid FROM entry_keys WHERE entry_keys MATCH ?) "
            f"AND e.{column} = ?", [f'"{token}"', value])


def create():
    if not db.is_postgres():
        db.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS entry_keys USING {_FTS5}")


def insert(rows):
    """Index (entry id, `document`) rows."""
    db.executemany("INSERT INTO entry_keys (rowid, doc) VALUES (?, ?)", rows)


def delete(ids):
    """Remove entries from the index before their rows are deleted (FTS5
    needs each one's tokens again to find them)."""
    marks = ", ".join("?" for _ in ids)
    rows = db.execute(f"SELECT id, trace_id, client_ip FROM entry WHERE id IN ({marks})",
                      list(ids)).fetchall()
    db.executemany("INSERT INTO entry_keys (entry_keys, rowid, doc) VALUES ('delete', ?, ?)",
                   [(i, document(trace, ip)) for i, trace, ip in rows])


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
        insert([(i, document(trace, ip)) for i, trace, ip in rows])
        after = rows[-1][0]
