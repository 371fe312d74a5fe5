"""The hybrid retriever end to end: namespace isolation, fusion, the cache (in process and
real Redis), vector index files across restarts and crashes, degraded modes with real servers
stopped mid-test (Redis, the MongoDB-wire server) and slow sources, metrics, concurrency.

The graph store is the embedded SQLite store unless a test is about MongoDB. Corpora come
from `retrieval.corpus.generate`: chains incident → release → owner, whose 1- and 2-hop
answers share no words with the question, so only the links lead to them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import pytest
import redis
from prometheus_client import CollectorRegistry

from retrieval import quality
from retrieval.cache import RetrievalCache
from retrieval.cache_memory import LocalCache
from retrieval.cache_redis import RedisCache
from retrieval.corpus import generate
from retrieval.embedder_hashing import HashingEmbedder
from retrieval.gating import ALL_ON, choose_route
from retrieval.graph_store import StoreUnavailable, UnknownLinks
from retrieval.index_files import index_path
from retrieval.memory import Memory
from retrieval.mongo_store import MongoStore
from retrieval.retriever import NotReady, RetrievalFailed, Retriever, RetrieverSettings
from tests.support.clocks import FakeClock
from tests.support.realservers import free_port
from tests.support.retriever_rig import (
    STEP,
    InstrumentedEmbedder,
    build,
    corpus,
    ids,
    mem,
    opened,
    route,
    sample,
    snapshot,
)

pytestmark = pytest.mark.anyio

INCIDENT_Q = "What happened in incident INC-20003?"
TWO_HOP_Q = "Who signs off changes to the system behind incident INC-20002?"


def twin_chain(prefix: str, ns: str) -> list[Memory]:
    """The same four texts and link shape in every namespace; only the ids' prefix differs."""
    return [
        mem(f"{prefix}own", "Mira Holt owns ledger-bridge and signs off every change to it.", ns=ns),
        mem(f"{prefix}rel", "Release R-88 of ledger-bridge shipped with batch retries.", f"{prefix}own", ns=ns),
        mem(
            f"{prefix}inc",
            "Incident INC-4711 was traced to release R-88; the QA agent paused it.",
            f"{prefix}rel",
            ns=ns,
        ),
        mem(f"{prefix}note", "QA agent noted a flaky test in ledger-bridge; rerun passed.", ns=ns),
    ]


@pytest.fixture(params=["local", "redis"])
def make_cache(request: pytest.FixtureRequest) -> Callable[[], RetrievalCache]:
    """Each cache backend: in process, or a RedisCache on the real redis-server."""
    if request.param == "local":
        return LocalCache
    port = request.getfixturevalue("redis_server").port
    return lambda: RedisCache(f"redis://127.0.0.1:{port}/0")


@pytest.fixture
async def chains(tmp_path: Path) -> AsyncIterator[Retriever]:
    """An open retriever over `generate(30)` in "default" (six chains and filler notes)."""
    async with opened(build(tmp_path)) as r:
        await r.add(corpus(30))
        yield r


# --- namespaces -------------------------------------------------------------------------


async def test_identical_memories_in_two_namespaces_never_cross_on_any_path(tmp_path: Path) -> None:
    """A query in one namespace returns only that namespace's ids, on hybrid, vector and graph."""
    async with opened(build(tmp_path)) as r:
        await r.add(twin_chain("a-", "alpha"))
        fillers = [
            mem(f"b-fill-{i}", f"QA agent noted a flaky test in ledger-bridge run {i}.", ns="beta") for i in range(12)
        ]
        await r.add(twin_chain("b-", "beta") + fillers)
        queries = (
            "What happened in incident INC-4711?",
            "Who signs off changes to the system behind incident INC-4711?",
            "flaky test in ledger-bridge",
        )
        for ns, prefix in (("alpha", "a-"), ("beta", "b-")):
            for path in ("hybrid", "vector", "graph"):
                for query in queries:
                    with anyio.fail_after(STEP):
                        answer = await r.retrieve(query, ns, 10, route(path))
                    assert answer.results, (ns, path, query)
                    assert all(i.startswith(prefix) for i in ids(answer)), (ns, path, query, ids(answer))
                    assert answer.path == path and not answer.degraded
        # alpha's k results are all its own even though beta holds four times as many.
        assert sorted(ids(await r.retrieve(queries[2], "alpha", 10, route("vector")))) == [
            "a-inc",
            "a-note",
            "a-own",
            "a-rel",
        ]
        two_hop = await r.retrieve(queries[1], "alpha", 10, route("hybrid"))
        assert "a-own" in ids(two_hop)[:3]
        for path in ("hybrid", "vector", "graph"):
            assert (await r.retrieve(queries[0], "gamma", 10, route(path))).results == []


async def test_cached_answers_stay_in_their_namespace(tmp_path: Path, make_cache) -> None:
    """The same query cached in one namespace is a miss, not the other's answer, in another."""
    async with opened(build(tmp_path, cache=make_cache())) as r:
        await r.add(twin_chain("a-", "alpha"))
        await r.add(twin_chain("b-", "beta"))
        query = "What happened in incident INC-4711?"
        with anyio.fail_after(STEP):
            first = await r.retrieve(query, "alpha", 5, ALL_ON)
            other = await r.retrieve(query, "beta", 5, ALL_ON)
            again = await r.retrieve(query, "alpha", 5, ALL_ON)
            other_again = await r.retrieve(query, "beta", 5, ALL_ON)
    assert (first.cache, other.cache, again.cache, other_again.cache) == ("miss", "miss", "hit", "hit")
    assert ids(first) == ids(again) and ids(first)[0] == "a-inc"
    assert all(i.startswith("a-") for i in ids(again))
    assert ids(other) == ids(other_again) and all(i.startswith("b-") for i in ids(other_again))


async def test_links_cannot_cross_namespaces(tmp_path: Path) -> None:
    """A link to an id stored only in another namespace is UnknownLinks, and nothing is written."""
    async with opened(build(tmp_path)) as r:
        await r.add(twin_chain("a-", "alpha"))
        await r.add(twin_chain("b-", "beta"))
        probe = "Ticket TCK-9 reopened the ledger-bridge outage"
        cached = await r.retrieve(probe, "beta", 10, ALL_ON)
        with anyio.fail_after(STEP), pytest.raises(UnknownLinks) as raised:
            await r.add(
                [
                    mem("b-ok", "Standup notes for ledger-bridge, nothing else.", ns="beta"),
                    mem("b-x", probe, "b-rel", "a-own", ns="beta"),
                ]
            )
        assert raised.value.namespace == "beta" and raised.value.missing == ("a-own",)
        assert r.count("beta") == 4 and r.count("alpha") == 4
        after = await r.retrieve(probe, "beta", 10, ALL_ON)
        assert after.cache == "hit" and ids(after) == ids(cached)  # nothing changed: still current
        fresh = await r.retrieve(probe, "beta", 10, route("hybrid"))
        assert not {"b-ok", "b-x"} & set(ids(fresh))
        assert not {"b-ok", "b-x"} & set(ids(await r.retrieve("Standup notes", "beta", 10, route("vector"))))


async def test_deleting_an_id_in_one_namespace_keeps_the_same_id_in_another(tmp_path: Path) -> None:
    """Two namespaces with the same ids and texts: a delete in one leaves the other's graph whole."""
    async with opened(build(tmp_path)) as r:
        await r.add(corpus(30, "one"))
        await r.add(corpus(30, "two"))
        assert await r.delete("two", "owner-2") is True
        one = await r.retrieve(TWO_HOP_Q, "one", 10, route("hybrid"))
        two = await r.retrieve(TWO_HOP_Q, "two", 10, route("hybrid"))
        assert "owner-2" in ids(one)[:3]
        assert "owner-2" not in ids(two) and "release-2" in ids(two)
        assert (r.count("one"), r.count("two")) == (30, 29)


# --- fusion -----------------------------------------------------------------------------


async def test_memory_found_by_both_sources_is_one_result_with_both_ranks(chains: Retriever) -> None:
    """The incident a query names is found by vector and graph, and listed once with both ranks."""
    answer = await chains.retrieve(INCIDENT_Q, "default", 10, route("hybrid"))
    assert answer.path == "hybrid"
    assert len(ids(answer)) == len(set(ids(answer)))
    [incident] = [r for r in answer.results if r.id == "incident-3"]
    assert incident.ranks["vector"] is not None and incident.ranks["graph"] is not None
    assert ids(answer)[0] == "incident-3"
    assert incident.text.startswith("Incident INC-20003 was traced")
    assert any(r.ranks["vector"] is None for r in answer.results)  # the graph's own finds


async def test_same_text_under_two_ids_is_two_results(chains: Retriever) -> None:
    """Results are de-duplicated by id, not text: two memories saying the same are two results."""
    text = "Runbook RB-4242 restarts the payments-bridge after a failover."
    await chains.add([mem("dup-a", text), mem("dup-b", text)])
    for path in ("hybrid", "vector", "graph"):
        answer = await chains.retrieve("How is the payments-bridge restarted (RB-4242)?", "default", 5, route(path))
        assert {"dup-a", "dup-b"} <= set(ids(answer)[:3]), (path, ids(answer))
        assert [r.text for r in answer.results if r.id.startswith("dup-")] == [text, text]


async def test_answer_path_names_the_path_that_ran(chains: Retriever) -> None:
    """Each route answers on its own path, ranks only from its own sources, cached per path."""
    hybrid = await chains.retrieve(INCIDENT_Q, "default", 10, route("hybrid", cache=True))
    vector = await chains.retrieve(INCIDENT_Q, "default", 10, route("vector", cache=True))
    graph = await chains.retrieve(INCIDENT_Q, "default", 10, route("graph", cache=True))
    assert (hybrid.path, vector.path, graph.path) == ("hybrid", "vector", "graph")
    assert (hybrid.cache, vector.cache, graph.cache) == ("miss", "miss", "miss")  # one entry per path
    assert all(r.ranks["graph"] is None and r.ranks["vector"] is not None for r in vector.results)
    assert all(r.ranks["vector"] is None and r.ranks["graph"] is not None for r in graph.results)
    assert ids(graph)[:3] == ["incident-3", "release-3", "owner-3"]
    again = await chains.retrieve(INCIDENT_Q, "default", 10, route("vector", cache=True))
    assert again.cache == "hit" and again.path == "vector" and ids(again) == ids(vector)
    with pytest.raises(ValueError, match="no retrieval path"):
        await chains.retrieve(INCIDENT_Q, "default", 10, choose_route({}))


async def test_hybrid_beats_vector_only_on_two_hop_questions(tmp_path: Path) -> None:
    """On generate(600)'s 2-hop questions hybrid finds the owner; vector search alone cannot. The
    graph path, whose walk follows the explicit links, puts it in the top 3 every time; hybrid
    almost always (it also fuses the lexical look-alikes: every owner "signs off every change")."""
    generated = generate(600)
    async with opened(build(tmp_path)) as r:
        await r.add([Memory(**m) for m in generated.memories])
        two_hop = [q for q in generated.questions if q.hops == 2]
        scores = {}
        for path in ("hybrid", "vector", "graph"):
            answers = [await r.retrieve(q.query, q.namespace, 10, route(path)) for q in two_hop]
            scores[path] = quality.mean(quality.score(q, ids(a)) for q, a in zip(two_hop, answers, strict=False))
    assert len(two_hop) == 120
    assert scores["graph"].recall_at_10 >= 0.95 and scores["graph"].top3 >= 0.9, scores["graph"]
    assert scores["hybrid"].recall_at_10 >= 0.95 and scores["hybrid"].top3 >= 0.85, scores["hybrid"]
    assert scores["vector"].recall_at_10 <= 0.3, scores["vector"]
    assert scores["hybrid"].recall_at_10 - scores["vector"].recall_at_10 >= 0.6


# --- cache ------------------------------------------------------------------------------


async def test_repeat_is_a_hit_until_a_write_in_its_namespace(tmp_path: Path, make_cache) -> None:
    """A repeat is a hit, and after an add or delete in its namespace a miss with current results
    (a deleted memory never comes back), while other namespaces keep their entries."""
    async with opened(build(tmp_path, cache=make_cache())) as r:
        await r.add(corpus(30))
        await r.add(corpus(30, "other"))
        query = "What happened in incident INC-20002?"
        with anyio.fail_after(STEP):
            first = await r.retrieve(query, "default", 10, ALL_ON)
            second = await r.retrieve(query, "default", 10, ALL_ON)
            other = await r.retrieve(query, "other", 10, ALL_ON)
            assert (first.cache, second.cache, other.cache) == ("miss", "hit", "miss")
            assert second.results == first.results and ids(first)[0] == "incident-2"

            await r.add(
                [mem("postmortem-2", "Postmortem of INC-20002: a retry storm after the release.", "incident-2")]
            )
            added = await r.retrieve(query, "default", 10, ALL_ON)
            assert added.cache == "miss" and "postmortem-2" in ids(added)
            assert (await r.retrieve(query, "default", 10, ALL_ON)).cache == "hit"
            assert (await r.retrieve(query, "other", 10, ALL_ON)).cache == "hit"

            assert await r.delete("default", "incident-2") is True
            deleted = await r.retrieve(query, "default", 10, ALL_ON)
            assert deleted.cache == "miss" and "incident-2" not in ids(deleted)
            again = await r.retrieve(query, "default", 10, ALL_ON)
            assert again.cache == "hit" and "incident-2" not in ids(again)
            for path in ("hybrid", "vector", "graph"):
                assert "incident-2" not in ids(await r.retrieve(query, "default", 30, route(path, cache=True)))
            still = await r.retrieve(query, "other", 10, ALL_ON)
            assert still.cache == "hit" and ids(still)[0] == "incident-2"


async def test_route_without_cache_bypasses_it(chains: Retriever) -> None:
    """With the cache flag off every answer is a "bypass", and nothing is stored for later."""
    no_cache = route("hybrid")
    answers = [await chains.retrieve(INCIDENT_Q, "default", 10, no_cache) for _ in range(2)]
    assert [a.cache for a in answers] == ["bypass", "bypass"]
    assert (await chains.retrieve(INCIDENT_Q, "default", 10, ALL_ON)).cache == "miss"
    assert chains.cache.stats.hits == 0 and chains.cache.stats.misses == 1


# --- persistence ------------------------------------------------------------------------


PROBES = (
    INCIDENT_Q,
    TWO_HOP_Q,
    "Which release caused incident INC-20007?",
    "flaky test rerun passed",
    "Release R-10004 shipped with rate limiting",
)


async def answers_of(r: Retriever, namespace: str = "default") -> list[list[tuple]]:
    out = []
    for path in ("hybrid", "vector"):
        for query in PROBES:
            answer = await r.retrieve(query, namespace, 10, route(path))
            out.append([(x.id, round(x.score, 5), x.text, dict(x.ranks)) for x in answer.results])
    return out


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
async def test_reopen_serves_the_same_answers_without_embedding(tmp_path: Path, kind: str) -> None:
    """After a clean close, a new retriever on the same store and directory embeds nothing
    on open and answers exactly as before."""
    settings = RetrieverSettings(index_kind=kind)
    async with opened(build(tmp_path, settings=settings)) as r:
        await r.add(corpus(60))
        await r.add(corpus(30, "other"))
        for id in ("note-1", "note-2", "owner-9"):
            assert await r.delete("default", id)
        before = await answers_of(r)
        before_other = await answers_of(r, "other")
    embedder = InstrumentedEmbedder()
    async with opened(build(tmp_path, embedder=embedder, settings=settings)) as r:
        assert embedder.memories_embedded(corpus(60) + corpus(30, "other")) == []
        assert await answers_of(r) == before
        assert await answers_of(r, "other") == before_other
        assert r.count("default") == 57 and r.count("other") == 30


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
async def test_reopen_after_a_crash_reflects_the_store(tmp_path: Path, kind: str) -> None:
    """Writes after the last index save, then a crash: the next open re-embeds exactly what
    changed, and adds, deletes and a changed text all show in its answers."""
    settings = RetrieverSettings(index_kind=kind)
    first = build(tmp_path, settings=settings)
    await first.open()
    await first.add(corpus(60))
    assert await first.save() == 1
    old_owner = next(m for m in corpus(60) if m.id == "owner-2").text
    new_owner = "Quinn Adeyemi took over this service in November and approves its changes."
    fresh_1 = mem("fresh-1", "Capacity review CAP-31 raised the ingest quota.")
    fresh_2 = mem("fresh-2", "Capacity review CAP-32 lowered the render quota.")
    late_1 = mem("late-1", "Handover note HND-5 for the night shift.", ns="late")
    await first.add([fresh_1, fresh_2, late_1])
    await first.add([mem("owner-2", new_owner)])
    assert await first.delete("default", "note-3") and await first.delete("default", "fresh-2")
    await first.store.close()  # the crash: the store committed, the index files were not saved
    first._lexical.close()  # ... and the dead process's lock on its lexical indexes went with it

    embedder = InstrumentedEmbedder()
    async with opened(build(tmp_path, embedder=embedder, settings=settings)) as r:
        written = corpus(60) + [fresh_1, fresh_2, late_1, mem("owner-2", new_owner)]
        assert embedder.memories_embedded(written) == ["default/fresh-1", "default/owner-2", "late/late-1"]
        live = {m.id for m in corpus(60)} - {"note-3"} | {"fresh-1"}
        everything = await r.retrieve("service", "default", 100, route("vector"))
        assert set(ids(everything)) == live and len(ids(everything)) == 60
        for gone in (next(m for m in corpus(60) if m.id == "note-3"), fresh_2):
            gone, text = gone.id, gone.text
            nearest = await r.retrieve(text, "default", 1, route("vector"))
            assert len(nearest.results) == 1 and nearest.results[0].id != gone
            assert gone not in ids(await r.retrieve(text, "default", 10, route("hybrid")))
        changed = await r.retrieve(new_owner, "default", 1, route("vector"))
        assert ids(changed) == ["owner-2"] and changed.results[0].score > 0.99
        assert changed.results[0].text == new_owner
        stale = (await r.retrieve(old_owner, "default", 1, route("vector"))).results[0]
        assert not (stale.id == "owner-2" and stale.score > 0.99)  # no vector of the old text left
        assert "owner-2" in ids(await r.retrieve(TWO_HOP_Q, "default", 10, route("graph")))[:3]  # links reloaded
        assert "owner-2" in ids(await r.retrieve(TWO_HOP_Q, "default", 10, route("hybrid")))
        assert ids(await r.retrieve("Capacity review CAP-31", "default", 3, route("hybrid")))[0] == "fresh-1"
        assert ids(await r.retrieve("Handover note HND-5", "late", 3, route("hybrid"))) == ["late-1"]
    again = InstrumentedEmbedder()
    async with opened(build(tmp_path, embedder=again, settings=settings)):
        assert again.memories_embedded(written) == []  # the clean close saved the reconciled files


def flip_payload_bit(data: bytes) -> bytes:
    at = len(data) - 2000  # inside the vectors, far from the header line
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def tear(data: bytes) -> bytes:
    return data[: len(data) // 2]


def flip_header_key_bit(data: bytes) -> bytes:
    # One bit: "count" becomes "cOunt"; the header is still JSON, but lacks a field.
    at = data.index(b'"count"') + 2
    return data[:at] + bytes([data[at] ^ 0x20]) + data[at + 1 :]


@pytest.mark.parametrize(
    "damage", [flip_payload_bit, tear, flip_header_key_bit], ids=["payload-bit", "torn", "header-key-bit"]
)
async def test_damaged_index_file_is_rebuilt(tmp_path: Path, damage: Callable[[bytes], bytes]) -> None:
    """A corrupt or torn index file is rebuilt from the store on open, and answers stay correct."""
    async with opened(build(tmp_path)) as r:
        await r.add(corpus(60))
        before = await answers_of(r)
    [path] = (tmp_path / "vectors").glob("*.rvix")
    assert path == index_path(tmp_path / "vectors", "default")
    path.write_bytes(damage(path.read_bytes()))
    embedder = InstrumentedEmbedder()
    async with opened(build(tmp_path, embedder=embedder)) as r:
        assert embedder.memories_embedded(corpus(60)) == sorted(f"default/{m.id}" for m in corpus(60))
        assert await answers_of(r) == before
    again = InstrumentedEmbedder()
    async with opened(build(tmp_path, embedder=again)):
        assert again.memories_embedded(corpus(60)) == []  # the rebuilt index was saved on close


async def test_another_embedder_rebuilds_the_index(tmp_path: Path) -> None:
    """An index file written by the 384-dim embedder is rebuilt when the 256-dim one opens it."""
    async with opened(build(tmp_path)) as r:
        await r.add(corpus(30))
    embedder = InstrumentedEmbedder(HashingEmbedder(dim=256))
    async with opened(build(tmp_path, embedder=embedder)) as r:
        assert embedder.memories_embedded(corpus(30)) == sorted(f"default/{m.id}" for m in corpus(30))
        for m in corpus(30)[:6]:
            top = (await r.retrieve(m.text, "default", 1, route("vector"))).results[0]
            assert top.id == m.id and top.score > 0.99
        assert ids(await r.retrieve(TWO_HOP_Q, "default", 10, route("hybrid")))[:3].count("owner-2") == 1
    again = InstrumentedEmbedder(HashingEmbedder(dim=256))
    async with opened(build(tmp_path, embedder=again)):
        assert again.memories_embedded(corpus(30)) == []


async def test_run_saves_changed_indexes_so_a_crash_loses_nothing(tmp_path: Path) -> None:
    """The background upkeep writes changed index files every save_interval, without a close."""
    settings = RetrieverSettings(save_interval=0.05, health_interval=0.02)
    first = build(tmp_path, settings=settings)
    await first.open()
    path = index_path(tmp_path / "vectors", "default")
    async with anyio.create_task_group() as tg:
        tg.start_soon(first.run)
        await first.add(corpus(30))
        with anyio.fail_after(STEP):
            while not path.exists():
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    await first.store.close()  # crash after the periodic save
    first._lexical.close()  # (a dead process holds no lock)
    embedder = InstrumentedEmbedder()
    async with opened(build(tmp_path, embedder=embedder)) as r:
        assert embedder.memories_embedded(corpus(30)) == [] and r.count() == 30


# --- degraded: Redis --------------------------------------------------------------------


async def test_redis_outage_bypasses_the_cache_and_recovers(tmp_path: Path, redis_server) -> None:
    """With Redis stopped retrievals and writes still succeed (cache "bypass"); once it is back
    the cache is used again, and no entry from before a write made during the outage is served,
    even if Redis comes back holding it."""
    clock = FakeClock()
    cache = RedisCache(f"redis://127.0.0.1:{redis_server.port}/0", clock=clock)
    raw = redis.Redis(host="127.0.0.1", port=redis_server.port, socket_timeout=2)
    query = "What happened in incident INC-20004?"
    async with opened(build(tmp_path, cache=cache)) as r:
        await r.add(corpus(30))
        with anyio.fail_after(STEP):
            assert (await r.retrieve(query, "default", 10, ALL_ON)).cache == "miss"
            cached = await r.retrieve(query, "default", 10, ALL_ON)
        assert cached.cache == "hit" and "release-4" in ids(cached)
        saved = {key: raw.get(key) for key in raw.scan_iter()}
        redis_server.stop()
        with anyio.fail_after(2):
            down = [await r.retrieve(query, "default", 10, ALL_ON) for _ in range(3)]
            await r.add([mem("postmortem-4", "Postmortem of INC-20004: disk filled up.", "incident-4")])
            assert await r.delete("default", "release-4") is True
            after_write = await r.retrieve(query, "default", 10, ALL_ON)
        assert [a.cache for a in down] == ["bypass"] * 3
        assert all(a.results == cached.results and not a.degraded for a in down)
        assert after_write.cache == "bypass" and not after_write.degraded
        assert "postmortem-4" in ids(after_write) and "release-4" not in ids(after_write)
        redis_server.start()
        for key, value in saved.items():  # back with its data, as if it had persisted it
            raw.set(key, value)
        clock.advance(1.5)  # past down_for: the next call probes Redis again
        with anyio.fail_after(STEP):
            back = await r.retrieve(query, "default", 10, ALL_ON)
            hit = await r.retrieve(query, "default", 10, ALL_ON)
        assert back.cache == "miss" and "postmortem-4" in ids(back) and "release-4" not in ids(back)
        assert hit.cache == "hit" and hit.results == back.results
    raw.close()


# --- degraded: MongoDB ------------------------------------------------------------------


def mongo_retriever(tmp_path: Path, port: int, **kwargs) -> Retriever:
    store = MongoStore(f"mongodb://127.0.0.1:{port}/rolloutd_test", timeout=1.0)
    return build(tmp_path, store=store, **kwargs)


async def test_mongo_outage_serves_vector_only_refuses_writes_and_recovers(tmp_path: Path, mongo_server) -> None:
    """MongoDB stopped: the first write finding it down marks the graph store down, hybrid answers
    degraded on the vector path, the store check fails and writes raise StoreUnavailable;
    restarted: hybrid again and writes work, without reopening."""
    async with opened(mongo_retriever(tmp_path, mongo_server.port)) as r:
        await r.add(corpus(30))
        healthy = await r.retrieve(TWO_HOP_Q, "default", 10, ALL_ON)
        assert healthy.path == "hybrid" and not healthy.degraded and "owner-2" in ids(healthy)[:3]

        await anyio.to_thread.run_sync(mongo_server.stop)  # the loop keeps serving the client meanwhile
        with anyio.fail_after(STEP), pytest.raises(StoreUnavailable):
            await r.add([mem("late", "Written while the store is gone.")])
        assert r.store_problem and sample(r.metrics.registry, "hybrid_rag_graph_store_up") == 0
        with anyio.fail_after(STEP):
            answers = [await r.retrieve(TWO_HOP_Q, "default", 10, ALL_ON) for _ in range(2)]
        for answer in answers:
            assert answer.degraded and answer.path == "vector" and answer.results
            assert any(reason.startswith("graph store unavailable") for reason in answer.reasons)
            assert all(x.ranks["graph"] is None for x in answer.results)
        assert [a.cache for a in answers] == ["miss", "miss"]  # degraded answers are not cached
        assert ids(await r.retrieve(INCIDENT_Q, "default", 10, ALL_ON))[0] == "incident-3"
        with anyio.fail_after(STEP):
            assert await r.check_store() is False
        with anyio.fail_after(STEP), pytest.raises(StoreUnavailable):
            await r.add([mem("postmortem-2", "Postmortem of INC-20002.", "incident-2")])
        with anyio.fail_after(STEP), pytest.raises(StoreUnavailable):
            await r.delete("default", "note-1")
        assert r.count() == 30
        assert "note-1" in ids(await r.retrieve("note", "default", 30, route("vector")))
        assert "late" not in ids(await r.retrieve("Written while the store is gone.", "default", 30, route("vector")))

        await anyio.to_thread.run_sync(mongo_server.start)
        with anyio.fail_after(STEP):
            assert await r.check_store() is True
            assert r.store_problem is None
            recovered = await r.retrieve(TWO_HOP_Q, "default", 10, ALL_ON)
            await r.add([mem("postmortem-2", "Postmortem of INC-20002: the owner approved a rollback.", "incident-2")])
            assert await r.delete("default", "note-1") is True
            after = await r.retrieve(TWO_HOP_Q, "default", 10, ALL_ON)
        assert recovered.path == "hybrid" and not recovered.degraded and recovered.cache == "hit"
        assert after.cache == "miss" and after.path == "hybrid" and "postmortem-2" in ids(after)
        assert "owner-2" in ids(after)
        assert sample(r.metrics.registry, "hybrid_rag_graph_store_up") == 1
        assert r.count() == 30


async def test_graph_only_route_is_not_served_by_vector_during_mongo_outage(tmp_path: Path, mongo_server) -> None:
    """A caller rolled into the graph path only gets no vector-path answer while the store is
    down (gating: a path the flags did not grant is never served); the retrieval fails."""
    async with opened(mongo_retriever(tmp_path, mongo_server.port)) as r:
        await r.add(corpus(30))
        await anyio.to_thread.run_sync(mongo_server.stop)  # the loop keeps serving the client meanwhile
        with anyio.fail_after(STEP):
            assert await r.check_store() is False
            with pytest.raises(RetrievalFailed):
                answer = await r.retrieve(INCIDENT_Q, "default", 10, route("graph"))
                pytest.fail(f"graph-only caller served path {answer.path!r}: {ids(answer)}")


# --- per-source timeouts ----------------------------------------------------------------


async def test_slow_vector_source_is_left_out_and_the_graph_answers(tmp_path: Path) -> None:
    """An embedder slower than vector_timeout: hybrid answers from the lexical leg and the graph,
    degraded, within the timeout, and the degraded answer is not cached."""
    embedder = InstrumentedEmbedder()
    registry = CollectorRegistry()
    settings = RetrieverSettings(vector_timeout=0.05)
    async with opened(build(tmp_path, embedder=embedder, settings=settings, registry=registry)) as r:
        await r.add(corpus(30))
        embedder.delay = 2.0
        with anyio.fail_after(1.0):
            answer = await r.retrieve(INCIDENT_Q, "default", 10, ALL_ON)
        assert answer.degraded and answer.path == "hybrid" and answer.cache == "miss"
        assert ids(answer)[0] == "incident-3" and {"release-3", "owner-3"} <= set(ids(answer))
        assert all(x.ranks["vector"] is None for x in answer.results)
        assert len(answer.reasons) == 1 and "timed out" in answer.reasons[0]
        assert answer.reasons[0].startswith("vector")
        assert answer.latency_ms < 500
        assert sample(registry, "hybrid_rag_degraded_total", reason="vector") == 1
        assert sample(registry, "hybrid_rag_queries_total", path="hybrid") == 1
        embedder.delay = 0.0
        healthy = await r.retrieve(INCIDENT_Q, "default", 10, ALL_ON)
        assert healthy.cache == "miss" and healthy.path == "hybrid" and not healthy.degraded


@pytest.mark.parametrize(("path", "query"), [("vector", INCIDENT_Q), ("graph", "zzqx wvvy")])
async def test_no_source_answering_fails_and_counts_an_error(tmp_path: Path, path: str, query: str) -> None:
    """When every source of the route times out, retrieve raises RetrievalFailed and
    hybrid_rag_errors_total counts it."""
    embedder = InstrumentedEmbedder()
    registry = CollectorRegistry()
    settings = RetrieverSettings(vector_timeout=0.05, graph_timeout=0.05)
    async with opened(build(tmp_path, embedder=embedder, settings=settings, registry=registry)) as r:
        await r.add(corpus(30))
        embedder.delay = 2.0
        with anyio.fail_after(1.0), pytest.raises(RetrievalFailed, match="timed out"):
            await r.retrieve(query, "default", 10, route(path, cache=True))
    assert sample(registry, "hybrid_rag_errors_total", path=path, reason="no_source") == 1
    assert sample(registry, "hybrid_rag_queries_total", path=path) == 1


async def test_hybrid_matching_nothing_when_the_vector_source_times_out_is_empty_and_degraded(tmp_path: Path) -> None:
    """A hybrid query whose words no memory holds, while the vector leg times out: the lexical
    leg answered (nothing matches) and the walk had no seed, so the answer is empty and says
    the vector leg was left out -- never the vector leg's neighbours passed off as found."""
    embedder = InstrumentedEmbedder()
    registry = CollectorRegistry()
    async with opened(
        build(tmp_path, embedder=embedder, settings=RetrieverSettings(vector_timeout=0.05), registry=registry)
    ) as r:
        await r.add(corpus(30))
        embedder.delay = 2.0
        with anyio.fail_after(1.0):
            answer = await r.retrieve("zzqx wvvy", "default", 10, ALL_ON)
        assert answer.results == [] and answer.degraded and answer.path == "hybrid"
        assert answer.reasons == ("vector: timed out after 50 ms",)
    assert sample(registry, "hybrid_rag_errors_total", path="hybrid", reason="no_source") == 0
    assert sample(registry, "hybrid_rag_degraded_total", reason="vector") == 1


# --- readiness and metrics --------------------------------------------------------------


async def test_not_ready_before_open(tmp_path: Path) -> None:
    """Before open() every read and write raises NotReady saying it is loading; after, it serves."""
    r = build(tmp_path)
    assert not r.ready
    with pytest.raises(NotReady, match="loading"):
        await r.retrieve(INCIDENT_Q, "default", 10, ALL_ON)
    with pytest.raises(NotReady):
        await r.add([mem("a", "text")])
    with pytest.raises(NotReady):
        await r.delete("default", "a")
    async with opened(r):
        assert r.ready and r.problem is None
        assert (await r.retrieve(INCIDENT_Q, "default", 10, ALL_ON)).results == []


async def test_not_ready_after_the_store_could_not_be_opened(tmp_path: Path) -> None:
    """If the graph store cannot be reached at open, retrievals keep raising NotReady naming it."""
    store = MongoStore(f"mongodb://127.0.0.1:{free_port()}/rolloutd_test", timeout=0.2)
    r = build(tmp_path, store=store)
    with anyio.fail_after(STEP), pytest.raises(StoreUnavailable):
        await r.open()
    with pytest.raises(NotReady, match="graph store"):
        await r.retrieve(INCIDENT_Q, "default", 10, ALL_ON)


async def test_metrics_count_answered_retrievals_by_path(tmp_path: Path) -> None:
    """Query counters, latency histogram counts and cache/search counters match the retrievals."""
    registry = CollectorRegistry()
    async with opened(build(tmp_path, registry=registry)) as r:
        await r.add(corpus(30))
        for query in PROBES[:3]:
            for _ in range(2):
                await r.retrieve(query, "default", 10, ALL_ON)
        for query in PROBES[:2]:
            await r.retrieve(query, "default", 10, route("vector"))
    s = lambda name, **labels: sample(registry, name, **labels)  # noqa: E731
    latency = "hybrid_rag_retrieval_latency_seconds_count"
    assert s("hybrid_rag_queries_total", path="hybrid") == 6
    assert sum(s(latency, path="hybrid", cache=c) for c in ("hit", "miss", "bypass")) == 6
    assert s(latency, path="hybrid", cache="hit") == 3 and s(latency, path="hybrid", cache="miss") == 3
    assert s("hybrid_rag_queries_total", path="vector") == 2 == s(latency, path="vector", cache="bypass")
    assert s("hybrid_rag_queries_total", path="graph") == 0
    assert s("redis_cache_hits_total") == 3 and s("redis_cache_misses_total") == 3
    assert s("vector_db_searches_total") == 5 and s("graph_db_queries_total") == 3
    assert s("hybrid_rag_errors_total", path="hybrid", reason="no_source") == 0
    assert s("hybrid_rag_memories", namespace="default") == 30


async def test_quiet_retrievals_leave_metrics_unchanged(tmp_path: Path) -> None:
    """quiet=True retrievals (answered, cached, degraded or failed) move no sample at all."""
    registry = CollectorRegistry()
    embedder = InstrumentedEmbedder()
    settings = RetrieverSettings(vector_timeout=0.05)
    async with opened(build(tmp_path, embedder=embedder, settings=settings, registry=registry)) as r:
        await r.add(corpus(30))
        await r.retrieve(PROBES[0], "default", 10, ALL_ON)
        before = snapshot(registry)
        for query in PROBES:
            await r.retrieve(query, "default", 10, ALL_ON, quiet=True)
            await r.retrieve(query, "default", 10, ALL_ON, quiet=True)
            await r.retrieve(query, "default", 10, route("graph"), quiet=True)
        embedder.delay = 1.0
        degraded = await r.retrieve(INCIDENT_Q, "default", 10, route("hybrid"), quiet=True)
        assert degraded.degraded
        with pytest.raises(RetrievalFailed):
            await r.retrieve(INCIDENT_Q, "default", 10, route("vector"), quiet=True)
        assert snapshot(registry) == before
        embedder.delay = 0.0
        await r.retrieve(PROBES[1], "default", 10, ALL_ON)
        assert sample(registry, "hybrid_rag_queries_total", path="hybrid") == 2


# --- concurrency ------------------------------------------------------------------------


async def test_concurrent_retrievals_and_writes_stay_consistent(tmp_path: Path, make_cache) -> None:
    """50 retrievals racing 21 adds and deletes: none raises, none returns a memory deleted before
    it started or misses one added before it started, and the final state is consistent."""
    generated = generate(90)
    questions = generated.questions
    escalations = [
        mem(f"esc-{i}", f"Escalation ESC-{i} followed incident INC-{20000 + i}.", f"incident-{i}") for i in range(10)
    ]
    doomed = [f"note-{i}" for i in range(10)] + ["release-5"]
    texts = {m["id"]: m["text"] for m in generated.memories}
    writes = 21
    done = [anyio.Event() for _ in range(writes + 1)]  # done[k]: the first k writes have returned
    added: set[str] = set()
    deleted: set[str] = set()
    failures: list[str] = []

    async def writer(r: Retriever) -> None:
        done[0].set()
        for i in range(writes):  # delete, add, delete, ..., delete
            if i % 2:
                await r.add([escalations[i // 2]])
                added.add(escalations[i // 2].id)
            else:
                assert await r.delete("default", doomed[i // 2])
                deleted.add(doomed[i // 2])
            done[i + 1].set()

    async def reader(r: Retriever, n: int) -> None:
        # Readers start in waves as writes return, so each wave runs alongside the next write.
        await done[n * writes // 50].wait()
        seen_deleted, seen_added = frozenset(deleted), frozenset(added)
        k = n % 10
        # Odd readers ask for an escalation, even ones quote a memory that is being deleted.
        query = f"Escalation ESC-{k} of incident INC-{20000 + k}" if n % 2 else texts[doomed[n // 2 % 11]]
        answer = await r.retrieve(query, "default", 10, ALL_ON if n % 3 else route("hybrid"))
        if seen_deleted & set(ids(answer)):
            failures.append(f"{query!r} ({answer.cache}) returned deleted {seen_deleted & set(ids(answer))}")
        if n % 2 and f"esc-{k}" in seen_added and f"esc-{k}" not in ids(answer):
            failures.append(f"{query!r} ({answer.cache}) missed esc-{k}, added before it started")

    async with opened(build(tmp_path, cache=make_cache())) as r:
        await r.add([Memory(**m) for m in generated.memories])
        with anyio.fail_after(STEP * 2):
            async with anyio.create_task_group() as tg:
                for n in range(50):
                    tg.start_soon(reader, r, n)
                tg.start_soon(writer, r)
        assert failures == []
        final = [m for m in [Memory(**m) for m in generated.memories] + escalations if m.id not in deleted]
        live = {m.id for m in final}
        assert r.count("default") == len(live) == 89
        assert set(ids(await r.retrieve("incident", "default", 100, route("vector")))) == live
        for q in questions[::7]:
            cached = [await r.retrieve(q.query, "default", 10, ALL_ON) for _ in range(2)]
            fresh = await r.retrieve(q.query, "default", 10, route("hybrid"))
            assert cached[1].cache == "hit" and cached[0].results == cached[1].results == fresh.results
    embedder = InstrumentedEmbedder()
    async with opened(build(tmp_path, embedder=embedder)) as r:
        assert embedder.memories_embedded(final) == []
        assert set(ids(await r.retrieve("incident", "default", 100, route("vector")))) == live
