"""Alert rules: /api/proxy-logs/_alerts (store/alerts.py, alerting.py).

Whoever may read a scope manages that scope's rules and sees only them (and
those of the containers within a project); a rule's filters are folded into
its owner's scope, so it can watch nothing its owner could not read. The
operator sees and manages every rule. The web UI manages rules with its
browser session: a change made with the session cookie (SameSite=Strict)
must also carry `X-Requested-With: logsvc`, a header no other site's page
can send without the CORS preflight this service never grants.
"""
import orjson
from flask import Blueprint, Response, request
from marshmallow import ValidationError

from logsvc import alerting
from logsvc.access.principal import READ, Forbidden, authorize
from logsvc.store import alerts
from schemas.alerts import parse_filters, rule_schema, shown

from . import caller, reader, session_cookie, state
from .errors import ApiError, validation_message

blueprint = Blueprint("alerts", __name__, url_prefix="/api/proxy-logs/_alerts")
MAX_RULES_PER_SCOPE = 1000


@blueprint.get("")
def list_rules():
    found = reader()
    scope = found.scope
    rules = alerts.listed(*(scope or (None, None)))
    return _json({"alerts": _shown(rules)})


@blueprint.post("")
def create_rule():
    found = _manager()
    fields = _settings(_body(partial=False), found)
    owned = alerts.listed(fields["project_id"], fields["container_id"])
    if len(owned) >= MAX_RULES_PER_SCOPE:
        raise ApiError(429, f"A scope may have at most {MAX_RULES_PER_SCOPE} alert rules")
    rule = alerts.create(fields)
    return _json(_shown([rule])[0], 201)


@blueprint.get("/<int(max=9223372036854775807):rule_id>")
def get_rule(rule_id):
    return _json(_shown([_owned(rule_id, reader())])[0])


@blueprint.patch("/<int(max=9223372036854775807):rule_id>")
def change_rule(rule_id):
    found = _manager()
    rule = _owned(rule_id, found)
    data = _body(partial=True)
    if "filters" in data:
        # The rule's scope comes from its new filters, within the caller's.
        data = {**data, "filters": data["filters"]}
    else:
        data["filters"] = {**rule.filters}
        for key, value in (("projectId", rule.project_id), ("containerId", rule.container_id)):
            if value is not None:
                data["filters"].setdefault(key, value)
    fields = _settings(data, found, partial=True)
    return _json(_shown([alerts.update(rule_id, fields)])[0])


@blueprint.delete("/<int(max=9223372036854775807):rule_id>")
def delete_rule(rule_id):
    found = _manager()
    _owned(rule_id, found)
    try:
        alerts.delete(rule_id)
    except alerts.RuleNotFound:
        raise ApiError(404, f"No alert rule {rule_id}") from None
    return Response(status=204)


def _manager():
    """The caller of a change to rules: a header's credential, or the web
    UI's session with its X-Requested-With header."""
    found = reader(caller(allow_cookie=True))
    if session_cookie() is not None and request.headers.get("X-Requested-With") != "logsvc":
        raise Forbidden("A change made with a browser session must carry "
                        "X-Requested-With: logsvc")
    return found


def _owned(rule_id, found):
    """The rule, if the caller may manage it (404 otherwise: a rule of
    another scope is not shown to exist)."""
    try:
        rule = alerts.get(rule_id)
    except alerts.RuleNotFound:
        raise ApiError(404, f"No alert rule {rule_id}") from None
    scope = found.scope
    if scope is not None:
        project_id, container_id = scope
        if rule.project_id != project_id or (
                container_id is not None and rule.container_id != container_id):
            raise ApiError(404, f"No alert rule {rule_id}")
    return rule


def _body(partial):
    try:
        data = orjson.loads(request.get_data())
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise ApiError(400, "The body must be a JSON object")
    try:
        return rule_schema.load(data, partial=partial)
    except ValidationError as exc:
        raise ApiError(400, validation_message(exc, "field")) from None


def _settings(data, found, partial=False):
    """A rule's stored fields from a loaded body: the filters parsed and
    folded into the caller's scope, the webhook checked."""
    fields = {}
    if "filters" in data:
        given, parsed = parse_filters(data["filters"])
        try:
            project_id, container_id = authorize(found, READ, parsed.pop("project_id", None),
                                                 parsed.pop("container_id", None))
        except Forbidden:
            raise Forbidden("A rule's filters may only name the caller's own project and "
                            "container") from None
        given = {k: v for k, v in given.items() if k not in ("projectId", "containerId")}
        fields.update(filters=given, parsed=parsed, project_id=project_id,
                      container_id=container_id)
    if "condition" in data:
        condition = data["condition"]
        fields.update(metric=condition["metric"], op=condition["op"],
                      threshold=condition["threshold"])
    if "webhook" in data:
        try:
            alerting.check_webhook(data["webhook"],
                                   alerting.allowed_networks(state().config.webhook_allow))
        except alerting.WebhookRefused as exc:
            raise ApiError(400, f"Invalid field 'webhook': {exc}") from None
        fields["webhook"] = data["webhook"]
    for name in ("name", "window_s", "for_s", "labels", "annotations", "enabled"):
        if name in data:
            fields[name] = data[name]
    return fields


def _shown(rules):
    notified = alerts.last_notifications([rule.id for rule in rules])
    out = []
    for rule in rules:
        filters = dict(rule.filters)
        if rule.project_id is not None:
            filters["projectId"] = rule.project_id
        if rule.container_id is not None:
            filters["containerId"] = rule.container_id
        out.append({
            "id": rule.id, "name": rule.name, "filters": filters,
            "condition": {"metric": rule.metric, "op": rule.op, "threshold": rule.threshold},
            "window": shown(rule.window_s), "for": shown(rule.for_s), "webhook": rule.webhook,
            "labels": rule.labels, "annotations": rule.annotations, "enabled": rule.enabled,
            "state": rule.state, "stateSince": rule.state_since_ms, "value": rule.value,
            "evaluatedAt": rule.evaluated_ms, "lastNotification": notified.get(rule.id),
            "createdAt": rule.created_ms, "updatedAt": rule.updated_ms,
        })
    return out


def _json(body, status=200):
    return Response(orjson.dumps(body), status=status, mimetype="application/json")
