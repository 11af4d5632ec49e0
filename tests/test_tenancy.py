"""Who may see what: an isolation matrix over every read endpoint and every
kind of principal, scoped ingest, sessions, rate limits."""
import base64
import time

import jwt
import pytest

from logsvc.testing import ADMIN_TOKEN, INGEST, LOGS, Store, make_entry

JWT_SECRET = "test-jwt-secret-that-is-long-enough-for-hs256"
STATS = LOGS + "/stats"
HISTOGRAM = STATS + "/histogram"
ADMIN = "/api/proxy-logs/_admin"
READS = [LOGS, STATS, HISTOGRAM]
FOREIGN = "Caller is not permitted to read logs for this scope"


@pytest.fixture
def app(make_app):
    return make_app(jwt_secret=JWT_SECRET, rate_limit_per_min=0)


@pytest.fixture
def tenants(client, store):
    store.ingest([make_entry(i, tsMs=None) for i in range(45)])
    return Tenants(client, store)


class Tenants:
    """Creates principals through the admin API and returns their headers."""

    def __init__(self, client, store):
        self.client = client
        self.admin = store.headers

    def token(self, project="proj_1", container=None, **caps):
        body = {"name": "t", "projectId": project, "containerId": container,
                "capabilities": caps or {"logs": True}}
        response = self.client.post(ADMIN + "/tokens", json=body, headers=self.admin)
        assert response.status_code == 201, response.json
        return {"Authorization": f"Bearer {response.json['token']}"}, response.json

    def user(self, project="proj_1", container=None, name="ada", password="correct horse"):
        body = {"username": name, "password": password, "projectId": project,
                "containerId": container}
        assert self.client.post(ADMIN + "/users", json=body, headers=self.admin).status_code == 201
        raw = base64.b64encode(f"{name}:{password}".encode()).decode()
        return {"Authorization": f"Basic {raw}"}

    def jwt(self, project="proj_1", container=None, capabilities=None, exp=None, **extra):
        claims = {"projectId": project,
                  "capabilities": {"logs": True} if capabilities is None else capabilities,
                  "exp": exp or int(time.time()) + 300, **extra}
        if container:
            claims["containerId"] = container
        return {"Authorization": f"Bearer {jwt.encode(claims, JWT_SECRET, algorithm='HS256')}"}

    def session(self, headers):
        response = self.client.post("/api/session", headers=headers)
        assert response.status_code == 200
        self.client.get("/healthz")  # the cookie now rides on every request of this client
        return {}

    def make(self, kind, project, container):
        if kind == "token":
            return self.token(project, container)[0]
        if kind == "basic":
            return self.user(project, container)
        if kind == "jwt":
            return self.jwt(project, container)
        return self.session(self.token(project, container)[0])


KINDS = ["token", "basic", "jwt", "session"]


def entries_of(response):
    if "entries" in response.json:
        return response.json["entries"]
    return []


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("path", READS)
def test_a_project_principal_sees_only_its_project(tenants, client, kind, path):
    headers = tenants.make(kind, "proj_1", None)
    response = client.get(path, headers=headers)
    assert response.status_code == 200
    if path == LOGS:
        assert {e["projectId"] for e in entries_of(response)} == {"proj_1"}
        assert response.json["total"] == 15
    if path == STATS:
        assert set(response.json["byProject"]) == {"proj_1"}
        assert response.json["total"] == 15


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("path", READS)
def test_a_container_principal_sees_only_its_container(tenants, client, kind, path):
    headers = tenants.make(kind, "proj_1", "cnt_1")
    response = client.get(path, headers=headers)
    assert response.status_code == 200
    if path == LOGS:
        seen = {(e["projectId"], e["containerId"]) for e in entries_of(response)}
        assert seen == {("proj_1", "cnt_1")}
    if path == STATS:
        assert set(response.json["byContainer"]) == {"cnt_1"}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("path", READS)
@pytest.mark.parametrize("asked", [{"projectId": "proj_2"},
                                   {"projectId": "proj_1", "containerId": "cnt_2"},
                                   {"containerId": "cnt_2"}])
def test_asking_for_another_scope_is_403(tenants, client, kind, path, asked):
    headers = tenants.make(kind, "proj_1", "cnt_1")
    response = client.get(path, query_string=asked, headers=headers)
    assert response.status_code == 403
    assert response.json == {"statusCode": 403, "error": "Forbidden", "message": FOREIGN}


def test_a_project_principal_may_narrow_to_one_of_its_containers(tenants, client):
    headers = tenants.make("token", "proj_1", None)
    page = client.get(LOGS, query_string={"containerId": "cnt_1"}, headers=headers).json
    assert {e["containerId"] for e in page["entries"]} == {"cnt_1"}


@pytest.mark.parametrize("path", READS + [INGEST, "/api/session", "/api/ws-token",
                                  LOGS + "/stream"])
@pytest.mark.parametrize("case", ["none", "garbage", "revoked", "expired-jwt", "forged-jwt",
                                  "alg-none", "wrong-password", "unknown-user", "jwt-no-exp",
                                  "jwt-hs512"])
def test_bad_credentials_are_401_everywhere(tenants, client, path, case):
    headers = {
        "none": lambda: {},
        "garbage": lambda: {"Authorization": "Bearer lst_1.nope"},
        "revoked": lambda: _revoked(tenants, client),
        "expired-jwt": lambda: tenants.jwt(exp=int(time.time()) - 10),
        "forged-jwt": lambda: {"Authorization": "Bearer " + jwt.encode(
            {"projectId": "proj_1", "exp": int(time.time()) + 60}, "another-secret-of-32-bytes-or-more",
            algorithm="HS256")},
        "alg-none": lambda: {"Authorization": "Bearer " + jwt.encode(
            {"projectId": "proj_1", "exp": int(time.time()) + 60}, None, algorithm="none")},
        "wrong-password": lambda: _basic(tenants, "ada", "wrong password"),
        "unknown-user": lambda: {"Authorization": "Basic " + base64.b64encode(
            b"nobody:whatever1").decode()},
        "jwt-no-exp": lambda: {"Authorization": "Bearer " + jwt.encode(
            {"projectId": "proj_1"}, JWT_SECRET, algorithm="HS256")},
        "jwt-hs512": lambda: {"Authorization": "Bearer " + jwt.encode(
            {"projectId": "proj_1", "exp": int(time.time()) + 60}, JWT_SECRET * 2,
            algorithm="HS512")},
    }[case]()
    method = "POST" if path in (INGEST, "/api/session") else "GET"
    response = client.open(path, method=method, headers=headers,
                           json={"kind": "event"} if path == INGEST else None)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.json["statusCode"] == 401


def _revoked(tenants, client):
    headers, created = tenants.token()
    client.delete(f"{ADMIN}/tokens/{created['id']}", headers=tenants.admin)
    return headers


def _basic(tenants, name, password):
    tenants.user(name=name)
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


@pytest.mark.parametrize("capabilities", [{"logs": "*"}, {"logs": "true"}, {"logs": 1},
                                          {"ingest": True}, {}])
def test_only_a_literal_true_grants_reading(tenants, client, capabilities):
    headers = tenants.jwt(capabilities=capabilities)
    for path in READS:
        response = client.get(path, headers=headers)
        assert response.status_code == 403 and response.json["message"] == FOREIGN


def test_a_scoped_writer_writes_only_into_its_scope(tenants, client, store):
    headers, _ = tenants.token("proj_1", "cnt_9", logs=True, ingest=True)
    result = client.post(INGEST, headers=headers, json=[
        {"kind": "event"}, {"kind": "event", "projectId": "proj_2"},
        {"kind": "event", "projectId": "proj_1", "containerId": "cnt_8"},
        {"kind": "event", "projectId": "proj_1", "containerId": "cnt_9"}]).json
    assert result["accepted"] == 2
    assert [r["index"] for r in result["rejected"]] == [1, 2]
    mine = store.page(containerId="cnt_9")["entries"]
    assert [(e["projectId"], e["containerId"]) for e in mine] == [("proj_1", "cnt_9")] * 2


def test_writing_needs_the_ingest_capability(tenants, client):
    headers, _ = tenants.token("proj_1", None, logs=True)
    response = client.post(INGEST, headers=headers, json={"kind": "event"})
    assert response.status_code == 403


def test_a_session_cookie_reads_but_never_writes_or_administers(tenants, client):
    headers, _ = tenants.token("proj_1", None, logs=True, ingest=True)
    opened = client.post("/api/session", headers=headers)
    cookie = opened.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert client.get(LOGS).status_code == 200
    assert client.post(INGEST, json={"kind": "event"}).status_code == 401
    assert client.get(ADMIN + "/tokens").status_code == 401
    assert client.delete("/api/session").status_code == 200
    assert client.get(LOGS).status_code == 401


def test_revoking_a_token_ends_its_sessions(tenants, client):
    headers, created = tenants.token()
    client.post("/api/session", headers=headers)
    client.delete(f"{ADMIN}/tokens/{created['id']}", headers=tenants.admin)
    assert client.get(LOGS).status_code == 401


@pytest.mark.parametrize("kind", KINDS)
def test_a_ws_ticket_is_issued_for_the_callers_scope(tenants, client, kind):
    from logsvc.access import credentials as principals
    headers = tenants.make(kind, "proj_1", "cnt_1")
    response = client.get("/api/ws-token", headers=headers)
    assert response.status_code == 200 and response.json["status"] == "success"
    holder = principals.redeem_ws_token(response.json["token"])
    assert (holder.project_id, holder.container_id) == ("proj_1", "cnt_1")
    assert principals.redeem_ws_token(response.json["token"]) is None  # single use


def test_an_expired_ws_ticket_is_refused(tenants, client):
    from logsvc.access import credentials as principals
    from logsvc.store import db
    from logsvc.store.models import WsToken
    ticket = client.get("/api/ws-token", headers=tenants.admin).json["token"]
    db.call(lambda: WsToken.update(expires_ms=0).execute())
    assert principals.redeem_ws_token(ticket) is None


def test_a_stale_cookie_is_401(client):
    client.set_cookie("logsvc_session", "made-up")
    assert client.get(LOGS).status_code == 401


# --- rate limits ---------------------------------------------------------------

def test_reads_are_rate_limited_per_scope(make_app):
    app = make_app(rate_limit_per_min=5)
    client = app.test_client()
    tenants = Tenants(client, Store(client))
    first, _ = tenants.token("proj_1")
    other, _ = tenants.token("proj_2")
    statuses = [client.get(path, headers=first).status_code
                for path in [LOGS, STATS, HISTOGRAM, LOGS, STATS, LOGS]]
    assert statuses == [200] * 5 + [429]
    limited = client.get(LOGS, headers=first)
    assert limited.headers["Retry-After"] == "2"
    assert limited.json == {"statusCode": 429, "error": "Too Many Requests",
                            "message": "Rate limit exceeded for this scope"}
    assert client.get(LOGS, headers=other).status_code == 200
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert all(client.get(LOGS, headers=admin).status_code == 200 for _ in range(10))


def test_the_budget_refills_over_the_minute(tmp_path):
    from logsvc.access.limits import _FileBuckets
    buckets = _FileBuckets(tmp_path / "limits.db")
    start = 1_000_000.0
    assert all(buckets.take("s", start, 1.0) for _ in range(60))  # 60 a minute
    assert not buckets.take("s", start, 1.0)
    assert buckets.take("s", start + 1.01, 1.0)  # one more a second
    assert not buckets.take("s", start + 1.02, 1.0)
