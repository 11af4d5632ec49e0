"""gunicorn settings; bind and workers come from LOGSVC_* variables."""
from logsvc.config import Config

_config = Config.from_env()

worker_class = "gevent"
bind = f"{_config.host}:{_config.port}"
workers = _config.workers
worker_connections = 2000
# Streams stay open for hours; a worker is only killed when it stops answering.
timeout = 60
# Open streams never finish by themselves; on shutdown they are cut after
# this and their clients resume elsewhere with Last-Event-ID.
graceful_timeout = 5
keepalive = 75
accesslog = None
# gunicorn's control socket defaults to one path per user, which two servers
# on a host would fight over; logsvc does not use it.
control_socket_disable = True


def post_worker_init(worker):
    from logsvc.server import start_background

    if hasattr(worker.wsgi, "extensions"):  # not gunicorn's stand-in for an app that failed
        start_background(worker.wsgi)
