"""Query-string parameters of the read endpoints.

Each schema loads `request.args` (repeated parameters joined by commas) into
plain values for the services; a bad value raises ValidationError whose
message names the parameter. Unknown parameters are refused, so a typo
(`levle=error`) is an error rather than a silently unfiltered answer.
"""
import re
import time

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from logsvc import entry
from logsvc.store import fulltext
from logsvc.store.query import MAX_LIMIT
from logsvc.store.stats import BUCKETS, ROUTE_SORTS

_STATUS = re.compile(r"^(?:(\d{3})|([1-5])xx|(\d{3})-(\d{3}))$", re.IGNORECASE)


class Int(fields.Integer):
    """An integer given as digits only ('1.5', '1e3' and ' 2' are refused)."""

    def __init__(self, minimum=0, maximum=None, **kwargs):
        super().__init__(strict=False, validate=validate.Range(min=minimum, max=maximum),
                         **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str) or not re.fullmatch(r"-?\d{1,18}", value):
            raise ValidationError("Not a valid integer.")
        return int(value)


class Flag(fields.Field):
    def _deserialize(self, value, attr, data, **kwargs):
        lowered = str(value).lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValidationError("Must be true or false.")


class Text(fields.String):
    def __init__(self, max_length=256, **kwargs):
        super().__init__(validate=validate.Length(min=1, max=max_length), **kwargs)


MAX_VALUES = 100  # in one comma-separated list


class Choices(fields.Field):
    """A comma-separated list of allowed values, returned as a tuple."""

    joiner = ","  # the parameter may be repeated (see logsvc.api.query_args)

    def __init__(self, allowed=None, upper=False, max_length=128, **kwargs):
        super().__init__(**kwargs)
        self.allowed = allowed
        self.upper = upper
        self.max_length = max_length

    def _deserialize(self, value, attr, data, **kwargs):
        items = [item.strip() for item in str(value).split(",")]
        if len(items) > MAX_VALUES:
            raise ValidationError(f"At most {MAX_VALUES} values.")
        if not all(items):
            raise ValidationError("Empty value in the list.")
        if self.upper:
            items = [item.upper() for item in items]
        elif self.allowed:
            items = [item.lower() for item in items]
        for item in items:
            if self.allowed and item not in self.allowed:
                raise ValidationError(f"{item!r} is not one of: {', '.join(self.allowed)}.")
            if len(item) > self.max_length:
                raise ValidationError(f"Longer than {self.max_length} characters.")
        return tuple(dict.fromkeys(items))


class StatusSpec(fields.Field):
    """'503', '5xx', '500-599', or a comma list of them -> ((low, high), ...)."""

    joiner = ","

    def _deserialize(self, value, attr, data, **kwargs):
        ranges = []
        items = str(value).split(",")
        if len(items) > MAX_VALUES:
            raise ValidationError(f"At most {MAX_VALUES} values.")
        for item in items:
            match = _STATUS.match(item.strip())
            if not match:
                raise ValidationError(f"{item!r} is not a status like 503, 5xx or 500-599.")
            exact, klass, low, high = match.groups()
            if exact:
                ranges.append((int(exact), int(exact)))
            elif klass:
                ranges.append((int(klass) * 100, int(klass) * 100 + 99))
            else:
                low, high = int(low), int(high)
                if low > high:
                    raise ValidationError(f"{item!r}: the range is empty.")
                ranges.append((low, high))
        return tuple(ranges)


class Instant(fields.Field):
    """Epoch milliseconds, an ISO-8601 date-time, `now`, or a duration back
    from now ('15m', '2h', '1h30m', '7d', '1w'; one reaching before 1970
    means 1970)."""

    def _deserialize(self, value, attr, data, **kwargs):
        text = str(value).strip()
        if re.fullmatch(r"\d{1,16}", text):
            if int(text) > entry.MAX_TS_MS:
                raise ValidationError("Out of range: after the year 9999.")
            return int(text)
        if text.lower() == "now":
            return time.time_ns() // 1_000_000
        try:  # a duration as Loki and Prometheus write them: 15m, 1h30m, 1w
            back = entry.parse_duration_ms(text)
        except ValueError:
            back = None
        if back is not None:
            if re.search(r"\d{13}", text):
                raise ValidationError("Out of range: a duration of at most 12 digits.")
            return max(0, time.time_ns() // 1_000_000 - back)
        try:
            return entry.coerce_iso(text)
        except ValueError as exc:
            if "range" in str(exc):
                raise ValidationError("Out of range: before 1970 or after the year 9999.") \
                    from None
            raise ValidationError(
                "Not epoch milliseconds, an ISO-8601 date-time, now or a duration like 15m "
                "or 1h30m."
            ) from None


def _check_range(data):
    since, until = data.get("since"), data.get("until")
    if since is not None and until is not None and since >= until:
        raise ValidationError("Must be earlier than until.", "since")


class ScopeParams(Schema):
    project_id = Text(data_key="projectId")
    container_id = Text(data_key="containerId")


class Search(Text):
    """`q`: full-text search, checked here so that a query FTS5 or
    PostgreSQL could not run is a 400 naming `q`. Repeated, its values are
    all required (joined by spaces)."""

    joiner = " "

    def __init__(self, **kwargs):
        super().__init__(max_length=1024, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        try:
            fulltext.parse(value)
        except ValueError as exc:
            raise ValidationError(f"{exc} (see the search syntax in the README)") from None
        return value


class Milliseconds(fields.Field):
    """A duration in milliseconds: digits with an optional fraction."""

    def _deserialize(self, value, attr, data, **kwargs):
        text = str(value).strip()
        if not re.fullmatch(r"\d{1,8}(\.\d{1,6})?", text):
            raise ValidationError("Not a number of milliseconds like 250 or 12.5.")
        number = float(text)
        if number > entry.MAX_DURATION_MS:
            raise ValidationError(f"Must be at most {entry.MAX_DURATION_MS}.")
        return number


def _check_durations(data):
    low, high = data.get("min_duration_ms"), data.get("max_duration_ms")
    if low is not None and high is not None and low > high:
        raise ValidationError("Must not exceed maxDurationMs.", "minDurationMs")


class FilterParams(ScopeParams):
    """The filters shared by searches and the live tail."""
    service_names = Choices(data_key="serviceName")
    levels = Choices(entry.LEVELS, data_key="level")
    kinds = Choices(entry.KINDS, data_key="kind")
    methods = Choices(upper=True, max_length=16, data_key="method")
    sources = Choices(entry.SOURCES, data_key="source")
    trace_id = Text(max_length=128, data_key="traceId")
    status_ranges = StatusSpec(data_key="status")
    q = Search()
    routes = Choices(max_length=entry.MAX_ROUTE, data_key="route")
    min_duration_ms = Milliseconds(data_key="minDurationMs")
    max_duration_ms = Milliseconds(data_key="maxDurationMs")

    @validates_schema
    def check_durations(self, data, **kwargs):
        _check_durations(data)


class QueryParams(FilterParams):
    limit = Int(maximum=MAX_LIMIT, load_default=200)
    offset = Int()
    last = Int(minimum=1, maximum=MAX_LIMIT)
    after_id = Int(data_key="afterId")
    around = Int(minimum=1, metadata={"description": "an entry id: that entry and up to "
                                      "`limit` matching entries before and after it"})
    cursor = Text(max_length=4096)
    order = fields.String(validate=validate.OneOf(("asc", "desc", "slowest")))
    format = fields.String(validate=validate.OneOf(("json", "ndjson", "text")),
                           load_default="json")
    include_request_body = Flag(data_key="includeRequestBody", load_default=False)
    include_response_body = Flag(data_key="includeResponseBody", load_default=False)
    since = Instant()
    until = Instant()
    client_ip = Text(max_length=64, data_key="clientIp")

    @validates_schema
    def check_paging(self, data, **kwargs):
        _check_range(data)
        if "last" in data and "after_id" in data:
            raise ValidationError("Use either last or afterId, not both.", "last")
        for name in ("last", "after_id"):
            if name in data and "offset" in data:
                raise ValidationError("offset cannot be combined with last or afterId.",
                                      "offset")
        if "last" in data and "order" in data:
            raise ValidationError("last always returns the newest entries oldest first; "
                                  "drop order.", "order")
        if "around" in data:
            for name, key in (("last", "last"), ("after_id", "afterId"), ("offset", "offset"),
                              ("order", "order"), ("cursor", "cursor")):
                if name in data:
                    raise ValidationError(f"around cannot be combined with {key}.", "around")
        if "after_id" in data and data.get("order") in ("desc", "slowest"):
            raise ValidationError("afterId pages in ascending order of id; drop order.",
                                  "order")


class RangeParams(FilterParams):
    """Stats and histogram: the filters of a search, without paging."""
    since = Instant()
    until = Instant()
    client_ip = Text(max_length=64, data_key="clientIp")

    @validates_schema
    def check_range(self, data, **kwargs):
        _check_range(data)


class StatsParams(RangeParams):
    top_routes = Int(minimum=1, maximum=200, data_key="topRoutes", load_default=20)
    sort = fields.String(load_default="total", validate=validate.OneOf(ROUTE_SORTS),
                         metadata={"description": "the column byRoute is sorted by: the "
                                   "top routes by that column, highest first (route: A-Z)"})


class HistogramParams(RangeParams):
    bucket = fields.String(load_default="1m", validate=validate.OneOf(tuple(BUCKETS)))


class StreamParams(FilterParams):
    """Parameters of the live tail (SSE and WebSocket)."""
    replay = Int(maximum=1000, load_default=100)
    last_event_id = Int(data_key="lastEventId")


class WebSocketParams(StreamParams):
    token = fields.String()


query_params = QueryParams()
stream_params = StreamParams()
websocket_params = WebSocketParams()
stats_params = StatsParams()
histogram_params = HistogramParams()
