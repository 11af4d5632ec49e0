"""The OpenAPI 3 description of the API, generated from the marshmallow
schemas (apispec). Served at /api/proxy-logs/openapi.json; the docs page
at /api/proxy-logs/docs renders it without any external asset."""
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from logsvc import __version__
from schemas import admin as admin_schemas
from schemas import alerts as alert_schemas
from schemas import entries, params, responses

_ERROR = {"description": "The one error shape",
          "content": {"application/json": {"schema": "Error"}}}
_NDJSON = "application/x-ndjson"


def build():
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="logsvc", version=__version__, openapi_version="3.0.3", plugins=[plugin],
        info={"description": "Store, search, count and live-tail HTTP proxy logs."},
    )
    _map_fields(plugin)
    for scheme, definition in (
            ("bearer", {"type": "http", "scheme": "bearer"}),
            ("basic", {"type": "http", "scheme": "basic"}),
            ("session", {"type": "apiKey", "in": "cookie", "name": "logsvc_session"})):
        spec.components.security_scheme(scheme, definition)
    for name, schema in (
            ("Error", responses.ErrorSchema), ("Entry", entries.EntrySchema),
            ("EntryIn", entries.EntryInSchema), ("QueryResult", responses.QueryResultSchema),
            ("Stats", responses.StatsSchema), ("Histogram", responses.HistogramSchema),
            ("IngestResult", responses.IngestResultSchema), ("Token", responses.TokenSchema),
            ("TokenList", responses.TokenListSchema), ("User", responses.UserSchema),
            ("UserList", responses.UserListSchema), ("TokenCreate", admin_schemas.TokenCreate),
            ("UserCreate", admin_schemas.UserCreate), ("Destroyed", responses.DestroyedSchema),
            ("Cleared", responses.ClearedSchema), ("Pruned", responses.PrunedSchema),
            ("Session", responses.SessionSchema), ("WsToken", responses.WsTokenSchema),
            ("Health", responses.HealthSchema), ("DeletedUser", responses.DeletedUserSchema),
            ("AlertRuleIn", alert_schemas.RuleSchema), ("AlertRule", alert_schemas.AlertSchema),
            ("AlertRuleList", alert_schemas.AlertListSchema)):
        spec.components.schema(name, schema=schema)
    for path, operations in _paths().items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()


def _paths():
    read = [{"bearer": []}, {"basic": []}, {"session": []}]
    write = [{"bearer": []}, {"basic": []}]
    admin = [{"bearer": []}]
    prefix = "/api/proxy-logs"
    return {
        f"{prefix}/_logs": {"get": _op(
            "Search entries", read, params.QueryParams, {
                "200": {"description": "A page of entries (json), or one entry a line "
                                       "(ndjson, text; a cursor sweep ends with a trailer)",
                        "content": {"application/json": {"schema": "QueryResult"},
                                    _NDJSON: {"schema": {"type": "string"}},
                                    "text/plain": {"schema": {"type": "string"}}}},
                "410": {"description": "The cursor's snapshot is gone",
                        "content": {_NDJSON: {"schema": {"type": "string"}}}}})},
        f"{prefix}/_logs/stats": {"get": _op(
            "Counts by level, project, container, service, kind, status class, source",
            read, params.StatsParams, _json("Stats"))},
        f"{prefix}/_logs/stats/histogram": {"get": _op(
            "Counts per time bucket and level", read, params.HistogramParams,
            _json("Histogram"))},
        f"{prefix}/_logs/stream": {"get": {
            **_op("Live tail over Server-Sent Events", read, params.StreamParams, {
                "200": {"description": "An endless text/event-stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                "410": _ERROR}),
            "parameters": [{"in": "query", "schema": params.StreamParams},
                           {"in": "header", "name": "Last-Event-ID", "required": False,
                            "schema": {"type": "string"}}]}},
        f"{prefix}/_ingest": {
            "post": {**_op("Store entries", write, None, _json("IngestResult")),
                     "requestBody": {"required": True, "content": {
                         "application/json": {"schema": {"oneOf": [
                             {"$ref": "#/components/schemas/EntryIn"},
                             {"type": "array", "items": {"$ref": "#/components/schemas/EntryIn"}}]}},
                         _NDJSON: {"schema": {"type": "string"}}}},
                     "parameters": [{
                         "in": "header", "name": "Idempotency-Key", "required": False,
                         "description": "A key of the sender's for this batch: a retry with "
                                        "the same key and body stores nothing and gets the "
                                        "first answer (422 for another body)",
                         "schema": {"type": "string", "minLength": 1, "maxLength": 255,
                                    "pattern": "^[!-~]+$"}}]},
            "head": {"summary": "Health check for log shippers", "security": [],
                     "responses": {"200": {"description": "Ready"}}}},
        f"{prefix}/_admin/tokens": {
            "post": _body_op("Create a scoped API token (the secret is shown once)", "TokenCreate",
                             "Token", "201"),
            "get": _op("List tokens", admin, None, _json("TokenList"))},
        f"{prefix}/_admin/tokens/{{tokenId}}": {"delete": {
            **_op("Revoke a token", admin, None, _json("Token")),
            "parameters": [_path_param("tokenId", "integer")]}},
        f"{prefix}/_admin/users": {
            "post": _body_op("Create a Basic user", "UserCreate", "User", "201"),
            "get": _op("List users", admin, None, _json("UserList"))},
        f"{prefix}/_admin/users/{{username}}": {"delete": {
            **_op("Delete a user", admin, None, _json("DeletedUser")),
            "parameters": [_path_param("username", "string")]}},
        f"{prefix}/_admin/scopes/{{projectId}}/{{containerId}}/destroy": {"post": {
            **_op("Destroy a container's scope", admin, None, _json("Destroyed")),
            "parameters": [_path_param("projectId", "string"),
                           _path_param("containerId", "string")]}},
        f"{prefix}/_admin/clear": {"post": _op("Delete every entry", admin, None,
                                               _json("Cleared"))},
        f"{prefix}/_admin/prune": {"post": _op("Run retention now", admin, None,
                                               _json("Pruned"))},
        f"{prefix}/_alerts": {
            "post": {**_body_op("Create an alert rule", "AlertRuleIn", "AlertRule", "201"),
                     "security": write},
            "get": _op("The alert rules of the caller's scope, with their state", read, None,
                       _json("AlertRuleList"))},
        f"{prefix}/_alerts/{{ruleId}}": {
            "get": {**_op("One alert rule", read, None, _json("AlertRule")),
                    "parameters": [_path_param("ruleId", "integer")]},
            "patch": {**_body_op("Change an alert rule (the fields given)", "AlertRuleIn",
                                 "AlertRule", "200"),
                      "security": write, "parameters": [_path_param("ruleId", "integer")]},
            "delete": {**_op("Delete an alert rule", write, None,
                             {"204": {"description": "Deleted"}}),
                       "parameters": [_path_param("ruleId", "integer")]}},
        "/otlp/v1/logs": {"post": {
            **_op("OTLP/HTTP logs: an ExportLogsServiceRequest (protobuf or JSON)", write,
                  None, {"200": {"description": "An ExportLogsServiceResponse (its "
                                                "partialSuccess counts records refused)",
                                 "content": {"application/json": {"schema": {"type": "object"}},
                                             "application/x-protobuf": {
                                                 "schema": {"type": "string"}}}}}),
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": {"type": "object"}},
                "application/x-protobuf": {"schema": {"type": "string",
                                                      "format": "binary"}}}}}},
        "/loki/api/v1/push": {"post": {
            **_op("Loki push (snappy protobuf or JSON)", write, None,
                  {"204": {"description": "Stored"}}),
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": {"type": "object"}},
                "application/x-protobuf": {"schema": {"type": "string",
                                                      "format": "binary"}}}}}},
        "/loki/api/v1/query_range": _loki(
            "LogQL over a time range: log lines (streams) or series (matrix)", read,
            ("query!", "start", "end", "limit", "direction", "step"), both=True),
        "/loki/api/v1/query": _loki("LogQL at one instant (vector or scalar)", read,
                                    ("query!", "time", "limit", "direction"), both=True),
        "/loki/api/v1/labels": _loki("Labels with values in a time range", read,
                                     ("start", "end", "query")),
        "/loki/api/v1/label/{name}/values": {"get": {
            **_loki("A label's values in a time range", read, ("start", "end", "query"))["get"],
            "parameters": [_path_param("name", "string"),
                           *_loki_params(("start", "end", "query"))]}},
        "/loki/api/v1/series": _loki("The label sets of the streams a selector matches", read,
                                     ("match[]!", "start", "end"), both=True),
        "/loki/api/v1/index/stats": _loki("The entries a selector matches in a time range",
                                          read, ("query", "start", "end")),
        "/loki/api/v1/status/buildinfo": _loki("The Loki API version followed", read, ()),
        "/elasticsearch/": {"get": _op("As an Elasticsearch cluster's root", write, None,
                                       _json({"type": "object"}))},
        "/elasticsearch": {"get": _op("As an Elasticsearch cluster's root", write, None,
                                      _json({"type": "object"}))},
        "/elasticsearch/_cluster/health": {"get": _op("As an Elasticsearch cluster's health",
                                                      write, None, _json({"type": "object"}))},
        "/elasticsearch/_cat/health": {"get": _op("As an Elasticsearch cluster's health, "
                                                  "in text (rsyslog asks it)", write, None, {
            "200": {"description": "One line", "content": {
                "text/plain": {"schema": {"type": "string"}}}}})},
        "/elasticsearch/_bulk": {"post": _es_bulk(write), "put": _es_bulk(write)},
        "/elasticsearch/{index}/_bulk": {method: {**_es_bulk(write),
                                                  "parameters": [_path_param("index", "string")]}
                                         for method in ("post", "put")},
        "/api/session": {
            "get": _op("The caller's scope (a session's or the header's)", read, None,
                       _json("Session")),
            "post": _op("Open a browser session (sets an HttpOnly cookie)", write, None,
                        _json("Session")),
            "delete": _op("End the browser session", [{"session": []}, {}], None,
                          _json("Session"))},
        "/api/ws-token": {"get": _op("A single-use WebSocket ticket (120 s)", read, None,
                                     _json("WsToken"))},
        "/healthz": {"get": {"summary": "The database answers", "security": [],
                             "responses": {**_json("Health"), "503": _ERROR}}},
        "/metrics": {"get": _op("Prometheus metrics", admin, None, {
            "200": {"description": "Prometheus text format",
                    "content": {"text/plain": {"schema": {"type": "string"}}}}})},
        f"{prefix}/openapi.json": {"get": {
            "summary": "This document", "security": [],
            "responses": {"200": {"description": "OpenAPI 3",
                                  "content": {"application/json": {"schema": {
                                      "type": "object"}}}}}}},
    }


def _loki(summary, security, names, both=False):
    operation = {**_op(summary, security, None, _json({"type": "object"})),
                 "parameters": _loki_params(names)}
    return {"get": operation, "post": operation} if both else {"get": operation}


def _loki_params(names):
    """Query parameters; a name ending in "!" is required."""
    return [{"in": "query", "name": name.rstrip("!"), "schema": {"type": "string"},
             "required": name.endswith("!")} for name in names]


def _es_bulk(security):
    return {**_op("Elasticsearch bulk: index and create actions (an item result each)",
                  security, None, _json({"type": "object"})),
            "requestBody": {"required": True, "content": {_NDJSON: {"schema": {
                "type": "string"}}}}}


def _op(summary, security, query_schema, answers):
    operation = {"summary": summary, "security": security,
                 "responses": {**answers, "default": _ERROR}}
    if query_schema is not None:
        operation["parameters"] = [{"in": "query", "schema": query_schema}]
    return operation


def _body_op(summary, body, answer, status):
    operation = _op(summary, [{"bearer": []}], None, {status: _json(answer)["200"]})
    operation["requestBody"] = {"required": True, "content": {
        "application/json": {"schema": body}}}
    return operation


def _json(schema):
    return {"200": {"description": "OK", "content": {"application/json": {"schema": schema}}}}


def _path_param(name, kind):
    return {"in": "path", "name": name, "required": True, "schema": {"type": kind}}


def _map_fields(plugin):
    plugin.map_to_openapi_type(params.Int, "integer", None)
    plugin.map_to_openapi_type(params.Flag, "boolean", None)
    plugin.map_to_openapi_type(params.Text, "string", None)
    plugin.map_to_openapi_type(alert_schemas.Seconds, "string", None)
    for field in (params.Choices, params.StatusSpec, params.Instant):
        plugin.map_to_openapi_type(field, "string", None)

