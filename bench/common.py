"""Shared pieces of the benchmarks: data, a server to measure, statistics.

Run a benchmark from the checkout as a module: `.venv/bin/python -m bench.ingest`.
"""
import contextlib
import os
import random
import statistics
import time

import requests

from logsvc.testing import ROOT, free_port
from logsvc.testing import Server as _Server

__all__ = ["ROOT", "free_port"]

TOKEN = "bench-admin-token"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def entries(n, start=0, now_ms=None):
    """`n` varied entries like a proxy writes them."""
    rng = random.Random(start)
    now_ms = now_ms or int(time.time() * 1000)
    statuses = [200] * 12 + [201, 204, 301, 304, 400, 401, 404, 404, 429, 500, 502, 503]
    out = []
    for i in range(start, start + n):
        status = rng.choice(statuses)
        container = rng.randrange(200)  # each container has one project and service
        out.append({
            "traceId": f"{rng.getrandbits(128):032x}",
            "tsMs": now_ms - (n - (i - start)) * 5,
            "kind": ("request", "response")[i % 2],
            "level": "info",
            "projectId": f"proj_{container % 20}",
            "containerId": f"cnt_{container}",
            "serviceName": f"svc-{container % 12}",
            "method": rng.choice(("GET", "GET", "GET", "POST", "PUT", "DELETE")),
            "url": f"/v1/items/{rng.randrange(100000)}?page={i % 7}",
            "clientIp": f"203.0.113.{i % 250}",
            "status": status,
            "source": ("backend", "edge")[i % 2],
            "data": {"bytesIn": rng.randrange(5000), "durationMs": rng.randrange(900),
                     "userAgent": "bench/1.0"},
        })
    return out


def Server(data_dir, workers=1, database_url="", env=None):
    """A started gunicorn with production settings, except that nothing is
    pruned while a benchmark runs (the maintenance loop still runs, every
    10 s). Each of its runs writes a little (its lease), so SQLite's idle
    write-ahead log is given back after 5 s without a write rather than
    the default 10, as it is between a default server's runs (60 s)."""
    env = {"LOGSVC_RETENTION_DAYS": "0", "LOGSVC_MAX_ROWS": "1000000000",
           "LOGSVC_PRUNE_INTERVAL_S": "10", "LOGSVC_WAL_IDLE_S": "5",
           "LOGSVC_DATABASE_URL": database_url, "LOGSVC_HEARTBEAT_S": "15",
           "GUNICORN_CMD_ARGS": "", **(env or {})}
    return _Server(data_dir, workers=workers, env=env, token=TOKEN).start()


def timed(fn, repeat):
    """Per-call wall times in milliseconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def p50(times):
    return statistics.median(times)


def p99(times):
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def sqlite_connect(path):
    import sqlite3
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("PRAGMA synchronous=full")
    return conn


def post_batches(url, bodies, concurrency, per_body):
    """POST the NDJSON `bodies` to `url`'s ingest with `concurrency` requests
    in flight; returns entries per second (each body holds `per_body`)."""
    from concurrent.futures import ThreadPoolExecutor

    headers = {**HEADERS, "Content-Type": "application/x-ndjson"}
    sessions = [requests.Session() for _ in range(concurrency)]

    def send(numbered):
        number, body = numbered
        response = sessions[number % concurrency].post(
            url + "/api/proxy-logs/_ingest", data=body, headers=headers)
        assert response.json()["accepted"] == per_body, response.text

    with ThreadPoolExecutor(concurrency) as pool:
        start = time.perf_counter()
        list(pool.map(send, enumerate(bodies)))
        return len(bodies) * per_body / (time.perf_counter() - start)


@contextlib.contextmanager
def postgres_schema(url, name, kept=None):
    """A schema of its own in the PostgreSQL at `url`, dropped afterwards.
    Yields the URL that selects it. `kept`: the schema is `name` and stays
    (for a later run to ask again), made anew ("new") or used as it is
    ("reuse")."""
    import psycopg2

    schema = name if kept else f"{name}_{os.getpid()}_{time.monotonic_ns()}"
    admin = psycopg2.connect(url)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            if kept == "new":
                cursor.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            if kept != "reuse":
                cursor.execute(f"CREATE SCHEMA {schema}")
        yield f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    finally:
        if not kept:
            with admin.cursor() as cursor:
                cursor.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()
