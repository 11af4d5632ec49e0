"""Mounted under a prefix, behind a proxy, and on a container's own host
name: every URL the service emits follows where it is mounted, forwarded
headers count only from trusted proxies, and a container's host limits
every read to that container."""
import base64

import orjson
import pytest
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client

from logsvc.testing import ADMIN_TOKEN, INGEST, LOGS, Store, make_entry

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
TOKENS = "/api/proxy-logs/_admin/tokens"


def nothing_here(environ, start_response):
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not logsvc"]


@pytest.fixture
def mounted(app):
    return Client(DispatcherMiddleware(nothing_here, {"/logs": app}))


def test_the_ui_and_its_assets_follow_the_mount_point(mounted):
    page = mounted.get("/logs/")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert '<base href="/logs/">' in text
    assert 'href="ui/app.css"' in text and 'src="ui/app.js"' in text
    for asset in ("/logs/ui/app.css", "/logs/ui/app.js", "/logs/ui/docs.css", "/logs/ui/docs.js"):
        with mounted.get(asset) as response:
            assert response.status_code == 200, asset
    with mounted.get("/logs/ui/app.js") as response:
        script = response.get_data(as_text=True)
    # Every URL the page calls is relative to its <base>.
    assert '"/api/' not in script and "`/api/" not in script
    assert "document.baseURI" in script


def test_the_api_page_the_openapi_servers_and_the_cookie_follow_the_mount_point(mounted):
    document = mounted.get("/logs/api/proxy-logs/openapi.json").json
    assert document["servers"] == [{"url": "/logs"}]
    docs = mounted.get("/logs/api/proxy-logs/docs").get_data(as_text=True)
    assert 'href="../../ui/docs.css"' in docs  # /logs/api/proxy-logs/docs -> /logs/ui/docs.css
    opened = mounted.post("/logs/api/session", headers=ADMIN)
    assert opened.status_code == 200
    cookie = opened.headers["Set-Cookie"]
    assert "Path=/logs/" in cookie and "HttpOnly" in cookie
    assert mounted.get("/logs" + LOGS, query_string={"limit": 1}).status_code == 200
    assert mounted.delete("/logs/api/session").status_code == 200


def test_the_root_mount_is_unchanged(client):
    assert '<base href="/">' in client.get("/").get_data(as_text=True)
    assert client.get("/api/proxy-logs/openapi.json").json["servers"] == [{"url": "/"}]
    assert "Path=/;" in client.post("/api/session", headers=ADMIN).headers["Set-Cookie"]


FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "logs.example.com",
             "X-Forwarded-Prefix": "/logs", "X-Forwarded-For": "203.0.113.7"}


def test_forwarded_headers_count_from_a_trusted_proxy(make_app):
    client = make_app(trusted_proxies="127.0.0.1, 10.0.0.0/8").test_client()
    opened = client.post("/api/session", headers={**ADMIN, **FORWARDED})
    cookie = opened.headers["Set-Cookie"]
    assert "Secure" in cookie and "Path=/logs/" in cookie
    document = client.get("/api/proxy-logs/openapi.json", headers=FORWARDED).json
    assert document["servers"] == [{"url": "/logs"}]
    page = client.get("/", headers=FORWARDED).get_data(as_text=True)
    assert '<base href="/logs/">' in page


def test_forwarded_headers_from_anyone_else_are_ignored(make_app):
    client = make_app(trusted_proxies="10.0.0.0/8").test_client()  # the test client is 127.0.0.1
    cookie = client.post("/api/session", headers={**ADMIN, **FORWARDED}).headers["Set-Cookie"]
    assert "Secure" not in cookie and "Path=/;" in cookie
    assert client.get("/api/proxy-logs/openapi.json", headers=FORWARDED).json["servers"] == [
        {"url": "/"}]


def basic(name, password="wrong"):
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


def test_the_client_address_behind_trusted_proxies_is_the_first_untrusted_hop(make_app):
    client = make_app(trusted_proxies="127.0.0.1, 10.0.0.0/8",
                      auth_failures_per_min=3).test_client()
    # The client, then a trusted proxy in front of the nearest one.
    flood = {"X-Forwarded-For": "203.0.113.9, 10.1.2.3"}
    answers = [client.get(LOGS, headers={**basic(f"u{i}"), **flood}).status_code
               for i in range(5)]
    assert answers[:3] == [401] * 3 and answers[-1] == 429
    other = client.get(LOGS, headers={**basic("v1"), "X-Forwarded-For": "203.0.113.10"})
    assert other.status_code == 401  # another client address has its own budget
    # Without trust, X-Forwarded-For cannot buy a fresh budget.
    plain = make_app(auth_failures_per_min=3).test_client()
    answers = [plain.get(LOGS, headers={**basic(f"w{i}"), "X-Forwarded-For": f"198.51.100.{i}"})
               .status_code for i in range(5)]
    assert answers[-1] == 429


HOST_PATTERN = "{containerId}.{projectId}.logs.example.com"
KIT = "cnt_1.proj_a.logs.example.com"


@pytest.fixture
def kit(make_app):
    app = make_app(scope_host=HOST_PATTERN)
    store = Store(app.test_client())
    store.ingest([make_entry(0, projectId="proj_a", containerId="cnt_1", tsMs=None),
                  make_entry(1, projectId="proj_a", containerId="cnt_1", tsMs=None),
                  make_entry(2, projectId="proj_a", containerId="cnt_2"),
                  make_entry(3, projectId="proj_b", containerId="cnt_1")])
    return store


def token(store, project, container=None):
    made = store.client.post(TOKENS, headers=ADMIN, json={
        "name": "t", "projectId": project, "containerId": container,
        "capabilities": {"logs": True}})
    return {"Authorization": f"Bearer {made.json['token']}"}


def scopes(response):
    assert response.status_code == 200, response.json
    return {(e["projectId"], e["containerId"]) for e in response.json["entries"]}


def test_a_containers_host_narrows_the_operator_and_a_project_credential(kit):
    on_kit = {"Host": KIT}
    assert scopes(kit.client.get(LOGS, headers={**ADMIN, **on_kit})) == {("proj_a", "cnt_1")}
    project_wide = token(kit, "proj_a")
    assert scopes(kit.client.get(LOGS, headers={**project_wide, **on_kit})) == {
        ("proj_a", "cnt_1")}
    stats = kit.client.get(LOGS + "/stats", headers={**ADMIN, **on_kit}).json
    assert stats["total"] == 2 and set(stats["byProject"]) == {"proj_a"}
    histogram = kit.client.get(LOGS + "/stats/histogram", headers={**ADMIN, **on_kit}).json
    assert sum(b["total"] for b in histogram["buckets"]) == 2
    # Other hosts are unaffected.
    assert len(scopes(kit.client.get(LOGS, headers=ADMIN))) == 3


@pytest.mark.parametrize("params", [{"projectId": "proj_b"}, {"containerId": "cnt_2"}])
def test_parameters_that_disagree_with_the_host_are_403(kit, params):
    response = kit.client.get(LOGS, query_string=params, headers={**ADMIN, "Host": KIT})
    assert response.status_code == 403


@pytest.mark.parametrize("project, container", [("proj_b", None), ("proj_a", "cnt_2")])
def test_a_credential_of_another_scope_is_403_on_a_containers_host(kit, project, container):
    headers = {**token(kit, project, container), "Host": KIT}
    for path in (LOGS, LOGS + "/stats", LOGS + "/stats/histogram", LOGS + "/stream",
                 "/api/ws-token"):
        assert kit.client.get(path, headers=headers).status_code == 403, path
    assert kit.client.post("/api/session", headers=headers).status_code == 403


def test_a_session_and_a_ws_ticket_opened_on_a_containers_host_stay_narrowed(kit):
    client = kit.client
    opened = client.post("/api/session", headers={**ADMIN, "Host": KIT})
    assert opened.json["projectId"] == "proj_a" and opened.json["containerId"] == "cnt_1"
    assert opened.json["admin"] is False
    ticket = client.get("/api/ws-token", headers={**ADMIN, "Host": KIT}).json["token"]
    from logsvc.access import credentials

    found = credentials.redeem_ws_token(ticket)
    assert (found.project_id, found.container_id, found.is_admin) == ("proj_a", "cnt_1", False)


def test_the_live_tail_on_a_containers_host_carries_only_that_container(kit):
    response = kit.client.get(LOGS + "/stream", query_string={"replay": 10},
                              headers={**ADMIN, "Host": KIT}, buffered=False)
    frames = iter(response.response)
    next(frames)  # retry hint
    replay = next(frames)
    entries = orjson.loads(replay.split(b"data: ", 1)[1])
    assert {(e["projectId"], e["containerId"]) for e in entries} == {("proj_a", "cnt_1")}
    response.close()


def test_ingest_on_a_containers_host_is_not_narrowed(kit):
    response = kit.client.post(INGEST, json=[make_entry(9, projectId="proj_b")],
                               headers={**ADMIN, "Host": KIT})
    assert response.status_code == 200 and response.json["accepted"] == 1


@pytest.mark.parametrize("pattern", ["logs.example.com", "{tenant}.example.com",
                                     "{projectId}.{projectId}.example.com"])
def test_a_bad_scope_host_pattern_stops_the_service_with_a_message(make_app, pattern):
    from logsvc.config import ConfigError

    with pytest.raises(ConfigError, match="LOGSVC_SCOPE_HOST"):
        make_app(scope_host=pattern)
