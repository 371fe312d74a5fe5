"""The lexical leg and the derived graph (issue 13), through the Retriever, on each graph
store: the embedded SQLite store and the real MongoDB-wire server.

What is checked here and nowhere else: a question only BM25 answers well is found by
`legs=["lexical"]` and by hybrid with a lexical rank; a delete or a replace reaches the
lexical index, the derived graph, the vector index and a real Redis cache; a memory titled
"Green Day" written after one that mentions it is reached by the walk while the store's
explicit links stay as written; the lexical index survives a restart without re-indexing
and is reconciled (or rebuilt) after a crash; namespaces never meet in either.

Absence is checked in the indexes themselves (`_lexical.search`, `_graph.links`,
`contents()`), not only in answers: an answer drops a key the store no longer resolves,
which would hide a stale index entry.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from retrieval.cache import RetrievalCache
from retrieval.cache_redis import RedisCache
from retrieval.embedded_store import EmbeddedStore
from retrieval.gating import ALL_ON
from retrieval.graph_store import GraphStore
from retrieval.lexical_index import LexicalIndex
from retrieval.lexical_indexes import lexical_dir
from retrieval.memory import Memory, memory_vid
from retrieval.mongo_store import MongoStore
from retrieval.retriever import Answer, Retriever
from tests.support.retriever_rig import STEP, build, ids, mem, opened, route

pytestmark = pytest.mark.anyio

StoreFactory = Callable[[], GraphStore]

# Twenty look-alike notes: every word of theirs is common, so only a rare term can single
# one memory out. The hashing embedder ranks the notes first for a question that repeats
# their words; BM25 gives the batch code its idf.
NOTES = [
    mem(f"note-{i}", f"The incident on the payments service was resolved by the on-call engineer, shift {i}.")
    for i in range(20)
]
BATCH = mem("batch", "Batch QX-5521 rolled back overnight.")
BATCH_Q = "the incident on the payments service with batch QX-5521"

# A names B by B's title; B is written after A. The question is about A's subject and
# shares no word with B, so only the derived "names" link leads there.
FESTIVAL = mem("festival", "Green Day closed the Lisbon festival in 2019.")
BAND = mem("band", "Green Day\nAn American punk trio formed in 1987 in the East Bay.")
FESTIVAL_Q = "Who closed the Lisbon festival?"

# A memory titled "Kestrel Nine" and one that mentions it.
KESTREL = mem("kestrel", "Kestrel Nine\nKestrel Nine is the codename of the ZQ-7310 ledger migration.")
REVIEW = mem("review", "The treasury team reviewed Kestrel Nine before the Harwick freeze.")
REVIEW_Q = "What did the treasury team review before the Harwick freeze?"


@pytest.fixture(params=["embedded", "mongo"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """A fresh client of one graph store each call (the same data each time): the embedded
    SQLite store, or MongoStore on the real MongoDB-wire server."""
    if request.param == "embedded":
        return lambda: EmbeddedStore(tmp_path / "graph")
    port = request.getfixturevalue("mongo_server").port
    return lambda: MongoStore(f"mongodb://127.0.0.1:{port}/rolloutd_test", timeout=1.0)


@pytest.fixture
def redis_cache(redis_server: Any) -> Callable[[], RetrievalCache]:
    """A RedisCache on the real redis-server, one client per call."""
    return lambda: RedisCache(redis_server.url)


def retriever(tmp_path: Path, make_store: StoreFactory, **kwargs: Any) -> Retriever:
    return build(tmp_path, store=make_store(), **kwargs)


async def ask(r: Retriever, query: str, legs: Sequence[str] | None, namespace: str = "default", k: int = 10) -> Answer:
    """`query` on the hybrid path (no cache) narrowed to `legs`."""
    with anyio.fail_after(STEP):
        return await r.retrieve(query, namespace, k, route("hybrid"), legs=legs)


async def lexical_keys(r: Retriever, query: str, namespace: str = "default") -> list[int]:
    """The keys the namespace's lexical index itself holds for `query` (no store lookup in between)."""
    return [key for key, _ in await r._lexical.search(namespace, query, 100)]


def derived(r: Retriever, id: str, namespace: str = "default") -> set[tuple[int, str]]:
    """A memory's derived links as (other key, kind)."""
    return {(other, kind) for other, kind, _ in r._graph.links(namespace, memory_vid(namespace, id))}


def key(id: str, namespace: str = "default") -> int:
    return memory_vid(namespace, id)


def events(logs: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [e for e in logs if e["event"] == name]


async def crash(r: Retriever) -> None:
    """End `r` as a killed process would: nothing saved, its lexical lock released, its store gone."""
    r._lexical.close()  # a dead process releases its tantivy lock; an abandoned object does not
    await r.store.close()
    await r.cache.aclose()


# --- 1. a question only the lexical leg answers well ------------------------------------


async def test_a_rare_code_is_found_by_the_lexical_leg_and_by_hybrid(tmp_path: Path, make_store: StoreFactory) -> None:
    """A question of common words plus one rare code: the vector leg ranks look-alikes first,
    `legs=["lexical"]` puts the coded memory first with only a lexical rank, and hybrid lists
    it in its top 3 carrying that lexical rank."""
    async with opened(retriever(tmp_path, make_store)) as r:
        await r.add([*NOTES, BATCH])
        vector = await ask(r, BATCH_Q, ["vector"], k=5)
        assert "batch" not in ids(vector), f"premise: the vector leg alone misses it ({ids(vector)})"

        lexical = await ask(r, BATCH_Q, ["lexical"], k=5)
        assert lexical.path == "lexical" and not lexical.degraded
        assert ids(lexical)[0] == "batch"
        assert dict(lexical.results[0].ranks) == {"vector": None, "lexical": 1, "graph": None}
        assert all(x.ranks["vector"] is None and x.ranks["graph"] is None for x in lexical.results)
        assert lexical.results[0].text == BATCH.text

        hybrid = await ask(r, BATCH_Q, None, k=5)
        assert hybrid.path == "hybrid" and not hybrid.degraded
        assert "batch" in ids(hybrid)[:3], ids(hybrid)
        [found] = [x for x in hybrid.results if x.id == "batch"]
        assert found.ranks["lexical"] == 1
        # Stemmed and case-folded: other forms of the same words find it too.
        assert ids(await ask(r, "qx-5521 ROLLING back", ["lexical"]))[0] == "batch"


# --- 2. deletes ---------------------------------------------------------------------------


async def test_a_deleted_memory_leaves_every_index_and_the_redis_cache(
    tmp_path: Path, make_store: StoreFactory, redis_cache: Callable[[], RetrievalCache]
) -> None:
    """After a delete the memory is gone from the lexical index (even for its exact text), the
    derived graph (the memory naming it no longer leads to it), the vector index, and a hybrid
    answer cached in Redis while it was there is not served again."""
    async with opened(retriever(tmp_path, make_store, cache=redis_cache())) as r:
        await r.add([*NOTES, BATCH, REVIEW])
        await r.add([KESTREL])
        gone = key("kestrel")
        assert gone in await lexical_keys(r, KESTREL.text)
        assert ids(await ask(r, KESTREL.text, ["lexical"]))[0] == "kestrel"
        assert (gone, "names") in derived(r, "review")
        assert "kestrel" in ids(await ask(r, REVIEW_Q, ["graph"]))
        assert "kestrel" in r.contents("default")
        with anyio.fail_after(STEP):
            cached = [await r.retrieve(KESTREL.text, "default", 10, ALL_ON) for _ in range(2)]
        assert [a.cache for a in cached] == ["miss", "hit"]
        assert ids(cached[1])[0] == "kestrel"

        with anyio.fail_after(STEP):
            assert await r.delete("default", "kestrel") is True

        assert gone not in await lexical_keys(r, KESTREL.text)
        assert gone not in await lexical_keys(r, "Kestrel Nine ZQ-7310 ledger migration codename")
        assert "kestrel" not in ids(await ask(r, KESTREL.text, ["lexical"]))
        assert derived(r, "review") == set() and derived(r, "kestrel") == set()  # no edge left either way
        assert "kestrel" not in ids(await ask(r, REVIEW_Q, ["graph"]))
        assert "review" in ids(await ask(r, REVIEW_Q, ["lexical"]))  # the memory naming it stays
        assert "kestrel" not in r.contents("default")
        nearest = await ask(r, KESTREL.text, ["vector"], k=1)
        assert ids(nearest) != ["kestrel"]
        with anyio.fail_after(STEP):
            after = await r.retrieve(KESTREL.text, "default", 10, ALL_ON)
        assert after.cache == "miss" and "kestrel" not in ids(after) and not after.degraded
        assert r.count("default") == 22


# --- 3. replace -----------------------------------------------------------------------------


async def test_re_adding_an_id_with_new_text_replaces_its_words_and_its_links(
    tmp_path: Path, make_store: StoreFactory
) -> None:
    """The same id written again: its old words no longer find it lexically, its new words do,
    the index holds one document for it, and its derived links follow the new text."""
    osprey = mem("osprey", "Osprey Ten\nOsprey Ten is the codename of the VB-4418 archive cleanup.")
    old = mem("gate", "Harbour gate HG-771 was repainted after the review of Kestrel Nine.")
    new = mem("gate", "Quarry lift QL-204 was inspected during the Osprey Ten cleanup.")
    async with opened(retriever(tmp_path, make_store)) as r:
        await r.add([*NOTES, KESTREL, osprey, old])
        assert ids(await ask(r, "harbour gate HG-771", ["lexical"]))[0] == "gate"
        assert derived(r, "gate") == {(key("kestrel"), "names")}
        await r.add([new])

        assert key("gate") not in await lexical_keys(r, "harbour gate HG-771 repainted")
        assert "gate" not in ids(await ask(r, "harbour gate HG-771 repainted", ["lexical"]))
        found = await ask(r, "quarry lift QL-204 inspected", ["lexical"])
        assert ids(found)[0] == "gate" and found.results[0].text == new.text
        assert (await lexical_keys(r, f"{old.text} {new.text}")).count(key("gate")) == 1
        assert len(r._lexical._indexes["default"]) == r.count("default") == 23  # one document per memory

        assert derived(r, "gate") == {(key("osprey"), "names")}
        assert (key("gate"), "named_by") not in derived(r, "kestrel")
        assert (key("gate"), "named_by") in derived(r, "osprey")
        assert "osprey" in ids(await ask(r, "Which lift was inspected at the quarry (QL-204)?", ["graph"]))


# --- 4. derived links -----------------------------------------------------------------------


async def test_a_title_written_later_is_reached_by_the_walk_and_explicit_links_stay_apart(
    tmp_path: Path, make_store: StoreFactory
) -> None:
    """B titled "Green Day", written after A that mentions Green Day: the graph leg reaches B
    for a question about A's subject (which no other leg finds), the derived link A→B exists,
    and the store's explicit links show only what callers wrote -- also after a restart."""
    setlist = mem("setlist", "Setlist notes for the closing night.", "festival")
    async with opened(retriever(tmp_path, make_store)) as r:
        await r.add([*NOTES, FESTIVAL])
        assert "band" not in ids(await ask(r, FESTIVAL_Q, ["graph"]))
        await r.add([BAND])
        await r.add([setlist])

        assert (key("band"), "names") in derived(r, "festival")
        assert (key("festival"), "named_by") in derived(r, "band")
        graph = await ask(r, FESTIVAL_Q, ["graph"])
        assert graph.path == "graph" and "band" in ids(graph)[:3], ids(graph)
        assert all(x.ranks["graph"] is not None for x in graph.results)
        assert "band" not in ids(await ask(r, FESTIVAL_Q, ["lexical"]))  # no shared word: only the link
        assert "band" in ids(await ask(r, FESTIVAL_Q, None))

        # The store's adjacency holds the one explicit link, never the derived one.
        assert r.store.expand("default", ["festival"], hops=2) == [("setlist", 1)]
        assert r.store.expand("default", ["band"], hops=2) == []
        assert r.store.neighbours(key("festival")) == [key("setlist")]
        assert r.store.neighbours(key("band")) == []
        stored = await r.store.get_many("default", ["festival", "band", "setlist"])
        assert {i: m.links for i, m in stored.items()} == {"festival": (), "band": (), "setlist": ("festival",)}

    async with opened(retriever(tmp_path, make_store)) as r:  # derived links are rebuilt from the texts
        assert (key("band"), "names") in derived(r, "festival")
        assert "band" in ids(await ask(r, FESTIVAL_Q, ["graph"]))[:3]
        assert r.store.expand("default", ["band"], hops=2) == []
        assert r.store.neighbours(key("festival")) == [key("setlist")]


# --- 5. restart consistency of the lexical index --------------------------------------------


@pytest.fixture
def upserts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every `LexicalIndex.upsert` call made from now on, in any retriever."""
    calls: list[int] = []
    real = LexicalIndex.upsert

    def counting(self: LexicalIndex, items: Sequence[tuple[int, str, int]]) -> None:
        calls.append(len(items))
        real(self, items)

    monkeypatch.setattr(LexicalIndex, "upsert", counting)
    return calls


def opened_event(logs: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    [event] = events(logs, "retrieval.opened")
    return event


async def test_a_clean_restart_re_indexes_nothing(tmp_path: Path, make_store: StoreFactory, upserts: list[int]) -> None:
    """Write, close, reopen: no text is indexed again (no upsert, `lexically_indexed` 0), and the
    reopened index answers as before."""
    async with opened(retriever(tmp_path, make_store)) as r:
        await r.add([*NOTES, BATCH])
        await r.add([FESTIVAL, BAND])
        before = ids(await ask(r, BATCH_Q, ["lexical"]))
    assert upserts == [21, 2]
    upserts.clear()
    with capture_logs() as logs:
        async with opened(retriever(tmp_path, make_store)) as r:
            assert ids(await ask(r, BATCH_Q, ["lexical"])) == before and before[0] == "batch"
            assert ids(await ask(r, "Lisbon festival", ["lexical"])) == ["festival"]
    assert upserts == []
    assert opened_event(logs)["lexically_indexed"] == 0 and opened_event(logs)["memories"] == 23
    assert events(logs, "retrieval.lexical.reconciled") == []
    assert events(logs, "retrieval.lexical.rebuild") == []


async def test_after_a_crash_the_lexical_index_is_reconciled_with_the_store(
    tmp_path: Path, make_store: StoreFactory, upserts: list[int]
) -> None:
    """Writes the store committed but the lexical index never saw (a crash between the two):
    the reopened retriever indexes just those -- new memories and changed texts searchable,
    deleted ones gone -- and a second restart indexes nothing."""
    changed = mem("note-3", "Forklift FK-880 was serviced in the north depot.")
    added = mem("late", "Pallet scanner PS-62 lost its calibration.")
    first = retriever(tmp_path, make_store)
    with anyio.fail_after(STEP):
        await first.open()
        await first.add([*NOTES, BATCH])
        first._lexical.close()  # the index sees nothing from here on; the store does
        await first.store.put_many([added, changed])
        assert await first.store.delete("default", "batch")
        await crash(first)
    upserts.clear()

    with capture_logs() as logs:
        async with opened(retriever(tmp_path, make_store)) as r:
            assert ids(await ask(r, "pallet scanner PS-62", ["lexical"]))[0] == "late"
            assert ids(await ask(r, "forklift FK-880 serviced", ["lexical"]))[0] == "note-3"
            assert key("note-3") not in await lexical_keys(r, "payments shift 3")  # old words gone
            assert key("batch") not in await lexical_keys(r, BATCH.text)
            assert "batch" not in ids(await ask(r, BATCH_Q, ["lexical"]))
            assert len(r._lexical._indexes["default"]) == r.count("default") == 21
    assert sorted(upserts) == [2]
    [reconciled] = events(logs, "retrieval.lexical.reconciled")
    assert (reconciled["indexed"], reconciled["removed"]) == (2, 1)
    assert opened_event(logs)["lexically_indexed"] == 2

    upserts.clear()
    with capture_logs() as logs:
        async with opened(retriever(tmp_path, make_store)):
            pass
    assert upserts == [] and opened_event(logs)["lexically_indexed"] == 0


def tear_meta(directory: Path) -> None:
    meta = directory / "meta.json"
    meta.write_bytes(meta.read_bytes()[: meta.stat().st_size // 2])


def garbage_without_meta(directory: Path) -> None:
    shutil.rmtree(directory)
    directory.mkdir()
    (directory / "garbage.bin").write_bytes(b"\x00not a tantivy index\xff" * 64)


def truncate_segments(directory: Path) -> None:
    segments = list(directory.glob("*.idx"))
    assert segments, sorted(p.name for p in directory.iterdir())
    for segment in segments:
        segment.write_bytes(segment.read_bytes()[:5])


def foreign_schema(directory: Path) -> None:
    (directory / "meta.json").write_text('{"segments": [], "schema": [], "opstamp": 0}')


@pytest.mark.parametrize(
    "damage",
    [tear_meta, garbage_without_meta, truncate_segments, foreign_schema],
    ids=["torn-meta", "garbage-without-meta", "truncated-segments", "foreign-schema"],
)
async def test_a_corrupt_lexical_index_is_rebuilt_and_the_log_says_why(
    tmp_path: Path, make_store: StoreFactory, upserts: list[int], damage: Callable[[Path], None]
) -> None:
    """A damaged index directory under lexical/: the retriever still opens, logs
    `retrieval.lexical.rebuild` with the reason, indexes every memory again and answers as before."""
    async with opened(retriever(tmp_path, make_store)) as r:
        await r.add([*NOTES, BATCH])
        before = ids(await ask(r, BATCH_Q, ["lexical"]))
    directory = lexical_dir(tmp_path / "lexical", "default")
    assert (directory / "meta.json").exists()
    damage(directory)
    upserts.clear()

    with capture_logs() as logs:
        async with opened(retriever(tmp_path, make_store)) as r:
            again = ids(await ask(r, BATCH_Q, ["lexical"]))
            # The notes tie on BM25 (a rebuild may cut the tie elsewhere): the batch leads, ten answer.
            assert again[0] == before[0] == "batch" and len(again) == len(before) == 10
            assert len(r._lexical._indexes["default"]) == 21
    [rebuild] = events(logs, "retrieval.lexical.rebuild")
    assert rebuild["namespace"] == "default" and rebuild["reason"].startswith("unusable index: ")
    assert opened_event(logs)["lexically_indexed"] == 21 and sum(upserts) == 21

    upserts.clear()
    with capture_logs() as logs:
        async with opened(retriever(tmp_path, make_store)):
            pass
    assert upserts == [] and events(logs, "retrieval.lexical.rebuild") == []


async def test_a_missing_lexical_directory_is_indexed_again_from_the_store(
    tmp_path: Path, make_store: StoreFactory
) -> None:
    """The whole lexical/ directory deleted: the reopened retriever indexes every memory again."""
    async with opened(retriever(tmp_path, make_store)) as r:
        await r.add([*NOTES, BATCH])
    shutil.rmtree(tmp_path / "lexical")
    with capture_logs() as logs:
        async with opened(retriever(tmp_path, make_store)) as r:
            assert ids(await ask(r, BATCH_Q, ["lexical"]))[0] == "batch"
    assert opened_event(logs)["lexically_indexed"] == 21


# --- 7. namespaces ----------------------------------------------------------------------------


def twins(prefix: str, namespace: str) -> list[Memory]:
    """The same texts in every namespace; only the ids' prefix differs."""
    return [mem(f"{prefix}{m.id}", m.text, ns=namespace) for m in (*NOTES[:5], BATCH, KESTREL, REVIEW, FESTIVAL, BAND)]


async def test_the_lexical_index_and_the_derived_graph_never_cross_namespaces(
    tmp_path: Path, make_store: StoreFactory
) -> None:
    """The same texts in two namespaces: each namespace's lexical and graph legs return only its
    own ids, derived links stay inside it, and a delete in one leaves the other's copy whole."""
    async with opened(retriever(tmp_path, make_store)) as r:
        await r.add(twins("a-", "alpha"))
        await r.add(twins("b-", "beta"))
        for ns, prefix in (("alpha", "a-"), ("beta", "b-")):
            for legs, query in ((["lexical"], BATCH_Q), (["graph"], REVIEW_Q), (["graph"], FESTIVAL_Q)):
                answer = await ask(r, query, legs, ns)
                assert answer.results and all(i.startswith(prefix) for i in ids(answer)), (ns, legs, ids(answer))
            assert derived(r, f"{prefix}review", ns) == {(key(f"{prefix}kestrel", ns), "names")}
        assert (await ask(r, BATCH_Q, ["lexical"], "gamma")).results == []
        assert lexical_dir(tmp_path / "lexical", "alpha") != lexical_dir(tmp_path / "lexical", "beta")

        assert await r.delete("alpha", "a-kestrel") is True
        assert key("a-kestrel", "alpha") not in await lexical_keys(r, KESTREL.text, "alpha")
        assert derived(r, "a-review", "alpha") == set()
        assert ids(await ask(r, KESTREL.text, ["lexical"], "beta"))[0] == "b-kestrel"
        assert key("b-kestrel", "beta") in await lexical_keys(r, KESTREL.text, "beta")
        assert derived(r, "b-review", "beta") == {(key("b-kestrel", "beta"), "names")}
        assert "b-kestrel" in ids(await ask(r, REVIEW_Q, ["graph"], "beta"))
        assert "a-kestrel" not in ids(await ask(r, REVIEW_Q, ["graph"], "alpha"))
        assert (r.count("alpha"), r.count("beta")) == (9, 10)
