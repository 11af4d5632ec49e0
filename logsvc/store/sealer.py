"""Sealing and merging in a process of their own.

A seal of 65,536 entries costs seconds of a core, a merge of sixteen
segments tens of seconds, most of it Python (reading the hot rows,
building the columns and filters) around Arrow's encoding. Run in a
serving worker, that work takes turns with the worker's requests for the
interpreter lock: each time a request's database call returns, it waits
for the sealing thread to let go of the lock (up to the interpreter's
switch interval, 5 ms), so a question of a dozen calls answered while a
seal ran took twice or three times its idle time, and ingest slowed with
it.

So each host's sealing runs in one child process (`LOGSVC_SEAL_PROCESS`,
on by default): the first worker to take the host's lock file
(`sealer.lock` in the data directory) starts `python -m
logsvc.store.sealer`, hands it the settings on its standard input and
watches it, starting another if it exits. The child runs the same loop a
worker did (`retention.seal_forever`: the seal lease in the database
still decides which host seals), at a lower priority
(`LOGSVC_SEAL_NICE`), and ends with its worker: the kernel signals it
when the worker goes (Linux), and it looks for its parent each round
besides. A seal is one transaction, so a sealer killed at any instant
loses and repeats nothing.

Where no child can be started (no `fcntl`, a host that forbids it), the
worker seals in its own process as before.
"""
import logging
import os
import pickle
import signal
import subprocess
import sys

from logsvc import runtime

log = logging.getLogger("logsvc.sealer")
LOCK_FILE = "sealer.lock"


class Child:
    """The host's sealing process, as seen from the worker that started
    it. `held()` is False when another worker of the host holds the lock
    (and so the child)."""

    def __init__(self, config):
        self.config = config
        self._lock = None
        self._process = None
        self.failed = False  # no child can be started here: seal in-process

    def held(self):
        if self._lock is None:
            self._lock = _take_lock(self.config)
        return self._lock is not None

    def keep_running(self):
        """Start the child if it is not running (or has exited)."""
        process = self._process
        if process is not None and process.poll() is None:
            return
        if process is not None:
            log.warning("the sealing process exited (%s); starting another", process.returncode)
        try:
            self._process = _start(self.config)
        except OSError as exc:
            log.warning("cannot start a sealing process (%s); sealing in this one", exc)
            self.failed = True

    @property
    def pid(self):
        return self._process.pid if self._process is not None else None


def _take_lock(config):
    """The host's lock file, locked by this process; None when another
    process holds it."""
    try:
        import fcntl
    except ImportError:
        return None
    path = os.path.join(str(config.data_dir), LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _start(config):
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    process = subprocess.Popen([sys.executable, "-m", "logsvc.store.sealer", str(os.getpid())],
                               stdin=subprocess.PIPE, env=env, close_fds=True)
    # The settings (the admin token among them) go through a pipe, never
    # through the command line or the environment.
    process.stdin.write(pickle.dumps(config))
    process.stdin.close()
    return process


def _die_with(parent):
    """Have the kernel end this process when `parent` ends (Linux)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    return os.getppid() == parent  # it may have ended before prctl


def main(argv):
    from . import db, retention

    parent = int(argv[1])
    config = pickle.loads(sys.stdin.buffer.read())
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if not _die_with(parent):
        return 0
    try:
        os.nice(config.seal_nice)
    except OSError:
        pass
    runtime.configure("threads")
    db.init(config)
    retention.seal_forever(config, alive=lambda: os.getppid() == parent)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
