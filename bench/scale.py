"""A busy multi-tenant proxy's day, in logsvc and in ClickHouse, in one run.

    .venv/bin/pip install -r requirements-bench.txt
    .venv/bin/python -m bench.scale [--entries 1000000] [--repeat 11]
        [--database-url postgresql://...] [--no-chdb] [--hot-rows N] [--busy]

The corpus (seeded, the same for both sides): 200 projects with a Zipf-like
share of the traffic, 10 containers each, 20 services; 60 % 200s and a tail
of 3xx/4xx/5xx; urls `/v1/<resource>/<id>`; `data` with bytesIn, durationMs
and userAgent; a fifth of the entries carry a JSON response body of
0.5-2 KB; timestamps over the last 23 hours.

logsvc: the default server (`gunicorn -c gunicorn.conf.py`, two gevent
workers), fed gzip NDJSON of 5,000 entries per request with 4 requests in
flight; every question is asked over HTTP. Disk is everything in the data
directory once ingest has finished.

ClickHouse (embedded, `chdb`; its disk is the table's active parts after
OPTIMIZE FINAL, its best case): MergeTree ORDER BY (projectId, serviceName,
tsMs), LowCardinality strings, ZSTD on the bodies, and the skip indexes of
the OpenTelemetry exporter (bloom_filter on the trace id, tokenbf_v1 on the
body, ngrambf_v1 on the url); fed in-process, 5,000 rows per INSERT.

The latency question is the route table of /stats on our side (calls,
errors, p50/p95/p99 per route, from the counters) and `quantiles` grouped
by route on ClickHouse's (its route column filled with the same rule).

The url question is a phrase search on our side (`q=/v1/orders/4242`, the
path's words in order) and a LIKE '%...%' on ClickHouse's (served by its
ngram index); the body question is a word on both (`hasToken` on theirs).
The last five are what a newcomer asks first of the whole day: the first
page (oldest first, the API's default order), a page 5,000 entries in, a
url path as a phrase (a LIKE on theirs), a word common in urls and
bodies oldest first (`hasToken` on both columns), and the stats of a
method, which our counters do not keep.

Prints one table of medians and logsvc/chdb ratios. With --busy, the
questions are asked again while a writer sends 2,000 entries a second
(batches of 200, timed now) and a dashboard asks the last hour's stats and
the day's histogram four times a second, and a second table gives each
question's p50 busy beside idle.
"""
import argparse
import contextlib
import gzip
import json
import math
import os
import random
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import requests

from bench.common import HEADERS, Server, p50, postgres_schema, timed
from logsvc.entry import derive_route

PROJECTS, CONTAINERS_PER_PROJECT, SERVICES = 200, 10, 20
PER_REQUEST, IN_FLIGHT = 5_000, 4
# --busy: the steady ingest and the dashboard the questions are asked beside.
BUSY_RATE, DASHBOARD_HZ = 2_000, 4
DAY_MS = 23 * 3_600_000
RESOURCES = ("users", "orders", "invoices", "carts", "products", "sessions", "payments",
             "webhooks", "teams", "files", "search", "reports", "tokens", "events", "plans")
STATUSES = ((200, 600), (201, 60), (204, 40), (301, 10), (302, 20), (304, 40), (400, 40),
            (401, 30), (403, 20), (404, 70), (409, 10), (422, 20), (429, 30), (500, 40),
            (502, 15), (503, 15), (504, 10))
AGENTS = ("Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0", "curl/8.11.0",
          "python-requests/2.32.3", "okhttp/4.12.0", "Go-http-client/2.0")
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
         "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo")
# A word that only a few response bodies hold: the full-text question.
RARE_WORD = "zanzibar"


def corpus(n, seed=7, now_ms=None, services=1):
    """Yield `n` entries (dicts in the ingest shape), oldest first; each
    container's spread over `services` services (a gateway in front of
    them) rather than one."""
    rng = random.Random(seed)
    now_ms = now_ms or int(time.time() * 1000)
    start = now_ms - DAY_MS
    weights = [1 / (rank + 1) ** 1.1 for rank in range(PROJECTS)]
    cumulative, total = [], 0.0
    for w in weights:
        total += w
        cumulative.append(total)
    statuses = [s for s, _ in STATUSES]
    status_cum = []
    acc = 0
    for _, w in STATUSES:
        acc += w
        status_cum.append(acc)
    for i in range(n):
        project = _pick(cumulative, rng.random() * total)
        container = rng.randrange(CONTAINERS_PER_PROJECT)
        status = statuses[_pick(status_cum, rng.random() * acc)]
        resource = RESOURCES[rng.randrange(len(RESOURCES))]
        level = "error" if status >= 500 else "warn" if status >= 400 else "info"
        kind = "event" if rng.random() < 0.02 else ("request", "response")[i % 2]
        duration = min(60_000, int(math.exp(rng.gauss(3.5, 1.2))))
        spread = rng.randrange(services) if services > 1 else 0
        entry = {
            "traceId": f"{rng.getrandbits(128):032x}",
            "tsMs": start + i * DAY_MS // n + rng.randrange(2000),
            "kind": kind,
            "level": level,
            "projectId": f"proj_{project:03d}",
            "containerId": f"cnt_{project:03d}_{container}",
            "serviceName": f"svc-{(project * 7 + container + spread) % SERVICES:02d}",
            "method": rng.choice(("GET", "GET", "GET", "POST", "POST", "PUT", "DELETE")),
            "url": f"/v1/{resource}/{rng.randrange(1, 100_000)}",
            "clientIp": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
            "status": status if kind != "event" else None,
            "source": ("backend", "edge")[i % 2],
            "data": {"bytesIn": rng.randrange(20_000), "durationMs": duration,
                     "userAgent": AGENTS[rng.randrange(len(AGENTS))]},
        }
        if rng.random() < 0.2:
            entry["responseBody"] = _body(rng, resource, status, i)
        yield entry


def _pick(cumulative, x):
    lo, hi = 0, len(cumulative) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if cumulative[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _body(rng, resource, status, i):
    size = rng.randrange(500, 2000)
    items = []
    text = 2
    while text < size:
        item = {"id": rng.randrange(10**9), "email": f"user{rng.randrange(10**6)}@example.com",
                "name": " ".join(rng.choice(WORDS) for _ in range(3)),
                "status": rng.choice(("active", "pending", "closed"))}
        items.append(item)
        text += 110
    body = {"resource": resource, "items": items}
    if status >= 400:
        body["error"] = {"code": f"E{status}{rng.randrange(100):02d}",
                         "message": f"{resource} request failed"}
    if i % 997 == 0:
        body["note"] = f"routed via {RARE_WORD} gateway"
    return json.dumps(body, separators=(",", ":"))


def batches(n, seed=7, now_ms=None, services=1):
    """The corpus as lists of PER_REQUEST entries."""
    batch = []
    for entry in corpus(n, seed, now_ms, services):
        batch.append(entry)
        if len(batch) == PER_REQUEST:
            yield batch
            batch = []
    if batch:
        yield batch


def disk_bytes(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def median_ms(fn, repeat):
    fn()  # warm
    return p50(timed(fn, repeat))


def first_and_median_ms(fn, repeat):
    """(the first call's time, the p50 of the next `repeat`), in ms."""
    (first,) = timed(fn, 1)
    return first, p50(timed(fn, repeat))


class Logsvc:
    def __init__(self, data_dir, database_url="", hot_rows=0):
        self.data_dir = data_dir
        self.database_url = database_url
        self.hot_rows = hot_rows
        env = {"LOGSVC_HOT_ROWS": str(hot_rows)}
        if hot_rows:
            env["LOGSVC_SEAL_INTERVAL_S"] = "2"
        self.server = Server(data_dir, workers=2, database_url=database_url, env=env)
        self.session = requests.Session()
        self.session.headers.update(HEADERS)

    def load(self, bodies, count):
        headers = {**HEADERS, "Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"}
        sessions = [requests.Session() for _ in range(IN_FLIGHT)]

        def send(numbered):
            number, (body, size) = numbered
            # As a shipper does: a batch whose connection broke (a
            # keep-alive connection the server closed as it was reused, a
            # 503 of a busy store) is sent again under the same key, which
            # stores it once.
            keyed = {**headers, "Idempotency-Key": f"scale-{number}"}
            for attempt in range(5):
                try:
                    response = sessions[number % IN_FLIGHT].post(
                        self.server.url + "/api/proxy-logs/_ingest", data=body, headers=keyed,
                        timeout=600)
                    if response.status_code != 503:
                        break
                except requests.ConnectionError:
                    if attempt == 4:
                        raise
                time.sleep(1)
            assert response.status_code == 200 and response.json()["accepted"] == size, \
                response.text[:300]

        start = time.perf_counter()
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            list(pool.map(send, enumerate(bodies)))
        return count / (time.perf_counter() - start)

    def settle_seals(self, count, timeout_s=1800):
        """Wait until the background sealer has sealed what it will of
        `count` entries (segments.py: all but the newest hot_rows, in whole
        segments). Returns the seconds waited."""
        from logsvc.store.segments import SEGMENT_ROWS

        # A seal is due while more than hot_rows + SEGMENT_ROWS entries are
        # unsealed: it ends at the last whole segment with more than
        # hot_rows entries after it.
        due = max(0, (count - self.hot_rows - 1) // SEGMENT_ROWS) * SEGMENT_ROWS
        start = time.perf_counter()
        while time.perf_counter() - start < timeout_s:
            if self.sealed_through() >= due:
                break
            time.sleep(1)
        # Then the runs of segments due to be merged.
        from logsvc.store.segments import MERGE_SEGMENTS, merge_plan

        while time.perf_counter() - start < timeout_s:
            stored = self._rows("SELECT id, min_id, max_id, rows, bytes FROM segment "
                                "ORDER BY min_id")
            if merge_plan(stored, MERGE_SEGMENTS * SEGMENT_ROWS) is None:
                break
            time.sleep(1)
        # The minute counters older than LOGSVC_MINUTE_COUNTERS_HOURS go a
        # grace after the floor is raised (logsvc/store/horizon.py).
        while time.perf_counter() - start < timeout_s:
            floor = (self._meta("minute_floor") or "0 0 0").split()
            if floor[0] == floor[2]:
                break
            time.sleep(1)
        # PostgreSQL: the partitions a seal emptied are dropped by the next
        # rounds (a detach gives way to the transactions of the moment).
        while self.database_url and time.perf_counter() - start < timeout_s:
            if not self._rows(
                    "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = current_schema() AND c.relkind = 'r' "
                    "AND c.relname ~ '^entry_p[0-9]+$' AND "
                    f"(substr(c.relname, 8)::bigint + 1) * {SEGMENT_ROWS} "
                    f"<= {self.sealed_through()}"):
                break
            time.sleep(1)
        return time.perf_counter() - start

    def sealed_through(self):
        return int(self._meta("sealed_through") or 0)

    def _meta(self, key):
        rows = self._rows(f"SELECT value FROM meta WHERE key = '{key}'")
        return rows[0][0] if rows else None

    def _rows(self, sql):
        if self.database_url:
            import psycopg2

            with psycopg2.connect(self.database_url) as conn, conn.cursor() as cursor:
                cursor.execute(sql)
                return cursor.fetchall()
        import sqlite3

        with contextlib.closing(sqlite3.connect(self.data_dir / "logs.db")) as conn:
            return conn.execute(sql).fetchall()

    def get(self, path, **params):
        return orjson.loads(self.answer(path, **params))

    def answer(self, path, **params):
        """The answer as sent, JSON text: what the questions are timed by,
        as ClickHouse's side gets its JSONCompact text (neither is decoded
        into Python objects while timed; the standard library's decoding of
        a page of 200 entries takes about a millisecond)."""
        response = self.session.get(self.server.url + path, params=params, timeout=600)
        assert response.status_code == 200, (path, params, response.text[:300])
        return response.content

    def disk_bytes(self):
        if not self.database_url:
            return disk_bytes(self.data_dir)
        import psycopg2

        with psycopg2.connect(self.database_url) as conn, conn.cursor() as cursor:
            cursor.execute(
                "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'm')")
            return int(cursor.fetchone()[0])

    def while_busy(self, measure, dashboard):
        """(measure(), entries/s stored) while a writer sends BUSY_RATE
        entries a second (batches of a tenth of it, of the corpus' shape,
        timed now) and a dashboard asks `dashboard`'s questions in turn,
        DASHBOARD_HZ times a second."""
        import threading

        stop = threading.Event()
        stored = [0]
        headers = {**HEADERS, "Content-Type": "application/x-ndjson"}

        def write():
            session, size = requests.Session(), BUSY_RATE // 10
            fresh = corpus(10**7, seed=11)
            next_at = time.monotonic()
            while not stop.is_set():
                now = int(time.time() * 1000)
                batch = [dict(next(fresh), tsMs=now) for _ in range(size)]
                response = session.post(self.server.url + "/api/proxy-logs/_ingest",
                                        data=b"\n".join(orjson.dumps(e) for e in batch),
                                        headers=headers, timeout=60)
                assert response.status_code == 200, response.text[:300]
                stored[0] += size
                next_at += 0.1
                time.sleep(max(0.0, next_at - time.monotonic()))

        def watch():
            turn = 0
            while not stop.wait(1 / DASHBOARD_HZ):
                dashboard[turn % len(dashboard)]()
                turn += 1

        threads = [threading.Thread(target=write), threading.Thread(target=watch)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(3)  # under way
            started, before = time.monotonic(), stored[0]
            measured = measure()
            achieved = (stored[0] - before) / (time.monotonic() - started)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        return measured, achieved

    def stop(self):
        self.server.stop()


CH_SCHEMA = """
CREATE TABLE IF NOT EXISTS logs (
    id UInt64,
    traceId String CODEC(ZSTD(1)),
    tsMs Int64 CODEC(Delta, ZSTD(1)),
    kind LowCardinality(String),
    level LowCardinality(String),
    projectId LowCardinality(String),
    containerId LowCardinality(String),
    serviceName LowCardinality(String),
    method LowCardinality(String),
    url String CODEC(ZSTD(1)),
    clientIp String CODEC(ZSTD(1)),
    status Nullable(UInt16),
    source LowCardinality(String),
    data String CODEC(ZSTD(1)),
    durationMs Nullable(Float64),
    route LowCardinality(String),
    responseBody String CODEC(ZSTD(1)),
    INDEX idx_trace traceId TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_body responseBody TYPE tokenbf_v1(32768, 3, 0) GRANULARITY 1,
    INDEX idx_url url TYPE ngrambf_v1(3, 32768, 3, 0) GRANULARITY 1
) ENGINE = MergeTree ORDER BY (projectId, serviceName, tsMs)
"""


class ClickHouse:
    def __init__(self, path):
        from chdb import session

        self.path = path
        self.session = session.Session(str(path))
        self.session.query(CH_SCHEMA)

    def load(self, rows_batches, count):
        elapsed = 0.0
        for text in rows_batches:
            start = time.perf_counter()
            self.session.query("INSERT INTO logs FORMAT JSONEachRow " + text)
            elapsed += time.perf_counter() - start
        return count / elapsed

    def query(self, sql):
        return self.session.query(sql, "JSONCompact")

    def close(self):
        self.session.close()


def ch_rows(batch, first_id):
    out = []
    for offset, e in enumerate(batch):
        out.append(orjson.dumps({
            "id": first_id + offset, "traceId": e["traceId"], "tsMs": e["tsMs"],
            "kind": e["kind"], "level": e["level"], "projectId": e["projectId"],
            "containerId": e["containerId"], "serviceName": e["serviceName"],
            "method": e["method"], "url": e["url"], "clientIp": e["clientIp"],
            "status": e["status"], "source": e["source"],
            "data": orjson.dumps(e["data"]).decode(),
            "durationMs": e["data"].get("durationMs"), "route": derive_route(e["url"]) or "",
            "responseBody": e.get("responseBody") or ""}))
    return b"\n".join(out).decode()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=11)
    parser.add_argument("--services-per-container", type=int, default=1,
                        help="spread each container's entries over this many services "
                             "(a gateway in front of them; at most 20)")
    parser.add_argument("--database-url", default="")
    parser.add_argument("--no-chdb", action="store_true")
    parser.add_argument("--hot-rows", type=int, default=65_536,
                        help="LOGSVC_HOT_ROWS: seal all but the newest this many entries "
                             "(segments.py), and wait for the sealer before measuring; "
                             "0: every entry hot")
    parser.add_argument("--busy", action="store_true",
                        help=f"ask the questions again while {BUSY_RATE:,} entries/s arrive "
                             f"and a dashboard asks {DASHBOARD_HZ} times a second")
    parser.add_argument("--keep", help="directory to keep both stores in (on PostgreSQL, "
                        "the schema bench_scale_<entries> is kept too)")
    parser.add_argument("--reuse", action="store_true",
                        help="ask the questions again of the stores that an earlier run "
                             "kept in --keep (the same --entries; nothing is loaded)")
    args = parser.parse_args()
    if args.reuse and not args.keep:
        parser.error("--reuse needs --keep")

    root = Path(args.keep or tempfile.mkdtemp(prefix="logsvc-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    # The corpus's "now": its last hour and day are what the questions ask.
    if args.reuse:
        now_ms = int((root / "now_ms").read_text())
    else:
        now_ms = int(time.time() * 1000)
        (root / "now_ms").write_text(str(now_ms))
    print(f"building the corpus: {args.entries:,} entries ...", flush=True)
    ours, theirs, sample = [], [], None
    next_id = 1
    for batch in batches(args.entries, now_ms=now_ms, services=args.services_per_container):
        if sample is None:
            sample = batch
        if args.reuse:
            break
        ours.append((gzip.compress(b"\n".join(orjson.dumps(e) for e in batch), 1), len(batch)))
        if not args.no_chdb:
            theirs.append(ch_rows(batch, next_id))
        next_id += len(batch)
    mid_project = "proj_010"
    small_project = f"proj_{PROJECTS - 1:03d}"  # the least traffic (Zipf)
    trace_id = sample[1234]["traceId"]
    url_part = sample[4321]["url"].rsplit("/", 1)[0] + "/4242"
    hour_ago = now_ms - 3_600_000
    day_ago = now_ms - 24 * 3_600_000
    noon = now_ms - 12 * 3_600_000  # an hour half a day ago

    results = {}
    first_pass = {}  # each question's first answer after the load: [ours, theirs]
    try:
        # Kept (--keep), the schema is named after the size, and stays.
        kept = ("reuse" if args.reuse else "new") if args.keep else None
        ctx = (postgres_schema(args.database_url, f"bench_scale_{args.entries}", kept)
               if args.database_url else contextlib.nullcontext(""))
        with ctx as database_url:
            ours_dir = root / "logsvc"
            logsvc = Logsvc(ours_dir, database_url or "", args.hot_rows)
            try:
                if not args.reuse:
                    print("logsvc: ingesting ...", flush=True)
                    results["ingest (entries/s)"] = [logsvc.load(ours, args.entries)]
                    # The steady state: the background maintenance (WAL
                    # checkpoint, statistics of new partitions) has run.
                    # SQLite gives the write-ahead log back once nothing
                    # was written for a while (see common.Server): waited
                    # for, up to a minute.
                    if args.hot_rows:
                        waited = logsvc.settle_seals(args.entries)
                        print(f"logsvc: sealed through {logsvc.sealed_through():,}, "
                              f"{waited:.0f} s after the load", flush=True)
                    time.sleep(20)
                    waited = 20.0
                    log = ours_dir / "logs.db-wal"
                    while (not database_url and log.exists()
                           and log.stat().st_size > 1 << 20 and waited < 60):
                        time.sleep(0.5)
                        waited += 0.5
                    if not database_url:
                        size = log.stat().st_size if log.exists() else 0
                        print(f"logsvc: write-ahead log {size:,} B, {waited:.1f} s after the "
                              "load", flush=True)
                results["disk per entry (B)"] = [logsvc.disk_bytes() / args.entries]
                logs = "/api/proxy-logs/_logs"
                questions = {
                    "level=error&order=desc&limit=200":
                        lambda: logsvc.answer(logs, level="error", order="desc", limit=200),
                    "projectId=…&order=desc&limit=200":
                        lambda: logsvc.answer(logs, projectId=mid_project, order="desc", limit=200),
                    "traceId=…": lambda: logsvc.answer(logs, traceId=trace_id),
                    "url path (q=)": lambda: logsvc.answer(logs, q=url_part, order="desc",
                                                         limit=200),
                    "a word in response bodies": lambda: logsvc.answer(logs, q=RARE_WORD,
                                                                    order="desc", limit=200),
                    "/stats": lambda: logsvc.answer(logs + "/stats"),
                    "/stats?since=1h": lambda: logsvc.answer(logs + "/stats", since=hour_ago),
                    "/stats?projectId=…&since=1h":
                        lambda: logsvc.answer(logs + "/stats", projectId=mid_project, since=hour_ago),
                    "histogram 24h/5m": lambda: logsvc.answer(logs + "/stats/histogram", bucket="5m",
                                                           since=day_ago, until=now_ms),
                    "p95 by route, tenant, last hour": lambda: logsvc.answer(
                        logs + "/stats", projectId=mid_project, since=hour_ago),
                    "slowest 200 of a tenant": lambda: logsvc.answer(
                        logs, projectId=mid_project, order="slowest", limit=200),
                    # Two filters, or a filter and a time range: which index
                    # finds the page (store/planner.py).
                    "status=2xx&order=desc&limit=200":
                        lambda: logsvc.answer(logs, status="2xx", order="desc", limit=200),
                    "a small tenant's errors, newest 200": lambda: logsvc.answer(
                        logs, projectId=small_project, level="error", order="desc", limit=200),
                    "5xx of an hour 12 h ago, newest 200": lambda: logsvc.answer(
                        logs, status="5xx", since=noon, until=noon + 3_600_000, order="desc",
                        limit=200),
                    "/stats?level=error&since=1h":
                        lambda: logsvc.answer(logs + "/stats", level="error", since=hour_ago),
                    # A level over all time, and a day of it by the hour:
                    # the counters by level and status class (rollup.py).
                    "/stats?level=error": lambda: logsvc.answer(logs + "/stats", level="error"),
                    "histogram 24h/1h of errors": lambda: logsvc.answer(
                        logs + "/stats/histogram", bucket="1h", level="error", since=day_ago,
                        until=now_ms),
                    # A word that every entry holds (each url starts /v1/):
                    # the full-text index walked newest first (planner.py).
                    "a word of every entry (q=v1), newest 200": lambda: logsvc.answer(
                        logs, q="v1", order="desc", limit=200),
                    # The same word in the least busy tenant (what a scoped
                    # token asks): the tenant's word in the index (fulltext.py).
                    "q=v1 of the least busy tenant, newest 200": lambda: logsvc.answer(
                        logs, q="v1", projectId=small_project, order="desc", limit=200),
                    # What a newcomer asks first, over the whole day: the
                    # first page (oldest first, the default order), a page
                    # far in, a url path as a phrase, a common word oldest
                    # first, the stats of a field the counters do not keep.
                    "the first page, oldest 100": lambda: logsvc.answer(logs, limit=100),
                    "offset=5000, 100": lambda: logsvc.answer(logs, offset=5000, limit=100),
                    "a path as a phrase (q=\"/v1/orders\"), newest 200": lambda: logsvc.answer(
                        logs, q='"/v1/orders"', order="desc", limit=200),
                    "a common word (q=orders), oldest 100": lambda: logsvc.answer(
                        logs, q="orders", limit=100),
                    "/stats?method=POST": lambda: logsvc.answer(logs + "/stats", method="POST"),
                }
                for name, ask in questions.items():
                    print(f"logsvc: {name}", flush=True)
                    once, median = first_and_median_ms(ask, args.repeat)
                    results[name], first_pass[name] = [median], [once]
                if args.busy:
                    print(f"logsvc: the questions again, while {BUSY_RATE:,} entries/s arrive "
                          f"and a dashboard asks {DASHBOARD_HZ} times a second", flush=True)
                    busy = logsvc.while_busy(lambda: {
                        name: median_ms(ask, args.repeat) for name, ask in questions.items()},
                        dashboard=[questions["/stats?since=1h"],
                                   questions["histogram 24h/5m"]])
            finally:
                logsvc.stop()

        if not args.no_chdb:
            ch = ClickHouse(root / "chdb")
            try:
                if not args.reuse:
                    print("chdb: inserting ...", flush=True)
                    results["ingest (entries/s)"].append(ch.load(theirs, args.entries))
                    # Its best case: every part merged into one before measuring.
                    ch.query("OPTIMIZE TABLE logs FINAL")
                size = ch.session.query("SELECT sum(bytes_on_disk) FROM system.parts "
                                        "WHERE active AND table = 'logs'", "CSV")
                results["disk per entry (B)"].append(int(str(size).strip()) / args.entries)
                breakdowns = ("GROUP BY GROUPING SETS ((), (level), (projectId), (containerId), "
                              "(serviceName), (kind), (intDiv(status, 100)), (source))")
                sel = ("SELECT level, projectId, containerId, serviceName, kind, "
                       "intDiv(status, 100), source, count() FROM logs")
                sql = {
                    "level=error&order=desc&limit=200":
                        "SELECT * FROM logs WHERE level = 'error' ORDER BY tsMs DESC LIMIT 200",
                    "projectId=…&order=desc&limit=200":
                        f"SELECT * FROM logs WHERE projectId = '{mid_project}' "
                        "ORDER BY tsMs DESC LIMIT 200",
                    "traceId=…": f"SELECT * FROM logs WHERE traceId = '{trace_id}'",
                    "url path (q=)": f"SELECT * FROM logs WHERE url LIKE '%{url_part}%' "
                                          "ORDER BY tsMs DESC LIMIT 200",
                    "a word in response bodies":
                        f"SELECT * FROM logs WHERE hasToken(responseBody, '{RARE_WORD}') "
                        "ORDER BY tsMs DESC LIMIT 200",
                    "/stats": f"{sel} {breakdowns}",
                    "/stats?since=1h": f"{sel} WHERE tsMs >= {hour_ago} {breakdowns}",
                    "/stats?projectId=…&since=1h":
                        f"{sel} WHERE projectId = '{mid_project}' AND tsMs >= {hour_ago} {breakdowns}",
                    "histogram 24h/5m":
                        f"SELECT intDiv(tsMs, 300000) AS b, level, count() FROM logs "
                        f"WHERE tsMs >= {day_ago} AND tsMs < {now_ms} GROUP BY b, level",
                    "p95 by route, tenant, last hour":
                        f"SELECT route, count() AS n, countIf(level = 'error'), "
                        f"quantiles(0.5, 0.95, 0.99)(durationMs) FROM logs "
                        f"WHERE projectId = '{mid_project}' AND tsMs >= {hour_ago} "
                        f"AND route != '' GROUP BY route ORDER BY n DESC LIMIT 20",
                    "slowest 200 of a tenant":
                        f"SELECT * FROM logs WHERE projectId = '{mid_project}' "
                        "ORDER BY durationMs DESC LIMIT 200",
                    "status=2xx&order=desc&limit=200":
                        "SELECT * FROM logs WHERE status BETWEEN 200 AND 299 "
                        "ORDER BY tsMs DESC LIMIT 200",
                    "a small tenant's errors, newest 200":
                        f"SELECT * FROM logs WHERE projectId = '{small_project}' "
                        "AND level = 'error' ORDER BY tsMs DESC LIMIT 200",
                    "5xx of an hour 12 h ago, newest 200":
                        f"SELECT * FROM logs WHERE status BETWEEN 500 AND 599 AND tsMs >= {noon} "
                        f"AND tsMs < {noon + 3_600_000} ORDER BY tsMs DESC LIMIT 200",
                    "/stats?level=error&since=1h":
                        f"{sel} WHERE level = 'error' AND tsMs >= {hour_ago} {breakdowns}",
                    "/stats?level=error": f"{sel} WHERE level = 'error' {breakdowns}",
                    "histogram 24h/1h of errors":
                        f"SELECT intDiv(tsMs, 3600000) AS b, level, count() FROM logs "
                        f"WHERE level = 'error' AND tsMs >= {day_ago} AND tsMs < {now_ms} "
                        "GROUP BY b, level",
                    "a word of every entry (q=v1), newest 200":
                        "SELECT * FROM logs WHERE hasToken(url, 'v1') ORDER BY tsMs DESC LIMIT 200",
                    "q=v1 of the least busy tenant, newest 200":
                        f"SELECT * FROM logs WHERE projectId = '{small_project}' "
                        "AND hasToken(url, 'v1') ORDER BY tsMs DESC LIMIT 200",
                    "the first page, oldest 100": "SELECT * FROM logs ORDER BY tsMs LIMIT 100",
                    "offset=5000, 100":
                        "SELECT * FROM logs ORDER BY tsMs LIMIT 100 OFFSET 5000",
                    "a path as a phrase (q=\"/v1/orders\"), newest 200":
                        "SELECT * FROM logs WHERE url LIKE '%/v1/orders%' "
                        "ORDER BY tsMs DESC LIMIT 200",
                    "a common word (q=orders), oldest 100":
                        "SELECT * FROM logs WHERE hasToken(url, 'orders') "
                        "OR hasToken(responseBody, 'orders') ORDER BY tsMs LIMIT 100",
                    "/stats?method=POST": f"{sel} WHERE method = 'POST' {breakdowns}",
                }
                for name, text in sql.items():
                    print(f"chdb: {name}", flush=True)
                    once, median = first_and_median_ms(lambda text=text: ch.query(text),
                                                       args.repeat)
                    results[name].append(median)
                    first_pass[name].append(once)
            finally:
                ch.close()
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    if args.busy:
        _print_busy(results, busy)
    engine = "PostgreSQL" if args.database_url else "SQLite"
    print(f"\n{args.entries:,} entries, logsvc on {engine}, p50 of {args.repeat} (ms unless noted)")
    print("| question | logsvc | chdb | logsvc/chdb |\n|---|---|---|---|")
    for name, values in results.items():
        ours_v = values[0]
        theirs_v = values[1] if len(values) > 1 else None
        ratio = (f"{ours_v / theirs_v:.2f}" if ours_v is not None and theirs_v else "—")
        print(f"| {name} | {_fmt(ours_v)} | {_fmt(theirs_v)} | {ratio} |")
    if first_pass:
        print("\nThe first pass after the load: each question's first answer (ms), in the "
              "order above")
        print("| question | logsvc | chdb | logsvc/chdb |\n|---|---|---|---|")
        for name, values in first_pass.items():
            theirs_v = values[1] if len(values) > 1 else None
            ratio = f"{values[0] / theirs_v:.2f}" if theirs_v else "—"
            print(f"| {name} | {_fmt(values[0])} | {_fmt(theirs_v)} | {ratio} |")


def _print_busy(results, busy):
    """Each question's p50 idle and busy, and their ratio (goal: at most 1.5)."""
    measured, achieved = busy
    print(f"\nWhile busy: {achieved:,.0f} entries/s stored (asked {BUSY_RATE:,}), "
          f"a dashboard asking {DASHBOARD_HZ} times a second")
    print("| question | idle | busy | busy/idle |\n|---|---|---|---|")
    for name, value in measured.items():
        idle = results[name][0]
        print(f"| {name} | {_fmt(idle)} | {_fmt(value)} | {value / idle:.2f} |")


def _fmt(value):
    if value is None:
        return "not possible"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
