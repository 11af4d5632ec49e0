"""Shapes of the API's answers, for the OpenAPI description and tests."""
from marshmallow import Schema, fields

from .entries import EntrySchema


class ErrorSchema(Schema):
    statusCode = fields.Integer(required=True)
    error = fields.String(required=True)
    message = fields.String(required=True)


class QueryResultSchema(Schema):
    entries = fields.List(fields.Nested(EntrySchema), required=True)
    total = fields.Integer(required=True)
    totalExact = fields.Boolean(required=True)
    limit = fields.Integer(required=True)
    offset = fields.Integer(required=True)
    nextAfterId = fields.Integer(allow_none=True)
    aroundId = fields.Integer(metadata={"description": "with `around`: the entry whose "
                                        "context this is"})


class _Counts(fields.Dict):
    def __init__(self, **kwargs):
        super().__init__(keys=fields.String(), values=fields.Integer(), required=True, **kwargs)


def _ms(description, **kwargs):
    return fields.Float(allow_none=True, required=True,
                        metadata={"description": description}, **kwargs)


class LatencySchema(Schema):
    count = fields.Integer(required=True, metadata={"description": "Entries with a duration"})
    p50 = _ms("Median duration (ms), within 1 %")
    p90 = _ms("90th percentile (ms), within 1 %")
    p95 = _ms("95th percentile (ms), within 1 %")
    p99 = _ms("99th percentile (ms), within 1 %")
    max = _ms("Longest duration (ms), exact")


class RouteSchema(Schema):
    route = fields.String(required=True)
    total = fields.Integer(required=True, metadata={"description": "Entries on the route"})
    errors = fields.Integer(required=True, metadata={"description": "Of them, level error"})
    timed = fields.Integer(required=True, metadata={"description": "Of them, with a duration"})
    errorRate = fields.Float(required=True, metadata={"description": "errors / total"})
    p50 = _ms("Median duration (ms)")
    p95 = _ms("95th percentile (ms)")
    p99 = _ms("99th percentile (ms)")


class StatsSchema(Schema):
    total = fields.Integer(required=True)
    latency = fields.Nested(LatencySchema, required=True)
    byRoute = fields.List(fields.Nested(RouteSchema), required=True,
                          metadata={"description": "The top routes by `sort` (default: "
                                                   "the busiest, most entries first)"})
    byLevel = _Counts()
    byProject = _Counts()
    byContainer = _Counts()
    byService = _Counts()
    byKind = _Counts()
    byStatus = _Counts()
    bySource = _Counts()


class BucketSchema(Schema):
    tsMs = fields.Integer(required=True)
    total = fields.Integer(required=True)
    byLevel = _Counts()
    p50 = _ms("Median duration (ms) of the bucket's entries")
    p95 = _ms("95th percentile duration (ms)")


class HistogramSchema(Schema):
    bucket = fields.String(required=True)
    bucketMs = fields.Integer(required=True)
    since = fields.Integer(required=True)
    until = fields.Integer(required=True)
    buckets = fields.List(fields.Nested(BucketSchema), required=True)


class RejectedSchema(Schema):
    index = fields.Integer(required=True)
    errors = fields.Dict(required=True)


class IngestResultSchema(Schema):
    accepted = fields.Integer(required=True)
    rejected = fields.List(fields.Nested(RejectedSchema), required=True, metadata={
        "description": "The first 1,000 rejected entries, with their reasons"})
    rejectedCount = fields.Integer(required=True)
    firstId = fields.Integer(allow_none=True, required=True)
    lastId = fields.Integer(allow_none=True, required=True)


class CapabilitiesSchema(Schema):
    logs = fields.Boolean()
    ingest = fields.Boolean()


class TokenSchema(Schema):
    id = fields.Integer(required=True)
    name = fields.String(required=True)
    projectId = fields.String(required=True)
    containerId = fields.String(allow_none=True, required=True)
    capabilities = fields.Nested(CapabilitiesSchema, required=True)
    createdMs = fields.Integer(required=True)
    revokedMs = fields.Integer(allow_none=True, required=True)
    token = fields.String(metadata={"description": "The secret: in the creation answer only"})


class TokenListSchema(Schema):
    tokens = fields.List(fields.Nested(TokenSchema), required=True)


class UserSchema(Schema):
    username = fields.String(required=True)
    projectId = fields.String(required=True)
    containerId = fields.String(allow_none=True, required=True)
    capabilities = fields.Nested(CapabilitiesSchema, required=True)
    createdMs = fields.Integer(required=True)


class UserListSchema(Schema):
    users = fields.List(fields.Nested(UserSchema), required=True)


class DeletedUserSchema(Schema):
    username = fields.String(required=True)
    deleted = fields.Boolean(required=True)


class DestroyedSchema(Schema):
    projectId = fields.String(required=True)
    containerId = fields.String(required=True)
    eventId = fields.Integer(required=True)
    revokedTokens = fields.Integer(required=True)
    removedUsers = fields.Integer(required=True)


class ClearedSchema(Schema):
    removed = fields.Integer(required=True)
    nextId = fields.Integer(required=True)


class PrunedSchema(Schema):
    removed = fields.Integer(required=True)


class SessionSchema(Schema):
    status = fields.String(required=True)
    expiresMs = fields.Integer()
    projectId = fields.String(allow_none=True)
    containerId = fields.String(allow_none=True)
    admin = fields.Boolean()


class WsTokenSchema(Schema):
    status = fields.String(required=True)
    token = fields.String(required=True)


class HealthSchema(Schema):
    status = fields.String(required=True, metadata={"description": "ok, or read-only"})
    writable = fields.Boolean(required=True)
    message = fields.String(metadata={"description": "Why the store takes no writes"})
