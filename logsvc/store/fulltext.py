"""Full-text search: `q` over an entry's url, request and response bodies and
`data`, through an index.

An entry's *document* is its url, bodies and `data` JSON as stored (bodies
after the size cap), one per line. Its *words* are the runs of letters and
digits, lowercased: `user42@example.com` is the words `user42 example com`,
`/v1/orders/8812` is `v1 orders 8812`, `"E50312"` is `e50312`.

The syntax of `q` (what `parse` accepts):

    timeout                  entries with the word
    connection timeout       both words, anywhere (AND)
    "connection reset"       the words next to each other, in that order
    user42@example.com       a term with several words is a phrase
    /v1/orders/8812          ... so a path matches its segments in order
    inv*                     a word starting with `inv`
    timeout OR refused       either (OR binds looser than AND)
    timeout -healthz         the first and not the second (also: NOT healthz)

Anything else is a ValueError with a message for the 400: an unclosed
quote, a term without a letter or digit (`%`), only negative terms, more
than MAX_TERMS terms, a term of more than MAX_PHRASE_WORDS words or more
than MAX_WORDS words in all (each word is one more list of entries for the
index to intersect: a `q` of hundreds of words would cost seconds).

Indexes (see `create`):
- SQLite: `entry_fts`, an FTS5 table without content (the documents are
  not stored twice), rowid = entry id. FTS5 tokenizes with `unicode61`
  (letters and digits, lowercased, diacritics kept), the same rule as
  `words`. It keeps which entries hold a word, not where (`detail=none`):
  a third of the size of an index with positions. Words and prefixes are
  answered by the index alone; a phrase of several words finds the entries
  that hold all its words through the index, and those are then checked
  against their documents for the words in order (`logsvc_fts_check`,
  registered on every connection). Deleting a row of such a table needs
  its document again, so retention rebuilds the documents of what it
  deletes (`delete_sqlite`).
- PostgreSQL: `entry_body.doc`, a tsvector of the words (built here, not by
  a text search configuration, so that both engines split text the same
  way), under a GIN index; every entry has an `entry_body` row. Retention
  drops or deletes it with the entry. A word that many entries hold is
  checked entry by entry instead (`dense`, planner.choose).

The live tail evaluates `matches` over the entries' documents for entries
it holds in memory without bodies; a subscription with `q` reads its
entries from the database instead (see tail.py).
"""
import contextlib
import dataclasses
import functools
import re
import sqlite3
import time

from . import db, names
from .bodies import unpack_body, unpack_data

MAX_TERMS = 16
MAX_PHRASE_WORDS = 32
MAX_WORDS = 64
# PostgreSQL refuses lexemes over 2 KB (base64 or hex blobs in bodies):
# longer words are left out of its index; nobody searches for them.
MAX_WORD = 200
_WORD = re.compile(r"[^\W_]+")
# ASCII text: its letters lowered, its digits kept, every other byte a
# space. For ASCII, [^\W_] is exactly the letters and digits, so splitting
# the translated bytes gives `_WORD`'s words, four times as fast.
_ASCII_WORDS = bytes(c if chr(c).isascii() and chr(c).isalnum() else 32
                     for c in range(256)).lower()
_TERM = re.compile(r'-?"[^"]*"\*?|\S+')


@dataclasses.dataclass(frozen=True)
class Phrase:
    words: tuple
    prefix: bool = False  # the last word is a prefix


@dataclasses.dataclass(frozen=True)
class Group:
    """Every positive phrase and none of the negative ones."""
    positive: tuple
    negative: tuple = ()


def words(text):
    """The words of `text`, lowercased: its runs of letters and digits."""
    if text.isascii():
        return text.encode().translate(_ASCII_WORDS).decode().split()
    return _WORD.findall(text.lower())


def word_bytes(text):
    """The distinct `words` of `text`, each as UTF-8 (what a Bloom filter
    hashes), without making a str of each."""
    if text.isascii():
        return set(text.encode().translate(_ASCII_WORDS).split())
    return {word.encode() for word in _WORD.findall(text.lower())}


def ordered_word_bytes(text):
    """The `words` of `text` in order, each as UTF-8 (empty for None)."""
    if not text:
        return []
    if text.isascii():
        return text.encode().translate(_ASCII_WORDS).split()
    return [word.encode() for word in _WORD.findall(text.lower())]


# SQLite (schema 12): an entry's document in the index also holds a word for
# its project and one for its container, so that a tenant's search is one
# query of the index, its words AND the tenant's: FTS5 steps through the
# tenant's entries instead of collecting every entry that holds a common
# word (`v1` of a small tenant at a million entries: 165 ms to collect, 5
# through the tenant's word). A scope word starts with a private-use
# character, which FTS5's tokenizer keeps inside a word and `parse` never
# yields (Python counts it neither a letter nor a digit): no search names one.
_SCOPE_MARK = "\ue000"


def scope_words(project_id, container_id):
    """The index's words of a stored project and container (names.py)."""
    return " ".join(_scope_word(kind, value) for kind, value in
                    (("p", project_id), ("c", container_id)) if value is not None)


def _scope_word(kind, stored):
    if isinstance(stored, bytes):
        return f"{_SCOPE_MARK}{kind}{int.from_bytes(stored, 'big')}"
    return f"{_SCOPE_MARK}{kind}x"  # a name never stored: held by no entry


def scope_of(filters):
    """The scope words a search of `filters` matches too (SQLite; () on
    PostgreSQL, whose documents hold none)."""
    if db.is_postgres():
        return ()
    return tuple(_scope_word(kind, names.stored(value)) for kind, value in
                 (("p", filters.project_id), ("c", filters.container_id)) if value is not None)


def document(url, request_body, response_body, data):
    """The searchable text of an entry, from its stored values."""
    return "\n".join(part for part in (url, request_body, response_body, data) if part)


def parse(q):
    """`q` as a tuple of Groups (any of them matches). ValueError if invalid."""
    if q.count('"') % 2:
        raise ValueError("a quote is not closed")
    groups, positive, negative = [], [], []
    negate_next = False
    total_words = 0
    terms = _TERM.findall(q)
    if len([t for t in terms if t not in ("OR", "AND", "NOT")]) > MAX_TERMS:
        raise ValueError(f"more than {MAX_TERMS} terms")
    for term in terms:
        if term == "OR":
            groups.append(_group(positive, negative))
            positive, negative = [], []
            continue
        if term == "AND":
            continue
        if term == "NOT":
            negate_next = True
            continue
        negated = negate_next
        negate_next = False
        if term.startswith("-") and len(term) > 1:
            negated, term = True, term[1:]
        prefix = term.endswith("*")
        found = words(term.rstrip("*").strip('"'))
        if not found:
            raise ValueError(f"'{term}' has no letter or digit to search for")
        if not any(index_words(word) for word in found):
            raise ValueError(f"'{term}' has no word the index can look up")
        if len(found) > MAX_PHRASE_WORDS:
            raise ValueError(f"'{term[:40]}…' has {len(found)} words; a term may have at most "
                             f"{MAX_PHRASE_WORDS}")
        total_words += len(found)
        if total_words > MAX_WORDS:
            raise ValueError(f"more than {MAX_WORDS} words in all")
        (negative if negated else positive).append(Phrase(tuple(found), prefix))
    groups.append(_group(positive, negative))
    return tuple(groups)


def _group(positive, negative):
    if not positive:
        raise ValueError("each part of the search needs a word to find, not only words "
                         "to leave out")
    return Group(tuple(positive), tuple(negative))


def to_fts5(groups, scope=()):
    """The FTS5 MATCH expression of parsed `groups` for an index without
    positions: a phrase is all of its words. Exact when every phrase is one
    word (`exact_in_index`); otherwise it selects candidates that `check`
    narrows down (a negative phrase of several words is left to `check`).
    `scope`: scope words (`scope_of`) that every match holds too."""
    def all_words(p):
        # Each word as FTS5's tokenizer splits it, once (a phrase that
        # repeats a word asks the index for it once; `check` sees the order).
        quoted = []
        for at, word in enumerate(p.words):
            pieces = index_words(word)
            for i, piece in enumerate(pieces):
                star = " *" if p.prefix and at == len(p.words) - 1 and i == len(pieces) - 1 else ""
                if f'"{piece}"{star}' not in quoted:
                    quoted.append(f'"{piece}"{star}')
        return " AND ".join(quoted)

    parts = []
    for group in groups:
        text = " AND ".join(all_words(p) for p in group.positive)
        negative = [all_words(p) for p in group.negative
                    if len(p.words) == 1 and index_words(p.words[0]) == p.words]
        if negative:
            text = f"({text}) NOT ({' OR '.join(negative)})"
        parts.append(f"({text})")
    expression = " OR ".join(parts)
    if scope:
        expression = " AND ".join([f"({expression})", *(f'"{word}"' for word in scope)])
    return expression


def exact_in_index(groups):
    return all(len(p.words) == 1 and index_words(p.words[0]) == p.words
               for g in groups for p in (*g.positive, *g.negative))


@functools.lru_cache(maxsize=4096)
def index_words(word):
    """The words FTS5's tokenizer makes of one of ours: the word itself,
    except for the few characters Python counts as letters or digits and
    FTS5's older Unicode tables do not (U+19B0, say), where it splits. ()
    when it keeps none."""
    if word.isascii():
        return (word,)
    with contextlib.closing(sqlite3.connect(":memory:")) as conn:
        conn.execute("CREATE VIRTUAL TABLE t USING fts5(x, tokenize='unicode61 remove_diacritics 0')")
        conn.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, instance)")
        conn.execute("INSERT INTO t (x) VALUES (?)", (word,))
        return tuple(row[0] for row in conn.execute("SELECT term FROM v ORDER BY offset"))


@functools.lru_cache(maxsize=256)
def _parsed(q):
    return parse(q)


@db.sqlite_function("logsvc_fts_check", 4)
def check(q, url, bodies, data):
    """1 when an entry's document matches `q` (SQL: logsvc_fts_check)."""
    return int(matches(_parsed(q), document(url, bodies, None, unpack_data(data))))


@db.sqlite_function("logsvc_bodies", 4)
def stored_bodies(request_body, request_body_z, response_body, response_body_z):
    """An entry_body row's bodies as one text (SQL: logsvc_bodies)."""
    return document(None, unpack_body(request_body, request_body_z),
                    unpack_body(response_body, response_body_z), None) or None


def to_tsquery(groups):
    """The tsquery text of parsed `groups` (lexemes are our own words)."""
    def phrase(p):
        lexemes = [f"'{w}'" for w in p.words]
        if p.prefix:
            lexemes[-1] += ":*"
        return "(" + " <-> ".join(lexemes) + ")"

    parts = []
    for group in groups:
        terms = [phrase(p) for p in group.positive] + [f"!{phrase(p)}" for p in group.negative]
        parts.append("(" + " & ".join(terms) + ")")
    return " | ".join(parts)


def matches(groups, text):
    """Whether `text` (a document) matches parsed `groups`."""
    text = text.lower()
    return any(all(_pattern(p).search(text) for p in g.positive)
               and not any(_pattern(p).search(text) for p in g.negative) for g in groups)


@functools.lru_cache(maxsize=1024)
def _pattern(phrase):
    """A regular expression finding `phrase` in lowercased text exactly where
    its words follow each other in `words(text)`: words are the runs of
    letters and digits, so between two of them there is a run of anything
    else (underscores included), and before the first and after the last
    (unless it is a prefix) no letter or digit."""
    body = "[\\W_]+".join(re.escape(word) for word in phrase.words)
    return re.compile(f"(?<![^\\W_]){body}" + ("" if phrase.prefix else "(?![^\\W_])"))


def tsvector(text):
    """A tsvector literal of `text`'s words and positions."""
    positions = {}
    for at, word in enumerate(words(text), start=1):
        if len(word) <= MAX_WORD:
            positions.setdefault(word, []).append(min(at, 16383))
    return " ".join(f"'{word}':{','.join(map(str, spots[:256]))}"
                    for word, spots in positions.items())


def where_sql(q, plain=False, scope=()):
    """(condition over `entry e`, params) selecting the entries matching `q`;
    with `plain`, SQLite collects the index's matches and checks each entry
    it reads through another index against them, rather than reading the
    entries by the ids collected (planner.py). `scope`: `scope_of` the
    filters beside `q` (SQLite's index finds only their entries)."""
    groups = parse(q)
    if db.is_postgres():
        if plain:
            # Words that many of the entries read hold (planner.choose:
            # `dense`): each entry is checked against its own document, so
            # that a page walks the entries only until it is full.
            return ("EXISTS (SELECT 1 FROM entry_body b WHERE b.entry_id = e.id "
                    "AND b.doc @@ CAST(? AS tsquery))", [to_tsquery(groups)])
        # The matching ids first, through the GIN index, then the page. As
        # `IN (subquery)`, PostgreSQL walks the entries backwards by id
        # expecting to meet the few matches early, and for a rare word (the
        # usual search: an id, an email) reads the whole partition.
        return ("e.id = ANY(ARRAY(SELECT entry_id FROM entry_body "
                "WHERE doc @@ CAST(? AS tsquery)))", [to_tsquery(groups)])
    return _checked(f"{'+' if plain else ''}e.id IN "
                    "(SELECT rowid FROM entry_fts WHERE entry_fts MATCH ?)",
                    [to_fts5(groups, scope)], q, groups)


# SQLite: the entries matching a search, in the order of the index (by id),
# each read by its id. What planner.search_walk chooses for a word that many
# entries hold: `e.id IN (...)` first collects every id the index finds
# (130 ms for a word of every entry at a million), where this reads the
# index only until the page is full (1-5 ms).
WALKED = "entry_fts f CROSS JOIN entry e ON e.id = f.rowid"


def walk_sql(q, low=None, high=None, scope=()):
    """(condition over WALKED, params) for the entries matching `q` (and
    holding the `scope` words) with low <= id <= high (None: unbounded);
    the bounds go to the index."""
    groups = parse(q)
    where, params = _in_index(groups, low, high, scope)
    return _checked(where, params, q, groups)


# How long a process keeps what `indexed` counted: a plan's estimate, which
# needs no newer figure, and a word shared by a million words' prefixes
# (`user*`) costs FTS5 most of a second each time it is read.
INDEXED_KEPT_S = 10.0


def indexed(q, low=None, high=None, cap=None, kept=False, scope=()):
    """How many entries (at most `cap`) the index holds for `q`'s words (and
    the `scope` words) with low <= id <= high: the index alone is read.
    With `kept` (an estimate for a plan), a count made in the last
    INDEXED_KEPT_S by this process will do."""
    if not kept:
        return _indexed(q, low, high, cap, scope)
    count, _ = _kept(("indexed", q, low, high, scope),
                     lambda: (_indexed(q, low, high, cap, scope), cap),
                     lambda found: found[0] < found[1] or found[1] >= cap)
    return min(count, cap)


def _kept(key, compute, still_good=lambda found: True):
    """compute(), or what it gave for `key` in this process in the last
    INDEXED_KEPT_S if `still_good` of that (a plan's estimates)."""
    store = db.current()
    kept = getattr(store, "search_counts", None)
    if kept is None or len(kept) > 1000:
        kept = store.search_counts = {}
    now = time.monotonic()
    found = kept.get(key)  # (when, what compute gave)
    if found is None or now - found[0] > INDEXED_KEPT_S or not still_good(found[1]):
        found = kept[key] = (now, compute())
    return found[1]


def _id_range(column, low, high):
    """([conditions], params) of low <= column <= high (None: unbounded)."""
    where, params = [], []
    for bound, op in ((low, ">="), (high, "<=")):
        if bound is not None:
            where.append(f"{column} {op} ?")
            params.append(bound)
    return where, params


def _indexed(q, low, high, cap, scope=()):
    if db.is_postgres():
        # Every entry has one entry_body row; PostgreSQL reads a common
        # word's rows in order until the cap, a rare one's through the GIN
        # index (its statistics of the documents' words tell which).
        where, params = _id_range("entry_id", low, high)
        (n,) = db.execute(f"SELECT count(*) FROM (SELECT 1 FROM entry_body WHERE "
                          f"{' AND '.join(['doc @@ CAST(? AS tsquery)', *where])} LIMIT ?) "
                          "AS found", [to_tsquery(parse(q)), *params, cap]).fetchone()
        return n
    where, params = _in_index(parse(q), low, high, scope)
    (n,) = db.execute(f"SELECT count(*) FROM (SELECT 1 FROM entry_fts f WHERE {where} "
                      "LIMIT ?) AS found", [*params, cap]).fetchone()
    return n


# PostgreSQL: how many documents `dense` reads, from the end a page starts at.
SAMPLE = 2000


def dense(q, low=None, high=None, newest=True, kept=False):
    """PostgreSQL: the share of the SAMPLE documents nearest the end of
    low <= id <= high (the newest, or with `newest` false the oldest) that
    match `q`. A page walks about `need / share` entries to fill itself.
    With `kept`, as `indexed`."""
    if kept:
        return _kept(("dense", q, low, high, newest), lambda: dense(q, low, high, newest))
    where, params = _id_range("entry_id", low, high)
    sampled, found = db.execute(
        "SELECT count(*), count(*) FILTER (WHERE doc @@ CAST(? AS tsquery)) FROM "
        f"(SELECT doc FROM entry_body {'WHERE ' + ' AND '.join(where) if where else ''} "
        f"ORDER BY entry_id {'DESC' if newest else 'ASC'} LIMIT ?) AS sample",
        [to_tsquery(parse(q)), *params, SAMPLE]).fetchone()
    return found / sampled if sampled else 0.0


def _in_index(groups, low, high, scope=()):
    where, params = _id_range("f.rowid", low, high)
    return " AND ".join(["f.entry_fts MATCH ?", *where]), [to_fts5(groups, scope), *params]


def _checked(found, params, q, groups):
    """`found`, and where the index cannot tell alone (a phrase: the index
    holds words, not positions), the check of each candidate's document."""
    if exact_in_index(groups):
        return found, params
    return (f"{found} AND logsvc_fts_check(?, e.url, (SELECT logsvc_bodies(b.request_body, "
            "b.request_body_z, b.response_body, b.response_body_z) FROM entry_body b "
            "WHERE b.entry_id = e.id), e.data) = 1", [*params, q])


# --- the index -------------------------------------------------------------------

def create():
    """Create the index (idempotent; part of the schema)."""
    if db.is_postgres():
        db.execute("ALTER TABLE entry_body ADD COLUMN IF NOT EXISTS doc tsvector")
        db.execute("CREATE INDEX IF NOT EXISTS entry_body_doc ON entry_body USING GIN (doc)")
    else:
        db.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS entry_fts USING {_FTS5}")


# Without content, positions or per-document sizes (no ranking is done).
_FTS5 = ("fts5(doc, content='', detail=none, columnsize=0, "
         "tokenize='unicode61 remove_diacritics 0')")


def recreate_sqlite():
    """Index every stored entry again in an index of today's layout, if the
    one there is of an earlier one (SQLite; the upgrade to schema 6)."""
    (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE name = 'entry_fts'").fetchone()
    if "detail=none" in sql:
        return
    db.execute("DROP TABLE entry_fts")
    create()
    rebuild()


def insert_sqlite(rows, first=0):
    """Index (entry id - `first`, document) pairs (SQLite; each document
    with its `scope_words`)."""
    db.executemany(f"INSERT INTO entry_fts (rowid, doc) VALUES (? + {int(first)}, ?)", rows)


@db.only("sqlite")
def delete_sqlite(ids):
    """Remove entries from the index (SQLite), before their rows are
    deleted: FTS5 needs each one's document to find its words."""
    marks = ", ".join("?" for _ in ids)
    delete_documents(_stored_documents(f"e.id IN ({marks})", list(ids), scoped=True))


@db.only("sqlite")
def delete_documents(documents):
    """Take (entry id, document as `indexed_document` made it) out of
    SQLite's index: FTS5 needs a contentless row's very document to remove
    its words."""
    db.executemany("INSERT INTO entry_fts (entry_fts, rowid, doc) VALUES ('delete', ?, ?)",
                   documents)


def indexed_document(text, project_id, container_id):
    """What SQLite's index holds of an entry: its document and its scope
    words. The mark of a scope word is a separator in the document (as
    `words` reads it): no entry can claim another scope by holding one."""
    scope = scope_words(project_id, container_id)
    return f"{text.replace(_SCOPE_MARK, ' ')}\n{scope}" if text else scope


def _stored_documents(where, params, limit=None, scoped=False):
    """(entry id, document) of the stored entries matching `where`, by id;
    `scoped`: as the index holds them (`indexed_document`)."""
    sql = ("SELECT e.id, e.url, b.request_body, b.request_body_z, b.response_body, "
           "b.response_body_z, e.data, e.project_id, e.container_id FROM entry e "
           f"LEFT JOIN entry_body b ON b.entry_id = e.id WHERE {where} ORDER BY e.id")
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    documents = []
    for row in db.execute(sql, params).fetchall():
        text = document(row[1], unpack_body(row[2], row[3]), unpack_body(row[4], row[5]),
                        unpack_data(row[6]))
        documents.append((row[0], indexed_document(text, row[7], row[8]) if scoped else text))
    return documents


def add_scope_words():
    """Give every indexed entry its scope words (SQLite; the upgrade to
    schema 12): FTS5 takes them as a second document of the same id, and a
    deletion of the whole (`delete_sqlite`) removes both."""
    after = 0
    while True:
        rows = db.execute("SELECT id, project_id, container_id FROM entry WHERE id > ? "
                          "ORDER BY id LIMIT 20000", [after]).fetchall()
        if not rows:
            return
        db.executemany("INSERT INTO entry_fts (rowid, doc) VALUES (?, ?)",
                       [(i, scope_words(project, container)) for i, project, container in rows])
        after = rows[-1][0]


@db.only("sqlite")
def optimize_sqlite():
    """Rewrite SQLite's index in one piece. A removed document leaves a
    delete marker behind (the index is contentless) until a merge reaches
    the oldest part of the index: after a seal has removed a segment's
    documents, this gives their room back (about 13 µs per document
    left)."""
    db.execute("INSERT INTO entry_fts (entry_fts) VALUES ('optimize')")


@db.only("sqlite")
def clear_sqlite():
    db.execute("INSERT INTO entry_fts (entry_fts) VALUES ('delete-all')")


def rebuild():
    """Index every stored entry (the upgrade of a store made before the
    index; on SQLite without scope words, which the upgrade to schema 12
    adds)."""
    after = 0
    while True:
        docs = _stored_documents("e.id > ?", [after], limit=5000)
        if not docs:
            return
        if db.is_postgres():
            db.executemany("INSERT INTO entry_body (entry_id) VALUES (?) "
                           "ON CONFLICT (entry_id) DO NOTHING", [(i,) for i, _ in docs])
            db.executemany("UPDATE entry_body SET doc = CAST(? AS tsvector) WHERE entry_id = ?",
                           [(tsvector(text), i) for i, text in docs])
        else:
            insert_sqlite(docs)
        after = docs[-1][0]
