"""Syslog listeners: UDP (`LOGSVC_SYSLOG_UDP`) and TCP (`LOGSVC_SYSLOG_TCP`),
one pair per host whatever the number of workers.

Every serving process runs `run_forever`; the one that holds an exclusive
lock on `<data dir>/syslog.lock` binds the sockets and serves, the others
try again every LOCK_RETRY_S, so that another takes over when it ends
(the kernel gives the lock back with the process). Messages are parsed
(capture/syslog.py) and stored in batches: every FLUSH_S, or at once when
FLUSH_AT are waiting. Syslog has no acknowledgement: what a process held
when it was killed, and UDP datagrams while no process listens, are lost,
as with any syslog daemon. Syslog has no authentication either: bind it to
loopback or a private interface (docs/capture.md).
"""
import fcntl
import logging
import os
import socket
import threading
from pathlib import Path

from logsvc import runtime
from logsvc.capture import syslog
from logsvc.store import db, ingest

log = logging.getLogger("logsvc.syslog")
LOCK_RETRY_S = 5.0
FLUSH_S = 0.25
FLUSH_AT = 1000
TCP_IDLE_S = 600  # a connection silent this long is closed


def address(text, name):
    """(host, port) of `host:port` (`[::1]:514` for IPv6)."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{name}={text!r} is not host:port (such as 127.0.0.1:5514)")
    return host.strip("[]"), int(port)


class Collector:
    """Entries waiting to be stored, flushed in batches."""

    def __init__(self, config):
        self.config, self.project = config, config.syslog_project
        self.pending, self.lock = [], threading.Lock()
        self.stored = 0

    def add(self, message):
        try:
            entry = syslog.entry_of(message, self.project)
        except Exception:  # one message must not stop the listener
            log.exception("syslog: a message could not be read; kept as its text")
            entry = {"kind": "event", "projectId": self.project,
                     "data": {"message": message.decode("utf-8", "replace")}}
        if entry is None:
            return
        with self.lock:
            self.pending.append(entry)

    def flush(self):
        with self.lock:
            batch, self.pending = self.pending[:FLUSH_AT], self.pending[FLUSH_AT:]
        if not batch:
            return 0
        try:
            result = ingest.ingest(batch, self.config)
        except Exception as exc:  # kept for the next try (a full disk, a restart of the database)
            with self.lock:
                self.pending[:0] = batch
                del self.pending[:-100_000]  # at most this many wait in memory
            reason = db.unwritable_reason(exc)
            if reason or db.is_transient_error(exc):
                log.warning("syslog: %d messages not stored yet: %s", len(batch),
                            reason or type(exc).__name__)
            else:
                log.exception("syslog: storing %d messages failed", len(batch))
            return 0
        if result["rejectedCount"]:
            log.warning("syslog: %d messages refused, e.g. %s", result["rejectedCount"],
                        result["rejected"][:1])
        self.stored += result["accepted"]
        return result["accepted"]

    def flush_forever(self):
        while True:
            runtime.sleep(FLUSH_S)
            while self.flush() >= FLUSH_AT:
                pass


def run_forever(config, store=None):
    """Take the host's syslog lock (retrying), then listen."""
    if store is not None:
        db.use(store)
    lock_path = Path(config.data_dir) / "syslog.lock"
    handle = open(lock_path, "a+b")  # noqa: SIM115 - held for the process's life
    while True:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError:
            runtime.sleep(LOCK_RETRY_S)
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()).encode())
    handle.flush()
    serve(config)


def serve(config, ready=None):
    """Bind the configured sockets and serve them (forever)."""
    collector = Collector(config)
    workers = [runtime.spawn(collector.flush_forever, name="logsvc-syslog-flush")]
    if config.syslog_udp:
        udp = _bound(socket.SOCK_DGRAM, address(config.syslog_udp, "LOGSVC_SYSLOG_UDP"))
        workers.append(runtime.spawn(_serve_udp, udp, collector, name="logsvc-syslog-udp"))
    if config.syslog_tcp:
        tcp = _bound(socket.SOCK_STREAM, address(config.syslog_tcp, "LOGSVC_SYSLOG_TCP"))
        tcp.listen(128)
        workers.append(runtime.spawn(_serve_tcp, tcp, collector, name="logsvc-syslog-tcp"))
    log.info("syslog: listening (udp %s, tcp %s), project %s", config.syslog_udp or "-",
             config.syslog_tcp or "-", config.syslog_project)
    if ready is not None:
        ready.set()
    while all(runtime.alive(worker) for worker in workers):
        runtime.sleep(LOCK_RETRY_S)


def _bound(kind, where):
    family = socket.AF_INET6 if ":" in where[0] else socket.AF_INET
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(where)
    return sock


def _serve_udp(sock, collector):
    while True:
        try:
            message, _ = sock.recvfrom(syslog.MAX_MESSAGE)
        except OSError:
            runtime.sleep(0.1)
            continue
        collector.add(message)


def _serve_tcp(sock, collector):
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            runtime.sleep(0.1)
            continue
        runtime.spawn(_serve_connection, conn, collector, name="logsvc-syslog-conn")


def _serve_connection(conn, collector):
    conn.settimeout(TCP_IDLE_S)
    buffer = b""
    try:
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            messages, buffer = syslog.frames(buffer + chunk)
            for message in messages:
                collector.add(message)
        if buffer.strip():  # a last message without its newline
            collector.add(buffer)
    except OSError:
        pass
    finally:
        conn.close()
