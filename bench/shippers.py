"""What each shipper protocol costs beside native NDJSON: the same entries
sent as `_ingest` NDJSON, OTLP/HTTP JSON and protobuf, Loki push JSON and
snappy protobuf, and Elasticsearch bulk, each into a fresh SQLite store, in one run.

    .venv/bin/python -m bench.shippers [--entries 50000] [--batch 1000]

Entries are bench/scale.py's corpus (with bodies in a fifth of them; each
protocol carries the same fields: scope, service, method, url, status,
client address, duration, time, and the rest as attributes). Requests go
through the Flask test client, gzip-compressed, `--batch` entries each.
Prints entries/s and the ratio to native (goal: at least 0.8).
"""
import argparse
import gzip
import tempfile
import time
from pathlib import Path

import orjson

from bench.scale import batches
from logsvc.server import create_app
from logsvc.testing import ADMIN_TOKEN

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _attrs(values):
    out = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            out.append({"key": key, "value": {"stringValue": str(value)}})
        elif isinstance(value, int):
            out.append({"key": key, "value": {"intValue": str(value)}})
        else:
            out.append({"key": key, "value": {"doubleValue": value}})
    return out


def fields(e):
    return {"http.request.method": e.get("method"), "url.full": e.get("url"),
            "http.response.status_code": e.get("status"), "client.address": e.get("clientIp"),
            "durationMs": e["data"].get("durationMs"), "userAgent": e["data"].get("userAgent"),
            "bytesIn": e["data"].get("bytesIn")}


def native(batch):
    return b"\n".join(orjson.dumps(e) for e in batch), "application/x-ndjson", "/api/proxy-logs/_ingest"


def otlp(batch):
    resources = {}
    for e in batch:
        key = (e["projectId"], e.get("containerId"), e.get("serviceName"))
        resources.setdefault(key, []).append({
            "timeUnixNano": str(e["tsMs"] * 1_000_000), "severityText": e.get("level", "info").upper(),
            "body": {"stringValue": e.get("responseBody") or ""},
            "traceId": "", "attributes": _attrs(fields(e))})
    return {"resourceLogs": [{
        "resource": {"attributes": _attrs({"projectId": p, "container.id": c, "service.name": s})},
        "scopeLogs": [{"logRecords": records}]} for (p, c, s), records in resources.items()]}


def otlp_json(batch):
    return orjson.dumps(otlp(batch)), "application/json", "/otlp/v1/logs"


def otlp_protobuf(batch):
    from google.protobuf.json_format import ParseDict
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    message = otlp(batch)
    for resource in message["resourceLogs"]:
        for record in resource["scopeLogs"][0]["logRecords"]:
            del record["traceId"]
    return (ParseDict(message, ExportLogsServiceRequest()).SerializeToString(),
            "application/x-protobuf", "/otlp/v1/logs")


def loki(batch):
    streams = {}
    for e in batch:
        labels = (("projectId", e["projectId"]), ("containerId", e.get("containerId")),
                  ("serviceName", e.get("serviceName")), ("level", e.get("level", "info")))
        metadata = {k: str(v) for k, v in fields(e).items() if v is not None}
        streams.setdefault(labels, []).append(
            [str(e["tsMs"] * 1_000_000), e.get("responseBody") or "", metadata])
    body = {"streams": [{"stream": {k: v for k, v in labels if v is not None}, "values": values}
                        for labels, values in streams.items()]}
    return orjson.dumps(body), "application/json", "/loki/api/v1/push"


def loki_protobuf(batch):
    from logsvc.api.lokiproto import encode_push_request

    body, _, path = loki(batch)
    return encode_push_request(orjson.loads(body)), "application/x-protobuf", path


def elastic(batch):
    lines = []
    for e in batch:
        lines.append(b'{"create":{"_index":"logs"}}')
        document = {"@timestamp": e["tsMs"], "message": e.get("responseBody") or "",
                    "projectId": e["projectId"], "container": {"id": e.get("containerId")},
                    "service": {"name": e.get("serviceName")}, "log": {"level": e.get("level")},
                    "http": {"request": {"method": e.get("method")},
                             "response": {"status_code": e.get("status")}},
                    "url": {"full": e.get("url")}, "client": {"ip": e.get("clientIp")},
                    "durationMs": e["data"].get("durationMs")}
        lines.append(orjson.dumps(document))
    return b"\n".join(lines) + b"\n", "application/x-ndjson", "/elasticsearch/_bulk"


PROTOCOLS = {"native NDJSON": native, "OTLP JSON": otlp_json, "OTLP protobuf": otlp_protobuf,
             "Loki push JSON": loki, "Loki push protobuf": loki_protobuf,
             "Elasticsearch bulk": elastic}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    corpus = [e for batch in batches(args.entries, now_ms=int(time.time() * 1000))
              for e in batch]
    chunks = [corpus[i:i + args.batch] for i in range(0, len(corpus), args.batch)]
    rates = {}
    for name, encode in PROTOCOLS.items():
        bodies = [encode(chunk) for chunk in chunks]
        app = create_app({"data_dir": Path(tempfile.mkdtemp(prefix="logsvc-ship-")),
                          "admin_token": ADMIN_TOKEN, "rate_limit_per_min": 0,
                          "retention_days": 0, "max_rows": 10**9})
        client = app.test_client()
        started = time.perf_counter()
        for body, media, path in bodies:
            snappy = name == "Loki push protobuf"  # snappy already, as Promtail sends it
            response = client.post(path, data=body if snappy else gzip.compress(body, 1),
                                   headers={**ADMIN, "Content-Type": media,
                                            **({} if snappy else {"Content-Encoding": "gzip"})})
            assert response.status_code in (200, 204), (name, response.data[:300])
        rates[name] = len(corpus) / (time.perf_counter() - started)
        stored = client.get("/api/proxy-logs/_logs/stats", headers=ADMIN).json["total"]
        assert stored == len(corpus), (name, stored)
        app.extensions["logsvc"].store.close()
        print(f"{name:<22} {rates[name]:>10,.0f} entries/s", flush=True)
    base = rates["native NDJSON"]
    print()
    for name, rate in rates.items():
        print(f"{name:<22} {rate:>10,.0f} entries/s   ratio {rate / base:.2f}")


if __name__ == "__main__":
    main()
