"""Fixtures: the engine every test runs on, applications on stores in
`tmp_path` (closed afterwards), the Flask client, a real server. Shared
helpers live in `logsvc.testing`, where the benchmarks find them too.

Tests that start a real gunicorn are marked `server` (also automatically,
when they use the `server` fixture): `pytest -m 'not server'` is the quick
loop."""
import functools
import inspect
import os
import time

import pytest

from logsvc.server import create_app
from logsvc.testing import ADMIN_TOKEN, Server, Store

# The whole suite runs on both engines. PostgreSQL is the server at
# LOGSVC_TEST_POSTGRES_URL (default: the local one, database `test`); each
# test gets a schema of its own, dropped afterwards.
POSTGRES_URL = os.environ.get("LOGSVC_TEST_POSTGRES_URL",
                              "postgresql://postgres@127.0.0.1:5432/test")


def _postgres_reason():
    try:
        import psycopg2

        psycopg2.connect(POSTGRES_URL, connect_timeout=3).close()
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        return f"no PostgreSQL reachable at {POSTGRES_URL}: {str(exc).strip()}"
    return None


postgres_missing = functools.cache(_postgres_reason)


def postgres_schema_url(schema):
    separator = "&" if "?" in POSTGRES_URL else "?"
    # The schema also names the connections (application_name), so that a
    # test can find its own among those of tests running beside it. The
    # options come last: a test may add to them.
    return f"{POSTGRES_URL}{separator}application_name={schema}&options=-csearch_path%3D{schema}"


@pytest.fixture(autouse=True, params=["sqlite", "postgresql"])
def engine(request, monkeypatch):
    """Which store the test runs on; on PostgreSQL, LOGSVC_DATABASE_URL names
    a fresh schema for the app factory and for every server it starts."""
    if request.param == "sqlite":
        if request.node.get_closest_marker("postgres_only"):
            pytest.skip(request.node.get_closest_marker("postgres_only").args[0])
        monkeypatch.delenv("LOGSVC_DATABASE_URL", raising=False)
        yield "sqlite"
        return
    if request.node.get_closest_marker("sqlite_only"):
        pytest.skip(request.node.get_closest_marker("sqlite_only").args[0])
    reason = postgres_missing()
    if reason:
        pytest.skip(reason)
    import psycopg2

    schema = f"t_{os.getpid()}_{time.monotonic_ns()}"
    def run(statement):
        conn = psycopg2.connect(POSTGRES_URL)
        conn.autocommit = True
        try:
            with conn.cursor() as cursor:
                cursor.execute("SET lock_timeout = '20s'")
                cursor.execute(statement)
        finally:
            conn.close()

    run(f"CREATE SCHEMA {schema}")
    monkeypatch.setenv("LOGSVC_DATABASE_URL", postgres_schema_url(schema))
    yield "postgresql"
    run(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def make_app(tmp_path):
    """Build applications (settings: Config field overrides; the data dir
    defaults to `tmp_path`); their stores are closed after the test."""
    made = []

    def make(**settings):
        settings = {"data_dir": tmp_path, "admin_token": ADMIN_TOKEN, **settings}
        made.append(create_app(settings))
        return made[-1]

    yield make
    for application in made:
        application.extensions["logsvc"].store.close()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def admin():
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def store(client):
    return Store(client)


# The longest tests (a minute or more each, most of it waiting) start
# first, so that under pytest-xdist they do not end up last on one process.
LONGEST_FIRST = ("tests/test_docs.py::", "tests/test_wal.py::test_wal_stays_under",
                 "tests/test_ui.py::test_the_live_view_comes_back_after_an_outage")


def _starts_a_server(item):
    """Whether a test starts a real gunicorn: it uses the `server` fixture
    (or one named `..._server`, or one built on them), or its own body
    makes a `Server(...)`."""
    names = getattr(item, "fixturenames", ())
    if any(name == "server" or name.endswith("_server") for name in names):
        return True
    function = getattr(item, "function", None)
    try:
        return function is not None and "Server(" in inspect.getsource(function)
    except (OSError, TypeError):
        return False


def pytest_terminal_summary(terminalreporter):
    """Say how to run the browser tests when they were skipped for want of
    a browser, rather than leaving it to the skip list."""
    skipped = terminalreporter.stats.get("skipped", [])
    if any("chromium" in str(getattr(report, "longrepr", "")) for report in skipped):
        terminalreporter.write_line(
            "The web UI's browser tests were skipped: they need Debian's chromium and "
            "chromium-driver (sudo apt-get install chromium chromium-driver), then run "
            "the same command again.")


def pytest_collection_modifyitems(items):
    for item in items:
        if _starts_a_server(item):
            item.add_marker(pytest.mark.server)
    items.sort(key=lambda item: not item.nodeid.startswith(LONGEST_FIRST))


@pytest.fixture(autouse=True)
def stop_left_servers():
    """Stop the servers a test started and did not stop (it failed before)."""
    before = len(Server.started)
    yield
    for instance in Server.started[before:]:
        instance.stop()
    del Server.started[before:]


@pytest.fixture
def server(tmp_path):
    instance = Server(tmp_path).start()
    yield instance
    instance.stop()
