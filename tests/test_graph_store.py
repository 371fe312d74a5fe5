"""The graph store contract, run against the embedded SQLite store and the real
MongoDB-wire server (graphs of a handful of memories: that server scans per hop)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import anyio
import pytest

from retrieval.embedded_store import EmbeddedStore
from retrieval.graph_store import GraphStore, KeyCollision, StoreUnavailable, UnknownLinks
from retrieval.memory import MAX_LINKS, MAX_TEXT_BYTES, InvalidMemory, Memory, memory_vid
from retrieval.mongo_store import MongoStore

pytestmark = pytest.mark.anyio
T0 = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def mem(id: str, *links: str, ns: str = "default", text: str | None = None, **metadata) -> Memory:
    return Memory(id=id, namespace=ns, text=text or f"memory {id}", links=links, metadata=metadata, created_at=T0)


@pytest.fixture(params=["embedded", "mongo"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], GraphStore]:
    """A factory of store objects over one database or directory (to test reopening)."""
    if request.param == "embedded":
        return lambda: EmbeddedStore(tmp_path / "graph")
    server = request.getfixturevalue("mongo_server")
    return lambda: MongoStore(server.uri + "rolloutd_test", timeout=1.0)


@pytest.fixture
async def store(make_store: Callable[[], GraphStore]) -> AsyncIterator[GraphStore]:
    store = make_store()
    with anyio.fail_after(15):
        await store.open()
    try:
        yield store
    finally:
        await store.close()


async def test_put_and_get_round_trip(store: GraphStore) -> None:
    """A stored memory comes back equal: text, links in order, nested metadata, time."""
    await store.put(mem("b"))
    await store.put(mem("c"))
    original = mem("a", "c", "b", text="naïve ✓", source="chat", tags=["x", {"k": 1.5}])
    await store.put(original)
    got = await store.get_many("default", ["a", "missing"])
    assert got == {"a": original}
    assert got["a"].links == ("c", "b") and got["a"].created_at == T0
    assert store.count() == 3 and store.count("default") == 3 and store.count("other") == 0


async def test_upsert_replaces_text_and_links(store: GraphStore) -> None:
    """Putting an existing id replaces it, and its old links stop being traversed."""
    await store.put_many([mem("x"), mem("y"), mem("a", "x")])
    await store.put(mem("a", "y", text="second version"))
    assert (await store.get_many("default", ["a"]))["a"].text == "second version"
    assert store.expand("default", ["a"], hops=1) == [("y", 1)]
    assert store.expand("default", ["x"], hops=3) == []
    assert store.count() == 3


async def test_delete_removes_memory_and_links_to_it(store: GraphStore) -> None:
    """Deleting a memory drops it, and every link to it, from storage and from expand."""
    await store.put_many([mem("hub"), mem("a", "hub"), mem("b", "hub"), mem("c", "a")])
    assert await store.delete("default", "hub") is True
    assert await store.delete("default", "hub") is False
    got = await store.get_many("default", ["a", "b", "hub"])
    assert set(got) == {"a", "b"} and got["a"].links == () and got["b"].links == ()
    assert store.expand("default", ["a"], hops=3) == [("c", 1)]
    assert store.expand("default", ["b"], hops=3) == []
    assert store.count() == 3


async def test_unknown_links_are_rejected_atomically(store: GraphStore) -> None:
    """A batch with one dangling link writes nothing, and the error names the missing ids."""
    await store.put(mem("kept"))
    with pytest.raises(UnknownLinks) as raised:
        await store.put_many([mem("a"), mem("b", "a", "ghost", "kept"), mem("c", "phantom")])
    assert raised.value.missing == ("ghost", "phantom")
    assert "ghost" in str(raised.value)
    with pytest.raises(UnknownLinks):
        await store.put(mem("d", "nowhere"))
    assert await store.get_many("default", ["a", "b", "c", "d"]) == {}
    assert store.count() == 1 and store.expand("default", ["kept"]) == []


async def test_put_many_links_within_the_batch(store: GraphStore) -> None:
    """A bulk load may link forward and backward inside the batch and to stored memories."""
    await store.put(mem("old"))
    await store.put_many([mem("a", "b"), mem("b", "c", "old"), mem("c", "a")])
    assert store.count() == 4
    assert sorted(store.expand("default", ["a"], hops=1)) == [("b", 1), ("c", 1)]
    # From b: its out-link c first, then a, which links to b.
    assert store.expand("default", ["old"], hops=2) == [("b", 1), ("c", 2), ("a", 2)]


async def test_namespaces_are_isolated(store: GraphStore) -> None:
    """Same ids in two namespaces never meet: not in links, expand, get, count or delete."""
    await store.put_many([mem("a", ns="one"), mem("b", "a", ns="one")])
    await store.put_many([mem("a", ns="two"), mem("c", "a", ns="two")])
    with pytest.raises(UnknownLinks) as raised:
        await store.put(mem("d", "b", ns="two"))  # "b" exists, but only in "one"
    assert raised.value.namespace == "two" and raised.value.missing == ("b",)
    assert store.expand("one", ["a"]) == [("b", 1)]
    assert store.expand("two", ["a"]) == [("c", 1)]
    assert store.expand("three", ["a"]) == []
    assert set(await store.get_many("two", ["a", "b", "c"])) == {"a", "c"}
    assert await store.delete("one", "a") is True
    assert (await store.get_many("two", ["c"]))["c"].links == ("a",)
    assert store.expand("two", ["c"]) == [("a", 1)]
    assert (store.count("one"), store.count("two"), store.count()) == (1, 2, 3)


async def test_expand_orders_by_hop_then_key_and_honours_hops_and_limit(store: GraphStore) -> None:
    """Expand walks links both ways, nearest first, seeds excluded, cut at hops and limit."""
    # s -> a, s -> b, c -> s; a -> d; d -> e; x is unreachable.
    await store.put_many(
        [mem("e"), mem("d", "e"), mem("a", "d"), mem("b"), mem("s", "a", "b"), mem("c", "s"), mem("x")]
    )
    vid = lambda id: memory_vid("default", id)  # noqa: E731
    first = sorted(["a", "b"], key=vid) + ["c"]  # out-links in key order, then in-links
    full = store.expand("default", ["s"], hops=3)
    assert full == [(id, 1) for id in first] + [("d", 2), ("e", 3)]
    assert store.expand("default", ["s"], hops=1) == full[:3]
    assert store.expand("default", ["s"], hops=2, limit=2) == full[:2]
    assert store.expand("default", ["s", "a", "unknown"], hops=1) == (
        [(id, 1) for id in sorted(["b"], key=vid)] + [("c", 1), ("d", 1)]
    )
    assert store.expand("default", ["unknown"]) == [] and store.expand("default", []) == []


async def test_reopen_rebuilds_adjacency_from_the_system_of_record(
    store: GraphStore, make_store: Callable[[], GraphStore]
) -> None:
    """A new store object on the same database sees the same graph, counts and memories."""
    await store.put_many([mem("a"), mem("b", "a"), mem("c", "b"), mem("q", ns="other")])
    await store.put(mem("d", "c"))
    await store.delete("default", "b")
    before = store.expand("default", ["a", "c"], hops=2)
    await store.close()
    reopened = make_store()
    await reopened.open()
    try:
        assert reopened.count() == 4 and reopened.count("other") == 1
        assert reopened.expand("default", ["a", "c"], hops=2) == before == [("d", 1)]
        everything = {(m.namespace, m.id): m async for m in reopened.iter_all()}
        assert set(everything) == {("default", "a"), ("default", "c"), ("default", "d"), ("other", "q")}
        assert everything[("default", "c")].links == ()
    finally:
        await reopened.close()


async def test_resolve_maps_a_key_to_its_stored_memory(store: GraphStore, make_store: Callable[[], GraphStore]) -> None:
    """`resolve` (a vector hit's key → its memory) follows puts, refused writes, deletes and a reopen."""
    await store.put_many([mem("a"), mem("b", ns="other")])
    assert store.resolve(memory_vid("default", "a")) == ("default", "a")
    assert store.resolve(memory_vid("other", "b")) == ("other", "b")
    assert store.resolve(memory_vid("default", "b")) is None
    with pytest.raises(UnknownLinks):
        await store.put(mem("c", "ghost"))
    assert store.resolve(memory_vid("default", "c")) is None
    assert await store.delete("default", "a") is True
    assert store.resolve(memory_vid("default", "a")) is None
    await store.close()
    reopened = make_store()
    await reopened.open()
    try:
        assert reopened.resolve(memory_vid("other", "b")) == ("other", "b")
        assert reopened.resolve(memory_vid("default", "a")) is None
    finally:
        await reopened.close()


async def test_a_key_collision_is_refused_before_anything_is_written(
    store: GraphStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two memories with one 63-bit key: the second write raises KeyCollision and stores nothing."""
    for module in ("retrieval.memory", "retrieval.adjacency"):
        monkeypatch.setattr(f"{module}.memory_vid", lambda namespace, id: 42)
    await store.put(mem("a"))
    with pytest.raises(KeyCollision, match="same 63-bit key as"):
        await store.put_many([mem("b")])
    assert await store.get_many("default", ["b"]) == {}
    assert store.count() == 1 and store.resolve(42) == ("default", "a")


async def test_mongo_outage_fails_writes_fast_keeps_expand_and_recovers(mongo_server) -> None:
    """With MongoDB stopped writes raise StoreUnavailable quickly, expand still answers,
    and the first write after it returns succeeds without reopening the store."""
    store = MongoStore(mongo_server.uri + "rolloutd_test", timeout=1.0)
    await store.open()
    try:
        await store.put_many([mem("a"), mem("b", "a")])
        mongo_server.stop()
        with anyio.fail_after(5):
            with pytest.raises(StoreUnavailable, match="MongoDB unavailable during put"):
                await store.put(mem("c", "b"))
            with pytest.raises(StoreUnavailable):
                await store.delete("default", "a")
        assert store.expand("default", ["a"]) == [("b", 1)]
        assert store.count() == 2
        mongo_server.start()
        with anyio.fail_after(10):
            await store.put(mem("c", "b"))
        assert store.expand("default", ["a"]) == [("b", 1), ("c", 2)]
        assert set(await store.get_many("default", ["a", "b", "c"])) == {"a", "b", "c"}
    finally:
        await store.close()


async def test_embedded_store_survives_a_fresh_process(tmp_path: Path) -> None:
    """A memory the embedded store acknowledged is read back by another process."""
    store = EmbeddedStore(tmp_path)
    await store.open()
    await store.put_many([mem("a"), mem("b", "a")])
    await store.close()
    code = (
        "import anyio; from retrieval.embedded_store import EmbeddedStore\n"
        "async def main():\n"
        f"    s = EmbeddedStore({str(tmp_path)!r}); await s.open()\n"
        "    print(s.expand('default', ['a'])); await s.close()\n"
        "anyio.run(main)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        cwd=Path(__file__).parents[1],
    )
    assert out.stdout.splitlines()[-1] == "[('b', 1)]"  # after the open log line


def test_memory_vid_is_stable_across_processes() -> None:
    """The vector-index key of a memory is the same number in every process and release."""
    code = "from retrieval.memory import memory_vid; print(memory_vid('default', 'a'))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        cwd=Path(__file__).parents[1],
    )
    assert int(out.stdout) == memory_vid("default", "a") == PINNED_VID
    assert 0 < memory_vid("x", "y") < 2**63
    assert memory_vid("a", "b.c") != memory_vid("a.b", "c")


PINNED_VID = 4709777721698809211  # mmh3 x64 128-bit of "default\\0a", low 63 bits: never change it


@pytest.mark.parametrize(
    ("kwargs", "field", "fragment"),
    [
        ({"id": "has space"}, "id", "not 1-128 characters"),
        ({"namespace": ""}, "namespace", "not 1-64"),
        ({"text": "x" * (MAX_TEXT_BYTES + 1)}, "text", "32,769 bytes > limit 32,768"),
        ({"text": "  "}, "text", "empty"),
        ({"links": [f"l{i}" for i in range(MAX_LINKS + 1)]}, "links", "257 links > limit 256"),
        ({"links": ["m"]}, "links", "links to itself"),
        ({"metadata": {"when": datetime.now()}}, "metadata", "not plain JSON"),
        ({"created_at": datetime(2026, 1, 1)}, "created_at", "timezone-aware"),
    ],
)
def test_invalid_memories_name_the_field(kwargs: dict, field: str, fragment: str) -> None:
    """Each broken rule raises InvalidMemory naming the field and the observed value."""
    args = {"id": "m", "namespace": "default", "text": "t", **kwargs}
    with pytest.raises(InvalidMemory, match=fragment) as raised:
        Memory(**args)
    assert raised.value.field == field


def test_memory_normalises_time_and_links() -> None:
    """Times become UTC to the millisecond (what MongoDB keeps); duplicate links collapse."""
    local = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    memory = Memory(id="m", namespace="n", text="t", links=["a", "b", "a"], created_at=local)
    assert memory.created_at == datetime(2026, 1, 1, 10, 0, 0, 123000, tzinfo=UTC)
    assert memory.links == ("a", "b")
