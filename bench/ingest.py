"""Ingest throughput over HTTP against raw sqlite3 executemany, in one run.

    .venv/bin/python -m bench.ingest [--batches 30] [--rounds 3]

logsvc: NDJSON batches of 1000 entries posted to one gunicorn gevent worker
(validation, body rules, rollup counters, commit to disk before the 200).
Reference: the same rows inserted with sqlite3 `executemany`, 1000 per
transaction, into a file with the same schema, indexes and pragmas.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

from bench.common import Server, entries, post_batches, sqlite_connect

BATCH = 1000


def http_rate(batches, data_dir, concurrency):
    server = Server(data_dir)
    try:
        bodies = [b"\n".join(orjson.dumps(e) for e in entries(BATCH, start=i * BATCH))
                  for i in range(batches)]
        return post_batches(server.url, bodies, concurrency, BATCH)
    finally:
        server.stop()


def raw_rate(batches, schema_from, path):
    conn = sqlite_connect(path)
    schema = sqlite_connect(schema_from).execute(
        "SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL AND name LIKE 'entry%' "
        "ORDER BY type DESC").fetchall()
    # The tables of a virtual table (full text, lookup) come with its CREATE.
    virtual = [name for name, sql in schema if sql.startswith("CREATE VIRTUAL TABLE")]
    for name, sql in schema:
        if not any(name.startswith(f"{v}_") for v in virtual):
            conn.execute(sql)
    cols = ("traceId", "tsMs", "kind", "level", "projectId", "containerId", "serviceName",
            "method", "url", "clientIp", "status", "source")
    prepared = [[(*(e[c] for c in cols), orjson.dumps(e["data"]).decode(), 0, 0)
                 for e in entries(BATCH, start=i * BATCH)] for i in range(batches)]
    sql = ("INSERT INTO entry (trace_id, ts_ms, kind, level, project_id, container_id, "
           "service_name, method, url, client_ip, status, source, data, has_body, "
           "body_truncated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
    start = time.perf_counter()
    for rows in prepared:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, rows)
        conn.execute("COMMIT")
    return batches * BATCH / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=1,
                        help="requests in flight at once, as a shipper with several workers")
    args = parser.parse_args()
    http, raw = [], []
    for round_no in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            http.append(http_rate(args.batches, Path(tmp) / "svc", args.concurrency))
            raw.append(raw_rate(args.batches, Path(tmp) / "svc" / "logs.db", Path(tmp) / "raw.db"))
        print(f"round {round_no + 1}: logsvc {http[-1]:,.0f}/s  raw {raw[-1]:,.0f}/s",
              file=sys.stderr)
    h, r = statistics.median(http), statistics.median(raw)
    print(f"ingest, {args.batches}x{BATCH} NDJSON, {args.concurrency} in flight: logsvc {h:,.0f} entries/s, "
          f"raw executemany {r:,.0f} rows/s, ratio {h / r:.2f}")


if __name__ == "__main__":
    main()
