"""`python -m logsvc demo`: logsvc, a capturing proxy in front of a small
built-in upstream, and a traffic generator, so that search, stats and the
live tail show life at once.

Everything runs in this one process under gevent: logsvc on --port, the
proxy on --proxy-port, the upstream on a free loopback port. The proxy
labels each request with a service and container by the first path
segment, the way a real edge proxy maps routes to backends.
"""
import random
import sys
import time

import gevent
import requests
from gevent.pywsgi import WSGIServer

from .access.authenticator import load_admin_token
from .capture import HttpSink, proxy
from .server import create_app, start_background

ROUTES = {  # first path segment -> (service, container)
    "users": ("user-api", "cnt_users"),
    "orders": ("billing-api", "cnt_billing"),
    "hooks": ("webhook-svc", "cnt_hooks"),
}


def _listening(server, host, port, setting):
    """Start `server`; on a busy or forbidden port say so in one line."""
    try:
        server.start()
    except OSError as exc:
        print(f"logsvc: cannot listen on {host}:{port} ({exc.strerror or exc}); "
              f"set {setting} to a free port", file=sys.stderr)
        return False
    return True


def run(config, proxy_port):
    app = create_app(config)
    logs = WSGIServer((config.host, config.port), app, log=None)
    if not _listening(logs, config.host, config.port, "LOGSVC_PORT"):
        return 2
    start_background(app)
    logs_url = f"http://{config.host}:{logs.server_port}"
    token = load_admin_token(config)
    upstream = WSGIServer(("127.0.0.1", 0), _upstream, log=None)
    upstream.start()
    sink = HttpSink(logs_url, token)
    edge = proxy.build(f"http://127.0.0.1:{upstream.server_port}", sink,
                       project_id="demo", labels=_labels)
    front = WSGIServer((config.host, proxy_port), edge, log=None)
    if not _listening(front, config.host, proxy_port, "--proxy-port"):
        return 2
    front_url = f"http://{config.host}:{front.server_port}"
    print(f"logsvc     {logs_url}   (docs: {logs_url}/api/proxy-logs/docs)")
    print(f"proxy      {front_url}   -> built-in upstream; traffic is being generated")
    print(f"  curl -H 'Authorization: Bearer {token}' '{logs_url}/api/proxy-logs/_logs?last=20&format=text'")
    print(f"  curl -N -H 'Authorization: Bearer {token}' '{logs_url}/api/proxy-logs/_logs/stream'")
    print(f"  curl -H 'Authorization: Bearer {token}' '{logs_url}/api/proxy-logs/_logs/stats'",
          flush=True)
    traffic = gevent.spawn(_traffic, front_url)
    try:
        traffic.join()
    except KeyboardInterrupt:
        pass
    return 0


def _labels(environ):
    segment = (environ.get("PATH_INFO") or "/").strip("/").split("/", 1)[0]
    service, container = ROUTES.get(segment, ("frontend", "cnt_web"))
    return {"serviceName": service, "containerId": container}


def _traffic(base):
    session = requests.Session()
    rng = random.Random()
    calls = [
        (40, "GET", "/users"), (15, "GET", "/users/{n}"), (8, "POST", "/users"),
        (12, "POST", "/orders"), (6, "GET", "/orders/{n}"), (5, "DELETE", "/orders/{n}"),
        (6, "POST", "/hooks/github"), (4, "GET", "/slow"), (3, "GET", "/error"),
        (3, "GET", "/missing"), (2, "GET", "/stream"),
    ]
    weights = [c[0] for c in calls]
    while True:
        _, method, path = rng.choices(calls, weights)[0]
        path = path.replace("{n}", str(rng.randrange(1, 120)))
        body = {"name": f"item-{rng.randrange(1000)}", "qty": rng.randrange(1, 9)}
        try:
            session.request(method, base + path, json=body if method == "POST" else None,
                            headers={"User-Agent": rng.choice(["curl/8.5", "Mozilla/5.0",
                                                               "python-requests/2.34"])},
                            timeout=10)
        except requests.RequestException:
            pass
        gevent.sleep(rng.uniform(0.05, 0.3))


def _upstream(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    method = environ["REQUEST_METHOD"]
    if path == "/slow":  # the route the Slowest view shows at its top
        gevent.sleep(random.uniform(0.3, 1.5))
        return _reply(start_response, "200 OK", b'{"report": "ready"}')
    if path == "/error":
        status = random.choice(["500 Internal Server Error", "503 Service Unavailable"])
        return _reply(start_response, status, b'{"error": "upstream trouble"}')
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"tick %d\n" % i for i in range(5) if gevent.sleep(0.1) is None)
    if path.startswith(("/users", "/orders", "/hooks")):
        if method == "POST":
            if random.random() < 0.1:
                return _reply(start_response, "422 Unprocessable Entity",
                              b'{"error": "qty must be positive"}')
            return _reply(start_response, "201 Created", b'{"id": %d}' % int(time.time()))
        if method == "DELETE":
            return _reply(start_response, "204 No Content", b"")
        if path.count("/") > 1 and random.random() < 0.15:
            return _reply(start_response, "404 Not Found", b'{"error": "no such item"}')
        return _reply(start_response, "200 OK", b'{"items": [1, 2, 3]}')
    return _reply(start_response, "404 Not Found", b'{"error": "no route"}')


def _reply(start_response, status, body):
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
    return [body]
