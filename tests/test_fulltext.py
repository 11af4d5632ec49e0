"""`q`: words and phrases over url, bodies and data, through an index."""
import re

import gevent
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logsvc.store import db, fulltext, retention, tail
from logsvc.store.filters import Filters
from logsvc.testing import LOGS, make_entry

BODY = ('{"error": {"code": "E50312", "message": "upstream connection reset by peer"}, '
        '"user": "ada.lovelace@example.com", "items": [' + ", ".join(
            f'{{"id": {n}, "name": "widget {n}"}}' for n in range(60)) + "]}")


@pytest.fixture
def searchable(store):
    store.ingest([
        make_entry(0, url="/v1/orders/8812", projectId="proj_a"),
        make_entry(1, url="/v1/users/42", responseBody=BODY, projectId="proj_a"),
        make_entry(2, url="/v1/users/43", requestBody='{"note": "connection timeout"}',
                   projectId="proj_b"),
        make_entry(3, url="/healthz", data={"route": "/internal/zanzibar"}, projectId="proj_b"),
        make_entry(4, url="/v1/invoices/7", responseBody="short body: reset connection"),
    ])
    return store


def found(store, **params):
    page = store.page(**params)
    assert page["totalExact"] is True
    return [e["id"] for e in page["entries"]]


@pytest.mark.parametrize("q, ids", [
    ("E50312", [2]),                            # an error code inside a compressed body
    ("ada.lovelace@example.com", [2]),          # an email: a phrase of its words
    ("/v1/orders/8812", [1]),                   # a path: its segments in order
    ("orders/8812", [1]),
    ("8812/orders", []),
    ('"connection reset"', [2]),                # a phrase: order matters ...
    ('"reset connection"', [5]),
    ("reset connection", [2, 5]),               # ... words alone do not
    ("connection", [2, 3, 5]),                  # request bodies are searched too
    ("zanzibar", [4]),                          # and data
    ("invoic*", [5]),                           # prefix
    ("CONNECTION TIMEOUT", [3]),                # case does not matter
    ("timeout OR zanzibar", [3, 4]),
    ("connection -timeout", [2, 5]),
    ("connection NOT reset", [3]),
    ("widget 59", [2]),
    ('connection -"connection reset"', [3, 5]),  # a phrase left out, not its words
    ('"connection res"*', [2]),                 # a phrase ending in a prefix
    ('"reset connection" OR zanzibar', [4, 5]),
    ('"users 43" connection', [3]),
])
def test_q_finds_words_and_phrases_in_url_bodies_and_data(searchable, q, ids):
    assert found(searchable, q=q) == ids


def test_q_combines_with_filters_and_paging(searchable):
    assert found(searchable, q="connection", projectId="proj_a") == [2]
    assert found(searchable, q="connection", order="desc", limit=1, offset=1) == [3]
    page = searchable.page(q="connection", limit=1)
    assert page["total"] == 3
    assert found(searchable, q="v1", last=2) == [3, 5]


def fts_rowids(word):
    """SQLite: the ids the index itself holds for `word` (not filtered by
    the entry table), so that a stale index entry would show."""
    return db.call(lambda: [r[0] for r in db.execute(
        "SELECT rowid FROM entry_fts WHERE entry_fts MATCH ? ORDER BY rowid",
        (f'"{word}"',)).fetchall()])


def test_retention_and_clear_remove_entries_from_the_index(make_app, store):
    from logsvc.testing import Store
    app = make_app(retention_days=0, max_rows=2)
    store = Store(app.test_client())
    store.ingest([make_entry(i, url=f"/v1/word{i}", responseBody=BODY if i == 1 else None)
                  for i in range(4)])
    assert retention.prune(app.extensions["logsvc"].config) == 2
    assert found(store, q="word0 OR word1 OR E50312") == []
    assert found(store, q="word2 OR word3") == [3, 4]
    if not db.is_postgres():
        assert fts_rowids("word1") == [] and fts_rowids("e50312") == []
        assert fts_rowids("word3") == [4]
    assert store.client.post("/api/proxy-logs/_admin/clear",
                             headers=store.headers).status_code == 200
    assert found(store, q="word3") == []
    if not db.is_postgres():
        assert fts_rowids("word3") == [] and fts_rowids("v1") == []
        # ... and the lookup index of trace ids and addresses too.
        assert db.call(lambda: db.execute("SELECT count(*) FROM entry_keys WHERE entry_keys "
                                          "MATCH '\"i0a000003\"'").fetchone()) == (0,)
    store.ingest([make_entry(9, url="/v1/word3")])
    assert len(found(store, q="word3")) == 1


def test_the_live_tail_filters_by_q_including_bodies(app):
    from logsvc.store import ingest
    config = app.extensions["logsvc"].config
    tailer = tail.Tailer(100)
    opening, subscription = tail.subscribe(tailer, Filters(q="E50312 OR zanzibar"), None, 0)
    ingest.ingest([make_entry(0), make_entry(1, responseBody=BODY),
                   make_entry(2, data={"where": "zanzibar"}), make_entry(3)], config)
    seen = []
    for kind, batch in subscription.events(heartbeat_s=0.3):
        if kind == "heartbeat":
            break
        seen += [e["id"] for e, _ in batch]
    assert seen == [2, 3]
    gevent.sleep(0)


@pytest.mark.parametrize("path", [LOGS, LOGS + "/stream"])
@pytest.mark.parametrize("q", ["%", '"open', "-alone", "a OR -b"])
def test_a_search_that_cannot_run_is_a_400_naming_q(store, path, q):
    response = store.get(path, q=q)
    assert response.status_code == 400 and "'q'" in response.json["message"]


def test_the_parser_and_the_predicate_agree_with_the_syntax():
    groups = fulltext.parse('"a b" c* -d OR e')
    assert groups == (
        fulltext.Group((fulltext.Phrase(("a", "b")), fulltext.Phrase(("c",), True)),
                       (fulltext.Phrase(("d",)),)),
        fulltext.Group((fulltext.Phrase(("e",)),)))
    # SQLite's index keeps no positions: a phrase is all of its words there,
    # and the candidates are checked against their documents.
    assert fulltext.to_fts5(groups) == '(("a" AND "b" AND "c" *) NOT ("d")) OR ("e")'
    assert not fulltext.exact_in_index(groups)
    assert fulltext.exact_in_index(fulltext.parse("c* -d OR e"))
    assert fulltext.check('"a b" c* -d OR e', "/x", "a b", '{"k": "cat"}') == 1
    assert fulltext.check('"a b" c* -d OR e', "/x", "b a", '{"k": "cat"}') == 0
    assert fulltext.to_tsquery(groups) == "(('a' <-> 'b') & ('c':*) & !('d')) | (('e'))"
    assert fulltext.matches(groups, "x a b cat") and not fulltext.matches(groups, "a b cat d")
    assert fulltext.matches(groups, "e d") and not fulltext.matches(groups, "b a cat")


def test_a_body_with_a_huge_blob_is_stored_and_its_words_found(store):
    blob = "QUJD" * 2000  # one 8,000-letter run, as base64 or hex bodies have
    store.ingest([make_entry(0, responseBody=f"before {blob} after", requestBody=blob)])
    assert found(store, q="before after") == [1]
    page = store.page(limit=1, includeResponseBody="true")
    assert page["entries"][0]["responseBody"] == f"before {blob} after"


def _in_order(found, phrase):
    """The definition: the phrase's words follow each other among the text's
    words (the last may be a prefix)."""
    size = len(phrase.words)
    for start in range(len(found) - size + 1):
        window = found[start:start + size]
        if window[:-1] == list(phrase.words[:-1]) and (
                window[-1] == phrase.words[-1]
                or (phrase.prefix and window[-1].startswith(phrase.words[-1]))):
            return True
    return False


# Few distinct letters, so that phrases often match; separators of every
# kind (underscores are not part of words), and letters whose case or
# accents matter.
_TEXT = st.text(alphabet="abAB1_ -./@\nÉéİß", max_size=40)


@settings(max_examples=400, deadline=None)
@given(text=_TEXT, term=st.text(alphabet="abAB1 -./_Éİ", min_size=1, max_size=8),
       prefix=st.booleans())
def test_the_phrase_check_agrees_with_the_words_of_the_text(text, term, prefix):
    # What logsvc_fts_check and the live tail decide for a phrase of several
    # words, against the definition over words().
    phrase_words = fulltext.words(term)
    if not phrase_words:
        return
    phrase = fulltext.Phrase(tuple(phrase_words), prefix)
    groups = (fulltext.Group((phrase,)),)
    assert fulltext.matches(groups, text) == _in_order(fulltext.words(text), phrase)


_WORD_TEXT = st.text(alphabet=st.characters(max_codepoint=0x17F), max_size=60)


@settings(max_examples=400, deadline=None)
@given(text=st.one_of(_WORD_TEXT, _WORD_TEXT.filter(str.isascii)))
def test_words_are_the_runs_of_letters_and_digits_lowercased(text):
    # words() takes a shortcut for ASCII text; both paths give the
    # definition's words, and word_bytes their UTF-8.
    expected = re.findall(r"[^\W_]+", text.lower())
    assert fulltext.words(text) == expected
    assert fulltext.word_bytes(text) == {word.encode() for word in expected}


def test_an_entry_cannot_claim_another_projects_scope_in_the_index(app, store):
    store.ingest([make_entry(0, projectId="proj_a", responseBody="shipped")])
    with db.using(app.extensions["logsvc"].store):
        scope = fulltext.scope_of(Filters(project_id="proj_a"))  # SQLite's index words
    word = scope[0] if scope else "\ue000p1"
    store.ingest([make_entry(1, projectId="proj_b", responseBody=f"shipped {word}")])
    page = store.page(q="shipped", projectId="proj_a")
    assert [e["id"] for e in page["entries"]] == [1] and page["total"] == 1
    assert store.page(q="shipped")["total"] == 2
