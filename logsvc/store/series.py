"""Entries counted per time bucket and per set of labels, and the distinct
label values of a question: what LogQL's metric queries and Grafana's label
browser ask (api/loki.py).

One statement over the matching entries (found through the index the
planner picks, as a stats question is), grouped by bucket and by the label
columns asked for; sealed entries (segments.py) are counted from their
segments beside it. A label's stored form (names.py) is shown as sent.
"""
from logsvc.entry import KINDS, LEVELS, SOURCES

from . import db, names, planner, segments, sketch

# LogQL label -> `entry` column
LABEL_COLUMNS = {"projectId": "project_id", "containerId": "container_id",
                 "serviceName": "service_name", "level": "level", "kind": "kind",
                 "method": "method", "status": "status", "source": "source",
                 "route": "route"}
LABELS = tuple(LABEL_COLUMNS)
FIXED_VALUES = {"level": LEVELS, "kind": KINDS, "source": SOURCES}
_EVERY = float("inf")


class Cell:
    """What one bucket of one label set holds."""
    __slots__ = ("count", "timed", "total_ms", "least_ms", "most_ms", "sketch", "bytes")

    def __init__(self):
        self.count = self.timed = self.bytes = 0
        self.total_ms = 0.0
        self.least_ms = self.most_ms = None
        self.sketch = {}

    def add(self, n, timed, total_ms, least_ms, most_ms, bucket=None):
        self.count += n
        if not timed:
            return
        self.timed += timed
        self.total_ms += total_ms
        self.least_ms = least_ms if self.least_ms is None else min(self.least_ms, least_ms)
        self.most_ms = most_ms if self.most_ms is None else max(self.most_ms, most_ms)
        if bucket is not None:
            self.sketch[bucket] = self.sketch.get(bucket, 0) + timed


def buckets(filters, origin, size_ms, labels, timed=False):
    """{(bucket number, label values): Cell} of the entries matching
    `filters`; bucket n holds [origin + n × size_ms, origin + (n+1) × size_ms).
    `labels` are LogQL labels; `timed`: keep a latency sketch per cell."""
    return db.read(_buckets, filters, int(origin), int(size_ms), tuple(labels), timed)


def _buckets(filters, origin, size_ms, labels, timed):
    condition, params = planner.where_sql(filters, _EVERY, ordered=False)
    columns = [f"e.{LABEL_COLUMNS[label]}" for label in labels]
    if timed:
        columns.append("e.lat_bucket")
    grouped = ", ".join(["b", *columns])
    selected = ", ".join(columns) + ", " if columns else ""
    rows = db.execute(
        f"SELECT (e.ts_ms - {origin}) / {size_ms} AS b, {selected}count(*), "
        "count(e.duration_ms), SUM(e.duration_ms), MIN(e.duration_ms), MAX(e.duration_ms) "
        f"FROM entry e WHERE {condition} GROUP BY {grouped}", params).fetchall()
    shown = _shower(labels)
    width = len(labels)
    cells = {}
    for row in rows:
        key = (row[0], tuple(show(value) for show, value in zip(shown, row[1:1 + width])))
        bucket = row[1 + width] if timed else None
        n, n_timed, total, least, most = row[-5:]
        cell = cells.get(key)
        if cell is None:
            cell = cells[key] = Cell()
        cell.add(n, n_timed, total or 0.0, least, most, bucket)
    through = segments.sealed_through()
    if through:
        _add_sealed(cells, filters, through, origin, size_ms, labels, timed)
    return cells


def _add_sealed(cells, filters, through, origin, size_ms, labels, timed):
    """Count the sealed matches into `cells`, grouped with Arrow a segment
    at a time (as stats groups them): no entry is made of each match."""
    import numpy as np

    columns = [LABEL_COLUMNS[label] for label in labels]
    keys = ["_b", *columns, *(["lat_bucket"] if timed else [])]
    wanted = ["ts_ms", *columns, "duration_ms", *(["lat_bucket"] if timed else [])]
    width = len(columns)
    for arrays in segments.matching_arrays(filters, through, wanted):
        if not len(arrays["ts_ms"]):
            continue
        arrays["_b"] = (arrays["ts_ms"].astype(np.int64) - origin) // size_ms
        summed, shown = _sealed_groups(arrays, keys, [
            ([], "count_all"), ("_d", "count"), ("_d", "sum"), ("_d", "min"), ("_d", "max")])
        for b, *key, n, n_timed, total, least, most in zip(
                *shown, *(summed[name].to_pylist() for name in (
                    "count_all", "_d_count", "_d_sum", "_d_min", "_d_max"))):
            cell_key = (b, tuple(key[:width]))
            cell = cells.get(cell_key)
            if cell is None:
                cell = cells[cell_key] = Cell()
            cell.add(n, n_timed, total or 0.0, least, most, key[width] if timed else None)


def _sealed_groups(arrays, keys, aggregations):
    """(the groups of `arrays` (`segments.matching_arrays`', with
    "duration_ms" as "_d") by `keys` with `aggregations`, Arrow's group-by
    table; the keys' values of each group as the API shows them, a list a
    key). Arrow hashes the key columns as they are: any number of keys of
    any number of values each."""
    segments.arrow_ready()
    import pyarrow as pa

    table, values = {}, {}
    for column in keys:
        found = arrays[column]
        if isinstance(found, tuple):  # (its distinct values, each row's index; -1: none)
            values[column], indexes = found
            table[column] = pa.array(indexes, mask=indexes < 0)
        else:
            table[column] = pa.array(found, from_pandas=True)  # NaN: none
    if "duration_ms" in arrays:
        table["_d"] = pa.array(arrays["duration_ms"], from_pandas=True)
    summed = pa.table(table).group_by(keys, use_threads=False).aggregate(aggregations)
    shown = [values[c].take(summed[c]).to_pylist() if c in values else
             [None if v is None else int(v) for v in summed[c].to_pylist()] for c in keys]
    return summed, shown


def add_entry(cells, key, item, timed=True):
    """Count one entry (API shape) into the cell `key` of `cells`; `timed`:
    into its latency sketch too. Returns the cell."""
    cell = cells.get(key)
    if cell is None:
        cell = cells[key] = Cell()
    duration = item["durationMs"]
    if duration is None:
        cell.add(1, 0, 0.0, None, None)
    else:
        cell.add(1, 1, duration, duration, duration,
                 sketch.bucket_of(duration) if timed else None)
    return cell


def distinct(filters, labels, limit, present=False):
    """Up to `limit` distinct tuples of `labels`' values among the entries
    matching `filters` (the first `limit` in order of their values);
    `present`: only tuples without a missing value."""
    return db.read(_distinct, filters, tuple(labels), limit, present)


def _distinct(filters, labels, limit, present):
    condition, params = planner.where_sql(filters, _EVERY, ordered=False)
    columns = [LABEL_COLUMNS[label] for label in labels]
    if present:
        condition += "".join(f" AND e.{column} IS NOT NULL" for column in columns)
    rows = db.execute(f"SELECT DISTINCT {', '.join('e.' + c for c in columns)} FROM entry e "
                      f"WHERE {condition} LIMIT ?", [*params, limit]).fetchall()
    shown = _shower(labels)
    found = {tuple(show(value) for show, value in zip(shown, row)) for row in rows}
    through = segments.sealed_through()
    if through and len(found) < limit:
        # The sealed matches grouped by their columns (stats does the
        # same), a segment at a time: no entry is made of each match.
        for arrays in segments.matching_arrays(filters, through, columns):
            for values in zip(*_sealed_groups(arrays, columns, [([], "count_all")])[1]):
                if not present or None not in values:
                    found.add(values)
            if len(found) >= limit:
                break
    return sorted(found, key=lambda values: tuple("" if v is None else str(v)
                                                  for v in values))[:limit]


def _shower(labels):
    name = names.shower()

    def of(label):
        if label in FIXED_VALUES:
            return lambda value: None if value is None else names.unlettered(label, value)
        if label == "status":
            return lambda value: value
        return lambda value: None if value is None else name(value)
    return [of(label) for label in labels]
