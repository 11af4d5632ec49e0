"""PostgreSQL against SQLite on the same workload, and against raw psycopg2
on the same schema, in one run.

    .venv/bin/python -m bench.postgres [--url postgresql://postgres@127.0.0.1/test]
                                       [--batches 30] [--rows 200000] [--repeat 200]

Ingest: NDJSON batches of 1000 posted to one gunicorn gevent worker, with
two requests in flight, on each engine. References on the same PostgreSQL
schema that logsvc created (partitions, indexes): the same rows inserted
with psycopg2 `execute_values`, and with `COPY`, 1000 per transaction.

Query: the store filled with `--rows` entries on each engine, then p50 over
HTTP of `level=error&order=desc&limit=200`, `/stats` and `traceId=…`, and
the same page query straight in SQL with psycopg2.

Each run uses a schema of its own (dropped at the end) so it never touches
other data in the database.
"""
import argparse
import io
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson
import psycopg2
import requests
from psycopg2.extras import execute_values

from bench.common import HEADERS, Server, entries, p50, post_batches, postgres_schema, timed

BATCH = 1000
LOGS = "/api/proxy-logs/_logs"
COLUMNS = ("id", "trace_id", "ts_ms", "kind", "level", "project_id", "container_id",
           "service_name", "method", "url", "client_ip", "status", "source", "data",
           "has_body", "body_truncated")


def post_all(server, bodies, concurrency=2):
    return post_batches(server.url, bodies, concurrency, BATCH)


def ndjson(first_batch, batches):
    return [b"\n".join(orjson.dumps(e) for e in entries(BATCH, start=i * BATCH))
            for i in range(first_batch, first_batch + batches)]


def raw_rows(first_id, batch_no):
    out = []
    for offset, e in enumerate(entries(BATCH, start=batch_no * BATCH)):
        out.append((first_id + offset, e["traceId"], e["tsMs"], e["kind"], e["level"],
                    e["projectId"], e["containerId"], e["serviceName"], e["method"], e["url"],
                    e["clientIp"], e["status"], e["source"], orjson.dumps(e["data"]).decode(),
                    False, False))
    return out


def raw_rates(conn, batches, first_id):
    """(execute_values rows/s, COPY rows/s), into logsvc's own partitioned table."""
    sql = f"INSERT INTO entry ({', '.join(COLUMNS)}) VALUES %s"
    prepared = [raw_rows(first_id + i * BATCH, i) for i in range(batches)]
    start = time.perf_counter()
    with conn.cursor() as cursor:
        for rows in prepared:
            execute_values(cursor, sql, rows, page_size=BATCH)
            conn.commit()
    values_rate = batches * BATCH / (time.perf_counter() - start)
    first_id += batches * BATCH
    prepared = []
    for i in range(batches):
        buffer = io.StringIO()
        for row in raw_rows(first_id + i * BATCH, i):
            buffer.write("\t".join("\\N" if v is None else _copy_text(v) for v in row) + "\n")
        prepared.append(buffer.getvalue())
    start = time.perf_counter()
    with conn.cursor() as cursor:
        for text in prepared:
            cursor.copy_expert(f"COPY entry ({', '.join(COLUMNS)}) FROM STDIN", io.StringIO(text))
            conn.commit()
    return values_rate, batches * BATCH / (time.perf_counter() - start)


def _copy_text(value):
    if isinstance(value, bool):
        return "t" if value else "f"
    return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def query_times(server, repeat, trace_ids):
    session = requests.Session()
    session.headers.update(HEADERS)

    def get(params, path=LOGS):
        response = session.get(server.url + path, params=params)
        assert response.status_code == 200, response.text

    page = p50(timed(lambda: get({"level": "error", "order": "desc", "limit": 200}), repeat))
    stats = p50(timed(lambda: get({}, LOGS + "/stats"), repeat))
    trace = p50(timed(lambda: get({"traceId": random.choice(trace_ids)}), repeat))
    return page, stats, trace


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    results = {"sqlite": [], "postgresql": [], "values": [], "copy": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_no in range(args.rounds):
            with postgres_schema(args.url, "bench_ingest") as url:
                for engine, database_url in (("sqlite", ""), ("postgresql", url)):
                    server = Server(Path(tmp) / f"{engine}{round_no}", database_url=database_url)
                    try:
                        results[engine].append(post_all(server, ndjson(0, args.batches)))
                    finally:
                        server.stop()
                conn = psycopg2.connect(url)
                try:
                    # Ids above those logsvc took, inside the partition it made.
                    values, copy = raw_rates(conn, args.batches, 100_001)
                finally:
                    conn.close()
                results["values"].append(values)
                results["copy"].append(copy)
            print(f"round {round_no + 1}: " + "  ".join(
                f"{k} {v[-1]:,.0f}/s" for k, v in results.items()), file=sys.stderr)
        rate = {k: statistics.median(v) for k, v in results.items()}
        print(f"ingest, {args.batches}x{BATCH} NDJSON, 2 in flight: "
              f"SQLite {rate['sqlite']:,.0f}/s, PostgreSQL {rate['postgresql']:,.0f}/s "
              f"(PG/SQLite {rate['postgresql'] / rate['sqlite']:.2f}); raw execute_values "
              f"{rate['values']:,.0f}/s (ratio {rate['postgresql'] / rate['values']:.2f}), "
              f"raw COPY {rate['copy']:,.0f}/s (ratio {rate['postgresql'] / rate['copy']:.2f})")

        with postgres_schema(args.url, "bench_query") as url:
            batches = args.rows // BATCH
            for engine, database_url in (("sqlite", ""), ("postgresql", url)):
                server = Server(Path(tmp) / f"q_{engine}", database_url=database_url)
                try:
                    post_all(server, ndjson(0, batches), concurrency=4)
                    trace_ids = [e["traceId"] for e in entries(200, start=random.randrange(
                        args.rows - 200))]
                    page, stats, trace = query_times(server, args.repeat, trace_ids)
                finally:
                    server.stop()
                print(f"query at {args.rows:,} entries, {engine}: level=error desc 200 "
                      f"p50 {page:.2f} ms, /stats {stats:.2f} ms, traceId {trace:.2f} ms")
            conn = psycopg2.connect(url)
            with conn.cursor() as cursor:
                def raw_page():
                    cursor.execute("SELECT * FROM entry WHERE level = 'error' ORDER BY id DESC "
                                   "LIMIT 200")
                    cursor.fetchall()
                    cursor.execute("SELECT SUM(level_error) FROM rollup_total")
                    cursor.fetchone()
                raw = p50(timed(raw_page, args.repeat))
            conn.close()
            print(f"the same page and total straight in SQL with psycopg2: p50 {raw:.2f} ms")

if __name__ == "__main__":
    main()
