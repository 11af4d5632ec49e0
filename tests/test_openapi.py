"""The API describes itself, and a schema-driven fuzz run of every endpoint
finds no server error and no answer outside the description."""
import pytest
import schemathesis
from hypothesis import HealthCheck, reject, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from logsvc.api import openapi
from logsvc.server import create_app
from logsvc.testing import ADMIN_TOKEN, make_entry

# The live tail never ends, so it cannot be fuzzed request by request.
SCHEMA = schemathesis.openapi.from_dict(openapi.build()).exclude(path_regex=r".*/_logs/stream$")


schemathesis.serializer.alias("application/x-ndjson", "text/plain")
schemathesis.serializer.alias("application/x-protobuf", "application/octet-stream")


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def fuzzed_app(tmp_path_factory):
    app = create_app({"data_dir": tmp_path_factory.mktemp("fuzz"), "admin_token": ADMIN_TOKEN,
                      "jwt_secret": "fuzz-secret-of-at-least-thirty-two-bytes"})
    app.test_client().post("/api/proxy-logs/_ingest",
                           json=[make_entry(i, tsMs=None, requestBody="b") for i in range(30)],
                           headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    return app


@SCHEMA.parametrize()
@settings(max_examples=60, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_every_endpoint_answers_within_its_description(case, fuzzed_app):
    try:
        case.call_and_validate(app=fuzzed_app, checks=CHECKS,
                               headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    except ValueError as exc:
        # requests cannot build some generated requests at all (its cookie
        # handling fails to parse the request's URL: "Invalid IPv6 URL"):
        # nothing reached the app, so the example is not one.
        if "Invalid IPv6 URL" not in str(exc):
            raise
        reject()


def test_the_document_is_served_and_covers_every_route(client):
    document = client.get("/api/proxy-logs/openapi.json").json
    assert document["openapi"].startswith("3.")
    routes = {(rule.rule, method.lower())
              for rule in client.application.url_map.iter_rules()
              for method in rule.methods - {"OPTIONS"}
              if rule.endpoint != "static" and "websocket" not in repr(rule)}
    described = {(path.replace("{", "<").replace("}", ">"), verb)
                 for path, operations in document["paths"].items() for verb in operations}
    normalise = {"<tokenId>": "<int(max=9223372036854775807):token_id>", "<projectId>": "<project_id>",
                 "<containerId>": "<container_id>",
                 "<ruleId>": "<int(max=9223372036854775807):rule_id>"}
    for old, new in normalise.items():
        described = {(path.replace(old, new), verb) for path, verb in described}
    missing = {(rule, verb) for rule, verb in routes - described
               if verb != "head" and not rule.startswith("/api/ws/")
               and rule != "/loki/api/v1/tail"}  # WebSockets
    assert missing == {("/api/proxy-logs/docs", "get"), ("/", "get"),
                       ("/ui/<path:filename>", "get")}  # pages, not API


def test_the_docs_page_needs_nothing_from_elsewhere(client):
    page = client.get("/api/proxy-logs/docs").get_data(as_text=True)
    assert "openapi.json" in page
    assert "http://" not in page and "https://" not in page
