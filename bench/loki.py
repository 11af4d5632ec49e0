"""What Grafana's Loki data source costs beside logsvc's own endpoints
asking the same question, in one run.

    .venv/bin/python -m bench.loki [--entries 300000] [--repeat 21]

The store holds bench/scale.py's corpus (200 projects with skewed traffic,
2,000 containers, bodies in a fifth of the entries, 23 hours), filled
in-process; one gunicorn gevent worker serves it. Each pair is timed
alternately over HTTP, medians printed with the ratio Loki / native
(goal: at most 1.2):

- logs volume (Grafana's histogram above Explore, `sum by (level,
  detected_level) (count_over_time({projectId=...}[1m]))` over the last
  hour, and unscoped over 6 hours at 5 minutes) against
  `/stats/histogram` for the same range and bucket;
- Explore (`{projectId=...}`, 1,000 lines, backward) against
  `/_logs?projectId=...&order=desc&limit=1000`;
- a line filter (`|= "timeout"`) against `q="timeout"`;
- the label browser's values (services of a project over 6 hours) against
  `/stats` (its `byService`) for the same range.
"""
import argparse
import tempfile
import time

import requests

from bench.common import HEADERS, Server, p50
from bench.scale import batches

NS = 1_000_000


def fill(data_dir, n, now_ms):
    from logsvc.server import create_app
    from logsvc.store import ingest
    app = create_app({"data_dir": data_dir, "admin_token": "x", "retention_days": 0,
                      "max_rows": 10**9})
    config = app.extensions["logsvc"].config
    for batch in batches(n, now_ms=now_ms):
        assert ingest.ingest(batch, config)["accepted"] == len(batch)
    app.extensions["logsvc"].store.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=21)
    args = parser.parse_args()
    now = int(time.time() * 1000) // 60_000 * 60_000
    with tempfile.TemporaryDirectory() as data_dir:
        started = time.perf_counter()
        fill(data_dir, args.entries, now)
        print(f"filled {args.entries:,} entries in {time.perf_counter() - started:.0f} s")
        server = Server(data_dir)
        session = requests.Session()
        session.headers.update(HEADERS)

        def get(path, params):
            def run():
                response = session.get(server.url + path, params=params)
                assert response.status_code == 200, response.text[:300]
                return response
            return run

        busy, hour, six = "proj_000", now - 3_600_000, now - 6 * 3_600_000
        loki = "/loki/api/v1/query_range"
        pairs = [
            ("logs volume, one project, 1 h by 1 m", get(loki, {
                "query": 'sum by (level, detected_level) (count_over_time('
                         f'{{projectId="{busy}"}} | drop __error__ [1m]))',
                "start": hour * NS, "end": now * NS, "step": "60000ms"}),
             get("/api/proxy-logs/_logs/stats/histogram", {
                 "projectId": busy, "since": hour - 60_000, "until": now, "bucket": "1m"})),
            ("logs volume, every project, 6 h by 5 m", get(loki, {
                "query": 'sum by (level, detected_level) (count_over_time({projectId=~".+"} '
                         '| drop __error__ [5m]))',
                "start": six * NS, "end": now * NS, "step": "300000ms"}),
             get("/api/proxy-logs/_logs/stats/histogram", {
                 "since": six - 300_000, "until": now, "bucket": "5m"})),
            ("Explore, 1,000 lines backward", get(loki, {
                "query": f'{{projectId="{busy}"}}', "limit": 1000, "direction": "backward",
                "start": hour * NS, "end": now * NS}),
             get("/api/proxy-logs/_logs", {"projectId": busy, "order": "desc", "limit": 1000,
                                            "since": hour, "until": now})),
            ("line filter |= a word", get(loki, {
                "query": f'{{projectId="{busy}"}} |= "failed"', "limit": 100,
                "start": six * NS, "end": now * NS}),
             get("/api/proxy-logs/_logs", {"projectId": busy, "q": '"failed"', "order": "desc",
                                            "limit": 100, "since": six, "until": now})),
            ("label values, services of a project, 6 h", get(
                "/loki/api/v1/label/serviceName/values", {
                    "query": f'{{projectId="{busy}"}}', "start": six * NS, "end": now * NS}),
             get("/api/proxy-logs/_logs/stats", {"projectId": busy, "since": six,
                                                  "until": now})),
        ]
        rows = []
        try:
            for name, ours, native in pairs:
                ours(), native()  # warm
                a, b = [], []
                for _ in range(args.repeat):
                    for fn, into in ((ours, a), (native, b)):
                        start = time.perf_counter()
                        fn()
                        into.append((time.perf_counter() - start) * 1000)
                rows.append((name, p50(a), p50(b)))
        finally:
            server.stop()
    print(f"\n{'question':44} {'Loki API':>10} {'native':>10} {'ratio':>7}")
    for name, ours, native in rows:
        print(f"{name:44} {ours:9.1f}ms {native:9.1f}ms {ours / native:7.2f}")


if __name__ == "__main__":
    main()
