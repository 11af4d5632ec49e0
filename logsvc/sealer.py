"""The background sealer in a process of its own.

Sealing and merging (store/segments.py) are a few seconds of a core each,
mostly Python: run in a serving worker, they hold that worker's GIL, and
every request the worker serves meanwhile waits for its turn (a search's
statements each wait up to the interpreter's switch interval). So under
gunicorn (gunicorn.conf.py) the master starts this process beside the
workers, `python -m logsvc.sealer`, on the same settings. It takes the seal
lease and keeps it, renewing it between steps; the workers' own sealers
find the lease held and only warm their caches. Other WSGI servers seal in
their workers as before. LOGSVC_SEAL_PROCESS=0 turns it off.

Should the process die (killed, out of memory), the master starts another
after a pause (RESTART_S, doubled while it keeps dying soon after its
start), and the new one takes over the dead one's lease at once: the
master tells it which holder it replaces. Until then the lease is the dead
process's, and a worker's sealer takes over only once it expires.

The process ends with its parent (the gunicorn master): on SIGTERM, and on
Linux when the parent dies without a word."""
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

log = logging.getLogger("logsvc.sealer")

MODULE = "logsvc.sealer"  # in its command line (testing.Server tells it by that)


# The pause before the process is started again after it died; doubled
# (up to RESTART_MAX_S) while each one dies within STEADY_S of its start.
RESTART_S = 1.0
RESTART_MAX_S = 60.0
STEADY_S = 60.0


def holder(pid):
    """The seal lease's holder name of process `pid` on this host (what
    retention.seal_forever holds it as)."""
    return f"{socket.gethostname()}:{pid}"


class Sealing:
    """The sealing process of a gunicorn master, started again whenever it
    dies until `stop`."""

    def __init__(self):
        self.process = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def start(self, replaces=None):
        env = dict(os.environ, LOGSVC_SEALER_PARENT=str(os.getpid()))
        env.pop("LOGSVC_SEALER_REPLACES", None)
        if replaces:
            env["LOGSVC_SEALER_REPLACES"] = replaces
        with self._lock:
            if self._stopping.is_set():
                return
            self.process = subprocess.Popen([sys.executable, "-m", MODULE], env=env)
        log.info("sealing in process %d", self.process.pid)

    def watch(self):
        """Start the process again each time it ends, until `stop` (a
        thread of the master: the master reaps its children itself, so the
        wait may find the process gone without its status)."""
        pause = RESTART_S
        while not self._stopping.is_set():
            process, started = self.process, time.monotonic()
            code = process.wait()
            if self._stopping.is_set():
                return
            pause = RESTART_S if time.monotonic() - started > STEADY_S else pause
            log.warning("the sealing process %d ended (exit status %s); another starts in "
                        "%.0f s", process.pid, code, pause)
            if self._stopping.wait(pause):
                return
            pause = min(RESTART_MAX_S, pause * 2)
            try:
                self.start(replaces=holder(process.pid))
            except OSError as exc:  # tried again after the next pause
                log.warning("the sealing process could not be started: %s", exc)

    def stop(self, timeout_s=10):
        """Stop the process (it releases the seal lease), killed after
        `timeout_s`; it is not started again."""
        with self._lock:
            self._stopping.set()
            process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start(config):
    """Start the sealing process for `config` and keep it running (None
    when the store does not seal, is read-only, or LOGSVC_SEAL_PROCESS is
    off). Called by the gunicorn master once it is ready, before its
    workers are forked."""
    if not (config.seal_process and config.hot_rows) or config.read_only:
        return None
    sealing = Sealing()
    sealing.start()
    # The workers forked next leave the seal lease to the process
    # (retention.SEALER_STARTED).
    os.environ["LOGSVC_SEALER_STARTED"] = "1"
    # A thread of the master: PR_SET_PDEATHSIG signals the process when the
    # thread that started it ends, and this one lives as long as the master.
    threading.Thread(target=sealing.watch, name="logsvc-sealer-watch", daemon=True).start()
    _started.append(sealing)
    return sealing


def stop_all(timeout_s=10):
    """Stop the sealing processes `start` started, for good. (Kept here,
    not in gunicorn.conf.py: gunicorn reads its settings file again on
    SIGHUP, and this module stays.)"""
    while _started:
        _started.pop().stop(timeout_s)


_started = []


def _end_with_parent():
    """SIGTERM when the parent dies (Linux's prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # elsewhere: the parent is looked for each round


def _stop(signum, frame):
    raise SystemExit(0)


def main():
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    parent = int(os.environ.get("LOGSVC_SEALER_PARENT") or os.getppid())
    _end_with_parent()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if os.getppid() != parent:
        return 0  # the parent died before the signal was asked for
    from logsvc.server import create_app
    from logsvc.store import db, retention, segments

    services = create_app().extensions["logsvc"]
    config, me = services.config, holder(os.getpid())
    if config.seal_nice:
        # Questions first: a seal or a merge (seconds of a core) takes the
        # time the workers leave, rather than half of it while both cores
        # are wanted.
        os.nice(config.seal_nice)
    replaces = os.environ.get("LOGSVC_SEALER_REPLACES")
    if replaces:
        db.use(services.store)
        if db.call(retention.take_over_lease, segments.LEASE_NAME, replaces, me,
                   retention.seal_lease_s(config)):
            log.info("took the seal lease over from %s, which ended", replaces)
    # The counters counted in the background too, beside the seals and
    # merges (a merge takes a minute at times; its thread inherits the
    # priority above).
    threading.Thread(target=retention.count_forever, name="logsvc-count", daemon=True,
                     args=(config, services.store, None, 0, parent)).start()
    retention.seal_forever(config, services.store, holder=me, keep=True, parent=parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
