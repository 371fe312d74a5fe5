"""The lexical leg's BM25 index (retrieval.lexical_index): contract, persistence, hostile input, damage."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from retrieval.index_files import fingerprint
from retrieval.lexical_index import LexicalIndex, LexicalIndexBusy, LexicalIndexError

TEXTS = {
    1: "Dana Okafor owns ledger-sync and signs off every change to it.",
    2: "Release R-4821 of ledger-sync shipped with batch retries.",
    3: "Incident INC-1307 was traced to release R-4821.",
    4: "The Green performer married a painter from Lisbon.",
}


def items(texts: dict[int, str]) -> list[tuple[int, str, int]]:
    return [(key, text, fingerprint(text)) for key, text in texts.items()]


@pytest.fixture
def index(tmp_path: Path) -> LexicalIndex:
    ix = LexicalIndex.open(tmp_path / "ns")
    ix.upsert(items(TEXTS))
    return ix


def keys(hits: list[tuple[int, float]]) -> list[int]:
    return [key for key, _ in hits]


def test_upsert_is_searchable_best_first(index: LexicalIndex) -> None:
    """An upserted doc is found at once, the best match first, scores descending."""
    hits = index.search("Who signs off ledger-sync?", 3)
    assert keys(hits)[0] == 1
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    assert len(index) == 4


def test_stemming_matches_inflections(index: LexicalIndex) -> None:
    """A query word matches its inflected form in a text (English stemming)."""
    assert keys(index.search("performers marrying", 5)) == [4]


def test_replace_drops_old_words(index: LexicalIndex) -> None:
    """Upserting a key again replaces its text: old words stop matching, new ones match, one doc."""
    index.upsert([(4, "A violinist from Porto.", fingerprint("A violinist from Porto."))])
    assert 4 not in keys(index.search("Green performer Lisbon", 10))
    assert keys(index.search("violinist", 10)) == [4]
    assert len(index) == 4
    assert index.fingerprints()[4] == fingerprint("A violinist from Porto.")


def test_repeated_key_in_one_batch_keeps_the_last(tmp_path: Path) -> None:
    """Two items with one key in the same upsert leave one doc: the last."""
    ix = LexicalIndex.open(tmp_path / "ns")
    ix.upsert([(7, "alpha", 1), (7, "beta", 2)])
    assert len(ix) == 1 and ix.fingerprints() == {7: 2}
    assert ix.search("alpha", 5) == []


def test_remove_and_absent_keys(index: LexicalIndex) -> None:
    """Removed keys vanish from search and fingerprints; absent keys are ignored."""
    index.remove([3, 999, 3])
    assert 3 not in keys(index.search("incident INC-1307", 10))
    assert set(index.fingerprints()) == {1, 2, 4}
    index.remove([])


def test_reopen_keeps_docs_and_fingerprints(tmp_path: Path) -> None:
    """After close, reopening the directory finds the same docs and fingerprints."""
    ix = LexicalIndex.open(tmp_path / "ns")
    ix.upsert(items(TEXTS))
    ix.remove([2])
    ix.close()
    again = LexicalIndex.open(tmp_path / "ns")
    assert again.fingerprints() == {k: fingerprint(t) for k, t in TEXTS.items() if k != 2}
    assert keys(again.search("INC-1307", 5)) == [3]


def test_large_keys_and_negative_fingerprints(tmp_path: Path) -> None:
    """Keys up to 2**63-1 and signed fingerprints round-trip; a key of 0 is refused."""
    ix = LexicalIndex.open(tmp_path / "ns")
    ix.upsert([((1 << 63) - 1, "max key", -(1 << 63)), (2, "small key", -1)])
    assert ix.fingerprints() == {(1 << 63) - 1: -(1 << 63), 2: -1}
    ix.remove([(1 << 63) - 1])
    assert ix.fingerprints() == {2: -1}
    with pytest.raises(ValueError, match="positive int64"):
        ix.upsert([(0, "zero", 1)])


HOSTILE = [
    "",
    "   ",
    '"unclosed quote',
    "title:x",
    "text:ledger",
    "AND OR NOT",
    "*",
    "(",
    ")",
    "?!.,;",
    "ledger^3 ~2 [a TO b] {x} +y -z",
    "🔥🔥 😀",
    "lone \ud800 surrogate",
    "東京タワー Ünïcödé naïve",
    "x" * 10_000,
    " ".join(f"word{i}" for i in range(3000)),
]


@pytest.mark.parametrize("query", HOSTILE, ids=lambda q: repr(q[:20]))
def test_hostile_queries_return_lists(index: LexicalIndex, query: str) -> None:
    """Query syntax and odd characters are only text: a list comes back, never an exception."""
    assert isinstance(index.search(query, 5), list)


def test_syntax_characters_are_text(index: LexicalIndex) -> None:
    """`field:value` and boolean words are searched as words, not as query language."""
    assert keys(index.search("text:ledger-sync AND (batch", 1)) == [2]
    assert index.search("AND OR NOT", 5) == []


def test_hostile_and_huge_texts_are_indexed(tmp_path: Path) -> None:
    """A 32 KiB text, emoji, non-Latin scripts and a lone surrogate index without error."""
    ix = LexicalIndex.open(tmp_path / "ns")
    big = "zebra " * (32 * 1024 // 6)
    ix.upsert([(1, big, 1), (2, "東京 タワー 🔥", 2), (3, "bad \udc80 text", 3), (4, "title:x (", 4)])
    assert keys(ix.search("zebra", 5)) == [1]
    assert keys(ix.search("東京", 5)) == [2]
    assert len(ix) == 4


def test_empty_index_and_zero_k(tmp_path: Path) -> None:
    """An empty index answers [] and {}; k=0 answers []."""
    ix = LexicalIndex.open(tmp_path / "ns")
    assert ix.search("anything", 5) == [] and ix.fingerprints() == {} and len(ix) == 0
    ix.upsert(items(TEXTS))
    assert ix.search("ledger", 0) == []


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: (d / "garbage.bin").write_bytes(b"\x00junk"),
        lambda d: (d / "meta.json").write_text('{"index_settings": {'),
        lambda d: (d / "meta.json").write_text("[]"),
        lambda d: (d / "meta.json").write_text('{"segments": [], "schema": [], "opstamp": 0}'),
    ],
    ids=["garbage-without-meta", "truncated-meta", "not-an-object", "foreign-schema"],
)
def test_corrupt_directory_raises(tmp_path: Path, damage: object) -> None:
    """A directory that is not this module's index raises LexicalIndexError naming the remedy."""
    directory = tmp_path / "ns"
    directory.mkdir()
    damage(directory)  # type: ignore[operator]
    with pytest.raises(LexicalIndexError, match="delete the directory"):
        LexicalIndex.open(directory)


def test_truncated_segment_raises(tmp_path: Path) -> None:
    """A segment file cut short (meta.json intact) raises LexicalIndexError at open or first read."""
    ix = LexicalIndex.open(tmp_path / "ns")
    ix.upsert(items(TEXTS))
    ix.close()
    for segment_file in (tmp_path / "ns").glob("*.idx"):
        segment_file.write_bytes(segment_file.read_bytes()[:5])
    with pytest.raises(LexicalIndexError):
        again = LexicalIndex.open(tmp_path / "ns")
        again.search("ledger sync", 5)


def test_second_writer_is_busy_not_corrupt(index: LexicalIndex) -> None:
    """Opening a directory another LexicalIndex holds raises LexicalIndexBusy (not "delete it")."""
    with pytest.raises(LexicalIndexBusy, match="do not delete"):
        LexicalIndex.open(index.directory)
    index.close()
    assert len(LexicalIndex.open(index.directory)) == 4


def test_closed_index_raises(index: LexicalIndex) -> None:
    """Using a closed index raises ValueError (a caller's bug, not damage to rebuild)."""
    index.close()
    with pytest.raises(ValueError, match="closed"):
        index.search("ledger", 5)
    with pytest.raises(ValueError, match="closed"):
        index.upsert([(1, "x", 1)])


def test_concurrent_search_and_upsert(tmp_path: Path) -> None:
    """Searches in one thread while another upserts and removes: no error, every write visible after."""
    ix = LexicalIndex.open(tmp_path / "ns")
    ix.upsert(items(TEXTS))
    errors: list[BaseException] = []
    done = threading.Event()

    def searcher() -> None:
        try:
            while not done.is_set():
                assert keys(ix.search("ledger-sync owner", 2))
                ix.fingerprints()
        except BaseException as exc:  # noqa: BLE001  (reported by the main thread)
            errors.append(exc)

    thread = threading.Thread(target=searcher)
    thread.start()
    try:
        for batch in range(10):
            ix.upsert([(100 + batch * 10 + i, f"filler{batch} note {i}", i) for i in range(10)])
            ix.remove([100 + batch * 10])
    finally:
        done.set()
        thread.join(timeout=10)
    assert not errors and not thread.is_alive()
    assert len(ix) == 4 + 10 * 9
