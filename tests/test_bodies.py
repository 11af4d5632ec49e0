"""Bodies are kept compressed when that pays, and read back exactly."""
import zlib

import orjson
import pytest
import zstandard

from logsvc.store import bodies, db
from logsvc.testing import LOGS, Store, make_entry

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


def stored_frames():
    return db.call(lambda: [bytes(z) for (z,) in db.execute(
        "SELECT response_body_z FROM entry_body WHERE response_body_z IS NOT NULL "
        "ORDER BY entry_id").fetchall()])


def api_body(n):
    """A JSON answer like an API's: the same keys and shapes every time."""
    return orjson.dumps({"order": {"id": 7000 + n, "customer": f"user{n * 7919 % 10007}@example.com",
                                   "status": ("paid", "shipped", "open")[n % 3],
                                   "lines": [{"sku": f"SKU-{(n + k) % 97}", "quantity": k + 1,
                                              "unitPrice": {"amount": 1999, "currency": "EUR"}}
                                             for k in range(n % 4 + 1)]}}).decode()


def test_the_store_trains_a_dictionary_and_every_process_reads_with_it(make_app):
    store = Store(make_app().test_client())
    early = [make_entry(i, responseBody=api_body(i)) for i in range(bodies.TRAIN_SAMPLES)]
    store.ingest(early)
    assert db.call(lambda: db.execute("SELECT count(*) FROM body_dictionary").fetchone()) == (0,)
    store.ingest([make_entry(i, responseBody=api_body(i)) for i in range(500, 520)])
    (dict_id,), = db.call(lambda: db.execute("SELECT id FROM body_dictionary").fetchall())
    frames = stored_frames()
    ids = [zstandard.get_frame_parameters(f).dict_id for f in frames]
    # The first bodies were compressed without it, those after with it ...
    assert set(ids[:bodies.TRAIN_SAMPLES]) == {0} and set(ids[bodies.TRAIN_SAMPLES:]) == {dict_id}
    # ... to a fraction of the size of the same kind of body without it.
    without = sum(map(len, frames[480:500])) / 20
    with_it = sum(map(len, frames[500:520])) / 20
    assert with_it < 0.6 * without, (with_it, without)

    # Another process on the same store reads both kinds and writes with the
    # same dictionary (it trains none of its own).
    other = Store(make_app().test_client())
    page = other.page(LOGS, limit=1000, includeResponseBody="true")
    assert [e["responseBody"] for e in page["entries"]] == [
        api_body(i) for i in [*range(500), *range(500, 520)]]
    other.ingest([make_entry(9, responseBody=api_body(9))])
    assert zstandard.get_frame_parameters(stored_frames()[-1]).dict_id == dict_id
    assert db.call(lambda: db.execute("SELECT count(*) FROM body_dictionary").fetchone()) == (1,)
    # A word inside a body compressed with the dictionary is found, and so
    # is a phrase (checked against the decompressed document on SQLite).
    assert other.page(LOGS, q='"SKU 3"')["total"] == sum(
        '"SKU-3"' in api_body(i) for i in [*range(520), 9])


def test_bodies_written_by_schema_5_as_zlib_read_back(store):
    store.ingest([make_entry(0, responseBody="placeholder")])
    old = JSON_BODY.encode()
    db.call(lambda: db.execute("UPDATE entry_body SET response_body = NULL, "
                               "response_body_z = ? WHERE entry_id = 1", (zlib.compress(old),)))
    page = store.page(LOGS, includeResponseBody="true")
    assert page["entries"][0]["responseBody"] == JSON_BODY


def agent_data(n):
    """`data` as a proxy sends it: the same keys, a few values repeating."""
    return {"bytesIn": 1000 + n * 37, "region": "eu-west-1",
            "userAgent": ("curl/8.11.0", "Go-http-client/2.0", "okhttp/4.12.0")[n % 3]}


def test_data_gets_a_dictionary_of_its_own_and_reads_back_exactly(make_app):
    store = Store(make_app().test_client())
    datas = [agent_data(n) for n in range(bodies.TRAIN_SAMPLES + 40)]
    datas += [{"ünï": "tab\t and \\ and \"quotes\"", "n": [1, 2.5, None, True]}, {}, {"a": 1}]
    store.ingest([make_entry(i, data=d) for i, d in enumerate(datas[:bodies.TRAIN_SAMPLES])])
    store.ingest([make_entry(i, data=d) for i, d in enumerate(datas)][bodies.TRAIN_SAMPLES:])
    stored = db.call(lambda: [d for (d,) in db.execute("SELECT data FROM entry ORDER BY id")])
    kinds = db.call(lambda: [k for (k,) in db.execute("SELECT kind FROM body_dictionary")])
    if db.is_postgres():  # PostgreSQL keeps `data` as text
        assert kinds == [] and all(isinstance(d, str) for d in stored)
    else:
        # Text until the store has its `data` dictionary, then frames of
        # under half the size; short ones stay text.
        assert kinds == ["data"]
        assert all(isinstance(d, str) for d in stored[:bodies.TRAIN_SAMPLES])
        packed = stored[bodies.TRAIN_SAMPLES:-3]
        assert all(isinstance(d, bytes) for d in packed)
        raw = [len(orjson.dumps(d)) for d in datas[bodies.TRAIN_SAMPLES:-3]]
        assert sum(map(len, packed)) < 0.5 * sum(raw), (sum(map(len, packed)), sum(raw))
        assert isinstance(stored[-1], str) and isinstance(stored[-2], str)

    # Read back exactly, by this process and by another one on the store;
    # a word and a phrase inside `data` are found in either form.
    for reader in (store, Store(make_app().test_client())):
        page = reader.page(LOGS, limit=1000)
        assert [e["data"] for e in sorted(page["entries"], key=lambda e: e["id"])] == datas
        assert reader.page(LOGS, q="okhttp")["total"] == sum(
            "okhttp" in str(d) for d in datas)
        assert reader.page(LOGS, q='"curl/8.11.0"', limit=1000)["total"] == sum(
            d.get("userAgent") == "curl/8.11.0" for d in datas)
        assert reader.page(LOGS, q='"and quotes"')["total"] == 1
