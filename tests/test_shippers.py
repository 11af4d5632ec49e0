"""What shippers send is stored as entries: OTLP/HTTP logs (through the
OpenTelemetry SDK's own exporter, and in JSON), Loki push, Elasticsearch
bulk; each item under the sender's scope, refused items answered in the
protocol's own shape."""
import gzip
import os
import re
import shutil
import socket
import subprocess
import time

import orjson
import pytest

from logsvc.testing import ADMIN_TOKEN, LOGS, ROOT, Store, free_port

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def token(client, project, container=None):
    body = {"name": "shipper", "projectId": project, "containerId": container,
            "capabilities": {"logs": True, "ingest": True}}
    made = client.post("/api/proxy-logs/_admin/tokens", json=body, headers=ADMIN)
    assert made.status_code == 201, made.json
    return {"Authorization": f"Bearer {made.json['token']}"}


def entries(client, **params):
    return Store(client).page(LOGS, limit=100, **params)["entries"]


@pytest.mark.server
def test_the_opentelemetry_sdk_exporter_sends_its_logs(server):
    import requests
    from opentelemetry._logs import SeverityNumber
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    provider = LoggerProvider(resource=Resource.create({"service.name": "checkout",
                                                        "projectId": "shop",
                                                        "container.id": "web-1"}))
    exporter = OTLPLogExporter(endpoint=server.url + "/otlp/v1/logs", headers=ADMIN)
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = provider.get_logger("test-otlp")
    try:
        logger.emit(body="payment declined", severity_number=SeverityNumber.ERROR,
                    severity_text="ERROR", timestamp=time.time_ns(), attributes={
                        "http.request.method": "POST", "url.path": "/v1/pay",
                        "url.query": "retry=1", "http.response.status_code": 402,
                        "client.address": "203.0.113.9", "order": "A-17"})
        logger.emit(body="slow upstream", severity_number=SeverityNumber.WARN,
                    timestamp=time.time_ns())
        assert provider.force_flush()
    finally:
        provider.shutdown()

    found = requests.get(server.url + LOGS, params={"projectId": "shop"}, headers=ADMIN,
                         timeout=10).json()["entries"]
    by_message = {e["data"]["message"]: e for e in found}
    paid = by_message["payment declined"]
    assert (paid["serviceName"], paid["containerId"], paid["level"]) == ("checkout", "web-1",
                                                                         "error")
    assert (paid["method"], paid["url"], paid["status"], paid["clientIp"]) == \
        ("POST", "/v1/pay?retry=1", 402, "203.0.113.9")
    assert paid["data"]["order"] == "A-17" and paid["kind"] == "response"
    assert by_message["slow upstream"]["level"] == "warn"
    assert abs(paid["tsMs"] - time.time() * 1000) < 60_000


def otlp_json(records, resource=None):
    def attributes(values):
        return [{"key": k, "value": {"intValue": str(v)} if isinstance(v, int)
                 else {"stringValue": v}} for k, v in values.items()]
    return {"resourceLogs": [{
        "resource": {"attributes": attributes(resource or {"service.name": "api"})},
        "scopeLogs": [{"logRecords": [
            {"timeUnixNano": str(1_800_000_000_000_000_000 + i), "severityNumber": 17,
             "severityText": "ERROR", "body": {"stringValue": f"record {i}"},
             "traceId": "5b8efff798038103d269b633813fc60c",
             "attributes": attributes(attrs)} for i, attrs in enumerate(records)]}]}]}


def test_otlp_json_refuses_a_record_of_another_scope_and_stores_the_rest(client):
    headers = {**token(client, "shop"), "Content-Type": "application/json",
               "Content-Encoding": "gzip"}
    body = otlp_json([{"http.response.status_code": 500}, {"projectId": "elsewhere"}])
    response = client.post("/otlp/v1/logs", data=gzip.compress(orjson.dumps(body)),
                           headers=headers)
    assert response.status_code == 200, response.json
    partial = response.json["partialSuccess"]
    assert partial["rejectedLogRecords"] == "1" and "projectId" in partial["errorMessage"]
    [stored] = entries(client)
    assert (stored["projectId"], stored["status"], stored["level"]) == ("shop", 500, "error")
    assert stored["traceId"] == "5b8efff798038103d269b633813fc60c"
    assert stored["tsMs"] == 1_800_000_000_000 and stored["data"]["message"] == "record 0"


@pytest.mark.parametrize("body, content_type", [
    (b"not json", "application/json"), (b"\x0a\xff\xff", "application/x-protobuf"),
    (b"{}", "text/plain")])
def test_otlp_that_cannot_be_read_is_a_4xx_and_stores_nothing(client, body, content_type):
    response = client.post("/otlp/v1/logs", data=body,
                           headers={**ADMIN, "Content-Type": content_type})
    assert response.status_code in (400, 415) and response.json["message"]
    assert entries(client) == []


@pytest.mark.parametrize("request_body, named", [
    ({"resourceLogs": 7}, "resourceLogs must be a list"),
    ({"resourceLogs": ["x"]}, "each of resourceLogs must be an object"),
    ({"resourceLogs": [{"resource": "shop"}]}, "resource must be an object"),
    ({"resourceLogs": [{"resource": {"attributes": 3}}]}, "attributes must be a list"),
    ({"resourceLogs": [{"scopeLogs": [{"logRecords": True}]}]}, "logRecords must be a list"),
    ({"resourceLogs": [{"scopeLogs": "x"}]}, "scopeLogs must be a list"),
    ({"resourceLogs": [{"scopeLogs": [{"logRecords": [
        {"body": {"stringValue": "ok"}},
        {"attributes": [{"key": "k", "value": {"arrayValue": [1]}}]}]}]}]},
     "arrayValue must be an object"),
    ({"resourceLogs": [{"scopeLogs": [{"logRecords": [
        {"attributes": [{"key": "k", "value": {"kvlistValue": {"values": "v"}}}]}]}]}]},
     "attributes must be a list")])
def test_otlp_json_of_the_wrong_shape_is_a_400_naming_the_part_and_stores_nothing(
        client, request_body, named):
    response = client.post("/otlp/v1/logs", json=request_body, headers=ADMIN)
    assert response.status_code == 400, response.data
    assert named in response.json["message"]
    assert entries(client) == []


def test_a_loki_push_stores_each_line_with_its_labels(client):
    push = {"streams": [
        {"stream": {"projectId": "shop", "serviceName": "edge", "level": "warn", "job": "nginx"},
         "values": [["1800000000000000000", "GET /v1/cart 200"],
                    ["1800000001000000000", "GET /v1/cart 504", {"traceId": "t-9"}]]}]}
    response = client.post("/loki/api/v1/push", json=push, headers=ADMIN)
    assert response.status_code == 204
    found = entries(client, order="asc")
    assert [e["data"]["message"] for e in found] == ["GET /v1/cart 200", "GET /v1/cart 504"]
    assert {(e["projectId"], e["serviceName"], e["level"]) for e in found} == \
        {("shop", "edge", "warn")}
    assert found[0]["data"]["job"] == "nginx" and found[1]["traceId"] == "t-9"
    assert [e["tsMs"] for e in found] == [1_800_000_000_000, 1_800_000_001_000]


def test_a_duration_in_loki_metadata_is_the_entrys_duration(client):
    # Loki's structured metadata are strings: a duration spelled as one is
    # the entry's duration (in the unit its name says); one that is not a
    # number stays in data.
    push = {"streams": [{"stream": {"projectId": "shop"}, "values": [
        ["1800000000000000000", "a", {"durationMs": "12.5", "http.route": "/v1/cart"}],
        ["1800000001000000000", "b", {"http.server.request.duration": "0.25"}],
        ["1800000002000000000", "c", {"durationMs": "slow"}],
        ["1800000003000000000", "d", {"durationMs": "nan"}]]}]}
    assert client.post("/loki/api/v1/push", json=push, headers=ADMIN).status_code == 204
    found = entries(client, order="asc")
    assert [e["durationMs"] for e in found] == [12.5, 250, None, None]
    assert [e["data"].get("durationMs") for e in found] == [None, None, "slow", "nan"]
    stats = client.get("/api/proxy-logs/_logs/stats", headers=ADMIN).json
    assert stats["latency"]["count"] == 2 and stats["latency"]["max"] == 250


def test_a_loki_push_in_snappy_protobuf_as_promtail_sends_it(client):
    from logsvc.api.lokiproto import encode_push_request

    now = time.time_ns()
    push = {"streams": [
        {"stream": {"projectId": "shop", "containerId": "edge-1", "job": 'nginx "main"'},
         "values": [[str(now), "GET /v1/cart 200"],
                    [str(now + 1_000_000), "GET /v1/cart 504", {"traceId": "t-7"}]]}]}
    response = client.post("/loki/api/v1/push", data=encode_push_request(push),
                           headers={**ADMIN, "Content-Type": "application/x-protobuf"})
    assert response.status_code == 204, response.json
    found = entries(client, order="asc")
    assert [e["data"]["message"] for e in found] == ["GET /v1/cart 200", "GET /v1/cart 504"]
    assert {(e["projectId"], e["containerId"]) for e in found} == {("shop", "edge-1")}
    assert found[0]["data"]["job"] == 'nginx "main"' and found[1]["traceId"] == "t-7"
    assert found[1]["tsMs"] == (now + 1_000_000) // 1_000_000
    broken = client.post("/loki/api/v1/push", data=b"\x00not snappy",
                         headers={**ADMIN, "Content-Type": "application/x-protobuf"})
    assert broken.status_code == 400 and "snappy" in broken.json["message"]


def test_a_loki_push_naming_another_scope_stores_only_its_own_lines(client):
    now = str(time.time_ns())
    push = {"streams": [{"stream": {"projectId": "other"}, "values": [[now, "theirs"]]},
                        {"stream": {}, "values": [[now, "mine"]]}]}
    response = client.post("/loki/api/v1/push", json=push, headers=token(client, "shop"))
    assert response.status_code == 400 and "1 of 2" in response.json["message"]
    assert [e["data"]["message"] for e in entries(client)] == ["mine"]


def test_elasticsearch_bulk_answers_each_item(client):
    root = client.get("/elasticsearch/", headers=ADMIN)
    assert root.status_code == 200 and root.headers["X-Elastic-Product"] == "Elasticsearch"
    assert root.json["version"]["number"].startswith("8.")
    lines = [
        {"create": {"_index": "logs-nginx"}},
        {"@timestamp": "2027-01-15T08:00:00.250Z", "message": "GET /v1/users/7 500",
         "log": {"level": "error"}, "service": {"name": "gateway"},
         "http": {"request": {"method": "GET"}, "response": {"status_code": 500}},
         "url": {"path": "/v1/users/7"}, "client": {"ip": "198.51.100.4"},
         "event": {"duration": 12_500_000}, "projectId": "shop", "host": {"name": "n1"}},
        {"delete": {"_index": "logs-nginx", "_id": "1"}},
        {"index": {}},
        {"projectId": "shop", "status": "not a status"},
        {"index": {}},
        {"projectId": "shop", "message": "plain event"},
    ]
    body = b"\n".join(orjson.dumps(line) for line in lines) + b"\n"
    response = client.post("/elasticsearch/logs/_bulk", data=body,
                           headers={**ADMIN, "Content-Type": "application/x-ndjson"})
    assert response.status_code == 200
    answer = response.json
    assert answer["errors"] is True
    statuses = [next(iter(item.values()))["status"] for item in answer["items"]]
    assert statuses == [201, 400, 400, 201]
    assert answer["items"][0]["create"]["_index"] == "logs-nginx"
    assert answer["items"][3]["index"]["_index"] == "logs"
    first_id = int(answer["items"][0]["create"]["_id"])
    stored = {e["id"]: e for e in entries(client)}
    assert set(stored) == {first_id, int(answer["items"][3]["index"]["_id"])}
    e = stored[first_id]
    assert (e["serviceName"], e["level"], e["method"], e["url"], e["status"], e["clientIp"]) == \
        ("gateway", "error", "GET", "/v1/users/7", 500, "198.51.100.4")
    assert e["durationMs"] == 12.5 and e["tsMs"] == 1800000000250
    assert e["data"]["host.name"] == "n1" and e["data"]["message"] == "GET /v1/users/7 500"


def _bulk(client, lines, headers=ADMIN, url="/elasticsearch/_bulk"):
    body = b"\n".join(orjson.dumps(line) for line in lines) + b"\n"
    response = client.post(url, data=body,
                           headers={**headers, "Content-Type": "application/x-ndjson"})
    assert response.status_code == 200, response.get_data()
    return response.json


def _statuses(answer):
    return [next(iter(item.values()))["status"] for item in answer["items"]]


def test_a_bulk_sent_again_with_its_ids_stores_each_document_once(client):
    lines = [{"create": {"_index": "web", "_id": "a1"}}, {"projectId": "shop", "message": "one"},
             {"index": {"_index": "web", "_id": "a2"}}, {"projectId": "shop", "message": "two"},
             {"create": {"_index": "web"}}, {"projectId": "shop", "message": "no id"}]
    first = _bulk(client, lines)
    assert first["errors"] is False and _statuses(first) == [201, 201, 201]
    assert [next(iter(i.values()))["_id"] for i in first["items"][:2]] == ["a1", "a2"]
    stored_as = {i["create" if "create" in i else "index"]["_id"]:
                 i["create" if "create" in i else "index"]["_seq_no"] for i in first["items"]}

    # A shipper retrying the whole request after a lost answer.
    again = _bulk(client, lines)
    create, index, unkeyed = (next(iter(item.values())) for item in again["items"])
    assert again["errors"] is True  # as Elasticsearch answers a create of an existing _id
    assert create["status"] == 409 and create["error"]["type"] == \
        "version_conflict_engine_exception"
    assert (index["status"], index["result"], index["_seq_no"]) == (200, "noop",
                                                                    stored_as["a2"])
    assert unkeyed["status"] == 201  # without an _id, a document is a new one
    messages = sorted(e["data"]["message"] for e in entries(client))
    assert messages == ["no id", "no id", "one", "two"]


def test_an_id_twice_in_one_bulk_is_stored_once_and_ids_are_per_index_and_scope(client):
    lines = [{"create": {"_id": "x"}}, {"projectId": "shop", "message": "first"},
             {"create": {"_id": "x"}}, {"projectId": "shop", "message": "second"},
             {"create": {"_index": "other", "_id": "x"}}, {"projectId": "shop", "message": "b"},
             {"create": {"_id": "y" * 513}}, {"projectId": "shop", "message": "long id"}]
    answer = _bulk(client, lines)
    assert _statuses(answer) == [201, 409, 201, 400]
    assert "_id" in answer["items"][3]["create"]["error"]["reason"]
    # Another tenant's _id "x" is its own.
    theirs = _bulk(client, [{"create": {"_id": "x"}}, {"message": "theirs"}],
                   headers=token(client, "shop-b"))
    assert _statuses(theirs) == [201]
    assert sorted(e["data"]["message"] for e in entries(client)) == ["b", "first", "theirs"]


@pytest.mark.server
def test_the_same_bulk_sent_at_once_through_both_workers_stores_each_id_once(server):
    from concurrent.futures import ThreadPoolExecutor

    import requests

    lines = []
    for n in range(300):
        lines += [{"create": {"_index": "web", "_id": f"doc-{n}"}},
                  {"projectId": "race", "message": f"m{n}"}]
    body = b"\n".join(orjson.dumps(line) for line in lines) + b"\n"

    def send(_):
        response = requests.post(server.url + "/elasticsearch/_bulk", data=body, timeout=60,
                                 headers={**ADMIN, "Content-Type": "application/x-ndjson"})
        assert response.status_code == 200, response.text
        return _statuses(response.json())

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(send, range(12)))
    # Each document was created by exactly one of the requests.
    for n in range(300):
        assert sorted(statuses[n] for statuses in answers) == [201] + [409] * 11
    found = requests.get(server.url + LOGS, headers=ADMIN, timeout=10,
                         params={"projectId": "race", "limit": 1000}).json()["entries"]
    assert sorted(e["data"]["message"] for e in found) == sorted(f"m{n}" for n in range(300))


@pytest.mark.server
def test_the_official_elasticsearch_client_bulk_helpers_store_and_retry_by_id(server):
    import requests
    from elasticsearch import Elasticsearch, helpers

    es = Elasticsearch(server.url + "/elasticsearch", headers=ADMIN, request_timeout=30)
    assert es.info()["version"]["number"].startswith("8.")
    assert es.cluster.health()["status"] == "green"
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    actions = [{"_op_type": "create", "_index": "web", "_id": f"req-{n}",
                "_source": {"@timestamp": now, "message": f"GET /v1/items/{n} 200",
                            "projectId": "es-client", "service": {"name": "shop"},
                            "http": {"request": {"method": "GET"},
                                     "response": {"status_code": 200}},
                            "url": {"path": f"/v1/items/{n}"}}}
               for n in range(250)]
    done, errors = helpers.bulk(es, actions, chunk_size=100, raise_on_error=False)
    assert (done, errors) == (250, [])
    # The same documents again: each a 409 (already stored), nothing twice.
    done, errors = helpers.bulk(es, actions, chunk_size=100, raise_on_error=False)
    assert done == 0 and len(errors) == 250
    assert {next(iter(e.values()))["status"] for e in errors} == {409}
    found = requests.get(server.url + LOGS, headers=ADMIN, timeout=10,
                         params={"projectId": "es-client", "limit": 1000}).json()["entries"]
    assert len(found) == 250
    item = next(e for e in found if e["url"] == "/v1/items/7")
    assert (item["method"], item["status"], item["serviceName"]) == ("GET", 200, "shop")


def _configurations():
    """The fenced blocks of docs/capture.md's shipper configurations, by
    their language."""
    page = (ROOT / "docs" / "capture.md").read_text()
    section = page[page.index("### Shipper configurations"):]
    return re.findall(r"```(\w+)\n(.*?)```", section, re.S)


def test_every_documented_shipper_configuration_parses_and_names_a_served_address(client):
    import tomllib

    import yaml

    blocks = _configurations()
    assert sorted({lang for lang, _ in blocks}) == ["alloy", "ini", "toml", "yaml"]
    addresses = []
    for lang, text in blocks:
        if lang == "yaml":
            config = yaml.safe_load(text)
            if "exporters" in config:  # the Collector
                addresses.append(config["exporters"]["otlphttp/logsvc"]["logs_endpoint"])
            elif "clients" in config:  # Promtail
                addresses.append(config["clients"][0]["url"])
            else:  # Filebeat
                out = config["output.elasticsearch"]
                addresses.append(out["hosts"][0] + out["path"] + "/_bulk")
        elif lang == "toml":
            sinks = tomllib.loads(text)["sinks"]
            loki, es = sinks["logsvc_loki"], sinks["logsvc_elasticsearch"]
            addresses += [loki["endpoint"] + loki["path"], es["endpoints"][0] + "/_bulk"]
        elif lang == "ini":  # Fluent Bit: Host, Port, Path
            fields = dict(line.split(None, 1) for line in text.splitlines()[1:] if line.strip())
            addresses.append(f"http://{fields['Host']}:{fields['Port']}{fields['Path']}/_bulk")
        else:  # Alloy
            addresses.append(re.search(r'url\s*=\s*"([^"]+)"', text).group(1))
    assert len(addresses) == 7
    adapter = client.application.url_map.bind("127.0.0.1:8080")
    for address in addresses:
        assert address.startswith("http://127.0.0.1:8080/"), address
        path = address[len("http://127.0.0.1:8080"):]
        # The route that takes what the shipper sends there (a POST).
        endpoint, _ = adapter.match(path, method="POST")
        assert endpoint.startswith("shippers."), (address, endpoint)


def _documented_rsyslog_config(rsyslog_port, logsvc_port, errors):
    """docs/capture.md's rsyslog configuration, on the test's ports."""
    page = (ROOT / "docs" / "capture.md").read_text()
    config = re.search(r"```rsyslog\n(.*?)```", page, re.S).group(1)
    for documented, ours in (('port="5515"', f'port="{rsyslog_port}"'),
                             ("127.0.0.1:8080", f"127.0.0.1:{logsvc_port}"),
                             ("/var/log/rsyslog-logsvc-errors.json", str(errors))):
        assert documented in config
        config = config.replace(documented, ours)
    return config


@pytest.mark.server
def test_rsyslog_ships_each_message_once_through_the_bulk_api(server, tmp_path):
    import requests

    rsyslogd = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
    if not os.path.exists(rsyslogd):
        pytest.skip("rsyslog is not installed (.ci/run installs Debian's)")
    made = requests.post(server.url + "/api/proxy-logs/_admin/users", headers=ADMIN, timeout=10,
                         json={"username": "ship", "password": "a-long-passphrase",
                               "projectId": "edge",
                               "capabilities": {"ingest": True, "logs": True}})
    assert made.status_code == 201, made.text
    port, errors = free_port(), tmp_path / "errors.json"
    config = tmp_path / "rsyslog.conf"
    config.write_text(f'global(workDirectory="{tmp_path}")\n'
                      + _documented_rsyslog_config(port, server.port, errors))
    with open(tmp_path / "rsyslogd.log", "wb") as log:
        shipper = subprocess.Popen([rsyslogd, "-n", "-f", str(config), "-i",
                                    str(tmp_path / "pid")], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                sender = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "rsyslogd.log").read_text()
                time.sleep(0.1)
        stamp = time.strftime("%b %e %H:%M:%S", time.localtime())
        with sender:
            for _ in range(2):  # each message twice: the same _id
                for n in range(20):
                    severity = 131 if n % 4 == 0 else 134  # local0.err, local0.info
                    sender.sendall(f"<{severity}>{stamp} web1 checkout[42]: order {n} "
                                   f"took {n * 10} ms\n".encode())

        def stored():
            return requests.get(server.url + LOGS, headers=ADMIN, timeout=10,
                                params={"projectId": "edge", "limit": 100}).json()["entries"]

        deadline = time.monotonic() + 30
        while len(found := stored()) < 20 or not errors.exists():
            assert time.monotonic() < deadline, (len(found), (tmp_path / "rsyslogd.log").read_text())
            time.sleep(0.2)
        time.sleep(1)  # anything sent twice would have arrived by now
        found = stored()
    finally:
        shipper.terminate()
        shipper.wait(timeout=10)
    assert sorted(e["data"]["message"].strip() for e in found) == sorted(
        f"order {n} took {n * 10} ms" for n in range(20))
    first = next(e for e in found if e["data"]["message"].strip() == "order 0 took 0 ms")
    assert (first["projectId"], first["serviceName"], first["level"]) == ("edge", "checkout",
                                                                          "error")
    assert first["data"]["host.name"] == "web1" and abs(first["tsMs"] - time.time() * 1000) < 120_000
    assert "version_conflict_engine_exception" in errors.read_text()


def test_shippers_need_a_writer(client):
    made = client.post("/api/proxy-logs/_admin/tokens", headers=ADMIN, json={
        "name": "r", "projectId": "shop", "capabilities": {"logs": True}})
    reader = {"Authorization": f"Bearer {made.json['token']}"}
    for path in ("/otlp/v1/logs", "/loki/api/v1/push", "/elasticsearch/_bulk"):
        assert client.post(path, data=b"{}").status_code == 401
        assert client.post(path, data=b"{}", headers=reader).status_code == 403
    # The bulk API by PUT, and the health answers, behind the same gate.
    assert client.put("/elasticsearch/_bulk", data=b"{}").status_code == 401
    assert client.put("/elasticsearch/web/_bulk", data=b"{}", headers=reader).status_code == 403
    for path in ("/elasticsearch/_cat/health", "/elasticsearch/_cluster/health"):
        refused = client.get(path)
        assert refused.status_code == 401 and set(refused.json) == {"statusCode", "error",
                                                                     "message"}
        assert client.get(path, headers=reader).status_code == 403
    health = client.get("/elasticsearch/_cat/health", headers=ADMIN)
    assert health.status_code == 200 and " green " in health.get_data(as_text=True)


def test_a_bulk_put_that_cannot_be_read_is_a_400_and_stores_nothing(client):
    response = client.put("/elasticsearch/web/_bulk", data=b'{"index": {}}\n',
                          headers={**ADMIN, "Content-Type": "application/x-ndjson"})
    assert response.status_code == 400 and "no document" in response.json["message"]
    assert set(response.json) == {"statusCode", "error", "message"}
    assert entries(client) == []


@pytest.mark.parametrize("body, named", [
    (b"not json\n", "Line 1"), (b'{"index": {}}\n', "no document"),
    (b'{"index": {}, "create": {}}\n{}\n', "one key")])
def test_a_bulk_body_that_cannot_be_read_is_a_400_and_stores_nothing(client, body, named):
    response = client.post("/elasticsearch/_bulk", data=body,
                           headers={**ADMIN, "Content-Type": "application/x-ndjson"})
    assert response.status_code == 400 and named in response.json["message"]
    assert set(response.json) == {"statusCode", "error", "message"}
    assert entries(client) == []
