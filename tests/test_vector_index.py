"""The faiss vector index: one contract suite over flat, IVF and HNSW, plus tombstones and files."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import numpy as np
import pytest

from retrieval.vector_index import IndexFileError, IndexShapeError, VectorIndex, VectorIndexError

pytestmark = pytest.mark.anyio

DIM = 32


def unit_vectors(n: int, dim: int = DIM, seed: int = 0, clusters: int = 0) -> np.ndarray:
    """Random unit rows; with `clusters`, drawn around that many centres (like real embeddings)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    if clusters:
        centres = rng.standard_normal((clusters, dim)).astype(np.float32)
        x = centres[rng.integers(0, clusters, n)] + 1.2 * x
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(params=["flat", "ivf", "hnsw"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


def make(kind: str, dim: int = DIM, **options: object) -> VectorIndex:
    """An index of `kind`; "ivf" trains at 50 vectors, so the suite runs on trained IVF lists."""
    if kind == "ivf":
        options.setdefault("ivf_train_at", 50)
    return VectorIndex(dim, kind, **options)  # type: ignore[arg-type]


async def test_add_then_search_finds_each_vector_first(kind: str) -> None:
    """Each stored vector is its own best match with score ~1, under the caller's ids."""
    index = make(kind)
    vectors = unit_vectors(200)
    ids = np.arange(200) * 1_000_003 + 7  # arbitrary int64 ids, not 0..n-1
    await index.add(ids, vectors)
    hits = await index.search(vectors[:20], k=5)
    assert [row[0][0] for row in hits] == ids[:20].tolist()
    assert all(abs(row[0][1] - 1.0) < 1e-4 and len(row) == 5 for row in hits)
    assert all(row[i][1] >= row[i + 1][1] for row in hits for i in range(4))
    assert len(index) == 200 and index.contains(int(ids[3])) and not index.contains(8)


async def test_search_on_small_or_empty_index(kind: str) -> None:
    """k larger than the index returns what there is; an empty index returns empty rows."""
    index = make(kind)
    assert await index.search(unit_vectors(2), k=3) == [[], []]
    await index.add([1, 2], unit_vectors(2, seed=1))
    hits = await index.search(unit_vectors(1, seed=2), k=10)
    assert sorted(i for i, _ in hits[0]) == [1, 2]


async def test_remove_makes_ids_unreachable(kind: str) -> None:
    """Removed ids never come back from search, and remove counts only ids that were present."""
    index = make(kind, rebuild_fraction=1.0)
    vectors = unit_vectors(100)
    await index.add(range(100), vectors)
    assert await index.remove([3, 5, 5, 999]) == 2
    hits = await index.search(vectors[[3, 5]], k=10)
    assert all(i not in (3, 5) and len(row) == 10 for row in hits for i, _ in row)
    assert len(index) == 98 and not index.contains(3)
    assert await index.remove([3]) == 0


async def test_re_adding_an_id_replaces_its_vector(kind: str) -> None:
    """Adding a live id again replaces its vector: the old one is no longer found under it."""
    index = make(kind)
    old, new = unit_vectors(2, seed=5)
    await index.add(range(50), unit_vectors(50))
    await index.add([1000], old[None])
    await index.add([1000], new[None])
    assert len(index) == 51
    [hit_new], [hit_old] = await index.search(np.vstack([new, old]), k=1)
    assert hit_new[0] == 1000 and hit_new[1] == pytest.approx(1.0, abs=1e-4)
    assert hit_old[0] != 1000 or hit_old[1] < 0.99
    assert [i for i, _ in (await index.search(new[None], k=51))[0]].count(1000) == 1


async def test_epoch_moves_on_every_mutation(kind: str) -> None:
    """add and a remove that removes something bump the epoch; a no-op remove does not."""
    index = make(kind)
    await index.add([1], unit_vectors(1))
    first = index.epoch
    await index.remove([2])
    assert index.epoch == first
    await index.remove([1])
    assert index.epoch > first


async def test_bad_input_is_refused(kind: str) -> None:
    """Wrong dimension, mismatched counts, duplicate ids, NaN and k < 1 raise IndexShapeError."""
    index = make(kind)
    with pytest.raises(IndexShapeError, match=r"expected \(n, 32\)"):
        await index.add([1], np.ones((1, 8), np.float32))
    with pytest.raises(IndexShapeError, match="2 ids for 1 vectors"):
        await index.add([1, 2], unit_vectors(1))
    with pytest.raises(IndexShapeError, match="duplicate"):
        await index.add([1, 1], unit_vectors(2))
    with pytest.raises(IndexShapeError, match="NaN"):
        await index.add([1], np.full((1, DIM), np.nan, np.float32))
    with pytest.raises(IndexShapeError, match="k 0"):
        await index.search(unit_vectors(1), k=0)
    with pytest.raises(VectorIndexError, match="'pq'"):
        VectorIndex(DIM, "pq")  # type: ignore[arg-type]


async def test_save_load_round_trip(kind: str, tmp_path: Path) -> None:
    """A saved index loads with the same ids, epoch, tombstones and search results."""
    index = make(kind, rebuild_fraction=1.0)
    vectors = unit_vectors(300)
    await index.add(range(300), vectors)
    await index.remove(range(0, 300, 7))
    path = tmp_path / "vectors.idx"
    await index.save(path)
    loaded = await VectorIndex.load(path)
    assert (loaded.kind, len(loaded), loaded.epoch, loaded.tombstones) == (
        kind,
        len(index),
        index.epoch,
        index.tombstones,
    )
    assert await loaded.search(vectors[:30], k=10) == await index.search(vectors[:30], k=10)
    await loaded.add([5000], vectors[:1])  # a loaded index is fully usable
    assert loaded.contains(5000) and not loaded.contains(0)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
async def test_corrupt_file_is_detected(tmp_path: Path, damage: str) -> None:
    """A torn, bit-flipped or foreign file fails load with IndexFileError naming the file."""
    index = VectorIndex(DIM, "hnsw")
    await index.add(range(50), unit_vectors(50))
    path = tmp_path / "vectors.idx"
    await index.save(path)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 100]
    elif damage == "flip":
        data[-500] ^= 0x01
    else:
        data = bytearray(b"not an index at all")
    path.write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match="torn|corrupt|not a vector index") as caught:
        await VectorIndex.load(path)
    assert str(path) in str(caught.value)


async def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    """Loading a file that is not there names it."""
    with pytest.raises(IndexFileError, match="cannot read"):
        await VectorIndex.load(tmp_path / "absent.idx")


async def test_save_replaces_atomically(tmp_path: Path) -> None:
    """A second save replaces the first whole and leaves no temp files behind."""
    index = VectorIndex(DIM)
    path = tmp_path / "vectors.idx"
    await index.add([1], unit_vectors(1))
    await index.save(path)
    await index.add([2], unit_vectors(1, seed=1))
    await index.save(path)
    assert len(await VectorIndex.load(path)) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["vectors.idx"]


# --- HNSW tombstones --------------------------------------------------------------


async def test_hnsw_tombstones_trigger_rebuild() -> None:
    """Removing past rebuild_fraction rebuilds the graph: tombstones drop to 0, results stay right."""
    index = VectorIndex(DIM, "hnsw", rebuild_fraction=0.2)
    vectors = unit_vectors(500)
    await index.add(range(500), vectors)
    await index.remove(range(0, 90))
    assert index.tombstones == 90 and not index.needs_rebuild()
    await index.remove(range(90, 110))  # 110 / 500 > 20 %
    assert index.tombstones == 0 and len(index) == 390
    hits = await index.search(vectors[200:210], k=3)
    assert [row[0][0] for row in hits] == list(range(200, 210))
    assert all(i >= 110 for row in hits for i, _ in row)


async def test_hnsw_replacements_count_as_tombstones() -> None:
    """Re-adding live ids leaves tombstones that an explicit rebuild() clears."""
    index = VectorIndex(DIM, "hnsw", rebuild_fraction=1.0)
    await index.add(range(100), unit_vectors(100))
    fresh = unit_vectors(10, seed=9)
    await index.add(range(10), fresh)
    assert index.tombstones == 10 and len(index) == 100
    await index.rebuild()
    assert index.tombstones == 0
    assert [row[0][0] for row in await index.search(fresh, k=1)] == list(range(10))


async def test_hnsw_recall_at_10_against_exact() -> None:
    """HNSW (M=32, ef_search=64) finds at least 90 % of the exact top 10 on clustered vectors."""
    vectors = unit_vectors(5_100, dim=64, seed=3, clusters=50)
    base, queries = vectors[:5_000], vectors[5_000:]
    exact, approx = VectorIndex(64), VectorIndex(64, "hnsw")
    await exact.add(range(5_000), base)
    await approx.add(range(5_000), base)
    truth, found = await exact.search(queries, 10), await approx.search(queries, 10)
    recall = np.mean([len({i for i, _ in t} & {i for i, _ in f}) / 10 for t, f in zip(truth, found, strict=False)])
    assert recall >= 0.9, f"recall@10 {recall:.3f} < 0.9"


async def test_ivf_trains_at_its_threshold_and_keeps_recall(tmp_path: Path) -> None:
    """Exact until `ivf_train_at`, then IVF lists; recall@10 >= 0.9 against exact; survives a reload."""
    vectors = unit_vectors(6_100, dim=64, seed=4, clusters=50)
    base, queries = vectors[:6_000], vectors[6_000:]
    exact, approx = VectorIndex(64), VectorIndex(64, "ivf", ivf_train_at=4_000)
    await exact.add(range(6_000), base)
    await approx.add(range(3_000), base[:3_000])
    assert not approx.trained
    await approx.add(range(3_000, 6_000), base[3_000:])
    assert approx.trained and len(approx) == 6_000
    await approx.remove(range(100))
    await exact.remove(range(100))
    truth, found = await exact.search(queries, 10), await approx.search(queries, 10)
    recall = np.mean([len({i for i, _ in t} & {i for i, _ in f}) / 10 for t, f in zip(truth, found, strict=False)])
    assert recall >= 0.9, f"recall@10 {recall:.3f} < 0.9"
    assert not {i for row in found for i, _ in row} & set(range(100))
    await approx.save(tmp_path / "ivf.rvix")
    loaded = await VectorIndex.load(tmp_path / "ivf.rvix")
    assert loaded.trained and len(loaded) == 5_900 and await loaded.search(queries, 10) == found


async def test_ivf_trains_again_as_it_grows() -> None:
    """At 4x the vectors it was trained with, IVF trains again: √n lists, nothing lost."""
    vectors = unit_vectors(2_500, dim=32, seed=5, clusters=20)
    index = VectorIndex(32, "ivf", ivf_train_at=500)
    await index.add(range(600), vectors[:600])
    assert index.trained and index._index.nlist == round(600**0.5)
    for start in range(600, 2_500, 300):
        await index.add(range(start, min(start + 300, 2_500)), vectors[start : start + 300])
    assert index._index.nlist == round(2_400**0.5) and len(index) == 2_500 and index._index.ntotal == 2_500
    hits = await index.search(vectors[2_400:2_450], 1)
    assert [row[0][0] for row in hits] == list(range(2_400, 2_450))


# --- concurrency ------------------------------------------------------------------


async def test_concurrent_searches_during_adds_stay_consistent(kind: str) -> None:
    """Searches racing adds and removes never crash and only ever see whole, live batches."""
    index = make(kind)
    vectors = unit_vectors(2_000, seed=11)
    await index.add(range(100), vectors[:100])
    problems: list[str] = []

    async def writer() -> None:
        for start in range(100, 2_000, 100):
            await index.add(range(start, start + 100), vectors[start : start + 100])
            await index.remove([start + 50])

    async def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(30):
            probe = int(rng.integers(0, 100))  # ids 0..99 stay live throughout
            [row] = await index.search(vectors[probe][None], k=5)
            if row[0][0] != probe or len({i for i, _ in row}) != len(row):
                problems.append(f"probe {probe}: {row[:2]}")
            await anyio.sleep(0)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer)
            for seed in range(4):
                tg.start_soon(reader, seed)
    assert not problems, problems[:3]
    assert len(index) == 2_000 - 19


async def test_search_does_not_block_the_event_loop() -> None:
    """A large flat search runs in a worker thread while a ticker task keeps ticking."""
    index = VectorIndex(64)
    await index.add(range(100_000), unit_vectors(100_000, dim=64, seed=4))
    queries = unit_vectors(200, dim=64, seed=5)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.002)
            ticks += 1

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            started = time.perf_counter()
            await index.search(queries, k=10)
            elapsed = time.perf_counter() - started
            tg.cancel_scope.cancel()
    assert elapsed > 0.05, "search too fast to show anything; raise the batch"
    assert ticks >= elapsed / 0.002 * 0.3, f"{ticks} ticks in {elapsed:.3f}s"
