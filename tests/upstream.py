"""A small upstream for the proxy tests: `python tests/upstream.py PORT`."""
import hashlib
import os
import sys

from gevent import monkey

monkey.patch_all()

from gevent.pywsgi import WSGIServer  # noqa: E402


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/echo":  # streams the request body back, with its digest
        body = environ["wsgi.input"].read()
        start_response("201 Created", [("Content-Type", "application/octet-stream"),
                                       ("X-Digest", hashlib.sha256(body).hexdigest())])
        return [body]
    if path == "/big":  # 5 MB in 64 KiB chunks
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"x" * 65536 for _ in range(80))
    if path == "/dies":  # sends part of a response, then the process ends
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "100000")])

        def broken():
            yield b"y" * 1000
            os._exit(1)
        return broken()
    start_response("404 Not Found", [("Content-Type", "application/json")])
    return [b'{"error": "no route"}']


if __name__ == "__main__":
    WSGIServer(("127.0.0.1", int(sys.argv[1])), app, log=None).serve_forever()
