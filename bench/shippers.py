"""What each shipper protocol costs beside native NDJSON: the same entries
sent as `_ingest` NDJSON, OTLP/HTTP JSON and protobuf, Loki push JSON and
snappy protobuf, and Elasticsearch bulk, each into a fresh SQLite store, in one run.

    .venv/bin/python -m bench.shippers [--entries 50000] [--batch 1000] [--rounds 3]

Entries are bench/scale.py's corpus (with bodies in a fifth of them; each
protocol carries the same fields: scope, service, method, url, status,
client address, duration, time, kind, trace id, and the rest as
attributes). Requests go
through the Flask test client, gzip-compressed, `--batch` entries each.
Each protocol loads once in each of `--rounds` rounds; prints the median
entries/s, its ratio to native's median (goal: at least 0.8) and each
round's ratio.
"""
import argparse
import gzip
import statistics
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
            "bytesIn": e["data"].get("bytesIn"), "kind": e.get("kind"),
            "trace.id": e.get("traceId")}


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
                    "durationMs": e["data"].get("durationMs"), "kind": e.get("kind"),
                    "trace": {"id": e.get("traceId")}}
        lines.append(orjson.dumps(document))
    return b"\n".join(lines) + b"\n", "application/x-ndjson", "/elasticsearch/_bulk"


PROTOCOLS = {"native NDJSON": native, "OTLP JSON": otlp_json, "OTLP protobuf": otlp_protobuf,
             "Loki push JSON": loki, "Loki push protobuf": loki_protobuf,
             "Elasticsearch bulk": elastic}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    corpus = [e for batch in batches(args.entries, now_ms=int(time.time() * 1000))
              for e in batch]
    chunks = [corpus[i:i + args.batch] for i in range(0, len(corpus), args.batch)]
    encoded = {name: [encode(chunk) for chunk in chunks] for name, encode in PROTOCOLS.items()}
    rates = {name: [] for name in PROTOCOLS}
    # Rounds, each protocol once in each, so that a slow spell of a shared
    # machine falls on all of them alike; medians are compared.
    for round_ in range(args.rounds):
        for name, bodies in encoded.items():
            rate = _load(name, bodies, len(corpus))
            rates[name].append(rate)
            print(f"round {round_ + 1}: {name:<22} {rate:>10,.0f} entries/s", flush=True)
    base = statistics.median(rates["native NDJSON"])
    print()
    for name, found in rates.items():
        rate = statistics.median(found)
        print(f"{name:<22} {rate:>10,.0f} entries/s   ratio {rate / base:.2f}   "
              f"(rounds: {', '.join(f'{r / b:.2f}' for r, b in zip(found, rates['native NDJSON']))})")


def _load(name, bodies, total):
    """Entries a second storing `bodies` into a fresh store."""
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
    rate = total / (time.perf_counter() - started)
    stored = client.get("/api/proxy-logs/_logs/stats", headers=ADMIN).json["total"]
    assert stored == total, (name, stored)
    app.extensions["logsvc"].store.close()
    return rate


if __name__ == "__main__":
    main()
