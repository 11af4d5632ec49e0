"""Alert rules: managed within the caller's scope, evaluated from the
counters, one firing and one resolved notification per episode in
Alertmanager's webhook format, retried with backoff, and webhooks that
cannot reach what the tenant could not."""
import http.server
import threading
import time

import orjson
import pytest
import requests

from logsvc import alerting
from logsvc.store import alerts, db
from logsvc.testing import ADMIN_TOKEN, Server, Store

ALERTS = "/api/proxy-logs/_alerts"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
LOCAL = "127.0.0.1/32"


class Receiver:
    """A webhook receiver on loopback: records what it is sent, answers
    with the statuses it is told (then 200)."""

    def __init__(self, statuses=()):
        self.received, self.statuses = [], list(statuses)
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.received.append(orjson.loads(body))
                self.send_response(owner.statuses.pop(0) if owner.statuses else 200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def statuses_of(self):
        return [message["status"] for message in self.received]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    found = Receiver()
    yield found
    found.close()


@pytest.fixture
def app(make_app):
    return make_app(webhook_allow=LOCAL, rate_limit_per_min=0)


def rule(hook, **changes):
    body = {"name": "checkout failing", "filters": {"projectId": "shop", "level": "error"},
            "condition": {"metric": "count", "op": ">", "threshold": 2},
            "window": "5m", "webhook": hook, "labels": {"team": "payments"},
            "annotations": {"runbook": "https://wiki.example.com/checkout"}}
    body.update(changes)
    return body


def entries(n, project="shop", level="error", ts_ms=None, **extra):
    now = ts_ms or int(time.time() * 1000)
    return [{"kind": "response", "level": level, "projectId": project, "containerId": "web",
             "method": "POST", "url": f"/v1/checkout/{i}", "status": 503 if level == "error" else 200,
             "durationMs": 40.0 + i,
             "tsMs": now - 1000 - i, **extra} for i in range(n)]


def evaluate(app, now=None):
    with db.using(app.extensions["logsvc"].store):
        return alerts.evaluate(now=now, base_url="http://logs.example.com")


def deliver(app, now=None, allow=(LOCAL,)):
    with db.using(app.extensions["logsvc"].store):
        return alerting.deliver_due(alerting.allowed_networks(",".join(allow)), now=now)


def test_a_rule_is_created_read_changed_and_deleted(client, receiver):
    created = client.post(ALERTS, json=rule(receiver.url), headers=ADMIN)
    assert created.status_code == 201, created.json
    body = created.json
    assert body["filters"] == {"projectId": "shop", "level": "error"}
    assert (body["window"], body["for"], body["state"], body["enabled"]) == ("5m", "0s", "ok", True)
    assert body["condition"] == {"metric": "count", "op": ">", "threshold": 2}
    listed = client.get(ALERTS, headers=ADMIN).json["alerts"]
    assert [r["id"] for r in listed] == [body["id"]]
    changed = client.patch(f"{ALERTS}/{body['id']}", headers=ADMIN,
                           json={"condition": {"metric": "p95", "op": ">=", "threshold": 250},
                                 "for": "2m"})
    assert changed.status_code == 200, changed.json
    assert changed.json["condition"]["metric"] == "p95" and changed.json["for"] == "2m"
    assert changed.json["filters"] == body["filters"]  # kept, with its scope
    assert client.delete(f"{ALERTS}/{body['id']}", headers=ADMIN).status_code == 204
    assert client.get(f"{ALERTS}/{body['id']}", headers=ADMIN).status_code == 404
    assert client.get(ALERTS, headers=ADMIN).json["alerts"] == []


@pytest.mark.parametrize("change, named", [
    ({"name": ""}, "name"),
    ({"condition": {"metric": "median", "op": ">", "threshold": 1}}, "condition.metric"),
    ({"condition": {"metric": "count", "op": "=", "threshold": 1}}, "condition.op"),
    ({"condition": {"metric": "count", "op": ">"}}, "condition.threshold"),
    ({"window": "30s"}, "window"), ({"window": "2d"}, "window"), ({"for": "soon"}, "for"),
    ({"filters": {"level": "fatal"}}, "filters.level"),
    ({"filters": {"since": "1h"}}, "filters.since"),
    ({"filters": {"levle": "error"}}, "filters.levle"),
    ({"filters": {"q": '"unclosed'}}, "filters.q"),
    ({"webhook": "ftp://hooks.example.com/x"}, "webhook"),
    ({"webhook": "http://user:secret@hooks.example.com/x"}, "webhook"),
    ({"webhook": "http://[::1/hook"}, "webhook"),
    ({"labels": {"bad key": "x"}}, "labels"),
    ({"enabled": "maybe"}, "enabled"),
])
def test_a_bad_rule_is_a_400_naming_the_field(client, receiver, change, named):
    response = client.post(ALERTS, json={**rule(receiver.url), **change}, headers=ADMIN)
    assert response.status_code == 400, response.json
    assert f"'{named}'" in response.json["message"]
    assert client.get(ALERTS, headers=ADMIN).json["alerts"] == []


@pytest.mark.parametrize("webhook", [
    "http://127.0.0.1:9/hook", "http://localhost:9/hook", "http://10.1.2.3/hook",
    "http://169.254.169.254/latest/meta-data", "http://[::1]:9/hook", "http://0.0.0.0/",
    "http://[::ffff:127.0.0.1]/hook", "http://100.64.0.1/", "http://192.168.1.1/",
])
def test_a_webhook_to_a_private_address_is_refused_unless_the_operator_allows_it(
        make_app, webhook):
    client = make_app(rate_limit_per_min=0).test_client()
    response = client.post(ALERTS, json=rule(webhook), headers=ADMIN)
    assert response.status_code == 400, response.json
    assert "'webhook'" in response.json["message"]


def test_a_scoped_caller_manages_its_own_scope_only(client, receiver):
    def token(project, container=None):
        body = {"name": "t", "projectId": project, "containerId": container,
                "capabilities": {"logs": True}}
        made = client.post("/api/proxy-logs/_admin/tokens", json=body, headers=ADMIN)
        assert made.status_code == 201, made.json
        return {"Authorization": f"Bearer {made.json['token']}"}

    shop, other, shop_web = token("shop"), token("other"), token("shop", "web")
    # A rule's scope is its owner's: unnamed, it is the caller's project.
    mine = client.post(ALERTS, json=rule(receiver.url, filters={"level": "error"}), headers=shop)
    assert mine.status_code == 201 and mine.json["filters"]["projectId"] == "shop"
    assert client.post(ALERTS, json=rule(receiver.url, filters={"projectId": "other"}),
                       headers=shop).status_code == 403
    theirs = client.post(ALERTS, json=rule(receiver.url, filters={}), headers=other).json
    web = client.post(ALERTS, json=rule(receiver.url, filters={}), headers=shop_web).json
    assert web["filters"] == {"projectId": "shop", "containerId": "web"}
    assert {r["id"] for r in client.get(ALERTS, headers=shop).json["alerts"]} == \
        {mine.json["id"], web["id"]}
    assert [r["id"] for r in client.get(ALERTS, headers=shop_web).json["alerts"]] == [web["id"]]
    assert len(client.get(ALERTS, headers=ADMIN).json["alerts"]) == 3
    for method in ("get", "patch", "delete"):
        response = getattr(client, method)(f"{ALERTS}/{theirs['id']}", headers=shop,
                                           json={"name": "mine now"})
        assert response.status_code == 404, method
    # A container's credential cannot touch its project's rules either.
    assert client.delete(f"{ALERTS}/{mine.json['id']}", headers=shop_web).status_code == 404
    assert client.get(ALERTS).status_code == 401


def test_a_rule_fires_once_and_resolves_once_per_episode(app, client, receiver):
    store = Store(client)
    made = client.post(ALERTS, json=rule(receiver.url), headers=ADMIN).json
    now = int(time.time() * 1000)
    store.ingest(entries(2, ts_ms=now) + entries(5, project="elsewhere", ts_ms=now)
                 + entries(4, level="info", ts_ms=now))
    assert evaluate(app, now) == []  # 2 errors of the shop: not above 2
    store.ingest(entries(7, ts_ms=now))
    assert evaluate(app, now) == [(made["id"], "firing")]
    assert evaluate(app, now + 1000) == []  # still firing: nothing more owed
    assert deliver(app) == 1 and deliver(app) == 0
    # Past the window, the entries are out of it: resolved.
    later = now + 6 * 60_000
    assert evaluate(app, later) == [(made["id"], "ok")]
    assert deliver(app, now=later) == 1
    assert receiver.statuses_of() == ["firing", "resolved"]
    firing, resolved = receiver.received
    assert firing["version"] == "4" and firing["receiver"] == "logsvc"
    alert = firing["alerts"][0]
    assert alert["labels"] == {"alertname": "checkout failing", "team": "payments",
                               "projectId": "shop"}
    assert alert["annotations"]["value"] == "9"
    assert alert["annotations"]["runbook"] == "https://wiki.example.com/checkout"
    assert alert["endsAt"] == "0001-01-01T00:00:00Z"
    assert alert["generatorURL"].startswith("http://logs.example.com/?")
    assert "projectId=shop" in alert["generatorURL"] and "level=error" in alert["generatorURL"]
    samples = alert["samples"]
    assert len(samples) == 5 and all(s["status"] == 503 and s["url"].startswith("/v1/checkout/")
                                     for s in samples)
    ended = resolved["alerts"][0]
    assert ended["startsAt"] == alert["startsAt"] and ended["endsAt"] != "0001-01-01T00:00:00Z"
    shown = client.get(f"{ALERTS}/{made['id']}", headers=ADMIN).json
    assert shown["state"] == "ok"
    assert shown["lastNotification"]["status"] == "resolved"
    assert shown["lastNotification"]["result"] == "HTTP 200"


def test_for_keeps_a_rule_pending_until_the_condition_has_held_that_long(app, client, receiver):
    store = Store(client)
    made = client.post(ALERTS, json=rule(receiver.url, **{"for": "2m"}), headers=ADMIN).json
    now = int(time.time() * 1000)
    store.ingest(entries(5, ts_ms=now))
    assert evaluate(app, now) == [(made["id"], "pending")]
    assert evaluate(app, now + 60_000) == []
    assert deliver(app, now + 60_000) == 0
    # Still within the 5 minute window two minutes on: firing.
    assert evaluate(app, now + 120_000) == [(made["id"], "firing")]
    assert deliver(app, now + 120_000) == 1


@pytest.mark.parametrize("metric, op, threshold, fires", [
    ("errorRate", ">", 0.5, True), ("errorRate", ">", 0.7, False),
    ("rate", ">=", 6 / 300, True), ("p95", ">", 42, True), ("p99", "<=", 50, True),
    ("p50", "<", 39, False),
])
def test_each_metric_is_measured_over_the_window(app, client, receiver, metric, op, threshold,
                                                  fires):
    store = Store(client)
    body = rule(receiver.url, filters={"projectId": "shop"},
                condition={"metric": metric, "op": op, "threshold": threshold})
    made = client.post(ALERTS, json=body, headers=ADMIN).json
    now = int(time.time() * 1000)
    # 4 errors of 40-43 ms and 2 infos of 40-41 ms: an error rate of 2/3.
    store.ingest(entries(4, ts_ms=now) + entries(2, level="info", ts_ms=now))
    assert evaluate(app, now) == ([(made["id"], "firing")] if fires else [])


def test_a_failed_notification_is_tried_again_with_backoff(app, client):
    receiver = Receiver(statuses=[500, 503])
    try:
        Store(client).ingest(entries(5))
        made = client.post(ALERTS, json=rule(receiver.url), headers=ADMIN).json
        now = int(time.time() * 1000)
        evaluate(app, now)
        assert deliver(app, now) == 0
        assert deliver(app, now + 4_000) == 0  # not yet due again
        assert deliver(app, now + 5_500) == 0  # the first retry, within 10 s: 503
        assert len(receiver.received) == 2
        assert deliver(app, now + 30_000) == 0  # the next one is 30 s later
        assert deliver(app, now + 40_000) == 1
        assert receiver.statuses_of() == ["firing"] * 3
        last = client.get(f"{ALERTS}/{made['id']}", headers=ADMIN).json["lastNotification"]
        assert (last["attempts"], last["result"], last["pending"]) == (3, "HTTP 200", False)
    finally:
        receiver.close()


def test_a_webhook_is_checked_again_when_a_notification_is_sent(app, client, receiver):
    Store(client).ingest(entries(5))
    made = client.post(ALERTS, json=rule(receiver.url), headers=ADMIN).json
    evaluate(app)
    # The operator no longer allows loopback: nothing is sent there.
    assert deliver(app, allow=()) == 0
    assert receiver.received == []
    last = client.get(f"{ALERTS}/{made['id']}", headers=ADMIN).json["lastNotification"]
    assert last["result"].startswith("refused:") and last["attempts"] == 1


@pytest.mark.server
def test_two_workers_notify_exactly_once_per_episode(tmp_path, receiver):
    server = Server(tmp_path, workers=2, env={"LOGSVC_ALERT_INTERVAL_S": "0.5",
                                               "LOGSVC_WEBHOOK_ALLOW": LOCAL,
                                               "LOGSVC_RATE_LIMIT_PER_MIN": "0"})
    server.start()
    try:
        # Fires while the project is quiet, resolves once it speaks.
        body = rule(receiver.url, filters={"projectId": "quiet"},
                    condition={"metric": "count", "op": "<", "threshold": 1}, window="1m")
        made = requests.post(server.url + ALERTS, json=body, headers=ADMIN, timeout=10)
        assert made.status_code == 201, made.text
        deadline = time.monotonic() + 20
        while not receiver.received and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(3)  # several more evaluations, by either worker
        assert receiver.statuses_of() == ["firing"]
        response = requests.post(server.url + "/api/proxy-logs/_ingest", headers=ADMIN,
                                 json=entries(1, project="quiet"), timeout=10)
        assert response.status_code == 200
        deadline = time.monotonic() + 20
        while len(receiver.received) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(3)
        assert receiver.statuses_of() == ["firing", "resolved"]
        shown = requests.get(f"{server.url}{ALERTS}/{made.json()['id']}", headers=ADMIN,
                             timeout=10).json()
        assert shown["state"] == "ok" and shown["lastNotification"]["status"] == "resolved"
    finally:
        server.stop()


def test_a_browser_session_changes_rules_only_with_its_request_header(client, receiver):
    opened = client.post("/api/session", headers=ADMIN)
    assert opened.status_code == 200
    assert client.get(ALERTS).status_code == 200  # reading takes the cookie alone
    refused = client.post(ALERTS, json=rule(receiver.url))
    assert refused.status_code == 403 and "X-Requested-With" in refused.json["message"]
    made = client.post(ALERTS, json=rule(receiver.url), headers={"X-Requested-With": "logsvc"})
    assert made.status_code == 201, made.json
    assert client.delete(f"{ALERTS}/{made.json['id']}").status_code == 403
    assert client.delete(f"{ALERTS}/{made.json['id']}",
                         headers={"X-Requested-With": "logsvc"}).status_code == 204
