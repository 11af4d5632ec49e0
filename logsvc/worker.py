"""gunicorn's gevent worker, answering its own errors in logsvc's shape.

Some requests never reach the application: a request line or headers over
gunicorn's limits, a malformed request line, a bad Content-Length. gunicorn
answers those itself, in HTML; this worker answers them with the one JSON
error shape of the API (`{"statusCode", "error", "message"}`), with the
same statuses.

A connection that has not sent a complete request head within
`LOGSVC_HEADER_TIMEOUT_S` is closed: gunicorn bounds the wait for the next
request head (also the first one) by its `keepalive` setting, which
`gunicorn.conf.py` sets from it.
"""
import orjson
from gunicorn import util
from gunicorn.workers.ggevent import GeventWorker as _GeventWorker


def write_json_error(sock, status_int, reason, mesg):
    body = orjson.dumps({"statusCode": status_int, "error": reason,
                         "message": mesg or reason})
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)


class GeventWorker(_GeventWorker):
    def init_process(self):
        # gunicorn's own error answers go through util.write_error.
        util.write_error = write_json_error
        super().init_process()
