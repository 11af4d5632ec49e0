"""HTTP blueprints. Each view parses (schema), authorises (one call), calls a
service function and returns; errors are raised and rendered by `errors`."""
from flask import current_app, request

from ..auth import Unauthenticated


def state():
    """The per-application services bound by the factory."""
    return current_app.extensions["logsvc"]


def principal():
    """The authenticated caller of the current request (401 otherwise)."""
    found = getattr(request, "_logsvc_principal", None)
    if found is None:
        found = state().authenticator.authenticate(request.headers.get("Authorization"))
        request._logsvc_principal = found
    return found


def blueprints():
    from . import ingest, logs, ops
    return (ops.blueprint, logs.blueprint, ingest.blueprint)


__all__ = ["state", "principal", "blueprints", "Unauthenticated"]
