"""The operator's API and CLI, clear and destroy, and the fanout cursor."""
import json
import os
import subprocess
import sys
import time

import orjson
import pytest
import requests

from logsvc.store import retention
from logsvc.testing import ADMIN_TOKEN, INGEST, LOGS, ROOT, Server, Store, make_entry

ADMIN = "/api/proxy-logs/_admin"
TOKEN_BODY = {"name": "ci", "projectId": "proj_1", "containerId": None,
              "capabilities": {"logs": True, "ingest": True}}


def test_a_token_secret_is_shown_once_and_never_listed(client, admin):
    created = client.post(ADMIN + "/tokens", json=TOKEN_BODY, headers=admin)
    assert created.status_code == 201
    secret = created.json["token"]
    assert secret.startswith("lst_")
    listed = client.get(ADMIN + "/tokens", headers=admin)
    assert secret.split(".", 1)[1] not in listed.get_data(as_text=True)
    assert listed.json["tokens"][0] == {k: v for k, v in created.json.items() if k != "token"}


def test_a_revoked_token_stops_working_at_once(client, admin):
    created = client.post(ADMIN + "/tokens", json=TOKEN_BODY, headers=admin).json
    bearer = {"Authorization": f"Bearer {created['token']}"}
    assert client.get(LOGS, headers=bearer).status_code == 200
    revoked = client.delete(f"{ADMIN}/tokens/{created['id']}", headers=admin)
    assert revoked.json["revokedMs"] is not None
    assert client.get(LOGS, headers=bearer).status_code == 401
    assert client.delete(f"{ADMIN}/tokens/999", headers=admin).status_code == 404


def test_users_are_created_listed_and_deleted_without_their_password(client, admin):
    body = {"username": "ada", "password": "correct horse", "projectId": "proj_1"}
    assert client.post(ADMIN + "/users", json=body, headers=admin).status_code == 201
    assert client.post(ADMIN + "/users", json=body, headers=admin).status_code == 409
    listed = client.get(ADMIN + "/users", headers=admin)
    assert "correct horse" not in listed.get_data(as_text=True)
    assert [u["username"] for u in listed.json["users"]] == ["ada"]
    assert client.delete(ADMIN + "/users/ada", headers=admin).json["deleted"] is True
    assert client.delete(ADMIN + "/users/ada", headers=admin).status_code == 404


@pytest.mark.parametrize("path, body, name", [
    ("/tokens", {**TOKEN_BODY, "capabilities": {"logs": "*"}}, "capabilities"),
    ("/tokens", {**TOKEN_BODY, "capabilities": {"read": True}}, "capabilities"),
    ("/tokens", {k: v for k, v in TOKEN_BODY.items() if k != "projectId"}, "projectId"),
    ("/tokens", {**TOKEN_BODY, "name": ""}, "name"),
    ("/tokens", {**TOKEN_BODY, "extra": 1}, "extra"),
    ("/users", {"username": "a:b", "password": "long enough", "projectId": "p"}, "username"),
    ("/users", {"username": "ab", "password": "short", "projectId": "p"}, "password"),
])
def test_bad_admin_bodies_are_422_naming_the_field(client, admin, path, body, name):
    response = client.post(ADMIN + path, json=body, headers=admin)
    assert response.status_code == 422
    assert f"'{name}'" in response.json["message"]


def test_a_body_that_is_not_a_json_object_is_400(client, admin):
    response = client.post(ADMIN + "/tokens", data="nope", headers=admin,
                           content_type="application/json")
    assert response.status_code == 400


@pytest.mark.parametrize("method, path", [("GET", "/tokens"), ("POST", "/tokens"),
                                          ("DELETE", "/tokens/1"), ("GET", "/users"),
                                          ("POST", "/clear"), ("POST", "/prune"),
                                          ("POST", "/scopes/p/c/destroy")])
def test_admin_endpoints_refuse_scoped_callers(client, admin, method, path):
    token = client.post(ADMIN + "/tokens", json=TOKEN_BODY, headers=admin).json["token"]
    response = client.open(ADMIN + path, method=method, json={},
                           headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403
    assert client.open(ADMIN + path, method=method, json={}).status_code == 401


def test_clear_empties_the_store_and_rebases_ids(store, client, admin):
    store.ingest([make_entry(i, tsMs=None) for i in range(30)])
    cleared = client.post(ADMIN + "/clear", headers=admin).json
    assert cleared == {"removed": 30, "nextId": 30 + 10_000 + 1}
    assert store.page()["total"] == 0
    assert store.page(LOGS + "/stats")["total"] == 0
    assert store.ingest([make_entry(0, tsMs=None)])["firstId"] >= 30 + 10_000


def test_destroying_a_scope_revokes_its_credentials_and_records_an_event(store, client, admin):
    body = {**TOKEN_BODY, "containerId": "cnt_1"}
    token = client.post(ADMIN + "/tokens", json=body, headers=admin).json["token"]
    sibling = client.post(ADMIN + "/tokens", json={**body, "containerId": "cnt_2"},
                          headers=admin).json["token"]
    result = client.post(ADMIN + "/scopes/proj_1/cnt_1/destroy", headers=admin).json
    assert result["revokedTokens"] == 1
    assert client.get(LOGS, headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert client.get(LOGS, headers={"Authorization": f"Bearer {sibling}"}).status_code == 200
    event = store.page(afterId=result["eventId"] - 1)["entries"][0]
    assert (event["kind"], event["containerId"], event["data"]) == (
        "event", "cnt_1", {"event": "scope-destroyed"})


def test_a_scope_no_entry_could_name_is_refused_before_anything_changes(store, client, admin):
    token = client.post(ADMIN + "/tokens", json={**TOKEN_BODY, "containerId": "cnt_1"},
                        headers=admin).json["token"]
    for path, name in ((f"/scopes/proj_1/{'c' * 129}/destroy", "containerId"),
                       (f"/scopes/{'p' * 129}/cnt_1/destroy", "projectId")):
        refused = client.post(ADMIN + path, headers=admin)
        assert refused.status_code == 400, refused.json
        assert refused.json["message"].startswith(f"Invalid path parameter '{name}'")
    assert client.get(LOGS, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert store.page()["total"] == 0  # no destroy event either


def test_prune_runs_retention_now(make_app):
    app = make_app(max_rows=5)
    store = Store(app.test_client())
    store.ingest([make_entry(i, tsMs=None) for i in range(8)])
    assert store.client.post(ADMIN + "/prune", headers=store.headers).json == {"removed": 3}


def test_one_prune_at_a_time_on_every_path(make_app, tmp_path):
    from logsvc.store import db, retention

    app = make_app(max_rows=5)
    store = Store(app.test_client())
    store.ingest([make_entry(i, tsMs=None) for i in range(8)])
    # Another process's prune holds the lease: a prune waits its turn, and
    # gives up past its patience.
    assert db.call(retention.take_lease, "retention", "elsewhere:1", 60)
    started = time.monotonic()
    with pytest.raises(retention.PruneBusy):
        retention.prune(app.extensions["logsvc"].config, wait_s=0.5)
    assert time.monotonic() - started >= 0.5
    assert store.page(limit=0)["total"] == 8
    # The other prune ends (its lease runs out in a second): the admin API's
    # prune, which waits up to 30 s, runs then.
    assert db.call(retention.take_lease, "retention", "elsewhere:1", 1)
    assert store.client.post(ADMIN + "/prune", headers=store.headers).json == {"removed": 3}
    assert time.monotonic() - started >= 1
    # A prune releases the lease when it is done: the next one may run at once.
    assert db.call(retention.take_lease, "retention", "elsewhere:1", 60)


# --- fanout cursor ---------------------------------------------------------------

@pytest.fixture
def fanout(make_app):
    app = make_app(admin_fanout=True)
    return Store(app.test_client())


def sweep_page(store, cursor, **params):
    response = store.get(cursor=cursor, **params)
    lines = [orjson.loads(line) for line in response.data.splitlines()]
    return response, lines[:-1], lines[-1]


def test_a_cursor_sweep_sees_each_entry_once_and_nothing_written_after_it_began(fanout):
    fanout.ingest([make_entry(i, tsMs=None) for i in range(30)])
    response, entries, trailer = sweep_page(fanout, "start", limit=7)
    assert response.mimetype == "application/x-ndjson"
    seen = [e["id"] for e in entries]
    fanout.ingest([make_entry(i, tsMs=None) for i in range(10)])  # after the start
    while trailer["nextCursor"]:
        response, entries, trailer = sweep_page(fanout, trailer["nextCursor"], limit=7)
        seen += [e["id"] for e in entries]
    assert seen == list(range(1, 31))
    assert trailer == {"__trailer": True, "nextCursor": None}


def test_a_cursor_sweep_honours_filters_across_tenants(fanout):
    fanout.ingest([make_entry(i, tsMs=None) for i in range(30)])
    _, entries, _ = sweep_page(fanout, "start", limit=100, level="error")
    assert {e["projectId"] for e in entries} == {"proj_0", "proj_1", "proj_2"}
    assert {e["level"] for e in entries} == {"error"}


def test_a_tampered_cursor_is_400(fanout):
    fanout.ingest([make_entry(i, tsMs=None) for i in range(10)])
    _, _, trailer = sweep_page(fanout, "start", limit=3)
    payload, signature = trailer["nextCursor"].split(".")
    forged = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1] + "." + signature
    for bad in (forged, "garbage", trailer["nextCursor"] + "x"):
        response = fanout.get(cursor=bad)
        assert response.status_code == 400 and "cursor" in response.json["message"]


def test_an_expired_snapshot_is_410_with_a_trailer(make_app):
    app = make_app(admin_fanout=True, cursor_ttl_s=0)
    store = Store(app.test_client())
    store.ingest([make_entry(i, tsMs=None) for i in range(10)])
    _, _, trailer = sweep_page(store, "start", limit=3)
    import time
    time.sleep(0.01)
    response = store.get(cursor=trailer["nextCursor"])
    assert response.status_code == 410
    assert orjson.loads(response.data) == {"__trailer": True, "error": "snapshot_expired",
                                           "status": 410}


def test_a_snapshot_that_lost_rows_to_retention_is_410(fanout):
    fanout.ingest([make_entry(i, tsMs=None) for i in range(20)])
    _, _, trailer = sweep_page(fanout, "start", limit=5)
    config = fanout.client.application.extensions["logsvc"].config.replace(max_rows=8)
    retention.prune(config)
    assert fanout.get(cursor=trailer["nextCursor"]).status_code == 410


def test_the_cursor_is_for_the_operator_only(fanout):
    created = fanout.client.post(ADMIN + "/tokens", json=TOKEN_BODY, headers=fanout.headers)
    response = fanout.client.get(LOGS, query_string={"cursor": "start"},
                                 headers={"Authorization": f"Bearer {created.json['token']}"})
    assert response.status_code == 403


@pytest.mark.parametrize("extra", [{"last": "5"}, {"afterId": "3"}, {"offset": "1"},
                                   {"order": "desc"}])
def test_the_cursor_does_not_mix_with_other_paging(fanout, extra):
    assert fanout.get(cursor="start", **extra).status_code == 400


# --- CLI ----------------------------------------------------------------------

def cli(tmp_path, *args, stdin=None):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LOGSVC_") or k == "LOGSVC_DATABASE_URL"}
    env["LOGSVC_DATA_DIR"] = str(tmp_path)
    return subprocess.run([sys.executable, "-m", "logsvc", *args], cwd=ROOT, env=env,
                          input=stdin, capture_output=True, text=True, timeout=60)


def test_the_cli_creates_a_first_tenant_token_that_the_server_accepts(tmp_path, make_app):
    done = cli(tmp_path, "tokens", "create", "--name", "first", "--project", "proj_1",
               "--ingest")
    assert done.returncode == 0, done.stderr
    token = json.loads(done.stdout)["token"]
    client = make_app().test_client()
    bearer = {"Authorization": f"Bearer {token}"}
    assert client.post(INGEST, json={"kind": "event"}, headers=bearer).json["accepted"] == 1
    assert client.get(LOGS, headers=bearer).json["entries"][0]["projectId"] == "proj_1"
    listed = json.loads(cli(tmp_path, "tokens", "list").stdout)
    assert token.split(".")[1] not in json.dumps(listed)


def test_the_cli_manages_users_and_refuses_clear_without_yes(tmp_path):
    created = cli(tmp_path, "users", "create", "--username", "bo", "--project", "p",
                  "--password-stdin", stdin="long password\n")
    assert created.returncode == 0 and "long password" not in created.stdout
    assert cli(tmp_path, "clear").returncode == 1
    assert json.loads(cli(tmp_path, "clear", "--yes").stdout)["removed"] == 0
    assert cli(tmp_path, "tokens", "revoke", "42").returncode == 1
    assert cli(tmp_path).returncode == 2


# --- across real workers ---------------------------------------------------------

@pytest.mark.server
def test_the_rate_limit_holds_across_two_workers_and_secrets_stay_out_of_logs(tmp_path):
    server = Server(tmp_path, env={"LOGSVC_RATE_LIMIT_PER_MIN": "10"}).start()
    try:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        token = requests.post(server.url + ADMIN + "/tokens", json=TOKEN_BODY, headers=admin,
                              timeout=10).json()["token"]
        bearer = {"Authorization": f"Bearer {token}", "Connection": "close"}
        statuses = [requests.get(server.url + LOGS, headers=bearer, timeout=10).status_code
                    for _ in range(14)]
        assert statuses == [200] * 10 + [429] * 4
        requests.get(server.url + LOGS, headers={"Authorization": "Bearer lst_1.wrongsecret"},
                     timeout=10)
    finally:
        server.stop()
    log = server.log.read_text()
    for secret in (token, token.split(".")[1], ADMIN_TOKEN, "wrongsecret"):
        assert secret not in log
