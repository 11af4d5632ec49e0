"""What a search or a live tail matches: one table of filters, two forms.

Each filter is a small object bound to one field of `Filters`. It renders
itself as an SQL condition over `entry` (searches, the tail's catch-up from
the database) and tests an entry in its API shape (the tail's in-memory
ring). Both forms come from the same object, so they cannot drift apart;
`FILTERS` lists every one, and a field of `Filters` without a filter is
an error at import time.

The SQL is written by hand rather than through peewee's query builder:
compiling the builder's expression costs more than running the query on
an indexed page, and this is the hottest read path.
"""
import dataclasses
import functools

import orjson

from . import db, fulltext, lookup, names, sketch


@dataclasses.dataclass(frozen=True)
class Filters:
    """The filters of one request; None or () means "any". The caller's
    scope is already folded into `project_id`/`container_id`."""

    project_id: str = None
    container_id: str = None
    service_names: tuple = ()
    levels: tuple = ()
    kinds: tuple = ()
    methods: tuple = ()
    sources: tuple = ()
    trace_id: str = None
    status_ranges: tuple = ()  # ((low, high), ...) inclusive
    since: int = None  # epoch ms, inclusive
    until: int = None  # epoch ms, exclusive
    q: str = None  # full-text search, see fulltext.py
    client_ip: str = None
    routes: tuple = ()
    min_duration_ms: float = None  # inclusive
    max_duration_ms: float = None  # inclusive
    timed: bool = None  # True: only entries with a duration

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    @functools.cached_property
    def active(self):
        """(filter, value) for each filter that is set."""
        return tuple((item, getattr(self, item.field)) for item in FILTERS
                     if getattr(self, item.field) not in (None, ()))


# Text on PostgreSQL: names and lettered values (names.py; SQLite stores
# names as numbers' bytes).
_TEXT = {*names.CODED_COLUMNS["entry"], *names.LETTERS}


def unindexed(column):
    """`column` of `entry` written so that the database uses no index for
    it (planner.py)."""
    return db.unindexed(column, column in _TEXT)


def _column(column, plain):
    return unindexed(column) if plain else column


class Equals:
    """`column = value`."""

    def __init__(self, field, column, key):
        self.field, self.column, self.key = field, column, key

    def sql(self, value, plain=False):
        return f"{_column(self.column, plain)} = ?", [value]

    def test(self, value, entry):
        return entry[self.key] == value


class OneOf(Equals):
    """`column IN (values)`: a comma-separated union."""

    def sql(self, values, plain=False):
        column = _column(self.column, plain)
        if len(values) == 1:
            return f"{column} = ?", list(values)
        return f"{column} IN ({', '.join('?' * len(values))})", list(values)

    def test(self, values, entry):
        return entry[self.key] in values


class Named(OneOf):
    """A project, container, service, method or route (one, or a union):
    compared in its stored form (names.py)."""

    def sql(self, values, plain=False):
        if isinstance(values, str):
            values = (values,)
        return super().sql(names.stored_all(values), plain)

    def test(self, values, entry):
        if isinstance(values, str):
            return entry[self.key] == values
        return entry[self.key] in values


class Lettered(OneOf):
    """Levels, kinds or sources: compared in their stored form (names.py)."""

    def sql(self, values, plain=False):
        return super().sql([names.lettered(self.column, value) for value in values], plain)


class Lookup(Equals):
    """`column = value` for trace ids and client addresses, found through
    SQLite's lookup index (lookup.py)."""

    def sql(self, value, plain=False):
        return lookup.where_sql(self.column, value)


class Timed:
    """Only entries with a duration (what `order=slowest` lists)."""

    field = "timed"

    def sql(self, value, plain=False):
        return "lat_bucket IS NOT NULL", []

    def test(self, value, entry):
        return entry["durationMs"] is not None


class StatusIn:
    """The status lies in one of the inclusive ranges."""

    field = "status_ranges"

    def sql(self, ranges, plain=False):
        parts, params = [], []
        status = _column("status", plain)
        for low, high in ranges:
            parts.append(f"{status} = ?" if low == high else f"{status} BETWEEN ? AND ?")
            params.extend((low,) if low == high else (low, high))
        return f"({' OR '.join(parts)})", params

    def test(self, ranges, entry):
        status = entry["status"]
        return status is not None and any(low <= status <= high for low, high in ranges)


class AtOrAfter:
    field = "since"

    def sql(self, value, plain=False):
        return f"{_column('ts_ms', plain)} >= ?", [value]

    def test(self, value, entry):
        return entry["tsMs"] >= value


class Before:
    field = "until"

    def sql(self, value, plain=False):
        return f"{_column('ts_ms', plain)} < ?", [value]

    def test(self, value, entry):
        return entry["tsMs"] < value


class Duration:
    """`durationMs` at least (`low`) or at most the value; entries without
    a duration never match."""

    def __init__(self, field, low):
        self.field, self.low = field, low

    def sql(self, value, plain=False):
        # The latency bucket bounds the duration (sketch.bucket_of grows with
        # it), so the indexes by bucket narrow the rows to read.
        sign = ">=" if self.low else "<="
        return (f"{_column('lat_bucket', plain)} {sign} ? AND duration_ms {sign} ?",
                [sketch.bucket_of(value), value])

    def test(self, value, entry):
        duration = entry["durationMs"]
        return duration is not None and (duration >= value if self.low else duration <= value)


class FullText:
    """Words and phrases over url, bodies and data (see fulltext.py)."""

    field = "q"

    def sql(self, value, plain=False, scope=()):
        """`scope`: fulltext.scope_of the filters beside it (where_sql)."""
        return fulltext.where_sql(value, plain, scope)

    def test(self, value, entry):
        data = entry["data"]  # a dict, or an orjson.Fragment of the stored text
        if not isinstance(data, str):
            data = orjson.dumps(data).decode()
        text = fulltext.document(entry["url"], entry.get("requestBody"),
                                 entry.get("responseBody"), data)
        return fulltext.matches(fulltext.parse(value), text)


FILTERS = (
    Named("project_id", "project_id", "projectId"),
    Named("container_id", "container_id", "containerId"),
    Lookup("trace_id", "trace_id", "traceId"),
    Lookup("client_ip", "client_ip", "clientIp"),
    Named("service_names", "service_name", "serviceName"),
    Lettered("levels", "level", "level"),
    Lettered("kinds", "kind", "kind"),
    Named("methods", "method", "method"),
    Lettered("sources", "source", "source"),
    Named("routes", "route", "route"),
    Duration("min_duration_ms", low=True),
    Duration("max_duration_ms", low=False),
    Timed(),
    StatusIn(),
    AtOrAfter(),
    Before(),
    FullText(),
)

_unfiltered = {f.name for f in dataclasses.fields(Filters)} - {f.field for f in FILTERS}
if _unfiltered:
    raise AssertionError(f"Filters fields without a filter: {sorted(_unfiltered)}")


def where_sql(filters, plain=()):
    """The filters as an SQL condition over `entry` and its parameters;
    those whose field is in `plain` written so that the database uses no
    index for them (the choice of planner.py)."""
    terms, params = [], []
    for item, value in filters.active:
        if item.field == "q":  # SQLite's index narrows a search to the scope too
            term, values = item.sql(value, "q" in plain, fulltext.scope_of(filters))
        else:
            term, values = item.sql(value, item.field in plain)
        terms.append(term)
        params.extend(values)
    return (" AND ".join(terms) if terms else "TRUE"), params


def matches(filters, entry):
    """Whether an entry (API shape) passes `filters`, as `where_sql` would."""
    return all(item.test(value, entry) for item, value in filters.active)
