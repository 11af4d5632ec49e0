"""Bodies are kept compressed when that pays, and read back exactly."""
import orjson
import pytest

from logsvc.store import db
from logsvc.testing import LOGS, make_entry

JSON_BODY = orjson.dumps({"items": [{"id": n, "email": f"user{n}@example.com", "note": "ünï\tcödé\\n"}
                                    for n in range(40)]}).decode()
TEXTS = [JSON_BODY, "x" * 127, "y" * 128, "line one\nline two\r\n\ttabbed \\ back" * 20, "é" * 200]


@pytest.mark.parametrize("as_ndjson", [False, True])
def test_bodies_read_back_exactly_and_long_ones_are_compressed(store, as_ndjson):
    entries = [make_entry(i, requestBody=text, responseBody=text[::-1])
               for i, text in enumerate(TEXTS)]
    if as_ndjson:
        response = store.client.post("/api/proxy-logs/_ingest", headers=store.headers,
                                     data=b"\n".join(orjson.dumps(e) for e in entries),
                                     content_type="application/x-ndjson")
        assert response.status_code == 200
    else:
        store.ingest(entries)
    page = store.page(LOGS, limit=10, includeRequestBody="true", includeResponseBody="true")
    assert [(e["requestBody"], e["responseBody"]) for e in page["entries"]] == [
        (text, text[::-1]) for text in TEXTS]
    stored = db.call(lambda: db.execute(
        "SELECT request_body, request_body_z FROM entry_body ORDER BY entry_id").fetchall())
    json_text, json_packed = stored[0]
    assert json_text is None and len(json_packed) < len(JSON_BODY.encode()) / 3
    assert stored[1] == ("x" * 127, None)  # too short to be worth it
    assert stored[2][0] is None  # 128 bytes of one letter: compressed
