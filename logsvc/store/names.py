"""Names stored as numbers (SQLite): project, container, service, method
and route.

Every entry names its project, container, service, method and route, and so
do the keys of most counter rows. At a thousand containers the names were a
fifth of a row, half of the two tenant indexes and most of a per-minute
counter's key. From schema 8, SQLite stores each name as the number it has
in `stored_name`, written as the number's big-endian bytes: one byte for the
first 255 names, two up to 65,535, three beyond. A stored name is a BLOB
and a name as sent is TEXT: SQLite never finds the two equal, so a filter
on a name that was never stored matches nothing. PostgreSQL keeps the
text.

- `stored(name)`: the form to compare a column with (filters).
- `shower()`: a function that gives the name of a stored value (what the
  API returns).
- `numbered(names)`: the stored form of each name a batch brings (ingest).

Levels, kinds and sources have a few values each, fixed by this version:
SQLite stores each as one letter (`LETTERS`; `error` is `e`), PostgreSQL
as it is. `lettered(column, value)` and `unlettered(column, value)`
translate; both pass any other text through.

A name gets its number in a short transaction of its own, so two writers
never give one number to two names (SQLite has one writer at a time). A
process keeps a number in memory only once that transaction has committed:
a number whose transaction rolled back may go to another name.
Names are never removed (clearing the store keeps them), so a number never
changes meaning while a process remembers it.
"""
from logsvc.entry import KINDS, LEVELS, SOURCES

from . import db

# SQLite's letter for each level, kind and source.
LETTERS = {
    "level": {"debug": "d", "info": "i", "warn": "w", "error": "e"},
    "kind": {"request": "q", "response": "r", "event": "e"},
    "source": {"backend": "b", "edge": "e"},
}
assert [set(LETTERS[c]) for c in LETTERS] == [set(LEVELS), set(KINDS), set(SOURCES)]
assert all(len(set(m.values())) == len(m) for m in LETTERS.values())
_WORDS = {column: {letter: word for word, letter in m.items()} for column, m in LETTERS.items()}

# Names remembered per store and process; past it the memory starts over.
REMEMBERED = 200_000


class _Memory:
    def __init__(self):
        self.code_of = {}
        self.name_of = {}
        self._reset()

    def _reset(self):
        self.code_of.clear()
        self.name_of.clear()
        # "none" (NULL, and '' in counter keys) stays itself.
        self.code_of.update({None: None, "": ""})

    def remember(self, pairs):
        if len(self.code_of) + len(pairs) > REMEMBERED:
            self._reset()
        for name, code in pairs:
            self.code_of[name] = code
            self.name_of[code] = name


def _memory():
    store = db.current()
    memory = getattr(store, "names", None)
    if memory is None:
        memory = store.names = _Memory()
    return memory


def pack(number):
    return number.to_bytes((number.bit_length() + 7) // 8 or 1, "big")


def lettered(column, value):
    """How `value` of a level, kind or source is stored."""
    if db.is_postgres():
        return value
    return LETTERS[column].get(value, value)


def unlettered(column, value):
    """The value that a stored level, kind or source stands for."""
    return _WORDS[column].get(value, value)


def stored(name):
    """The stored form of `name` (a filter's value): its number's bytes, or
    the text itself where no entry ever had that name (it then matches no
    row)."""
    if name is None or name == "" or db.is_postgres():
        return name
    memory = _memory()
    code = memory.code_of.get(name)
    if code is None:
        row = db.execute("SELECT code FROM stored_name WHERE name = ?", (name,)).fetchone()
        if row is None:  # not remembered: another process may store it later
            return name
        code = pack(row[0])
        memory.remember([(name, code)])
    return code


def stored_all(names):
    return [stored(name) for name in names]


def shower():
    """A function that gives the name a stored value stands for (text
    passes through); the memory is looked up once, for many values."""
    memory = _memory()
    name_of = memory.name_of

    def show(value):
        if type(value) is not bytes:
            return value
        name = name_of.get(value)
        if name is None:
            row = db.execute("SELECT name FROM stored_name WHERE code = ?",
                             (int.from_bytes(value, "big"),)).fetchone()
            if row is None:  # cannot happen: numbers are committed before use
                return value.hex()
            name = row[0]
            memory.remember([(name, value)])
        return name
    return show


def warm():
    """Remember the stored names while they fit the memory (REMEMBERED):
    one read, where a first question would look each name up alone (a
    breakdown by container and service holds thousands). SQLite; the
    background work calls it each round, and reads the names again only
    when more are stored than it remembers."""
    if db.is_postgres():
        return
    memory = _memory()
    known = len(memory.code_of) - 2  # beside None and ""
    (count,) = db.execute("SELECT count(*) FROM stored_name").fetchone()
    if not count or known >= count or count > REMEMBERED:
        return
    memory.remember([(name, pack(code)) for name, code in
                     db.execute("SELECT name, code FROM stored_name").fetchall()])


def numbered(names):
    """{name: stored form} for the distinct `names` of a batch: a name this
    process knows no number for gets one (or the one another process gave
    it) in a short transaction of its own, remembered once committed. A
    batch that fails after this leaves nothing wrong: names are never
    removed."""
    memory = _memory()
    code_of = memory.code_of
    found = {name: code_of.get(name) for name in names}
    unnamed = [name for name, code in found.items() if code is None
               and name is not None and name != ""]
    if not unnamed:
        return found
    with db.database.atomic():
        db.executemany("INSERT INTO stored_name (name) VALUES (?) "
                       "ON CONFLICT (name) DO NOTHING", [(name,) for name in unnamed])
        assigned = {}
        for start in range(0, len(unnamed), 500):
            part = unnamed[start:start + 500]
            marks = ", ".join("?" for _ in part)
            for name, code in db.execute(
                    f"SELECT name, code FROM stored_name WHERE name IN ({marks})", part):
                assigned[name] = pack(code)
    memory.remember(list(assigned.items()))
    found.update(assigned)
    return found


# The tables that hold names, and which columns.
CODED_COLUMNS = {
    "entry": ("project_id", "container_id", "service_name", "method", "route"),
    "rollup_minute": ("project_id", "container_id", "service_name"),
    "rollup_hour": ("project_id", "container_id", "service_name"),
    "rollup_total": ("project_id", "container_id", "service_name"),
    "rollup_route_minute": ("project_id", "route"),
    "rollup_route_hour": ("project_id", "route"),
    "rollup_route_total": ("project_id", "container_id", "route"),
    "rollup_route_minute_all": ("route",),
    "rollup_route_five_minutes_all": ("route",),
    "rollup_route_hour_all": ("route",),
    "rollup_route_total_all": ("route",),
}


def code_stored_names():
    """Schema 8 (SQLite): number every name that the entries and counters
    hold and store the numbers in their place, and the letters of levels,
    kinds and sources, in the current transaction."""
    for table, columns in CODED_COLUMNS.items():
        for column in columns:
            db.execute(f"INSERT INTO stored_name (name) SELECT DISTINCT {column} FROM {table} "
                       f"WHERE typeof({column}) = 'text' AND {column} <> '' "
                       f"ON CONFLICT (name) DO NOTHING")
    db.execute("CREATE TEMP TABLE scope_code (name TEXT PRIMARY KEY, code BLOB) WITHOUT ROWID")
    db.executemany("INSERT INTO scope_code VALUES (?, ?)",
                   [(name, pack(code)) for name, code in
                    db.execute("SELECT name, code FROM stored_name").fetchall()])
    for table, columns in CODED_COLUMNS.items():
        sets = [f"{c} = CASE WHEN typeof({c}) = 'text' AND {c} <> '' "
                f"THEN (SELECT code FROM scope_code WHERE name = {table}.{c}) ELSE {c} END"
                for c in columns]
        if table == "entry":  # and the letters, in the same pass
            sets += [f"{c} = CASE {c} "
                     + " ".join(f"WHEN '{word}' THEN '{letter}'" for word, letter in m.items())
                     + f" ELSE {c} END" for c, m in LETTERS.items()]
        db.execute(f"UPDATE {table} SET {', '.join(sets)}")
    db.execute("DROP TABLE scope_code")
