"""The application: `create_app` builds it, `serve` runs the embedded server.

`create_app` opens the store, creates or migrates its schema, and binds
everything that belongs to one application to it (`Services`): two
applications in one process work on two stores and share nothing.
"""
import dataclasses
import logging
import os
import sys
import threading
from pathlib import Path

from flask import Flask

from . import alerting, runtime, syslogd
from .access import authenticator, limits
from .api import blueprints, deadline, errors, hosting, stream
from .config import Config, ConfigError
from .store import db, migrations, models, retention, tail, wal


@dataclasses.dataclass
class Services:
    """What the views reach through `logsvc.api.state()`."""

    config: Config
    store: db.Store
    authenticator: authenticator.Authenticator
    limiter: limits.RateLimiter
    gate: limits.QueryGate  # how many queries of one scope run at once
    server_secret: str  # signs cursors
    tailer: tail.Tailer  # started by the first live-tail subscriber
    streams: tail.StreamSlots
    scope_host: object = None  # hosting.ScopeHost, when LOGSVC_SCOPE_HOST is set
    background: object = None  # retention's task, once started
    wal_keeper: object = None  # SQLite: the idle write-ahead log's trimmer
    sealer: object = None  # the background sealer (segments.py)
    counter: object = None  # the counters counted in the background (rollup.py)
    alerter: object = None  # the alert rules' evaluator (alerting.py)
    syslog: object = None  # the syslog listeners, in one process a host (syslogd.py)


def create_app(config=None):
    """Build the application. `config` is a Config, a dict of Config field
    overrides on top of the environment, or None for the environment."""
    if config is None:
        config = Config.from_env()
    elif isinstance(config, dict):
        config = Config.from_env().replace(**config)
    runtime.configure(config.concurrency)
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = config.max_request_bytes
    store = db.init(config)
    try:
        db.call(migrations.create_schema, config.store_partition_rows)
    except Exception as exc:
        reason = db.unwritable_reason(exc)
        if reason:
            raise db.UnsupportedDatabase(
                f"the store needs creating or upgrading to this version of logsvc, "
                f"but {reason}") from None
        raise
    store.unwritable = db.call(db.probe_unwritable, config)
    app.extensions["logsvc"] = Services(
        config=config,
        store=store,
        authenticator=authenticator.Authenticator(
            authenticator.load_admin_token(config), config.jwt_secret,
            failures=limits.FailureLimiter(config.data_dir, config.auth_failures_per_min)),
        limiter=limits.RateLimiter(config.data_dir, config.rate_limit_per_min),
        gate=limits.QueryGate(config.queries_per_scope, config.query_timeout_s),
        server_secret=db.call(models.shared_secret, "server"),
        tailer=tail.Tailer(config.ring_size, config.tail_poll_s, store),
        streams=tail.StreamSlots(config.max_streams_per_scope,
                                 _stream_room(config.max_streams_per_worker),
                                 str(Path(config.data_dir) / "limits.db")),
        scope_host=hosting.ScopeHost(config.scope_host) if config.scope_host else None,
    )
    networks = hosting.parse_networks(config.trusted_proxies)
    if networks:
        app.wsgi_app = hosting.TrustedProxies(app.wsgi_app, networks)
    if runtime.cooperative() and config.body_min_rate:  # first: before anything reads it
        app.before_request(deadline.BodyDeadline(config.header_timeout_s, config.body_min_rate,
                                                 config.max_request_bytes))
    # Each request works on this application's store.
    app.before_request(lambda: db.use(store))
    app.before_request(stream.websocket_unsupported)
    app.after_request(_security_headers)
    errors.register(app)
    for blueprint in blueprints():
        app.register_blueprint(blueprint)
    stream.sock.init_app(app)
    return app


# The web UI loads only its own files; nothing may frame it.
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'self'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def _security_headers(response):
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _stream_room(wanted):
    """Open streams this process may hold: `wanted`, within its open-file
    limit (each stream is a socket). The soft limit is raised towards the
    hard one first; a stream past what the process can open would get no
    answer at all, one past this cap gets a 429."""
    if not wanted:
        return wanted
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        needed = wanted + 256  # the database, the listening socket, requests
        if soft != resource.RLIM_INFINITY and soft < needed:
            raised = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    except (ImportError, ValueError, OSError):
        return wanted
    return wanted if soft == resource.RLIM_INFINITY else max(1, min(wanted, soft - 256))


def start_background(app):
    """Background work of a serving process: retention, sealing and alerts,
    each under a lease, and, on SQLite, trimming the idle write-ahead log
    (wal.py). Once per
    application; greenlets under gevent, else threads."""
    services = app.extensions["logsvc"]
    if services.background is not None:  # every request of wsgi.py asks
        return services.background
    with _starting:
        if services.background is None:
            services.background = runtime.spawn(retention.run_forever, services.config, None,
                                                services.store, name="logsvc-retention")
            config = services.config
            # Beside a sealing process (sealer.py), sealing and counting are
            # left to it: its start takes a few seconds, the workers' none.
            wait_s = retention.seal_lease_s(config) if os.environ.get(retention.SEALER_STARTED) else 0
            if not config.read_only and config.hot_rows:
                services.sealer = runtime.spawn(retention.seal_forever, config, services.store,
                                                None, False, None, wait_s, name="logsvc-seal")
            if not config.read_only:
                services.counter = runtime.spawn(retention.count_forever, config, services.store,
                                                 None, wait_s, name="logsvc-count")
                services.alerter = runtime.spawn(alerting.run_forever, config, services.store,
                                                 name="logsvc-alerts")
            if not config.read_only and (config.syslog_udp or config.syslog_tcp):
                services.syslog = runtime.spawn(syslogd.run_forever, config, services.store,
                                                name="logsvc-syslog")
            if not services.store.postgres and not config.read_only and config.wal_idle_s:
                services.wal_keeper = runtime.spawn(wal.keep_trimmed, services.store,
                                                    config.wal_idle_s, name="logsvc-wal")
    return services.background


_starting = threading.Lock()


def start_background_with_first_request(app):
    """Start the background work when this process serves its first request
    (after any fork the server does)."""
    def start():
        start_background(app)
    app.before_request(start)


def serve():
    """Run the embedded gevent server on the environment's settings (the
    caller has monkey-patched). Returns the process's exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        config = Config.from_env()
        app = create_app(config)
        runtime.tune_for_serving()
    except (ConfigError, db.UnsupportedDatabase, migrations.SchemaTooNew) as exc:
        print(f"logsvc: {exc}", file=sys.stderr)
        return 2
    from gevent.pywsgi import WSGIServer

    server = WSGIServer((config.host, config.port), app, log=None)
    try:
        server.init_socket()
    except OSError as exc:
        print(f"logsvc: cannot listen on {config.host}:{config.port} ({exc.strerror or exc}); "
              f"set LOGSVC_PORT (or LOGSVC_HOST) to a free one", file=sys.stderr)
        return 2
    start_background(app)
    url = f"http://{config.host}:{server.server_port}"
    token = authenticator.load_admin_token(config)
    print(f"logsvc listening on {url} (data in {config.data_dir}); web UI at {url}/", flush=True)
    print(f"  curl -H 'Authorization: Bearer {token}' '{url}/api/proxy-logs/_logs?last=20&format=text'",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0
