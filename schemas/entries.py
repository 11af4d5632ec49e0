"""The log entry, as accepted by ingest and as returned by queries."""
from marshmallow import INCLUDE, Schema, ValidationError, fields, missing, post_load

from logsvc import entry as domain

# OpenAPI types of the ingested fields, for the generated description.
_INPUT_TYPES = {
    "tsMs": "integer", "status": "integer", "data": "object",
    "bodyTruncated": "boolean", "id": "integer", "durationMs": "number",
}


class Coerced(fields.Field):
    """A field that validates with one of the domain coercers."""

    def __init__(self, coerce, **kwargs):
        super().__init__(**kwargs)
        self.coerce = coerce

    def deserialize(self, value, attr=None, data=None, **kwargs):
        # JSON null means "not given", as on the ingest fast path.
        if value is None or value is missing:
            return missing
        try:
            return self.coerce(value)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None


class EntryInSchema(Schema):
    """One entry posted to `_ingest`. Unknown fields are kept in `data`."""

    class Meta:
        unknown = INCLUDE

    def __init__(self, max_body_bytes=65536, **kwargs):
        super().__init__(**kwargs)
        self.max_body_bytes = max_body_bytes

    @post_load
    def complete(self, loaded, **kwargs):
        known = {}
        extra = {}
        for key, value in loaded.items():
            if key in domain.INPUT_FIELDS:
                known[domain.INPUT_FIELDS[key][0]] = value
            else:
                extra[key] = value
        try:
            return domain.finish(known, extra, self.max_body_bytes)
        except domain.InvalidEntry as exc:
            raise ValidationError(exc.errors) from None


for _name, (_key, _coerce) in domain.INPUT_FIELDS.items():
    # `timestamp` takes an ISO string or epoch seconds: no single type.
    _type = {} if _name == "timestamp" else {"type": _INPUT_TYPES.get(_name, "string")}
    EntryInSchema._declared_fields[_name] = Coerced(_coerce, metadata=_type)


class EntrySchema(Schema):
    """One stored entry as the API returns it."""

    id = fields.Integer(required=True)
    traceId = fields.String(required=True)
    tsMs = fields.Integer(required=True)
    tsIso = fields.Method("iso")
    kind = fields.String(required=True)
    level = fields.String(required=True)
    projectId = fields.String(required=True)
    containerId = fields.String(allow_none=True)
    serviceName = fields.String(allow_none=True)
    method = fields.String(allow_none=True)
    url = fields.String(allow_none=True)
    clientIp = fields.String(allow_none=True)
    status = fields.Integer(allow_none=True)
    source = fields.String(required=True)
    durationMs = fields.Float(allow_none=True, metadata={"description": "Milliseconds"})
    route = fields.String(allow_none=True, metadata={
        "description": "The url's path with id-like segments as {id}"})
    data = fields.Dict()
    requestBody = fields.String(allow_none=True)
    responseBody = fields.String(allow_none=True)
    bodyTruncated = fields.Boolean()

    def iso(self, obj):
        return domain.iso_from_ms(obj["tsMs"])


entries_schema = EntrySchema(many=True)
