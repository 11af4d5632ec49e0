"""The one error shape, for every status and every endpoint:

    {"statusCode": 403, "error": "Forbidden", "message": "..."}

Views raise; this module renders. Nothing a client sends may produce a 500:
an unexpected exception is logged (without the request's credentials) and
answered in the same shape.
"""
import logging
from http import HTTPStatus

import orjson
from flask import Response
from gunicorn.http.errors import ParseException  # a body gunicorn's parser could not read
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from logsvc.access.credentials import Conflict, NotFound
from logsvc.access.limits import RateLimited
from logsvc.access.principal import Forbidden, Unauthenticated
from logsvc.store import db
from logsvc.store.cursor import BadCursor
from logsvc.store.ingest import KeyReused, PayloadError, PayloadTooLarge
from logsvc.store.query import InvalidParameter
from logsvc.store.retention import PruneBusy
from logsvc.store.tail import ScopeDestroyed, StoreUnavailable

log = logging.getLogger("logsvc")

UNWRITABLE_RETRY_S = 30



class ApiError(Exception):
    def __init__(self, status, message, headers=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_response(status, message, headers=None):
    body = {"statusCode": status, "error": HTTPStatus(status).phrase, "message": message}
    response = Response(orjson.dumps(body), status=status, mimetype="application/json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def validation_message(exc, where="query parameter"):
    """'Invalid query parameter 'level': ...' from a marshmallow error."""
    parts = []
    for name, problems in sorted(_flatten(exc.messages)):
        text = " ".join(problems)
        if name == "_schema":
            parts.append(text)
        elif text == "Unknown field.":
            parts.append(f"Unknown {where} '{name}'")
        else:
            parts.append(f"Invalid {where} '{name}': {text}")
    return "; ".join(parts)


def _refuse_nul():
    """No stored text may hold NUL (PostgreSQL cannot), so a request that
    brings one in its path or query string is refused before any view runs."""
    from flask import request

    if "\x00" in request.path:
        return error_response(400, "The path must not contain NUL characters")
    for key, value in request.args.items(multi=True):
        if "\x00" in key or "\x00" in value:
            return error_response(400, f"Invalid query parameter '{key.replace(chr(0), '')}': "
                                       "must not contain NUL characters")
    return None


def register(app):
    app.before_request(_refuse_nul)

    @app.errorhandler(ApiError)
    def api_error(exc):
        return error_response(exc.status, exc.message, exc.headers)

    @app.errorhandler(ValidationError)
    def invalid(exc):
        return error_response(400, validation_message(exc))

    @app.errorhandler(Unauthenticated)
    def unauthenticated(exc):
        return error_response(401, str(exc), {"WWW-Authenticate": 'Bearer realm="logsvc"'})

    @app.errorhandler(Forbidden)
    def forbidden(exc):
        return error_response(403, str(exc))

    @app.errorhandler(RateLimited)
    def rate_limited(exc):
        return error_response(429, str(exc), {"Retry-After": str(exc.retry_after)})

    @app.errorhandler(BadCursor)
    @app.errorhandler(InvalidParameter)
    def bad_parameter(exc):
        return error_response(400, str(exc))

    @app.errorhandler(ScopeDestroyed)
    def destroyed(exc):
        return error_response(410, "This container's scope was destroyed")

    @app.errorhandler(NotFound)
    def not_found(exc):
        return error_response(404, str(exc))

    @app.errorhandler(Conflict)
    def conflict(exc):
        return error_response(409, str(exc))

    @app.errorhandler(PayloadTooLarge)
    def too_large(exc):
        return error_response(413, str(exc))

    @app.errorhandler(KeyReused)
    def key_reused(exc):
        return error_response(422, str(exc))

    @app.errorhandler(PayloadError)
    def bad_payload(exc):
        return error_response(400, str(exc))

    @app.errorhandler(HTTPException)
    def http_error(exc):
        headers = {}
        if exc.code == 405:
            headers["Allow"] = ", ".join(exc.valid_methods or ())
        message = {404: "No such endpoint", 405: "Method not allowed on this endpoint",
                   413: "Request body is too large"}.get(exc.code, exc.description)
        return error_response(exc.code, message, headers)

    @app.errorhandler(PruneBusy)
    def prune_busy(exc):
        return error_response(409, str(exc), {"Retry-After": "5"})

    @app.errorhandler(db.QueryTimeout)
    def query_timeout(exc):
        return error_response(503, str(exc), {"Retry-After": "5"})

    @app.errorhandler(StoreUnavailable)
    def store_unavailable(exc):
        return error_response(503, str(exc), {"Retry-After": "2"})

    @app.errorhandler(Exception)
    def unexpected(exc):
        if isinstance(exc, ParseException):  # the server's HTTP parser, reading the body
            return error_response(400, f"Malformed request: {exc}")
        reason = db.unwritable_reason(exc)
        if reason:
            db.note_write(exc)
            log.warning("write refused: %s", reason)
            return error_response(503, f"{reason[0].upper()}{reason[1:]}; writes are refused "
                                       "until it accepts them again (reads still work)",
                                  {"Retry-After": str(UNWRITABLE_RETRY_S)})
        if db.is_transient_error(exc):
            log.warning("store unavailable: %s: %s", type(exc).__name__,
                        (str(exc).strip().splitlines() or [""])[0])
            return error_response(503, "The store is busy or unreachable; retry shortly",
                                  {"Retry-After": "1"})
        log.exception("unexpected error: %s", type(exc).__name__)
        return error_response(500, "Internal error")


def _flatten(messages, prefix=""):
    if isinstance(messages, dict):
        for key, value in messages.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict):
                yield from _flatten(value, name)
            else:
                yield name, [str(v) for v in value] if isinstance(value, list) else [str(value)]
