"""Query, stats and traceId lookup latency over HTTP against the same work
straight in SQL, at two store sizes, in one run.

    .venv/bin/python -m bench.query [--sizes 100000,1000000] [--repeat 200]

For each size the store is filled through the ingest service, then one
gunicorn gevent worker serves it while we time, side by side:
- `level=error&order=desc&limit=200` against the same page query plus the
  counter sum that gives its total, run with sqlite3 on the same file;
- `/stats` against the GROUP BY it replaces;
- `traceId=<id>` against the same indexed SELECT.
"""
import argparse
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench.common import HEADERS, Server, entries, p50, timed
from logsvc.store.names import LETTERS

LOGS = "/api/proxy-logs/_logs"


def fill(data_dir, start, stop):
    from logsvc.server import create_app
    from logsvc.store import ingest
    app = create_app({"data_dir": data_dir, "admin_token": "x", "retention_days": 0,
                      "max_rows": 10**9})
    config = app.extensions["logsvc"].config
    now = int(time.time() * 1000)
    for first in range(start, stop, 5000):
        batch = entries(min(5000, stop - first), start=first, now_ms=now)
        result = ingest.ingest(batch, config)
        assert result["accepted"] == len(batch)


def measure(data_dir, size, repeat):
    conn = sqlite3.connect(Path(data_dir) / "logs.db")
    trace_ids = [row[0] for row in conn.execute(
        "SELECT trace_id FROM entry WHERE id IN ({})".format(",".join(
            str(random.randrange(1, size)) for _ in range(50))))]
    server = Server(data_dir)
    session = requests.Session()
    session.headers.update(HEADERS)

    def http(params, path=LOGS):
        response = session.get(server.url + path, params=params)
        assert response.status_code == 200, response.text
        return response

    error = LETTERS["level"]["error"]  # SQLite stores a level as its letter

    def sql_page():
        conn.execute("SELECT * FROM entry WHERE level = ? ORDER BY id DESC "
                     "LIMIT 200", (error,)).fetchall()
        conn.execute("SELECT SUM(level_error) FROM rollup_total").fetchone()

    def sql_group_by():
        for column in ("level", "project_id", "container_id", "service_name", "kind",
                       "source", "status / 100"):
            conn.execute(f"SELECT {column}, count(*) FROM entry GROUP BY 1").fetchall()

    try:
        results = []
        for _ in range(3):  # warm caches on both sides
            http({"level": "error", "order": "desc", "limit": 200})
            sql_page()
        page = http({"level": "error", "order": "desc", "limit": 200}).json()
        assert len(page["entries"]) == 200 and page["totalExact"]
        results.append(("query level=error desc 200", p50(timed(
            lambda: http({"level": "error", "order": "desc", "limit": 200}), repeat)),
            p50(timed(sql_page, repeat))))
        results.append(("stats", p50(timed(lambda: http({}, LOGS + "/stats"), repeat)),
                        p50(timed(sql_group_by, 3))))
        cycle = iter(trace_ids * (repeat // len(trace_ids) + 2))
        http_trace = p50(timed(lambda: http({"traceId": next(cycle)}), repeat))
        cycle = iter(trace_ids * (repeat // len(trace_ids) + 2))
        sql_trace = p50(timed(lambda: conn.execute(
            "SELECT * FROM entry WHERE trace_id = ? ORDER BY id LIMIT 200",
            (next(cycle),)).fetchall(), repeat))
        results.append(("traceId lookup", http_trace, sql_trace))
        return results
    finally:
        server.stop()
        conn.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as data_dir:
        filled = 0
        for size in sizes:
            start = time.perf_counter()
            fill(data_dir, filled, size)
            print(f"filled {size:,} entries in {time.perf_counter() - start:.0f}s",
                  file=sys.stderr)
            filled = size
            for name, ours, reference in measure(data_dir, size, args.repeat):
                print(f"{size:>9,}  {name:<28} logsvc p50 {ours:7.2f} ms   "
                      f"SQL p50 {reference:8.2f} ms   difference {ours - reference:+7.2f} ms")


if __name__ == "__main__":
    main()
