"""Can one tenant stall the others? Another tenant's p50 idle and while one
tenant fires a burst of the costliest questions it may ask, in one run.

    .venv/bin/python -m bench.stall [--entries 120000] [--burst 30]

A default server (two gevent workers) holds `--entries` entries of tenant
A, every url and body full of the word `v2`, and 5,000 of tenant B. B asks
its newest page and its last hour's stats in a loop (its rate limit raised
for the measurement); A sends `--burst` requests at once, each the longest
search the service takes (a phrase of 32 `v2`s, 8 such terms: 64 words)
over list, stats and histogram, again and again for as long as B measures.
Prints B's p50 and p99 idle and under the burst, their ratio (goal: at
most 2), and how A's requests were answered (no 5xx but the documented
503 of the time limit).
"""
import argparse
import collections
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import requests

from bench.common import HEADERS, entries
from logsvc.testing import Server

TOKEN = "bench-admin-token"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=120_000)
    parser.add_argument("--burst", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="logsvc-stall-"))
    server = Server(root, workers=2, token=TOKEN, env={
        "LOGSVC_RATE_LIMIT_PER_MIN": "1000000", "LOGSVC_RETENTION_DAYS": "0",
        "LOGSVC_MAX_ROWS": "1000000000"}).start()
    try:
        url = server.url + "/api/proxy-logs"
        for start in range(0, args.entries, 5000):
            batch = entries(5000, start)
            for e in batch:
                e["projectId"], e["containerId"] = "tenant_a", "a1"
                e["url"] = "/v2/v2/v2/" + str(start)
                e["responseBody"] = " ".join(["v2"] * 40)
            post(url, batch)
        b_batch = entries(5000, 10**7)
        for e in b_batch:
            e["projectId"], e["containerId"] = "tenant_b", "b1"
        post(url, b_batch)
        a = token(url, "tenant_a")
        b = token(url, "tenant_b")
        ask_b = [(url + "/_logs", {"limit": 50, "order": "desc"}),
                 (url + "/_logs/stats", {"since": "1h"})]
        idle = measure(ask_b, b, args.seconds / 2)
        phrase = ".".join(["v2"] * 32)
        costly = " ".join([phrase, phrase])  # 64 words: the most a search may have
        answers = collections.Counter()
        stop = threading.Event()

        def attack():
            session = requests.Session()
            paths = ("/_logs", "/_logs/stats", "/_logs/stats/histogram")
            n = 0
            while not stop.is_set():
                path = paths[n % 3]
                n += 1
                try:
                    response = session.get(url + path, params={"q": costly}, headers=a,
                                           timeout=120)
                    answers[response.status_code] += 1
                except requests.RequestException as exc:
                    answers[type(exc).__name__] += 1

        with ThreadPoolExecutor(args.burst) as pool:
            for _ in range(args.burst):
                pool.submit(attack)
            time.sleep(2)  # the burst is under way
            loaded = measure(ask_b, b, args.seconds)
            stop.set()
        print()
        print(f"{'tenant B':28} {'idle':>10} {'A bursting':>12} {'ratio':>8}")
        for name, fn in (("p50 (ms)", lambda t: statistics.median(t)),
                         ("p99 (ms)", lambda t: sorted(t)[int(len(t) * 0.99) - 1])):
            one, other = fn(idle) * 1000, fn(loaded) * 1000
            print(f"{name:28} {one:>10.1f} {other:>12.1f} {other / one:>8.2f}")
        print(f"B's requests: {len(idle)} idle, {len(loaded)} under the burst")
        print(f"A's answers: {dict(answers)}")
        print(orjson.dumps({"idle_p50": statistics.median(idle),
                            "loaded_p50": statistics.median(loaded),
                            "a_answers": {str(k): v for k, v in answers.items()}}).decode())
    finally:
        server.stop()


def post(url, batch):
    response = requests.post(url + "/_ingest", data=orjson.dumps(batch), timeout=120,
                             headers={**HEADERS, "Content-Type": "application/json"})
    assert response.status_code == 200, response.text[:300]


def token(url, project):
    made = requests.post(url + "/_admin/tokens", headers=HEADERS, timeout=10, json={
        "name": project, "projectId": project, "capabilities": {"logs": True}}).json()
    return {"Authorization": f"Bearer {made['token']}"}


def measure(asks, headers, seconds):
    session = requests.Session()
    times = []
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        path, params = asks[n % len(asks)]
        n += 1
        started = time.perf_counter()
        response = session.get(path, params=params, headers=headers, timeout=120)
        times.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text[:200]
    return times


if __name__ == "__main__":
    main()
