"""The Python client and the command line against real servers."""
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time

import pytest
import requests

from logsvc.client import BadRequest, Client, Forbidden, Gap, Reset, Unauthorized
from logsvc.testing import ADMIN_TOKEN, ROOT, Server, make_entry

pytestmark = pytest.mark.server  # real gunicorn servers

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def entries(n, start=0):
    return [make_entry(i, tsMs=None, url=f"/c/{i}") for i in range(start, start + n)]


@pytest.fixture
def client(server):
    return Client(server.url, token=ADMIN_TOKEN)


def test_ingest_batches_and_a_keyset_sweep_sees_every_entry_once(client):
    answer = client.ingest(entries(2500) + [{"kind": "nope"}], batch_size=1000)
    assert answer["accepted"] == 2500 and answer["rejected"][0]["index"] == 2500
    assert [e["id"] for e in client.iter_entries(page_size=300)] == list(range(1, 2501))
    errors = list(client.iter_entries(page_size=300, level=["error"]))
    assert {e["level"] for e in errors} == {"error"}
    assert client.stats()["total"] == 2500
    assert client.histogram(bucket="5m", since="1h")["bucketMs"] == 300_000
    assert client.list(last=3)["nextAfterId"] == 2500


def test_errors_are_typed(server, client):
    with pytest.raises(Unauthorized):
        Client(server.url, token="wrong").list()
    with pytest.raises(BadRequest) as bad:
        client.list(level="loud")
    assert "level" in bad.value.message
    token = requests.post(server.url + "/api/proxy-logs/_admin/tokens", headers=ADMIN,
                          json={"name": "t", "projectId": "p1"}, timeout=10).json()["token"]
    with pytest.raises(Forbidden):
        Client(server.url, token=token).list(projectId="p2")


def test_a_rate_limited_client_waits_and_succeeds(tmp_path):
    server = Server(tmp_path, env={"LOGSVC_RATE_LIMIT_PER_MIN": "30"}).start()
    try:
        token = requests.post(server.url + "/api/proxy-logs/_admin/tokens", headers=ADMIN,
                              json={"name": "t", "projectId": "p1"}, timeout=10).json()["token"]
        scoped = Client(server.url, token=token)
        for _ in range(3):
            # Spend the budget until the server refuses (a loaded machine may
            # take long enough over 30 requests for a token to come back).
            for _ in range(100):
                refused = requests.get(server.url + "/api/proxy-logs/_logs/stats", timeout=10,
                                       headers={"Authorization": f"Bearer {token}"})
                if refused.status_code == 429:
                    break
            assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
            started = time.monotonic()
            assert scoped.stats()["total"] == 0  # refused too, it waits out Retry-After
            if time.monotonic() - started >= 0.9:
                break
            # A token came back (one each 2 s) between the refusal and the
            # client's request, which was then let through: again.
        else:
            pytest.fail("the client's request was never refused first")
    finally:
        server.stop()


class Collector:
    """Runs client.stream in a thread and keeps what it yields, until its
    test ends (see stop_collectors)."""

    running = []

    def __init__(self, client, **kwargs):
        self.items = []
        self.stopped = False
        self.thread = threading.Thread(target=self._run, args=(client, kwargs), daemon=True)
        Collector.running.append(self)
        self.thread.start()

    def _run(self, client, kwargs):
        try:
            for item in client.stream(**kwargs):
                if self.stopped:
                    return
                self.items.append(item)
        except Exception:
            # After its test, a stream that still reconnects may find
            # another test's server on its old port: not this test's failure.
            if not self.stopped:
                raise

    def ids(self):
        return [i["id"] for i in self.items if isinstance(i, dict)]

    def wait_for(self, predicate, seconds=20):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if predicate(self):
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out with {self.items[-5:]}")


@pytest.fixture(autouse=True)
def stop_collectors():
    yield
    for collector in Collector.running:
        collector.stopped = True
    Collector.running.clear()


def test_the_stream_survives_a_server_kill_and_restart_without_gap_or_duplicate(tmp_path):
    server = Server(tmp_path).start()
    client = Client(server.url, token=ADMIN_TOKEN)
    collector = Collector(client, max_backoff=0.5)
    time.sleep(0.5)
    client.ingest(entries(5))
    collector.wait_for(lambda c: len(c.ids()) == 5)
    server.kill()
    time.sleep(1)  # the client finds nothing listening and retries
    restarted = Server(tmp_path, port=server.port).start()
    try:
        client.ingest(entries(5, start=5))
        collector.wait_for(lambda c: len(c.ids()) == 10)
        time.sleep(0.5)
        assert collector.ids() == list(range(1, 11))
    finally:
        restarted.stop()


def test_the_stream_surfaces_a_reset_and_follows_the_new_store(server, client):
    client.ingest(entries(3))
    collector = Collector(client, last_event_id=0)
    collector.wait_for(lambda c: len(c.ids()) == 3)
    requests.post(server.url + "/api/proxy-logs/_admin/clear", headers=ADMIN, timeout=10)
    collector.wait_for(lambda c: any(isinstance(i, Reset) for i in c.items))
    time.sleep(0.5)
    answer = client.ingest(entries(2))
    collector.wait_for(lambda c: len(c.ids()) == 5)
    assert collector.ids()[3:] == [answer["firstId"], answer["lastId"]]


def test_the_stream_surfaces_a_gap(tmp_path):
    server = Server(tmp_path, env={"LOGSVC_MAX_ROWS": "20"}).start()
    try:
        client = Client(server.url, token=ADMIN_TOKEN)
        client.ingest(entries(50))
        requests.post(server.url + "/api/proxy-logs/_admin/prune", headers=ADMIN, timeout=10)
        collector = Collector(client, last_event_id=5)
        collector.wait_for(lambda c: len(c.ids()) == 20)
        assert collector.items[0] == Gap(6, 30)
    finally:
        server.stop()


# --- the command line ------------------------------------------------------------

def cli(server, *args, token=ADMIN_TOKEN, stdin=None, timeout=60):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LOGSVC_") or k == "LOGSVC_DATABASE_URL"}
    env.update(LOGSVC_URL=server.url if server else "http://127.0.0.1:9", LOGSVC_TOKEN=token)
    return subprocess.run([sys.executable, "-m", "logsvc", *args], cwd=ROOT, env=env,
                          input=stdin, capture_output=True, text=True, timeout=timeout)


def test_cli_ingest_query_and_stats(server, tmp_path):
    path = tmp_path / "entries.ndjson"
    path.write_text("\n".join(json.dumps(e) for e in entries(40)))
    done = cli(server, "ingest", str(path), "--batch", "15")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["accepted"] == 40
    assert "40/40 entries" in done.stderr
    found = cli(server, "query", "--level", "error", "--ndjson", "--limit", "100")
    lines = [json.loads(line) for line in found.stdout.splitlines()]
    assert lines and {e["level"] for e in lines} == {"error"}
    table = cli(server, "query", "--last", "2")
    assert "id=40" in table.stdout and "-- 2 of 40 --" in table.stderr
    stats = cli(server, "stats")
    assert "total" in stats.stdout and "40" in stats.stdout and "level" in stats.stdout
    # One object over several lines, as the API takes one.
    pretty = tmp_path / "one.json"
    pretty.write_text(json.dumps({**entries(1)[0], "url": "/pretty"}, indent=2))
    done = cli(server, "ingest", str(pretty))
    assert done.returncode == 0 and json.loads(done.stdout)["accepted"] == 1, done.stderr


def output_lines(proc):
    """A queue of the lines `proc` writes to its stdout (read with a
    timeout, so that a test waits for a line without hanging)."""
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout],
                     daemon=True).start()
    return lines


def test_cli_tail_resumes_from_its_state_file(server, tmp_path):
    state = tmp_path / "tail.state"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LOGSVC_") or k == "LOGSVC_DATABASE_URL"}
    env.update(LOGSVC_URL=server.url, LOGSVC_TOKEN=ADMIN_TOKEN)

    def run_tail(replay):
        with subprocess.Popen([sys.executable, "-m", "logsvc", "tail", "--json", "--replay",
                               str(replay), "--state-file", str(state)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, text=True) as proc:
            lines = output_lines(proc)
            try:
                seen = [json.loads(lines.get(timeout=30))["id"] for _ in range(3)]
                deadline = time.monotonic() + 5  # the id is remembered right after it is shown
                while state.read_text() != str(seen[-1]) and time.monotonic() < deadline:
                    time.sleep(0.05)
            finally:
                proc.terminate()
        return seen

    client = Client(server.url, token=ADMIN_TOKEN)
    client.ingest(entries(3))
    assert run_tail(replay=3) == [1, 2, 3]
    assert state.read_text() == "3"
    client.ingest(entries(3, start=3))  # written while no tail runs
    # The state file, not --replay, says where to start.
    assert run_tail(replay=0) == [4, 5, 6]


def test_cli_exit_codes(server):
    assert cli(server, "query", token="wrong").returncode == 1
    assert cli(None, "stats").returncode == 3
    assert cli(server, "query", "--help").returncode == 0


def test_cli_query_all_exports_every_match_and_a_cut_page_says_so(server):
    ingest = requests.post(server.url + "/api/proxy-logs/_ingest", timeout=30,
                           headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                           json=[{"kind": "event", "url": f"/x/{i}", "projectId": "p"}
                                 for i in range(2500)])
    assert ingest.status_code == 200
    page = cli(server, "query", "--project", "p", "--ndjson")
    assert len(page.stdout.splitlines()) == 50
    assert "-- 50 of 2500; --all for every one --" in page.stderr
    everything = cli(server, "query", "--project", "p", "--all", "--ndjson")
    assert everything.returncode == 0, everything.stderr
    ids = [json.loads(line)["id"] for line in everything.stdout.splitlines()]
    assert len(ids) == 2500 and ids == sorted(set(ids))
    assert "2,500 entries, all that match" in everything.stderr
    assert cli(server, "query", "--all", "--last", "5").returncode == 2
    stats = cli(server, "stats", "--project", "p", "--kind", "event", "--q", "x")
    assert stats.returncode == 0 and "2,500" in stats.stdout


def test_a_cli_page_whose_total_is_a_lower_bound_says_so_and_offers_the_rest(tmp_path):
    # Sealed in segments of 64, and a page's count reads 8 rows beyond its
    # own segments: a search's total is then a lower bound.
    server = Server(tmp_path, env={"LOGSVC_HOT_ROWS": "64", "LOGSVC_SEGMENT_ROWS": "64",
                                   "LOGSVC_SEAL_INTERVAL_S": "0.2", "LOGSVC_MERGE_SEGMENTS": "0",
                                   "LOGSVC_SEALED_COUNT_ROWS": "8"}).start()
    try:
        requests.post(server.url + "/api/proxy-logs/_ingest", headers=ADMIN, timeout=30,
                      json=[{"kind": "event", "url": f"/x/{i}/{'odd' if i % 2 else 'even'}",
                             "projectId": "p"} for i in range(600)]).raise_for_status()
        # The page the CLI asks for (oldest first): while a single segment
        # is sealed, that page has read all of it and its total is exact;
        # from the second segment on, it stays a lower bound.
        deadline = time.monotonic() + 30
        while True:
            page = requests.get(server.url + "/api/proxy-logs/_logs", headers=ADMIN, timeout=10,
                                params={"q": "odd", "limit": 5}).json()
            if not page["totalExact"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert page["totalExact"] is False and 5 <= page["total"] < 300
        shown = cli(server, "query", "--q", "odd", "--limit", "5", "--ndjson")
        assert len(shown.stdout.splitlines()) == 5, shown.stderr
        assert re.search(r"^-- 5 of at least \d+; --all for every one --$", shown.stderr, re.M), \
            shown.stderr
        everything = cli(server, "query", "--q", "odd", "--all", "--ndjson")
        assert len(everything.stdout.splitlines()) == 300
    finally:
        server.stop()


def test_a_refused_cli_says_which_token_it_sent_and_where_tokens_are(server, tmp_path):
    wrong = cli(server, "query", token="wrong")
    assert wrong.returncode == 1
    assert "the token in LOGSVC_TOKEN was refused" in wrong.stderr
    assert "--token" in wrong.stderr and "admin_token" in wrong.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGSVC_")}
    elsewhere = subprocess.run(
        [sys.executable, "-m", "logsvc", "query", "--url", server.url], cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert elsewhere.returncode == 1
    assert "no token was sent" in elsewhere.stderr
    assert "LOGSVC_TOKEN" in elsewhere.stderr and "admin_token" in elsewhere.stderr


def test_cli_errors_are_one_line_naming_the_problem(server, tmp_path):
    missing = cli(None, "ingest", str(tmp_path / "missing.ndjson"))
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"logsvc: cannot read {tmp_path / 'missing.ndjson'}: No such file or directory"]
    broken = tmp_path / "broken.ndjson"
    broken.write_text('{"kind": "event", "url": "/a"}\n\n{"kind": \n')
    unread = cli(server, "ingest", str(broken))
    assert unread.returncode == 2
    assert unread.stderr.strip().splitlines() == [
        f"logsvc: {broken}: line 3 is not JSON: unexpected end of data at column 10; "
        "nothing was sent"]
    assert cli(server, "query", "--ndjson").stdout == ""  # the good first line neither
    state = tmp_path / "no-such-dir" / "tail.state"
    unwritable = cli(server, "tail", "--state-file", str(state))
    assert unwritable.returncode == 2 and unwritable.stdout == ""
    assert unwritable.stderr.strip().splitlines() == [
        f"logsvc: cannot write the state file {state}: No such file or directory"]
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("LOGSVC_") or k == "LOGSVC_DATABASE_URL"}
        env.update(LOGSVC_PORT=str(port), LOGSVC_DATA_DIR=str(tmp_path / "data"),
                   LOGSVC_ADMIN_TOKEN=ADMIN_TOKEN)
        for command in (["app.py"], ["-m", "logsvc", "demo", "--proxy-port", "0"]):
            done = subprocess.run([sys.executable, *command], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 2, done.stderr
            assert "Traceback" not in done.stderr
            assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
            assert "LOGSVC_PORT" in done.stderr


def test_cli_import_writes_what_it_did_not_store_and_why(server, tmp_path):
    log = tmp_path / "access.log"
    when = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(time.time() - 60))
    good = (f'203.0.113.7 - - [{when}] "GET /v1/users/7 HTTP/1.1" 200 '
            '318 "-" "curl/8.5" 0.012')
    old = good.replace(when[7:11], "1900")  # older than the retention period
    log.write_text("\n".join([good, "garbage here", old, good]) + "\n")
    rejects = tmp_path / "rejects.ndjson"
    done = cli(server, "import", str(log), "--rejects", str(rejects), "--project", "p")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"accepted": 2, "rejected": 1,
                                                         "unreadable": 1}
    written = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["line"], r["text"]) for r in written] == [(2, "garbage here"), (3, old)]
    assert "nginx" in written[0]["reason"] and "tsMs" in written[1]["reason"]
    stored = Client(server.url, token=ADMIN_TOKEN).list(projectId="p")["entries"]
    assert [(e["route"], e["durationMs"]) for e in stored] == [("/v1/users/{id}", 12)] * 2


def test_cli_tail_from_an_id_past_the_end_follows_from_now(server):
    Client(server.url, token=ADMIN_TOKEN).ingest(entries(5))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LOGSVC_") or k == "LOGSVC_DATABASE_URL"}
    env.update(LOGSVC_URL=server.url, LOGSVC_TOKEN=ADMIN_TOKEN)
    with subprocess.Popen([sys.executable, "-m", "logsvc", "tail", "--json", "--since-id",
                           "999999"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        lines = output_lines(proc)
        # One entry at a time until the tail, once it follows, shows one.
        first, start = None, 5
        deadline = time.monotonic() + 30
        while first is None and time.monotonic() < deadline:
            Client(server.url, token=ADMIN_TOKEN).ingest(entries(1, start=start))
            start += 1
            try:
                first = json.loads(lines.get(timeout=1))
            except queue.Empty:
                pass
        proc.terminate()
        assert "reset" in proc.stderr.read()
        proc.stderr.close()
    assert first is not None and first["id"] > 5  # not one of the five stored before


def test_cli_alerts_create_list_and_delete(tmp_path):
    server = Server(tmp_path, env={"LOGSVC_WEBHOOK_ALLOW": "127.0.0.1/32"}).start()
    try:
        made = cli(server, "alerts", "create", "--name", "slow search", "--project", "shop",
                   "--route", "/v1/search", "--metric", "p95", "--threshold", "800",
                   "--window", "10m", "--for", "2m", "--webhook", "http://127.0.0.1:9/hook",
                   "--label", "severity=page")
        assert made.returncode == 0, made.stderr
        rule = json.loads(made.stdout)
        assert rule["filters"] == {"projectId": "shop", "route": "/v1/search"}
        assert (rule["window"], rule["for"], rule["labels"]) == ("10m", "2m", {"severity": "page"})
        listed = cli(server, "alerts", "list")
        assert "slow search" in listed.stdout and "p95 > 800" in listed.stdout
        refused = cli(server, "alerts", "create", "--name", "x", "--metric", "count",
                      "--threshold", "1", "--webhook", "http://10.0.0.1/")
        assert refused.returncode == 1 and "'webhook'" in refused.stderr
        assert cli(server, "alerts", "delete", str(rule["id"])).returncode == 0
        assert "no alert rules" in cli(server, "alerts", "list").stderr
    finally:
        server.stop()
