"""Credentials on every endpoint, the one error shape, operations endpoints."""
import base64
import os
import stat

import pytest

from logsvc.access import authenticator as auth
from logsvc.config import Config, ConfigError
from logsvc.testing import INGEST, LOGS

READ_PATHS = [LOGS, LOGS + "/stats", LOGS + "/stats/histogram", "/metrics"]


@pytest.mark.parametrize("path", READ_PATHS)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Basic dXNlcjpwYXNz",
                                           "Bearer", "test-admin-token"])
def test_every_endpoint_but_healthz_needs_a_valid_credential(client, path, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    response = client.get(path, headers=headers)
    assert response.status_code == 401
    assert response.json["statusCode"] == 401 and response.json["error"] == "Unauthorized"
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="logsvc"'


def test_ingest_with_a_wrong_token_stores_nothing(client, store):
    response = client.post(INGEST, json={"kind": "event"},
                           headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401
    assert store.page()["total"] == 0


def test_healthz_answers_without_credentials(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok", "writable": True}


def test_metrics_reports_the_store(store):
    store.ingest([{"kind": "event", "level": "warn"}, {"kind": "event"}])
    text = store.get("/metrics").data.decode()
    assert 'logsvc_entries{level="warn"} 1.0' in text
    assert "logsvc_last_entry_id 2.0" in text


def test_an_unknown_path_is_404_in_the_error_shape(client):
    response = client.get("/api/nope")
    assert response.json == {"statusCode": 404, "error": "Not Found",
                             "message": "No such endpoint"}


def test_the_generated_admin_token_is_private_and_stable(tmp_path, make_app):
    config = Config(data_dir=tmp_path)
    first = auth.load_admin_token(config)
    assert stat.S_IMODE(os.stat(tmp_path / "admin_token").st_mode) == 0o600
    assert auth.load_admin_token(config) == first
    client = make_app(admin_token="").test_client()
    ok = client.get(LOGS, headers={"Authorization": f"Bearer {first}"})
    assert ok.status_code == 200


def test_settings_come_from_the_environment():
    config = Config.from_env({"LOGSVC_PORT": "9000", "LOGSVC_ADMIN_FANOUT": "true",
                              "LOGSVC_RETENTION_DAYS": "1.5", "LOGSVC_DATA_DIR": "/x"})
    assert (config.port, config.admin_fanout, config.retention_days, str(config.data_dir)) == (
        9000, True, 1.5, "/x")
    assert Config.from_env({}) == Config()


@pytest.mark.parametrize("name, value", [("LOGSVC_PORT", "http"), ("LOGSVC_WORKERS", "-2"),
                                         ("LOGSVC_ADMIN_FANOUT", "perhaps"),
                                         ("LOGSVC_SEAL_NICE", "25")])
def test_a_bad_setting_is_named_in_the_error(name, value):
    with pytest.raises(ConfigError, match=name):
        Config.from_env({name: value})


def test_a_store_from_a_newer_version_is_refused(make_app):
    from logsvc.store import db, migrations, models
    make_app()
    db.call(lambda: models.Meta.update(value="99").execute())
    with pytest.raises(migrations.SchemaTooNew):
        make_app()


@pytest.mark.sqlite_only("version 1 stores were SQLite only")
def test_a_version_1_store_is_migrated_and_keeps_its_id_sequence(tmp_path, make_app, admin):
    import sqlite3

    make_app()
    old = sqlite3.connect(tmp_path / "logs.db", isolation_level=None)
    # What version 1 left: ids counted in sqlite_sequence, no id_sequence row yet.
    old.execute("CREATE TABLE v1_autoincrement (id INTEGER PRIMARY KEY AUTOINCREMENT)")
    old.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('entry', 500)")
    old.execute("DELETE FROM id_sequence")
    old.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    old.close()
    client = make_app().test_client()
    assert client.post(INGEST, json={"kind": "event"}, headers=admin).json["firstId"] == 501
    from logsvc.store import db, migrations
    assert db.call(lambda: db.execute(
        "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()) == (
            str(migrations.SCHEMA_VERSION),)


def test_database_url_can_name_the_sqlite_file(tmp_path, make_app, admin):
    path = tmp_path / "elsewhere.db"
    client = make_app(data_dir=tmp_path / "data", database_url=f"sqlite:///{path}").test_client()
    client.post(INGEST, json={"kind": "event"}, headers=admin)
    assert path.exists() and client.get(LOGS, headers=admin).json["total"] == 1


def test_an_unsupported_database_url_is_refused(make_app):
    from logsvc.store.db import UnsupportedDatabase
    with pytest.raises(UnsupportedDatabase, match="not supported"):
        make_app(database_url="mysql://x/y")


def test_nul_in_the_path_query_or_credentials_is_refused_not_a_500(client, admin):
    response = client.get(LOGS + "?projectId=a%00b", headers=admin)
    assert response.status_code == 400 and "'projectId'" in response.json["message"]
    response = client.post("/api/proxy-logs/_admin/scopes/p%00/c/destroy", headers=admin)
    assert response.status_code == 400
    basic = "Basic " + base64.b64encode(b"a\x00b:password").decode()
    assert client.get(LOGS, headers={"Authorization": basic}).status_code == 401
    created = client.post("/api/proxy-logs/_admin/tokens", headers=admin,
                          json={"name": "n", "projectId": "p\x00"})
    assert created.status_code in (400, 422) and "projectId" in created.json["message"]


def test_the_session_endpoint_says_whose_scope_a_caller_has(client, admin):
    made = client.post("/api/proxy-logs/_admin/tokens", headers=admin, json={
        "name": "ui", "projectId": "proj_a", "containerId": "cnt_1",
        "capabilities": {"logs": True}})
    scoped = {"Authorization": f"Bearer {made.json['token']}"}
    assert client.get("/api/session", headers=scoped).json == {
        "status": "success", "projectId": "proj_a", "containerId": "cnt_1", "admin": False}
    assert client.get("/api/session", headers=admin).json["admin"] is True
    browser = client.application.test_client()
    assert browser.get("/api/session").status_code == 401
    browser.post("/api/session", headers=scoped)  # the cookie
    assert browser.get("/api/session").json["containerId"] == "cnt_1"
