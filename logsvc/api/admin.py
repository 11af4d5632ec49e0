"""The operator's API: `/api/proxy-logs/_admin/...`, admin token only (an
Authorization header: a browser session never administers)."""
import orjson
from flask import Blueprint, request
from marshmallow import ValidationError

from logsvc.access import credentials
from logsvc.access.principal import require_admin
from logsvc.entry import INPUT_FIELDS
from logsvc.store import operations, retention
from schemas.admin import token_create, user_create

from . import caller, state
from .errors import ApiError, validation_message

blueprint = Blueprint("admin", __name__, url_prefix="/api/proxy-logs/_admin")


@blueprint.before_request
def operator_only():
    require_admin(caller())


@blueprint.post("/tokens")
def create_token():
    body = _body(token_create)
    return credentials.create_token(body["name"], body["project_id"], body["container_id"],
                                   body["capabilities"]), 201


@blueprint.get("/tokens")
def list_tokens():
    return {"tokens": credentials.list_tokens()}


@blueprint.delete("/tokens/<int(max=9223372036854775807):token_id>")
def revoke_token(token_id):
    return credentials.revoke_token(token_id)


@blueprint.post("/users")
def create_user():
    body = _body(user_create)
    return credentials.create_user(body["username"], body["password"], body["project_id"],
                                  body["container_id"], body["capabilities"]), 201


@blueprint.get("/users")
def list_users():
    return {"users": credentials.list_users()}


@blueprint.delete("/users/<username>")
def delete_user(username):
    credentials.delete_user(username)
    return {"username": username, "deleted": True}


@blueprint.post("/scopes/<project_id>/<container_id>/destroy")
def destroy_scope(project_id, container_id):
    # The names an entry may carry: anything else could never have stored
    # an entry, and its destroy event would be refused after the scope had
    # been marked (nothing is changed for a name that is refused here).
    for name, value in (("projectId", project_id), ("containerId", container_id)):
        try:
            INPUT_FIELDS[name][1](value)
        except ValueError as exc:
            raise ApiError(400, f"Invalid path parameter '{name}': {exc}") from None
    result = operations.destroy_scope(project_id, container_id, state().config)
    state().tailer.notify()
    return result


@blueprint.post("/clear")
def clear():
    result = operations.clear()
    state().tailer.notify()
    return result


@blueprint.post("/prune")
def prune():
    # A prune running elsewhere is waited for (up to 30 s), then this one runs.
    return {"removed": retention.prune(state().config, wait_s=30)}


def _body(schema):
    try:
        data = orjson.loads(request.get_data())
    except orjson.JSONDecodeError:  # also nesting deeper than orjson's limit
        data = None
    if not isinstance(data, dict):
        raise ApiError(400, "The body must be a JSON object")
    try:
        return schema.load(data)
    except ValidationError as exc:
        raise ApiError(422, validation_message(exc, "field")) from None
