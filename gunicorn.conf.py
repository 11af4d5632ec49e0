"""gunicorn settings; bind and workers come from LOGSVC_* variables."""
from logsvc.config import Config

_config = Config.from_env()

# gunicorn's gevent worker, answering the errors gunicorn itself handles
# (request line or headers too long, malformed requests) in the API's JSON.
worker_class = "logsvc.worker.GeventWorker"
bind = f"{_config.host}:{_config.port}"
workers = _config.workers
# Room for every stream a worker may hold and 100 more (requests, and the
# stream beyond the cap, which gets its 429).
worker_connections = _config.max_streams_per_worker + 100
# Streams stay open for hours; a worker is only killed when it stops answering.
timeout = 60
# Open streams never finish by themselves; on shutdown they are cut after
# this and their clients resume elsewhere with Last-Event-ID.
graceful_timeout = 5
# How long a connection may take to send a request head (and how long an
# idle keep-alive connection is kept): connections that trickle their
# headers are cut after this. LOGSVC_HEADER_TIMEOUT_S, default 15.
keepalive = max(1, _config.header_timeout_s)
accesslog = None
# gunicorn's control socket defaults to one path per user, which two servers
# on a host would fight over; logsvc does not use it.
control_socket_disable = True


def post_worker_init(worker):
    from logsvc.server import start_background

    if hasattr(worker.wsgi, "extensions"):  # not gunicorn's stand-in for an app that failed
        start_background(worker.wsgi)


# Sealing (LOGSVC_HOT_ROWS) runs in a process of its own beside the workers,
# started once the master is ready, started again should it die, and
# stopped with the master (logsvc/sealer.py).
def when_ready(server):
    from logsvc import sealer

    sealer.start(_config)


def on_exit(server):
    from logsvc import sealer

    sealer.stop_all()
