"""What sealing costs and saves: disk per entry and the same questions with
the history hot and sealed, beside ClickHouse, in one run.

    .venv/bin/pip install -r requirements-bench.txt
    .venv/bin/python -m bench.segments [--entries 300000] [--hot-rows 50000]
        [--repeat 5] [--no-chdb]

The corpus is bench/scale.py's (200 projects with skewed traffic, 2,000
containers, a fifth of the entries with a JSON body, a day of timestamps),
written in-process into a fresh SQLite store (the default server's
settings; nothing is sealed while it loads). Then:

1. disk per entry with everything hot (after a WAL checkpoint);
2. the questions, everything hot;
3. everything but the newest `--hot-rows` entries sealed (segments.py),
   the time that took per entry, and disk per entry again;
4. the questions again, the history sealed.

ClickHouse (embedded, chdb): bench/scale.py's table, after OPTIMIZE FINAL.
Prints medians and ratios.
"""
import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

import orjson

from bench.scale import RARE_WORD, ClickHouse, batches, ch_rows, disk_bytes, median_ms
from logsvc.server import create_app
from logsvc.store import db, segments
from logsvc.testing import ADMIN_TOKEN, Store


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=300_000)
    parser.add_argument("--hot-rows", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-chdb", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="logsvc-segments-"))
    now_ms = int(time.time() * 1000)
    app = create_app({"data_dir": root / "logsvc", "admin_token": ADMIN_TOKEN,
                      "rate_limit_per_min": 0, "hot_rows": 0, "retention_days": 0,
                      "max_rows": 10**9, "query_timeout_s": 0})
    store = Store(app.test_client())
    held = app.extensions["logsvc"].store
    theirs, sample, first = [], None, 1
    print(f"loading {args.entries:,} entries ...", flush=True)
    started = time.perf_counter()
    for batch in batches(args.entries, now_ms=now_ms):
        sample = sample or batch
        store.ingest(batch)
        if not args.no_chdb:
            theirs.append(ch_rows(batch, first))
        first += len(batch)
    print(f"  {args.entries / (time.perf_counter() - started):,.0f} entries/s in-process")
    path = root / "logsvc" / "logs.db"

    def settled_disk():
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return disk_bytes(root / "logsvc") / args.entries

    mid_project, trace_id = "proj_010", sample[1234]["traceId"]
    logs = "/api/proxy-logs/_logs"
    questions = {
        "a word in response bodies, newest 200": {"q": RARE_WORD, "order": "desc",
                                                  "limit": 200},
        "the same word, all time, total": {"q": RARE_WORD, "limit": 1},
        "one trace": {"traceId": trace_id},
        "a tenant's newest 200": {"projectId": mid_project, "order": "desc", "limit": 200},
        "a tenant's oldest 200": {"projectId": mid_project, "limit": 200},
        "errors, newest 200": {"level": "error", "order": "desc", "limit": 200},
    }

    def ask():
        return {name: median_ms(lambda p=params: store.page(logs, **p), args.repeat)
                for name, params in questions.items()}

    results = {"disk per entry (B)": [settled_disk()]}
    hot = ask()
    started = time.perf_counter()
    with db.using(held):
        sealed = 0
        while n := db.call(segments.seal_once, args.hot_rows):
            sealed += n
    seal_s = time.perf_counter() - started
    print(f"sealed {sealed:,} entries in {seal_s:.1f} s "
          f"({seal_s / max(sealed, 1) * 1e6:.0f} µs an entry)")
    results["disk per entry (B)"].append(settled_disk())
    cold = ask()
    if not args.no_chdb:
        ch = ClickHouse(root / "chdb")
        ch.load(theirs, args.entries)
        ch.query("OPTIMIZE TABLE logs FINAL")
        size = ch.session.query("SELECT sum(bytes_on_disk) FROM system.parts "
                                "WHERE active AND table = 'logs'", "CSV")
        results["disk per entry (B)"].append(int(str(size).strip()) / args.entries)
        ch.close()
    print()
    print(f"{'':42} {'all hot':>10} {'sealed':>10} {'chdb':>10}")
    disk = results["disk per entry (B)"]
    print(f"{'disk per entry (B)':42} {disk[0]:>10.0f} {disk[1]:>10.0f} "
          f"{disk[2] if len(disk) > 2 else float('nan'):>10.0f}")
    for name in questions:
        print(f"{name + ' (ms)':42} {hot[name]:>10.1f} {cold[name]:>10.1f}")
    print(orjson.dumps({"disk": disk, "hot": hot, "sealed": cold,
                        "seal_us_per_entry": seal_s / max(sealed, 1) * 1e6}).decode())


if __name__ == "__main__":
    main()
