"""Names stored as numbers (SQLite, names.py): each process reads the
numbers that another one gave, and a name never stored matches nothing."""
from logsvc.store import db
from logsvc.testing import Store, make_entry

LOGS = "/api/proxy-logs/_logs"
STATS = LOGS + "/stats"


def test_processes_on_one_store_share_the_numbers_of_names(make_app):
    first = Store(make_app().test_client())
    second = Store(make_app().test_client())  # as another process on the same store
    # Asked before any entry has it: nothing matches, and nothing is remembered.
    assert second.page(LOGS, projectId="alpha")["total"] == 0
    first.ingest([make_entry(i, projectId="alpha", containerId="web", serviceName="api",
                             method="PATCH", url=f"/v2/carts/{i}") for i in range(3)])
    page = second.page(LOGS, projectId="alpha", containerId="web", method="PATCH",
                       route="/v2/carts/{id}")
    assert page["total"] == 3
    assert {(e["projectId"], e["containerId"], e["serviceName"], e["method"], e["route"])
            for e in page["entries"]} == {("alpha", "web", "api", "PATCH", "/v2/carts/{id}")}
    # `web` has a number already (the first process gave it); `beta` gets one.
    second.ingest([make_entry(9, projectId="beta", containerId="web", serviceName=None)])
    stats = first.page(STATS)
    assert stats["byProject"] == {"alpha": 3, "beta": 1}
    assert stats["byContainer"] == {"web": 4}
    assert stats["byService"] == {"api": 3}
    assert first.page(LOGS, projectId="beta")["entries"][0]["serviceName"] is None
    assert first.page(STATS, projectId="beta", containerId="web")["total"] == 1
    if not db.is_postgres():
        names = [name for (name,) in db.call(lambda: db.execute(
            "SELECT name FROM stored_name").fetchall())]
        assert sorted(names) == sorted(
            {"alpha", "beta", "web", "api", "PATCH", "/v2/carts/{id}", "GET", "/v1/items/{id}"})
        # Each row holds the number's byte, not the text.
        assert db.call(lambda: db.execute(
            "SELECT DISTINCT typeof(project_id), length(project_id), typeof(container_id) "
            "FROM entry").fetchall()) == [("blob", 1, "blob")]
