"""Live-tail latency, memory per subscriber, and a soak, in one run.

    .venv/bin/python -m bench.tail [--subscribers 1000] [--rate 2000] [--seconds 30] [--soak 0]

Starts gunicorn (two gevent workers) and opens `--subscribers` SSE streams,
each following one container (as tenants do), while a writer ingests
`--rate` entries a second spread over those containers in batches every
50 ms. For every entry a subscriber receives, latency is the time from the
moment the writer sent it to the moment the frame arrived. Reference, in
the same run: the writer's own request latency (send to committed 200),
which every delivery includes.

Memory per idle subscriber: the workers' resident anonymous memory
(RssAnon: the heap, not the file pages SQLite reads) before and after the
streams are opened, before any entry is written, divided by their number
("all"); and what the second half of the streams added, divided by their
number ("each"): what one more stream costs. Before either, both workers
are warmed by concurrent requests, so that what a worker sets up once
whatever the number of streams (its tailer and ring, its database threads
and their connections) is in place.
`--soak N` then keeps the load on for N seconds and samples the same figure
every 10 s.

`--idle N` instead opens N idle streams (heartbeat every 5 s), and reports
how many opened (and how many got a 429), the memory per stream, and how
far each heartbeat came from its period over 30 s.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import orjson  # noqa: E402
import requests  # noqa: E402

from bench.common import HEADERS, TOKEN, Server, p50, p99  # noqa: E402

_TS = re.compile(rb'"url":"/bench/(\d+\.\d+)"')


def rss_kib(pids, field="RssAnon:"):
    """Resident memory of the workers that is theirs alone (not file pages)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field):
                    total += int(line.split()[1])
    return total


def warm(server, concurrent=32):
    """Bring both workers to the state any traffic leaves them in: their
    tailer and ring, and every database thread with its connection (asked
    for together, so that each worker's pool grows to its size)."""
    def ask():
        for _ in range(4):
            requests.get(server.url + "/api/proxy-logs/_logs?limit=1", headers=HEADERS)
    gevent.joinall([gevent.spawn(ask) for _ in range(concurrent)])


def subscribe(port, container, latencies, ready, failures=None, beats=None):
    try:
        sock = socket.create_connection(("127.0.0.1", port))
    except OSError as exc:
        if failures is not None:
            failures.append(repr(exc))
        return
    sock.sendall((f"GET /api/proxy-logs/_logs/stream?replay=0&projectId=bench"
                  f"&containerId={container} HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: Bearer {TOKEN}\r\n\r\n").encode())
    buffer = b""
    opened = False
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            if not opened and failures is not None:
                failures.append(buffer[:200])
            return
        now = time.time()
        buffer += chunk
        if not opened and b"\nid: " in buffer:
            opened = True
            ready.append(container)
        end = buffer.rfind(b"\n") + 1  # only whole lines
        if beats is not None and b"\r\n:\n\n\r\n" in chunk:  # a heartbeat, chunk-encoded
            beats.append(now)
        for sent in _TS.findall(buffer, 0, end):
            latencies.append((now - float(sent)) * 1000)
        buffer = buffer[end:]


def write(url, rate, seconds, containers, acks, stop):
    session = requests.Session()
    headers = {**HEADERS, "Content-Type": "application/x-ndjson"}
    per_batch = max(1, rate // 20)
    deadline = time.time() + seconds
    n = 0
    while time.time() < deadline and not stop:
        tick = time.time()
        lines = []
        for _ in range(per_batch):
            lines.append(orjson.dumps({"kind": "request", "projectId": "bench",
                                       "containerId": f"c{n % containers}",
                                       "url": f"/bench/{time.time():.6f}", "status": 200}))
            n += 1
        sent = time.time()
        response = session.post(url + "/api/proxy-logs/_ingest", data=b"\n".join(lines),
                                headers=headers)
        assert response.ok, response.text
        acks.append((time.time() - sent) * 1000)
        gevent.sleep(max(0, 0.05 - (time.time() - tick)))
    return n


def main():
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--soak", type=int, default=0)
    parser.add_argument("--database-url", default="",
                        help="run the server on this store (e.g. a PostgreSQL URL); default SQLite")
    parser.add_argument("--idle", type=int, default=0)
    args = parser.parse_args()
    if args.idle:
        return idle(args.idle)
    with tempfile.TemporaryDirectory() as data_dir:
        server = Server(data_dir, workers=2, database_url=args.database_url)
        try:
            port = int(server.url.rsplit(":", 1)[1])
            pids = server.worker_pids()  # not the sealing process
            warm(server)
            before = rss_kib(pids)
            latencies, ready, failures = [], [], []
            half = args.subscribers // 2
            readers = []
            for upto in (half, args.subscribers):
                readers += [gevent.spawn(subscribe, port, f"c{i}", latencies, ready, failures)
                            for i in range(len(readers), upto)]
                deadline = time.time() + 60
                while len(ready) < upto:
                    if time.time() > deadline:
                        raise SystemExit(f"only {len(ready)} of {upto} streams opened: "
                                         f"{failures[:3]}")
                    gevent.sleep(0.1)
                gevent.sleep(1)
                if upto == half:
                    middle = rss_kib(pids)
            after = rss_kib(pids)
            per_sub = (after - before) / args.subscribers
            each = (after - middle) / (args.subscribers - half)
            print(f"memory: {per_sub:.1f} KiB per idle subscriber, all; {each:.1f} KiB each "
                  f"of the second {args.subscribers - half:,} "
                  f"({before / 1024:.0f} -> {middle / 1024:.0f} -> {after / 1024:.0f} MiB "
                  "in both workers)")
            acks = []
            total = write(server.url, args.rate, args.seconds, args.subscribers, acks, [])
            gevent.sleep(1)
            print(f"latency, {args.subscribers} subscribers, {total / args.seconds:,.0f} "
                  f"entries/s for {args.seconds}s: delivered {len(latencies):,} of {total:,}; "
                  f"p50 {p50(latencies):.1f} ms, p99 {p99(latencies):.1f} ms "
                  f"(reference: ingest request p50 {p50(acks):.1f} ms, p99 {p99(acks):.1f} ms)")
            if args.soak:
                samples = []
                stop = []
                writer = gevent.spawn(write, server.url, args.rate, args.soak,
                                      args.subscribers, [], stop)
                start = time.time()
                while not writer.dead:
                    samples.append(rss_kib(pids) / 1024)
                    gevent.sleep(10)
                    del latencies[:]
                print(f"soak {args.soak}s: worker memory MiB at each 10 s: "
                      + " ".join(f"{m:.0f}" for m in samples)
                      + f"; first minute median {statistics.median(samples[:6]):.0f}, "
                        f"last minute median {statistics.median(samples[-6:]):.0f} "
                        f"({time.time() - start:.0f}s)")
            for reader in readers:
                reader.kill()
        finally:
            server.stop()


def idle(n, period=5, seconds=30):
    """`n` idle SSE streams on two workers: opened, refused, memory, and
    the heartbeats' distance from their period."""
    with tempfile.TemporaryDirectory() as data_dir:
        server = Server(data_dir, workers=2, env={"LOGSVC_HEARTBEAT_S": str(period)})
        try:
            port = int(server.url.rsplit(":", 1)[1])
            pids = server.worker_pids()  # not the sealing process
            warm(server)
            before = rss_kib(pids)
            ready, failures = [], []
            beats = [[] for _ in range(n)]
            readers = []
            for upto in (n // 2, n):
                readers += [gevent.spawn(subscribe, port, f"c{i}", [], ready, failures, beats[i])
                            for i in range(len(readers), upto)]
                deadline = time.time() + 120
                while len(ready) + len(failures) < upto and time.time() < deadline:
                    gevent.sleep(0.2)
                gevent.sleep(1)
                if upto < n:
                    middle, opened = rss_kib(pids), len(ready)
            after = rss_kib(pids)
            refused = sum(1 for f in failures if isinstance(f, bytes) and b"429" in f)
            print(f"idle: {len(ready):,} of {n:,} streams open ({refused:,} refused with 429, "
                  f"{len(failures) - refused} failed otherwise); "
                  f"{(after - before) / max(1, len(ready)):.1f} KiB per stream, all; "
                  f"{(after - middle) / max(1, len(ready) - opened):.1f} KiB each of the second "
                  "half")
            for beat in beats:
                del beat[:]
            gevent.sleep(seconds)
            gaps = [abs((b - a) - period) for beat in beats for a, b in zip(beat, beat[1:])]
            late = sum(1 for g in gaps if g > 1.0)
            print(f"heartbeats over {seconds}s: {len(gaps):,} intervals, largest distance from "
                  f"{period}s {max(gaps, default=0):.2f}s, p99 "
                  f"{(sorted(gaps)[int(len(gaps) * 0.99)] if gaps else 0):.2f}s, "
                  f"{late} beyond 1 s")
            for reader in readers:
                reader.kill()
        finally:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
