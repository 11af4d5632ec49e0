"""What evaluating alert rules costs: 1,000 rules over the bench/scale.py
corpus, beside asking /stats the same 1,000 questions over HTTP, in one run.

    .venv/bin/python -m bench.alerts [--entries 200000] [--rules 1000] [--cycles 5]

The corpus (200 projects with skewed traffic, 2,000 containers, a day of
timestamps up to now) is written in-process into a fresh SQLite store. The
rules, a mix of what people ask:

- 50 %: a project's errors over 5 minutes (`count`, the counters answer);
- 20 %: a project's error rate over 15 minutes (`errorRate`, counters);
- 15 %: a project's p95 over 10 minutes (`p95`, the latency counters);
- 10 %: a route's 5xx over 5 minutes (`route` + `status`: the entries);
-  5 %: a word in a project's bodies over an hour (`q`: the full-text index).

Each cycle evaluates every rule once (what the lease holder does every
LOGSVC_ALERT_INTERVAL_S) and sends what fired to a receiver on loopback.
Printed: the median cycle's wall and CPU time, CPU per rule, and the share
of one core at the default 15 s interval (goal: at most 5 %); beside it, the
same questions asked one by one of /stats through the Flask test client.
"""
import argparse
import http.server
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench.scale import PROJECTS, RARE_WORD, RESOURCES, batches
from logsvc import alerting
from logsvc.server import create_app
from logsvc.store import alerts, db
from logsvc.testing import ADMIN_TOKEN, Store

INTERVAL_S = 15


def receiver():
    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/"


def rules(n, hook, seed=3):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        project = f"proj_{min(int(rng.paretovariate(1.2)) - 1, PROJECTS - 1):03d}"
        kind = rng.random()
        if kind < 0.5:
            filters, condition, window = {"projectId": project, "level": "error"}, \
                {"metric": "count", "op": ">", "threshold": 50}, "5m"
        elif kind < 0.7:
            filters, condition, window = {"projectId": project}, \
                {"metric": "errorRate", "op": ">", "threshold": 0.2}, "15m"
        elif kind < 0.85:
            filters, condition, window = {"projectId": project}, \
                {"metric": "p95", "op": ">", "threshold": 900}, "10m"
        elif kind < 0.95:
            filters = {"projectId": project, "route": f"/v1/{rng.choice(RESOURCES)}/{{id}}",
                       "status": "5xx"}
            condition, window = {"metric": "count", "op": ">=", "threshold": 3}, "5m"
        else:
            filters, condition, window = {"projectId": project, "q": RARE_WORD}, \
                {"metric": "count", "op": ">", "threshold": 0}, "1h"
        out.append({"name": f"rule {i}", "filters": filters, "condition": condition,
                    "window": window, "webhook": hook})
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--cycles", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="logsvc-alerts-"))
    app = create_app({"data_dir": root, "admin_token": ADMIN_TOKEN, "rate_limit_per_min": 0,
                      "retention_days": 0, "max_rows": 10**9, "query_timeout_s": 0,
                      "webhook_allow": "127.0.0.1/32"})
    client = app.test_client()
    store = Store(client)
    print(f"loading {args.entries:,} entries ...", flush=True)
    for batch in batches(args.entries, now_ms=int(time.time() * 1000)):
        store.ingest(batch)
    hook = receiver()
    made = rules(args.rules, hook)
    for body in made:
        response = client.post("/api/proxy-logs/_alerts", json=body, headers=store.headers)
        assert response.status_code == 201, response.json
    held = app.extensions["logsvc"].store
    allow = alerting.allowed_networks("127.0.0.1/32")
    walls, cpus, fired = [], [], 0
    with db.using(held):
        for _ in range(args.cycles):
            wall, cpu = time.perf_counter(), time.process_time()
            fired += len(alerts.evaluate())
            alerting.deliver_due(allow)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
    # The same questions, one /stats request each.
    questions = []
    for body in made:
        params = dict(body["filters"])
        params["since"] = body["window"]
        questions.append(params)
    started = time.perf_counter()
    for params in questions:
        response = client.get("/api/proxy-logs/_logs/stats", query_string=params,
                              headers=store.headers)
        assert response.status_code == 200, response.json
    asked = time.perf_counter() - started
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    print()
    print(f"rules                                   {args.rules:>10,}")
    print(f"transitions over {args.cycles} cycles                {fired:>10,}")
    print(f"a cycle, wall (median)                  {wall * 1000:>10.0f} ms")
    print(f"a cycle, CPU (median)                   {cpu * 1000:>10.0f} ms")
    print(f"CPU per rule                            {cpu / args.rules * 1e6:>10.0f} µs")
    print(f"share of one core at {INTERVAL_S} s               {cpu / INTERVAL_S:>10.1%}  (goal ≤ 5 %)")
    print(f"the same {args.rules:,} questions of /stats     {asked * 1000:>10.0f} ms  "
          f"(ratio {wall / asked:.2f})")


if __name__ == "__main__":
    main()
