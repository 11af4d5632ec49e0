"""Loki's read API, so that Grafana's built-in Loki data source reads logsvc:
Explore, the label browser, logs volume, "show context", the live tail and
dashboard panels.

- Labels (an entry's stream): `projectId`, `containerId`, `serviceName`,
  `level`, `kind`, `method`, `status`, `source`, `route`, those the entry
  has. The line: the entry's one-line text form, then its `data` as JSON.
- Selectors (`=`, `!=`, `=~`, `!~`) become search filters where they can
  (a value, a list of values, the complement within levels, kinds and
  sources); the rest is checked entry by entry.
- Line filters `|=` and `!=` follow the full-text rule of `q` (fulltext.py:
  the words of the term, in order, in the url, bodies or data; not a
  substring); `|~` and `!~` are regular expressions searched in the line,
  checked entry by entry, as are label filters on `data` after `| json`.
  A question checked entry by entry reads at most MAX_SCAN entries.
- Metric queries count into buckets of gcd(step, range) and sum whole
  buckets into each step's window [t - range, t): from the counters when
  the question is a scope and a time range grouped by level at most (what
  Grafana's logs volume asks), else one grouped statement over the
  matching entries (series.py).
"""
import math
import operator
import re
from datetime import datetime

import orjson
from flask import Blueprint, Response, request
from flask_sock import ConnectionClosed, Sock

from logsvc import runtime
from logsvc.access import credentials
from logsvc.access.limits import RateLimited
from logsvc.access.principal import READ, Forbidden, authorize
from logsvc.entry import KINDS, LEVELS, SOURCES, now_ms, text_line
from logsvc.store import fulltext, query, series, sketch, stats, tail
from logsvc.store.filters import Filters
from logsvc.store.query import InvalidParameter

from . import caller, host_scoped, reader, state
from .errors import ApiError
from .logql import LogQLError, LogQuery, Number, RangeAggregation, VectorAggregation, duration_ms, parse
from .tailing import WS_BAD_REQUEST, WS_BAD_TOKEN, WS_NO_TOKEN, WS_TOO_MANY, Guard, take_slot

blueprint = Blueprint("loki", __name__, url_prefix="/loki/api/v1")
sock = Sock()  # only its route decorator: the route is the blueprint's

LABELS = series.LABELS
MAX_SCAN = 200_000  # entries read for filters checked entry by entry
MAX_POINTS = 11_000  # points per series, as Loki
MAX_BUCKETS = 100_000  # buckets of gcd(step, range) in one question
DEFAULT_LIMIT = 100
_ADDITIVE = {"count_over_time", "rate", "bytes_over_time", "bytes_rate", "sum_over_time"}
_FIXED = {"level": LEVELS, "kind": KINDS, "source": SOURCES}
_ALWAYS = {"projectId", "level", "kind", "source"}  # labels every entry has
_FIELDS = {"serviceName": "service_names", "level": "levels", "kind": "kinds",
           "method": "methods", "source": "sources", "route": "routes"}
_PAGE = 2000
_EVERY_ID = 2**62  # above every id


def _success(data, warnings=()):
    body = {"status": "success", "data": data}
    if warnings:
        body["warnings"] = list(warnings)
    return Response(orjson.dumps(body), mimetype="application/json")


def _args():
    return request.values  # Grafana sends GET, or POST with a form


def _bad(message):
    return ApiError(400, message)


# --- times ------------------------------------------------------------------

def _time_ns(name, default_ns):
    """A time as Loki takes it: nanoseconds, seconds (10 digits or fewer,
    or with a fraction) or RFC 3339."""
    value = _args().get(name)
    if value is None or value == "":
        return default_ns
    value = value.strip()
    if re.fullmatch(r"-?[0-9]+", value):
        number = int(value)
        ns = number * 1_000_000_000 if len(value.lstrip("-")) <= 10 else number
    elif re.fullmatch(r"-?[0-9]*\.[0-9]+|-?[0-9]+\.[0-9]*", value):
        ns = float(value) * 1e9
    else:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise _bad(f"Invalid query parameter '{name}': not a time (nanoseconds, seconds "
                       "or RFC 3339)") from None
        if parsed.tzinfo is None:
            raise _bad(f"Invalid query parameter '{name}': an RFC 3339 time needs its offset")
        ns = int(parsed.timestamp() * 1e6) * 1000
    # Nanoseconds as Loki keeps them: a signed 64-bit number.
    if not -_MAX_NS <= ns <= _MAX_NS:
        raise _bad(f"Invalid query parameter '{name}': out of range (up to the year 2262)")
    return int(ns)


_MAX_NS = 2**63 - 1


def _ms_at_or_after(ns):
    return -(-ns // 1_000_000)


def _step_ms(start_ms, end_ms):
    value = _args().get("step") or _args().get("interval")
    if not value:  # Loki's default: about 250 points, whole seconds
        return max(1, (end_ms - start_ms) // 250_000) * 1000
    value = value.strip()
    try:
        step = duration_ms(value, "step") if not re.fullmatch(r"[0-9.]+", value) \
            else int(float(value) * 1000)
    except (LogQLError, ValueError):
        raise _bad("Invalid query parameter 'step': a duration (60000ms, 1m) or "
                   "seconds") from None
    if step <= 0:
        raise _bad("Invalid query parameter 'step': must be positive")
    return step


def _limit():
    value = _args().get("limit")
    if value is None or value == "":
        return DEFAULT_LIMIT
    if not re.fullmatch(r"[0-9]+", value.strip()) or int(value) < 1:
        raise _bad("Invalid query parameter 'limit': a whole number of at least 1")
    limit = int(value)
    if limit > query.MAX_LIMIT:
        raise _bad(f"Invalid query parameter 'limit': at most {query.MAX_LIMIT}")
    return limit


def _direction():
    value = (_args().get("direction") or "backward").lower()
    if value not in ("backward", "forward"):
        raise _bad("Invalid query parameter 'direction': backward or forward")
    return value


def _parsed(name="query"):
    text = _args().get(name)
    if not text:
        raise _bad(f"Missing query parameter '{name}'")
    try:
        return parse(text)
    except LogQLError as exc:
        raise _bad(f"Invalid query parameter '{name}': {exc}") from None


# --- who asks -----------------------------------------------------------------

class Scope:
    """The caller's scope, narrowed by X-Scope-OrgID (a project)."""

    def __init__(self, found):
        self.found = found
        org = (request.headers.get("X-Scope-OrgID") or "").strip() or None
        if org is not None and "|" in org:
            raise _bad("X-Scope-OrgID names one project")
        self.project_id, self.container_id = authorize(found, READ, org, None)


# --- selectors and filters ----------------------------------------------------

class Plan:
    """A log query as search filters (what the index answers) and checks
    (what is tested entry by entry)."""

    def __init__(self, logs, scope, since=None, until=None):
        self.empty = False
        self.checks = []
        self.values = {"project_id": scope.project_id, "container_id": scope.container_id,
                       "since": since, "until": until}
        self.json = logs.json
        for matcher in logs.matchers:
            self._match(matcher)
        for matcher in logs.label_filters:
            if isinstance(matcher.value, float):
                self._compare(matcher)
            else:
                self._match(matcher)
        self._lines(logs.line_filters)
        try:
            self.filters = Filters(**{k: v for k, v in self.values.items() if v is not None})
        except (TypeError, ValueError) as exc:
            raise LogQLError(str(exc)) from None

    # Selectors and string label filters.
    def _match(self, matcher):
        label, op, value = matcher.label, matcher.op, matcher.value
        if op in ("=~", "!~"):
            try:
                pattern = re.compile(f"(?:{value})", re.DOTALL)
            except re.error as exc:
                raise LogQLError(f"invalid regular expression for {label}: {exc}") from None
            test = pattern.fullmatch
        else:
            test = value.__eq__
        negative = op in ("!=", "!~")
        if label not in LABELS:
            if not self.json:  # a label no entry has: its value is ""
                if bool(test("")) == negative:
                    self.empty = True
                return
            self.checks.append(_field_check(label, test, negative))
            return
        if not negative and not test(""):
            values = _enumerated(label, op, value, test)
            if values is not None:
                self._narrow(label, values)
                return
        if op == "=~" and value in (".*", ".+", ".*?", ".+?") and (
                value.startswith(".*") or label in _ALWAYS):
            return  # every value (every entry has a project, level, kind and source)
        if negative and label in _FIXED and op == "!=":
            self._narrow(label, [v for v in _FIXED[label] if v != value])
            return
        if negative and label in _FIXED:
            self._narrow(label, [v for v in _FIXED[label] if not test(v)])
            return
        self.checks.append(_label_check(label, test, negative))

    def _narrow(self, label, values):
        values = list(dict.fromkeys(values))
        if not values:
            self.empty = True
            return
        if label in ("projectId", "containerId"):
            field = "project_id" if label == "projectId" else "container_id"
            held = self.values[field]
            if held is not None:
                if held not in values:
                    self.empty = True
                return
            if len(values) == 1:
                self.values[field] = values[0]
            else:
                allowed = set(values)
                self.checks.append(lambda e, _line: e[label] in allowed)
            return
        if label == "status":
            codes = sorted(int(v) for v in values)
            held = self.values.get("status_ranges")
            if held:
                codes = [c for c in codes if any(low <= c <= high for low, high in held)]
                if not codes:
                    self.empty = True
                    return
            self.values["status_ranges"] = _ranges(codes)
            return
        field = _FIELDS[label]
        held = self.values.get(field)
        if held:
            values = [v for v in values if v in held]
            if not values:
                self.empty = True
                return
        self.values[field] = tuple(values)

    # Numeric label filters: `| status >= 500`, `| durationMs > 250`.
    def _compare(self, matcher):
        label, op, number = matcher.label, matcher.op, matcher.value
        compare = _COMPARE[op]
        if label == "status" and not self.values.get("status_ranges"):
            low, high = {"==": (number, number), ">=": (number, 999), ">": (number + 1, 999),
                         "<=": (0, number), "<": (0, number - 1)}.get(op, (None, None))
            if low is not None:
                low, high = math.ceil(low), math.floor(high)
                if low > high:
                    self.empty = True
                    return
                self.values["status_ranges"] = ((low, high),)
        elif label == "durationMs":
            if op in (">=", ">", "=="):
                self.values["min_duration_ms"] = number
            if op in ("<=", "<", "=="):
                self.values["max_duration_ms"] = number
        self.checks.append(_number_check(label, compare, number, self.json))

    def _lines(self, line_filters):
        positive, negative = [], []
        for item in line_filters:
            if item.op in ("|~", "!~"):
                try:
                    pattern = re.compile(item.text)
                except re.error as exc:
                    raise LogQLError(f"invalid regular expression {item.text!r}: {exc}") from None
                found = pattern.search
                if item.op == "|~":
                    self.checks.append(lambda e, line, found=found: found(line()) is not None)
                else:
                    self.checks.append(lambda e, line, found=found: found(line()) is None)
                continue
            words = fulltext.words(item.text)
            if not words:  # no letter or digit: looked for as it is, in the line
                text, wanted = item.text, item.op == "|="
                self.checks.append(lambda e, line, t=text, w=wanted: (t in line()) == w)
                continue
            (positive if item.op == "|=" else negative).append('"' + " ".join(words) + '"')
        if positive:
            q = " ".join(positive + ["-" + phrase for phrase in negative])
            try:
                fulltext.parse(q)
            except ValueError as exc:
                raise LogQLError(f"line filters: {exc}") from None
            self.values["q"] = q
        for phrase in negative if not positive else ():
            groups = fulltext.parse(phrase)
            self.checks.append(
                lambda e, _line, groups=groups: not fulltext.matches(groups, _document(e)))

    def passes(self, entry):
        if not self.checks:
            return True
        cache = []

        def line():
            if not cache:
                cache.append(render_line(entry))
            return cache[0]
        return all(check(entry, line) for check in self.checks)


def _ranges(codes):
    """Sorted codes as inclusive (low, high) runs: 500..599 is one range."""
    runs = []
    for code in codes:
        if runs and code == runs[-1][1] + 1:
            runs[-1][1] = code
        else:
            runs.append([code, code])
    return tuple((low, high) for low, high in runs)


_COMPARE = {"==": float.__eq__, "!=": float.__ne__, ">": float.__gt__, ">=": float.__ge__,
            "<": float.__lt__, "<=": float.__le__}


def _document(entry):
    data = entry["data"]
    data = data if isinstance(data, str) else orjson.dumps(data).decode()
    return fulltext.document(entry["url"], None, None, data)


def _enumerated(label, op, value, test):
    """The values a positive matcher admits, when they can be listed."""
    if op == "=":
        if label == "status":
            return [value] if re.fullmatch(r"[1-5][0-9][0-9]", value) else []
        return [value]
    if label in _FIXED:
        return [v for v in _FIXED[label] if test(v)]
    if label == "status":
        return [str(v) for v in range(100, 600) if test(str(v))]
    parts = value.split("|")
    if all(re.fullmatch(r"[A-Za-z0-9_\-/:@ ]+", part or "") for part in parts):
        return parts
    return None


def _label_value(entry, label):
    value = entry[label]
    return "" if value is None else str(value)


def _label_check(label, test, negative):
    return lambda e, _line: bool(test(_label_value(e, label))) != negative


def _data(entry):
    data = entry["data"]
    if isinstance(data, orjson.Fragment):  # the stored JSON text
        data = orjson.loads(orjson.dumps(data))
    elif isinstance(data, (str, bytes)):
        data = orjson.loads(data)
    return data if isinstance(data, dict) else {}


def _flat(data, prefix=""):
    """`| json`'s labels: nested keys joined with `_`."""
    out = {}
    for key, value in data.items():
        name = re.sub(r"[^A-Za-z0-9_]", "_", f"{prefix}{key}")
        if isinstance(value, dict):
            out.update(_flat(value, name + "_"))
        elif isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif value is not None and not isinstance(value, list):
            out[name] = str(value)
    return out


def _field_check(label, test, negative):
    return lambda e, _line: bool(test(_flat(_data(e)).get(label, ""))) != negative


def _number_check(label, compare, number, json):
    def check(entry, _line):
        if label in LABELS or label == "durationMs":
            value = entry.get(label)
        else:
            value = _flat(_data(entry)).get(label) if json else None
        try:
            return value is not None and compare(float(value), number)
        except (TypeError, ValueError):
            return False
    return check


def render_line(entry):
    """The entry's text form, then its `data` as JSON (unless empty)."""
    data = entry["data"]
    text = orjson.dumps(data).decode() if not isinstance(data, str) else data
    if text == "{}" or text == "null":
        return text_line(entry)
    return f"{text_line(entry)} {text}"


# --- log queries ----------------------------------------------------------------

def select(plan, limit, backward, warnings):
    """Up to `limit` matching entries, newest first when `backward`."""
    if plan.empty:
        return []
    if not plan.checks:
        if backward:
            # A line shows no client address: not formatted.
            return list(reversed(query.last_entries(plan.filters, limit, _EVERY_ID,
                                                    addresses=False)))
        return query.entries_after(plan.filters, 0, limit)
    found, scanned = [], 0
    cursor = _EVERY_ID if backward else 0
    while len(found) < limit and scanned < MAX_SCAN:
        if backward:
            page = query.last_entries(plan.filters, _PAGE, cursor)
            page.reverse()
        else:
            page = query.entries_after(plan.filters, cursor, _PAGE)
        if not page:
            return found
        scanned += len(page)
        cursor = page[-1]["id"] - 1 if backward else page[-1]["id"]
        found.extend(e for e in page if plan.passes(e))
        if len(page) < _PAGE:
            return found[:limit]
    if len(found) < limit:
        warnings.append(f"Stopped after reading {MAX_SCAN:,} entries for filters checked "
                        "entry by entry (|~, !~, label filters); narrow the selector or the "
                        "time range to see older lines")
    return found[:limit]


_STREAM_KEY = operator.itemgetter(*LABELS)


def streams_of(entries):
    """Entries as Loki's streams: grouped by their labels, in their order."""
    streams = {}
    for item in entries:
        value = [f"{item['tsMs']}000000", render_line(item)]
        key = _STREAM_KEY(item)
        held = streams.get(key)
        if held is None:
            streams[key] = [value]
        else:
            held.append(value)
    return [{"stream": _labels(key), "values": values} for key, values in streams.items()]


_STATUS_AT = LABELS.index("status")


def _labels(key):
    """A stream's labels from its key (the label values in LABELS order)."""
    labels = dict(zip(LABELS, key))
    if None in key:
        labels = {label: value for label, value in labels.items() if value is not None}
    if key[_STATUS_AT] is not None:
        labels["status"] = str(key[_STATUS_AT])
    return labels


def _logs(parsed, scope, start_ns, end_ns, warnings):
    plan = Plan(parsed, scope, _ms_at_or_after(start_ns), _ms_at_or_after(end_ns))
    entries = select(plan, _limit(), _direction() == "backward", warnings)
    return {"resultType": "streams", "result": streams_of(entries), "stats": {}}


# --- metric queries ---------------------------------------------------------------

class Grid:
    def __init__(self, start_ms, end_ms, step_ms):
        self.start, self.step = start_ms, step_ms
        count = (end_ms - start_ms) // step_ms + 1
        if count > MAX_POINTS:
            raise _bad(f"Invalid query parameter 'step': {count:,} points per series; at most "
                       f"{MAX_POINTS:,} (use a larger step)")
        self.times = [start_ms + k * step_ms for k in range(count)]


def evaluate(node, grid, scope):
    """A metric expression over `grid`: a float (a scalar) or
    {labels (sorted pairs): {t: value}}."""
    if isinstance(node, Number):
        if node.vector:
            return {(): dict.fromkeys(grid.times, node.value)}
        return node.value
    if isinstance(node, RangeAggregation):
        own = None if node.by is None else _grouping(node.by, node.without)
        return _range(node, grid, scope, own)
    if isinstance(node, VectorAggregation):
        return _aggregate(node, grid, scope)
    if isinstance(node, LogQuery):
        raise LogQLError("a log query is not a metric: wrap it, e.g. count_over_time(... [5m])")
    return _binary(node.op, evaluate(node.left, grid, scope), evaluate(node.right, grid, scope))


def _grouping(by, without):
    if by is None:
        return ()
    if without:
        return tuple(label for label in LABELS if label not in by)
    return tuple(by)


def _range(node, grid, scope, group):
    """A range aggregation; `group`: the labels its series are summed by
    (an enclosing `sum by`), None for one series per stream."""
    # A label no entry has groups nothing apart.
    labels = tuple(label for label in (LABELS if group is None else group) if label in LABELS)
    r = node.range_ms
    g = math.gcd(grid.step, r) if len(grid.times) > 1 else r
    origin, last = grid.start - r, grid.times[-1]
    if (last - origin) // g > MAX_BUCKETS:
        raise _bad(f"The range [{r} ms] and step ({grid.step} ms) need "
                   f"{(last - origin) // g:,} buckets of {g} ms; at most {MAX_BUCKETS:,}")
    plan = Plan(node.logs, scope, origin, last)
    function = node.function
    timed = function == "quantile_over_time"
    if plan.empty:
        cells = {}
    elif plan.checks or function in ("bytes_over_time", "bytes_rate"):
        cells = _scanned(plan, origin, g, labels)
    elif set(labels) <= {"level"} and origin % g == 0 and (
            function in ("count_over_time", "rate") or (timed and not labels)):
        cells = _by_level(plan.filters, origin, last, g, labels)
    else:
        cells = series.buckets(plan.filters, origin, g, labels, timed=timed)
    by_series = {}
    for (j, values), cell in cells.items():
        by_series.setdefault(values, {})[j] = cell
    result = {}
    per_step, width = grid.step // g, r // g
    for values, row in by_series.items():
        key = tuple(sorted((label, str(v)) for label, v in zip(labels, values)
                           if v is not None))
        points = {}
        for k in _steps_holding(row, per_step, width, len(grid.times)):
            t = grid.times[k]
            first = k * per_step if len(grid.times) > 1 else 0
            window = [row[j] for j in range(first, first + width) if j in row]
            value = _window(function, window, r, node.parameter)
            if value is not None:
                points[t] = value
        if points:
            result[key] = _merge_into(result.get(key), points)
    return result


def _steps_holding(row, per_step, width, steps):
    """The steps whose window (buckets k × per_step up to width more) holds
    a bucket of `row`, in order: a sparse series (one stream of thousands)
    is not walked step by step over the whole range."""
    if steps == 1:
        return [0]
    if len(row) * width >= steps:
        return range(steps)
    found = set()
    for j in row:
        found.update(range(max(0, -(-(j - width + 1) // per_step)),
                           min(steps - 1, j // per_step) + 1))
    return sorted(found)


def _merge_into(held, points):
    if held is None:
        return points
    for t, v in points.items():
        held[t] = held.get(t, 0.0) + v
    return held


def _window(function, cells, range_ms, parameter):
    if not cells:
        return None
    seconds = range_ms / 1000
    if function in ("count_over_time", "rate"):
        n = sum(c.count for c in cells)
        if not n:
            return None
        return float(n) if function == "count_over_time" else n / seconds
    if function in ("bytes_over_time", "bytes_rate"):
        n = sum(c.bytes for c in cells)
        if not any(c.count for c in cells):
            return None
        return float(n) if function == "bytes_over_time" else n / seconds
    timed = sum(c.timed for c in cells)
    if not timed:
        return None
    if function == "sum_over_time":
        return math.fsum(c.total_ms for c in cells)
    if function == "avg_over_time":
        return math.fsum(c.total_ms for c in cells) / timed
    if function == "min_over_time":
        return float(min(c.least_ms for c in cells if c.least_ms is not None))
    most = max((c.most_ms for c in cells if c.most_ms is not None), default=None)
    if function == "max_over_time":
        return float(most)
    merged = {}
    for cell in cells:
        for bucket, n in cell.sketch.items():
            merged[bucket] = merged.get(bucket, 0) + n
    least = min((c.least_ms for c in cells if c.least_ms is not None), default=None)
    value = _quantile(merged, parameter, timed, most)
    if value is None:
        return None
    return float(max(value, least) if least is not None else value)


def _quantile(counts, phi, total, most):
    p = max(phi * 100, 1e-9)
    return sketch.percentiles(counts, (p,), total, most)[p]


def _by_level(filters, origin, last, g, labels):
    """Cells from the level counts of stats.level_buckets (the counters
    where the filters allow)."""
    counted, timed = stats.level_buckets(filters, g, origin, last)
    cells = {}
    for ts, counts in counted.items():
        counts = [n or 0 for n in counts]  # PostgreSQL's SUM of nothing is NULL
        j = (ts - origin) // g
        if labels:
            for level, n in zip(LEVELS, counts):
                if n:
                    cells.setdefault((j, (level,)), series.Cell()).add(n, 0, 0.0, None, None)
        elif sum(counts):
            cells.setdefault((j, ()), series.Cell()).add(sum(counts), 0, 0.0, None, None)
    if not labels:
        for ts, (counts, longest) in timed.items():
            cell = cells.setdefault(((ts - origin) // g, ()), series.Cell())
            cell.sketch = dict(counts)
            cell.timed = sum(counts.values())
            cell.most_ms = longest
    return cells


def _scanned(plan, origin, g, labels):
    """Cells counted entry by entry (filters the index cannot answer, or
    bytes), reading at most MAX_SCAN entries."""
    cells, cursor, scanned = {}, 0, 0
    while True:
        page = query.entries_after(plan.filters, cursor, _PAGE)
        scanned += len(page)
        if scanned > MAX_SCAN:
            raise _bad(f"This query reads more than {MAX_SCAN:,} entries to check filters "
                       "the index cannot answer (|~, !~, bytes, label filters on data); "
                       "narrow the selector or the time range")
        for item in page:
            if plan.passes(item):
                key = ((item["tsMs"] - origin) // g, tuple(item[label] for label in labels))
                cell = series.add_entry(cells, key, item)
                cell.bytes += len(render_line(item).encode())
        if len(page) < _PAGE:
            return cells
        cursor = page[-1]["id"]


def _aggregate(node, grid, scope):
    inner = node.inner
    group = _grouping(node.by, node.without)
    if node.operation == "sum" and isinstance(inner, RangeAggregation) \
            and inner.function in _ADDITIVE and inner.by is None:
        # Summed by the store: one series per group, not per stream.
        return _range(inner, grid, scope, group)
    found = evaluate(inner, grid, scope)
    if isinstance(found, float):
        raise LogQLError(f"{node.operation} needs a vector, not a number")
    wanted = set(group)

    def key_of(labels):
        if node.by is None:
            return ()
        return tuple(pair for pair in labels if pair[0] in wanted)

    if node.operation in ("topk", "bottomk"):
        return _top(node, found, key_of)
    groups = {}
    for labels, points in found.items():
        groups.setdefault(key_of(labels), []).append(points)
    result = {}
    for key, members in groups.items():
        points = {}
        for t in grid.times:
            values = [m[t] for m in members if t in m]
            if values:
                points[t] = _combine(node.operation, values)
        if points:
            result[key] = points
    return result


def _combine(operation, values):
    # Sums of floats correctly rounded (math.fsum): the same answer whatever
    # order the series come in (hot or sealed entries, SQLite or PostgreSQL).
    if operation == "sum":
        return math.fsum(values)
    if operation == "count":
        return float(len(values))
    if operation == "min":
        return float(min(values))
    if operation == "max":
        return float(max(values))
    return math.fsum(values) / len(values)  # avg


def _top(node, found, key_of):
    k, highest = int(node.parameter), node.operation == "topk"
    result = {}
    times = sorted({t for points in found.values() for t in points})
    for t in times:
        groups = {}
        for labels, points in found.items():
            if t in points:
                groups.setdefault(key_of(labels), []).append((points[t], labels))
        for members in groups.values():
            members.sort(key=lambda item: (-item[0] if highest else item[0], item[1]))
            for value, labels in members[:k]:
                result.setdefault(labels, {})[t] = value
    return result


def _apply(op, a, b):
    try:
        return {"+": a + b, "-": a - b, "*": a * b}[op] if op != "/" else a / b
    except ZeroDivisionError:
        return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a)


def _binary(op, left, right):
    if isinstance(left, float) and isinstance(right, float):
        return _apply(op, left, right)
    if isinstance(right, float):
        return {k: {t: _apply(op, v, right) for t, v in p.items()} for k, p in left.items()}
    if isinstance(left, float):
        return {k: {t: _apply(op, left, v) for t, v in p.items()} for k, p in right.items()}
    result = {}
    for key, points in left.items():
        other = right.get(key)
        if other is None:
            continue
        joined = {t: _apply(op, v, other[t]) for t, v in points.items() if t in other}
        if joined:
            result[key] = joined
    return result


def _number(value):
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _seconds(ms):
    return ms / 1000 if ms % 1000 else ms // 1000


def _matrix(found, grid):
    if isinstance(found, float):  # a scalar over a range: one series
        found = {(): dict.fromkeys(grid.times, found)}
    result = [{"metric": dict(labels),
               "values": [[_seconds(t), _number(v)] for t, v in sorted(points.items())]}
              for labels, points in sorted(found.items())]
    return {"resultType": "matrix", "result": result, "stats": {}}


def _vector(found, t):
    if isinstance(found, float):
        return {"resultType": "scalar", "result": [_seconds(t), _number(found)], "stats": {}}
    result = [{"metric": dict(labels), "value": [_seconds(t), _number(points[t])]}
              for labels, points in sorted(found.items()) if t in points]
    return {"resultType": "vector", "result": result, "stats": {}}


def _gated(found, run):
    with state().gate.turn(found.scope_key):
        try:
            return run()
        except LogQLError as exc:
            raise _bad(f"Invalid query parameter 'query': {exc}") from None
        except InvalidParameter as exc:
            raise _bad(str(exc)) from None


# --- endpoints ------------------------------------------------------------------

@blueprint.route("/query_range", methods=["GET", "POST"])
def query_range():
    found = reader()
    scope = Scope(found)
    parsed = _parsed()
    end_ns = _time_ns("end", now_ms() * 1_000_000)
    start_ns = _time_ns("start", end_ns - 3_600_000_000_000)
    if start_ns > end_ns:
        raise _bad("Invalid query parameter 'start': must not be after end")
    warnings = []
    if isinstance(parsed, LogQuery):
        return _success(_gated(found, lambda: _logs(parsed, scope, start_ns, end_ns,
                                                   warnings)), warnings)
    start_ms, end_ms = _ms_at_or_after(start_ns), end_ns // 1_000_000
    step = _step_ms(start_ms, end_ms)
    # Steps at multiples of the step, as Loki's query frontend aligns them:
    # the buckets then fall on whole minutes, which the counters answer.
    start_ms -= start_ms % step
    grid = Grid(start_ms, max(start_ms, end_ms), step)
    return _success(_gated(found, lambda: _matrix(evaluate(parsed, grid, scope), grid)))


@blueprint.route("/query", methods=["GET", "POST"])
def instant_query():
    found = reader()
    scope = Scope(found)
    parsed = _parsed()
    at_ns = _time_ns("time", now_ms() * 1_000_000)
    warnings = []
    if isinstance(parsed, LogQuery):
        return _success(_gated(found, lambda: _logs(
            parsed, scope, at_ns - 3_600_000_000_000, at_ns, warnings)), warnings)
    t = at_ns // 1_000_000
    grid = Grid(t, t, 1)
    return _success(_gated(found, lambda: _vector(evaluate(parsed, grid, scope), t)))


def _label_range():
    end_ns = _time_ns("end", now_ms() * 1_000_000)
    start_ns = _time_ns("start", end_ns - 6 * 3_600_000_000_000)
    return _ms_at_or_after(start_ns), _ms_at_or_after(end_ns)


def _selector_plan(scope, since, until):
    text = _args().get("query")
    if not text:
        return Plan(LogQuery(), scope, since, until)
    parsed = _parsed()
    if not isinstance(parsed, LogQuery):
        raise _bad("Invalid query parameter 'query': a stream selector, such as "
                   '{level="error"}')
    return Plan(parsed, scope, since, until)


@blueprint.get("/labels")
def labels():
    found = reader()
    scope = Scope(found)
    since, until = _label_range()

    def run():
        plan = _selector_plan(scope, since, until)
        if plan.empty:
            return []
        if plan.checks:
            # The label sets of the matches read once, checked, and every
            # label any of them has (not a read of them per label).
            rows = [dict(zip(LABELS, row))
                    for row in series.distinct(plan.filters, LABELS, _SERIES_LIMIT)]
            passing = [row for row in rows if _passes_labels(plan, row)]
            return [label for label in LABELS if any(row[label] is not None for row in passing)]
        summary = None
        if stats.from_counters(plan.filters):
            summary = stats.summary(plan.filters, top_routes=1)
            if not summary["total"]:
                return []
        return [label for label in LABELS if _values(plan, label, 1, summary)]
    return _success(_gated(found, run))


@blueprint.get("/label/<name>/values")
def label_values(name):
    found = reader()
    scope = Scope(found)
    since, until = _label_range()

    def run():
        plan = _selector_plan(scope, since, until)
        if plan.empty or name not in LABELS:
            return []
        return _values(plan, name, 1000)
    return _success(_gated(found, run))


_SUMMARY_KEYS = {"projectId": "byProject", "containerId": "byContainer",
                 "serviceName": "byService", "level": "byLevel", "kind": "byKind",
                 "source": "bySource"}


def _values(plan, label, limit, summary=None):
    """Distinct values of `label` (strings), up to `limit`: from the
    counters' breakdowns when the selector is a scope and a time range
    (`summary`: one already read), else from the matching entries."""
    if not plan.checks and (label in _SUMMARY_KEYS or label == "route") \
            and stats.from_counters(plan.filters):
        if summary is None or (label == "route" and limit > 1):
            summary = stats.summary(plan.filters, top_routes=limit if label == "route" else 1)
        if label == "route":
            return sorted(row["route"] for row in summary["byRoute"])[:limit]
        return sorted(key for key, n in summary[_SUMMARY_KEYS[label]].items() if n)[:limit]
    # With checks, the label sets of the matches are looked at (as many as
    # `series` reads), then checked: a few of them may all fail the checks.
    wanted = limit if not plan.checks else max(limit, _SERIES_LIMIT)
    found = series.distinct(plan.filters, (label,) if not plan.checks else LABELS, wanted,
                            present=not plan.checks)
    if plan.checks:
        rows = [dict(zip(LABELS, row)) for row in found]
        values = {row[label] for row in rows if _passes_labels(plan, row)}
    else:
        values = {row[0] for row in found}
    return sorted(str(v) for v in values if v is not None)[:limit]


# The label sets a question about series reads at most.
_SERIES_LIMIT = 5000


def _passes_labels(plan, labels):
    probe = {**dict.fromkeys(("url", "traceId", "tsMs", "tsIso", "id", "clientIp",
                              "durationMs")), "data": {}, **labels}
    try:
        return plan.passes(probe)
    except (KeyError, TypeError):
        return True


@blueprint.route("/series", methods=["GET", "POST"])
def series_list():
    found = reader()
    scope = Scope(found)
    since, until = _label_range()
    selectors = _args().getlist("match[]") or _args().getlist("match")
    if not selectors:
        raise _bad("Missing query parameter 'match[]'")

    def run():
        result, seen = [], set()
        for text in selectors:
            try:
                parsed = parse(text)
            except LogQLError as exc:
                raise _bad(f"Invalid query parameter 'match[]': {exc}") from None
            if not isinstance(parsed, LogQuery):
                raise _bad("Invalid query parameter 'match[]': a stream selector")
            plan = Plan(parsed, scope, since, until)
            if plan.empty:
                continue
            for row in series.distinct(plan.filters, LABELS, _SERIES_LIMIT):
                labels = {k: str(v) for k, v in zip(LABELS, row) if v is not None}
                key = tuple(labels.items())
                if key not in seen and (not plan.checks or _passes_labels(plan, dict(
                        zip(LABELS, row)))):
                    seen.add(key)
                    result.append(labels)
        return result
    return _success(_gated(found, run))


@blueprint.get("/index/stats")
def index_stats():
    """What Grafana shows as the size of a question: its entries (from the
    counters where they can), one stream per label set."""
    found = reader()
    scope = Scope(found)
    since, until = _label_range()

    def run():
        plan = _selector_plan(scope, since, until)
        if plan.empty:
            return {"streams": 0, "chunks": 0, "entries": 0, "bytes": 0}
        total = stats.summary(plan.filters.replace(q=None), top_routes=1)["total"]
        return {"streams": 0, "chunks": 0, "entries": total, "bytes": 0}
    return Response(orjson.dumps(_gated(found, run)), mimetype="application/json")


@blueprint.get("/status/buildinfo")
def buildinfo():
    """Grafana asks which Loki it talks to; logsvc answers as the Loki whose
    read API it follows."""
    reader()
    return Response(orjson.dumps({"version": "2.9.0", "revision": "logsvc", "branch": "",
                                  "buildUser": "", "buildDate": "", "goVersion": ""}),
                    mimetype="application/json")


# --- live tail ----------------------------------------------------------------------

@sock.route("/tail", bp=blueprint)
def tail_ws(ws):
    """Loki's tail: frames {"streams": [...], "dropped_entries": null}.
    Every matching entry once, in order, as logsvc's own tail; none dropped."""
    try:
        found = _tail_caller()
        scope = Scope(found)
        parsed = parse(request.args.get("query") or "")
        if not isinstance(parsed, LogQuery):
            raise LogQLError("the live tail takes a log query, not a metric")
        start_ns = _time_ns("start", (now_ms() - 3_600_000) * 1_000_000)
        limit = _limit()
        plan = Plan(parsed, scope, _ms_at_or_after(start_ns))
        slot = take_slot(state().streams, found)
    except LogQLError as exc:
        ws.close(WS_BAD_REQUEST, str(exc)[:120])
        return
    except Forbidden as exc:
        ws.close(WS_BAD_TOKEN, str(exc)[:120])
        return
    except (RateLimited, ApiError) as exc:
        code = WS_NO_TOKEN if getattr(exc, "status", 0) == 401 else (
            WS_BAD_REQUEST if getattr(exc, "status", 0) == 400 else WS_TOO_MANY)
        ws.close(code, str(getattr(exc, "message", exc))[:120])
        return
    guard = Guard(found, state().config.heartbeat_s)
    try:
        _tail_session(ws, plan, limit, guard)
    finally:
        slot.close()


def _tail_caller():
    ticket = request.args.get("token")
    if ticket:
        found, _session = credentials.redeem_ws_ticket(ticket)
        if found is None:
            raise Forbidden("token invalid, expired or already used")
        return reader(found)
    if not request.headers.get("Authorization"):
        raise ApiError(401, "Credentials are required (Authorization header or a "
                            "token from /api/ws-token)")
    return reader(host_scoped(caller()))


def _frame(entries):
    return orjson.dumps({"streams": streams_of(entries), "dropped_entries": None}).decode()


def _tail_session(ws, plan, limit, guard):
    if plan.empty:
        ws.close(1000, "no entry can match this selector")
        return
    filters = plan.filters.replace(until=None)
    opening, subscription = tail.subscribe(state().tailer, filters, None, limit)
    for kind, value in opening:
        if kind == "replay":
            replayed = [e for e in value[0] if plan.passes(e)]
            if replayed:
                ws.send(_frame(replayed))

    def listen():
        try:
            while True:
                ws.receive()
        except ConnectionClosed:
            pass

    listener = runtime.spawn(listen, name="logsvc-loki-tail")
    try:
        for kind, value in subscription.events(state().config.heartbeat_s):
            if not runtime.alive(listener):
                return
            reason = guard.revoked()
            if reason:
                ws.close(WS_BAD_TOKEN, "access revoked")
                return
            if kind == "entries":
                matched = [e for e, _rendered in value if plan.passes(e)]
                if matched:
                    ws.send(_frame(matched))
            elif kind == "scope-destroyed":
                ws.close(4010, "scope destroyed")
                return
    except tail.Reset:
        ws.close(1000, "reset")
    except tail.StoreUnavailable as exc:
        ws.close(1011, str(exc)[:120])
    finally:
        runtime.kill(listener)
