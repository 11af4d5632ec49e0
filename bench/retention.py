"""Retention on PostgreSQL: dropping whole partitions against deleting the
same rows in batches, and against one plain DELETE, in one run.

    .venv/bin/python -m bench.retention [--rows 400000] [--partition 100000]
                                        [--url postgresql://postgres@127.0.0.1/test]

Three stores (schemas of their own) get the same `--rows` entries through
the ingest service. Then half of them must go (the row cap):
- logsvc with partitions of `--partition` ids: whole partitions dropped;
- logsvc with one partition holding everything: batch deletes of 2000 rows,
  each with its counter update (what any store without partitions does);
- reference: `DELETE FROM entry_body/entry WHERE id <= half` in one
  statement each, without counters.
The figures are wall times of the prune call (median of --rounds).
"""
import argparse
import statistics
import sys
import tempfile
import time

import psycopg2

from bench.common import entries, postgres_schema


def fill(url, tmp, rows, partition_rows):
    import os

    os.environ["LOGSVC_DATABASE_URL"] = url
    from logsvc.server import create_app
    from logsvc.store import ingest

    app = create_app({"data_dir": tmp, "admin_token": "x", "partition_rows": partition_rows,
                      "retention_days": 0, "max_rows": 10**9})
    config = app.extensions["logsvc"].config
    now = int(time.time() * 1000)
    for first in range(0, rows, 5000):
        result = ingest.ingest(entries(5000, start=first, now_ms=now), config)
        assert result["accepted"] == 5000
    return config


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--partition", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    from logsvc.store import retention

    half = args.rows // 2
    times = {"partitions": [], "batches": [], "raw": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_no in range(args.rounds):
            for mode in times:
                with postgres_schema(args.url, f"bench_retention_{mode}") as url:
                    size = args.partition if mode == "partitions" else args.rows * 10
                    config = fill(url, tmp, args.rows, size)
                    start = time.perf_counter()
                    if mode == "raw":
                        conn = psycopg2.connect(url)
                        with conn.cursor() as cursor:
                            cursor.execute("DELETE FROM entry_body WHERE entry_id <= %s", (half,))
                            cursor.execute("DELETE FROM entry WHERE id <= %s", (half,))
                        conn.commit()
                        conn.close()
                    else:
                        removed = retention.prune(config.replace(max_rows=args.rows - half))
                        assert removed == half, removed
                    times[mode].append(time.perf_counter() - start)
                print(f"round {round_no + 1} {mode}: {times[mode][-1]:.2f} s", file=sys.stderr)
    t = {k: statistics.median(v) for k, v in times.items()}
    print(f"retention, {half:,} of {args.rows:,} entries removed: whole partitions "
          f"({args.partition:,} ids) {t['partitions'] * 1000:,.0f} ms, batches of 2000 "
          f"{t['batches'] * 1000:,.0f} ms; reference one plain DELETE {t['raw'] * 1000:,.0f} ms "
          f"(partitions/raw {t['partitions'] / t['raw']:.2f})")


if __name__ == "__main__":
    main()
