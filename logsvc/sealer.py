"""The background sealer in a process of its own.

Sealing and merging (store/segments.py) are a few seconds of a core each,
mostly Python: run in a serving worker, they hold that worker's GIL, and
every request the worker serves meanwhile waits for its turn (a search's
statements each wait up to the interpreter's switch interval). So under
gunicorn (gunicorn.conf.py) the master starts this process beside the
workers, `python -m logsvc.sealer`, on the same settings. It takes the seal
lease and keeps it, renewing it between steps; the workers' own sealers
find the lease held and only warm their caches. Should this process die,
its lease expires and a worker's sealer takes over; other WSGI servers seal
in their workers as before. LOGSVC_SEAL_PROCESS=0 turns it off.

The process ends with its parent (the gunicorn master): on SIGTERM, and on
Linux when the parent dies without a word."""
import logging
import os
import signal
import subprocess
import sys

log = logging.getLogger("logsvc.sealer")

MODULE = "logsvc.sealer"  # in its command line (testing.Server tells it by that)


def start(config):
    """Start the sealing process for `config` (None when the store does not
    seal, is read-only, or LOGSVC_SEAL_PROCESS is off). Called by the
    gunicorn master once it is ready, before its workers are forked."""
    if not (config.seal_process and config.hot_rows) or config.read_only:
        return None
    process = subprocess.Popen([sys.executable, "-m", MODULE],
                               env=dict(os.environ, LOGSVC_SEALER_PARENT=str(os.getpid())))
    log.info("sealing in process %d", process.pid)
    return process


def stop(process, timeout_s=10):
    """Ask the process to stop (it releases the seal lease), then kill it."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


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
    from logsvc.store import retention

    services = create_app().extensions["logsvc"]
    retention.seal_forever(services.config, services.store, keep=True, parent=parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
