"""logsvc application factory; `python app.py` runs the embedded server."""
if __name__ == "__main__":
    # Before anything else imports socket, threading or ssl.
    from gevent import monkey

    monkey.patch_all()

import dataclasses
import logging
import sys

from flask import Flask

from logsvc import auth, db, limits, models, tail
from logsvc.api import blueprints, errors, stream
from logsvc.config import Config, ConfigError


@dataclasses.dataclass
class Services:
    """What the views reach through `logsvc.api.state()`."""

    config: Config
    authenticator: auth.Authenticator
    limiter: limits.RateLimiter
    server_secret: str  # signs cursors
    tailer: tail.Tailer  # started by the first live-tail subscriber


def create_app(config=None):
    """Build the application. `config` is a Config, a dict of Config field
    overrides on top of the environment, or None for the environment."""
    if config is None:
        config = Config.from_env()
    elif isinstance(config, dict):
        config = Config.from_env().replace(**config)
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = config.max_request_bytes
    db.init(config)
    db.call(models.create_schema, config.partition_rows)
    app.extensions["logsvc"] = Services(
        config=config,
        authenticator=auth.Authenticator(auth.load_admin_token(config), config.jwt_secret),
        limiter=limits.RateLimiter(config.data_dir, config.rate_limit_per_min),
        server_secret=db.call(models.shared_secret, "server"),
        tailer=tail.Tailer(config.ring_size, config.tail_poll_s),
    )
    errors.register(app)
    for blueprint in blueprints():
        app.register_blueprint(blueprint)
    stream.sock.init_app(app)
    return app


def start_background(config):
    """Background work of a serving process: retention under a lease."""
    import gevent

    from logsvc import retention

    return gevent.spawn(retention.run_forever, config)


def main():
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        config = Config.from_env()
        app = create_app(config)
    except (ConfigError, db.UnsupportedDatabase, models.SchemaTooNew) as exc:
        print(f"logsvc: {exc}", file=sys.stderr)
        return 2
    from gevent.pywsgi import WSGIServer

    server = WSGIServer((config.host, config.port), app, log=None)
    server.init_socket()
    start_background(config)
    url = f"http://{config.host}:{server.server_port}"
    token = auth.load_admin_token(config)
    print(f"logsvc listening on {url} (data in {config.data_dir}); web UI at {url}/", flush=True)
    print(f"  curl -H 'Authorization: Bearer {token}' '{url}/api/proxy-logs/_logs?last=20&format=text'",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
