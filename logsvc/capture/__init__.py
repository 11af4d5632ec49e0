"""Capture at the source: a WSGI middleware, a capturing reverse proxy and
an access-log importer, with sinks that deliver what they capture.

    from logsvc.capture import CaptureMiddleware, HttpSink
    app = CaptureMiddleware(app, HttpSink("http://logs:8080", token="lst_…"),
                            service_name="user-api", project_id="proj_a")

These tools talk to a logsvc server over HTTP and import nothing of the
server, except `LocalSink`, which writes into a store on this host and is
imported only when asked for.
"""
from .middleware import CaptureMiddleware
from .sinks import HttpSink, QueuedSink

__all__ = ["CaptureMiddleware", "HttpSink", "LocalSink", "QueuedSink"]


def __getattr__(name):
    if name == "LocalSink":  # it brings in the store: only on demand
        from .local import LocalSink

        return LocalSink
    raise AttributeError(f"module 'logsvc.capture' has no attribute {name!r}")
