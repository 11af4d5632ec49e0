"""The body of an alert rule (POST and PATCH /_alerts).

    {"name": "checkout failing",
     "filters": {"projectId": "shop", "route": "/v1/checkout", "status": "5xx"},
     "condition": {"metric": "errorRate", "op": ">", "threshold": 0.05},
     "window": "5m", "for": "1m",
     "webhook": "https://alertmanager.example.com/api/v2/alerts",
     "labels": {"team": "payments"}, "annotations": {"runbook": "https://..."},
     "enabled": true}

`filters` takes what a search's query string takes (names and values as
there: a list or a comma-separated string where a parameter takes several);
the rule's `window` sets the time range, so `since` and `until` are not
among them.
"""
import re

from marshmallow import Schema, ValidationError, fields, validate, validates

from logsvc.store.alerts import METRICS, OPS

from .params import FilterParams, Text

_DURATION = re.compile(r"^(\d{1,6})(s|m|h)$")
_SECONDS = {"s": 1, "m": 60, "h": 3600}
MAX_WINDOW_S = 86_400
_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_LABELS = 32


class Seconds(fields.Field):
    """A duration such as 30s, 5m or 24h (or a number of seconds), as
    seconds, between `minimum` and MAX_WINDOW_S."""

    def __init__(self, minimum=0, **kwargs):
        super().__init__(**kwargs)
        self.minimum = minimum

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool):
            raise ValidationError("Not a duration like 30s, 5m or 1h.")
        if isinstance(value, int):
            seconds = value
        else:
            match = _DURATION.match(str(value).strip())
            if not match:
                raise ValidationError("Not a duration like 30s, 5m or 1h.")
            seconds = int(match[1]) * _SECONDS[match[2]]
        if not self.minimum <= seconds <= MAX_WINDOW_S:
            raise ValidationError(f"Must be between {shown(self.minimum)} and 24h.")
        return seconds


def shown(seconds):
    """Seconds as the API shows a duration: 90s, 5m, 2h."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


class Labels(fields.Dict):
    def __init__(self, **kwargs):
        super().__init__(keys=fields.String(), values=fields.String(
            validate=validate.Length(max=1024)), **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        found = super()._deserialize(value, attr, data, **kwargs)
        if len(found) > MAX_LABELS:
            raise ValidationError(f"At most {MAX_LABELS} entries.")
        for key in found:
            if not _LABEL.match(key):
                raise ValidationError(f"{key!r} is not a label name (letters, digits, _).")
        return found


class Condition(Schema):
    metric = fields.String(required=True, validate=validate.OneOf(METRICS))
    op = fields.String(required=True, validate=validate.OneOf(tuple(OPS)))
    threshold = fields.Float(required=True, allow_nan=False,
                             validate=validate.Range(min=-1e15, max=1e15))


class RuleFilters(FilterParams):
    client_ip = Text(max_length=64, data_key="clientIp")


rule_filters = RuleFilters()


class RuleSchema(Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    filters = fields.Dict(keys=fields.String(), load_default=dict)
    condition = fields.Nested(Condition, required=True)
    window_s = Seconds(minimum=60, data_key="window", required=True)
    for_s = Seconds(data_key="for", load_default=0)
    webhook = fields.String(required=True, validate=validate.Length(min=1, max=2048))
    labels = Labels(load_default=dict)
    annotations = Labels(load_default=dict)
    enabled = fields.Boolean(load_default=True)

    @validates("filters")
    def check_filters(self, value, **kwargs):
        parse_filters(value)


def parse_filters(given):
    """(filters as given, with lists joined; Filters' fields) of a rule's
    `filters`, or ValidationError naming `filters.<parameter>`."""
    if not isinstance(given, dict):
        raise ValidationError("Must be an object of search parameters.")
    joiners = {field.data_key or name: getattr(field, "joiner", None)
               for name, field in rule_filters.fields.items()}
    args = {}
    for key, value in given.items():
        if key in ("since", "until"):
            raise ValidationError({key: ["The rule's window sets the time range."]})
        if isinstance(value, list) and all(isinstance(v, str) for v in value) and value:
            value = (joiners.get(key) or ",").join(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise ValidationError({key: ["Must be a string or a list of strings."]})
        args[key] = value
    try:
        parsed = rule_filters.load(args)
    except ValidationError as exc:
        raise ValidationError(exc.messages) from None
    return args, parsed


rule_schema = RuleSchema()


class _Shown(Schema):
    """A rule as the API shows it (the OpenAPI description)."""
    id = fields.Integer(required=True)
    name = fields.String(required=True)
    filters = fields.Dict(required=True)
    condition = fields.Nested(Condition, required=True)
    window = fields.String(required=True)
    for_ = fields.String(data_key="for", required=True)
    webhook = fields.String(required=True)
    labels = fields.Dict(required=True)
    annotations = fields.Dict(required=True)
    enabled = fields.Boolean(required=True)
    state = fields.String(required=True, metadata={"enum": ["ok", "pending", "firing"]})
    stateSince = fields.Integer(required=True)
    value = fields.Float(allow_none=True, required=True)
    evaluatedAt = fields.Integer(allow_none=True, required=True)
    lastNotification = fields.Dict(allow_none=True, required=True)
    createdAt = fields.Integer(required=True)
    updatedAt = fields.Integer(required=True)


class AlertSchema(_Shown):
    pass


class AlertListSchema(Schema):
    alerts = fields.List(fields.Nested(AlertSchema), required=True)
