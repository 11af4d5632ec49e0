"""Where captured entries go: a bounded queue drained by a background thread.

`submit` only appends to the queue (full: the entry is dropped and counted
in `dropped`), so a sink never slows or breaks the application it watches;
the thread sends batches and retries with backoff while the store is
unreachable. A batch is sent again as it was, under one Idempotency-Key,
so a retry after a lost answer never stores it twice. Entries the store
refuses (a batch answered 4xx, or entries listed as rejected) cannot
succeed on a retry: they are counted in `refused` and logged with the
store's reason.
"""
import collections
import gzip
import logging
import threading
import time
import uuid

import orjson
import requests

log = logging.getLogger("logsvc.capture")


class QueuedSink:
    """A bounded queue drained by a background thread in batches."""

    def __init__(self, max_queue=10_000, batch=500, flush_s=0.5, max_backoff_s=30.0):
        self.queue = collections.deque()
        self.max_queue = max_queue
        self.batch = batch
        self.flush_s = flush_s
        self.max_backoff_s = max_backoff_s
        self.dropped = 0
        self.refused = 0
        self.sent = 0
        self.key = None  # the Idempotency-Key of the batch being sent
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="logsvc-sink", daemon=True)
        self._thread.start()

    def submit(self, entry):
        """Queue an entry; never blocks. A full queue drops it (counted)."""
        with self._lock:
            if len(self.queue) >= self.max_queue:
                self.dropped += 1
                return
            self.queue.append(entry)
            if len(self.queue) >= self.batch:
                self._wake.set()

    def flush(self, timeout=10.0):
        """Wait until everything queued so far was sent (for tests and shutdown)."""
        deadline = time.monotonic() + timeout
        self._wake.set()
        while self.queue and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self.queue

    def _run(self):
        backoff = 0.5
        while True:
            self._wake.wait(self.flush_s)
            self._wake.clear()
            while self.queue:
                # A batch is retried as it was first sent, under the same
                # key, so that a store that took it but whose answer was
                # lost does not store it twice.
                with self._lock:
                    batch = [self.queue[i] for i in range(min(self.batch, len(self.queue)))]
                self.key = uuid.uuid4().hex
                while True:
                    try:
                        self.send(batch)
                        break
                    except Exception:  # noqa: BLE001 - keep the entries and retry later
                        time.sleep(backoff)
                        backoff = min(backoff * 2, self.max_backoff_s)
                backoff = 0.5
                with self._lock:
                    for _ in batch:
                        self.queue.popleft()
                self.sent += len(batch)

    def send(self, batch):
        raise NotImplementedError


class HttpSink(QueuedSink):
    """Sends batches to a logsvc's `_ingest` (NDJSON, gzip)."""

    def __init__(self, url, token, timeout=5.0, **kwargs):
        self.url = url.rstrip("/") + "/api/proxy-logs/_ingest"
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {token}",
                                     "Content-Type": "application/x-ndjson",
                                     "Content-Encoding": "gzip"})
        self.timeout = timeout
        super().__init__(**kwargs)

    def send(self, batch):
        body = gzip.compress(b"\n".join(orjson.dumps(e) for e in batch), mtime=0)
        response = self.session.post(self.url, data=body, timeout=self.timeout,
                                     headers={"Idempotency-Key": self.key})
        if response.status_code in (429, 503) or response.status_code >= 500:
            raise RuntimeError(f"store answered {response.status_code}")
        if response.status_code >= 400:  # the batch itself is refused; a retry cannot help
            self.refused += len(batch)
            log.warning("logsvc refused %d captured entries (%d): %s", len(batch),
                        response.status_code, _message(response))
            return
        rejected = response.json().get("rejectedCount", 0)
        if rejected:
            self.refused += rejected
            log.warning("logsvc rejected %d captured entries", rejected)


def _message(response):
    try:
        return str(response.json().get("message", ""))[:200]
    except ValueError:
        return ""
