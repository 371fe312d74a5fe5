"""BatchingEmbedder: coalescing, per-caller rows and order, errors, cancellation, query bypass.

The backend is a gated fake (our own wrapper is under test, not a model): each call
records its texts and waits until the test releases it, so "while the backend is busy"
is a state the test sets up rather than a race it hopes for.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import anyio
import numpy as np
import pytest

from retrieval.embed_batcher import BatchingEmbedder
from retrieval.embedder import Embedder, EmbedderError, EmbedKind
from retrieval.embedder_hashing import hash_embed

pytestmark = pytest.mark.anyio

DIM = 16


class GatedBackend:
    """Records each call as (kind, texts) and returns hashing rows once the test releases it."""

    name, dim = "gated", DIM

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self._gates: list[anyio.Event] = []
        self._errors: dict[int, Exception] = {}

    async def embed(self, texts: Sequence[str], *, kind: EmbedKind = "passage") -> np.ndarray:
        index = len(self.calls)
        self.calls.append((kind, list(texts)))
        self._gates.append(gate := anyio.Event())
        with anyio.fail_after(5):  # the batcher shields this call: bound it here, not only in the test
            await gate.wait()
        if index in self._errors:
            raise self._errors[index]
        return hash_embed(list(texts), DIM)

    def release(self, index: int, error: Exception | None = None) -> None:
        if error is not None:
            self._errors[index] = error
        self._gates[index].set()

    def texts(self) -> list[list[str]]:
        return [texts for _, texts in self.calls]


class Results:
    """What each named caller got back: rows or the exception it raised."""

    def __init__(self) -> None:
        self.got: dict[str, np.ndarray | BaseException] = {}

    async def call(self, batcher: Embedder, key: str, texts: list[str], kind: EmbedKind = "passage") -> None:
        try:
            self.got[key] = await batcher.embed(texts, kind=kind)
        except Exception as exc:  # noqa: BLE001  (recorded for the test to assert on)
            self.got[key] = exc

    def rows(self, key: str) -> np.ndarray:
        value = self.got[key]
        assert isinstance(value, np.ndarray), value
        return value


def texts_of(prefix: str, n: int) -> list[str]:
    return [f"{prefix} memory {i} about the canary" for i in range(n)]


async def test_idle_call_goes_straight_through() -> None:
    """With nothing in flight, a call reaches the backend at once, alone, and gets its rows."""
    backend, results = GatedBackend(), Results()
    batcher = BatchingEmbedder(backend)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(results.call, batcher, "a", texts_of("a", 2))
            await anyio.wait_all_tasks_blocked()
            assert backend.texts() == [texts_of("a", 2)]
            backend.release(0)
    np.testing.assert_array_equal(results.rows("a"), hash_embed(texts_of("a", 2), DIM))


async def test_calls_arriving_while_busy_share_one_backend_call_in_order() -> None:
    """Calls queued behind a running call go as one batch, oldest first; each gets its own rows."""
    backend, results = GatedBackend(), Results()
    batcher = BatchingEmbedder(backend)
    sizes = {"a": 1, "b": 3, "c": 1, "d": 2}
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for key, n in sizes.items():
                tg.start_soon(results.call, batcher, key, texts_of(key, n))
                await anyio.wait_all_tasks_blocked()
            backend.release(0)
            await anyio.wait_all_tasks_blocked()
            backend.release(1)
    assert backend.texts() == [texts_of("a", 1), texts_of("b", 3) + texts_of("c", 1) + texts_of("d", 2)]
    for key, n in sizes.items():
        np.testing.assert_array_equal(results.rows(key), hash_embed(texts_of(key, n), DIM))
    assert batcher.backend_calls == 2


async def test_batch_is_capped_and_a_large_call_goes_alone() -> None:
    """A batch holds at most max_batch texts; a call over the cap is sent whole, by itself."""
    backend, results = GatedBackend(), Results()
    batcher = BatchingEmbedder(backend, max_batch=4)
    sizes = {"a": 1, "b": 3, "c": 2, "d": 2, "e": 6}
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for key, n in sizes.items():
                tg.start_soon(results.call, batcher, key, texts_of(key, n))
                await anyio.wait_all_tasks_blocked()
            for index in range(4):
                backend.release(index)
                await anyio.wait_all_tasks_blocked()
    assert [len(t) for t in backend.texts()] == [1, 3, 4, 6]
    for key, n in sizes.items():
        np.testing.assert_array_equal(results.rows(key), hash_embed(texts_of(key, n), DIM))


async def test_backend_error_reaches_every_caller_of_that_batch_only() -> None:
    """A failed batch raises its error to each of its callers; the next batch still succeeds."""
    backend, results = GatedBackend(), Results()
    batcher = BatchingEmbedder(backend)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for key in "abc":
                tg.start_soon(results.call, batcher, key, texts_of(key, 1))
                await anyio.wait_all_tasks_blocked()
            backend.release(0)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(results.call, batcher, "d", texts_of("d", 1))  # queued behind the failing batch
            await anyio.wait_all_tasks_blocked()
            backend.release(1, EmbedderError("gated", "model crashed"))
            await anyio.wait_all_tasks_blocked()
            backend.release(2)
    assert isinstance(results.got["a"], np.ndarray) and isinstance(results.got["d"], np.ndarray)
    for key in "bc":
        assert isinstance(results.got[key], EmbedderError) and "model crashed" in str(results.got[key])


async def test_wrong_row_count_is_an_error_for_the_batch() -> None:
    """A backend answering with the wrong number of rows fails the batch instead of misassigning rows."""

    class Short:
        name, dim = "short", DIM

        async def embed(self, texts: Sequence[str], *, kind: EmbedKind = "passage") -> np.ndarray:
            return hash_embed(list(texts)[:-1], DIM)

    with anyio.fail_after(5), pytest.raises(EmbedderError, match="1 rows for 2 texts"):
        await BatchingEmbedder(Short()).embed(texts_of("a", 2))


async def test_cancelled_queued_caller_is_dropped_and_others_are_served() -> None:
    """A caller cancelled while queued never reaches the backend; the callers around it do."""
    backend, results = GatedBackend(), Results()
    batcher = BatchingEmbedder(backend)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(results.call, batcher, "a", texts_of("a", 1))
            await anyio.wait_all_tasks_blocked()
            b_scope = anyio.CancelScope()
            tg.start_soon(_in_scope, b_scope, results.call, batcher, "b", texts_of("b", 1))
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(results.call, batcher, "c", texts_of("c", 1))
            await anyio.wait_all_tasks_blocked()
            b_scope.cancel()
            await anyio.wait_all_tasks_blocked()
            backend.release(0)
            await anyio.wait_all_tasks_blocked()
            backend.release(1)
    assert backend.texts() == [texts_of("a", 1), texts_of("c", 1)]
    assert "b" not in results.got
    np.testing.assert_array_equal(results.rows("c"), hash_embed(texts_of("c", 1), DIM))


async def test_cancelled_leader_hands_its_batch_to_the_next_caller() -> None:
    """Cancelling the caller whose task runs a batch aborts it at once; the others are embedded again."""
    backend, results = GatedBackend(), Results()
    batcher = BatchingEmbedder(backend)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(results.call, batcher, "a", texts_of("a", 1))
            await anyio.wait_all_tasks_blocked()
            b_scope = anyio.CancelScope()
            tg.start_soon(_in_scope, b_scope, results.call, batcher, "b", texts_of("b", 1))
            tg.start_soon(results.call, batcher, "c", texts_of("c", 2))
            tg.start_soon(results.call, batcher, "d", texts_of("d", 1))
            await anyio.wait_all_tasks_blocked()
            backend.release(0)  # b now leads the batch [b, c, d]
            await anyio.wait_all_tasks_blocked()
            b_scope.cancel()
            await anyio.wait_all_tasks_blocked()
            backend.release(2)  # c leads [c, d] again; call 1 was abandoned and is never released
    assert backend.texts()[1:] == [
        texts_of("b", 1) + texts_of("c", 2) + texts_of("d", 1),
        texts_of("c", 2) + texts_of("d", 1),
    ]
    assert "b" not in results.got
    for key, n in {"c": 2, "d": 1}.items():
        np.testing.assert_array_equal(results.rows(key), hash_embed(texts_of(key, n), DIM))


async def test_callers_cancelled_in_an_aborted_batch_are_not_put_back() -> None:
    """When a leader is cancelled, only the callers still waiting go back; a cancelled one does not."""
    backend, results = GatedBackend(), Results()
    batcher = BatchingEmbedder(backend)
    scopes = {key: anyio.CancelScope() for key in "bc"}
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(results.call, batcher, "a", texts_of("a", 1))
            await anyio.wait_all_tasks_blocked()
            for key in "bcd":
                tg.start_soon(_in_scope, scopes.get(key, anyio.CancelScope()), results.call, batcher, key, [key])
            await anyio.wait_all_tasks_blocked()
            backend.release(0)  # b leads [b, c, d]
            await anyio.wait_all_tasks_blocked()
            scopes["c"].cancel()
            await anyio.wait_all_tasks_blocked()
            scopes["b"].cancel()
            await anyio.wait_all_tasks_blocked()
            backend.release(2)
    assert backend.texts()[1:] == [["b", "c", "d"], ["d"]]
    assert sorted(results.got) == ["a", "d"]


async def test_caller_cancelled_just_after_promotion_passes_the_lead_on() -> None:
    """A caller cancelled after being woken to lead, before it ran, hands the lead to the next caller."""
    backend, results = GatedBackend(), Results()
    batcher = BatchingEmbedder(backend, max_batch=1)
    b_scope = anyio.CancelScope()

    async def a_then_cancel_b() -> None:
        await results.call(batcher, "a", texts_of("a", 1))
        b_scope.cancel()  # b was promoted as a's batch ended and has not run yet

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(a_then_cancel_b)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(_in_scope, b_scope, results.call, batcher, "b", texts_of("b", 1))
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(results.call, batcher, "c", texts_of("c", 1))
            await anyio.wait_all_tasks_blocked()
            backend.release(0)
            await anyio.wait_all_tasks_blocked()
            backend.release(1)
    assert backend.texts() == [texts_of("a", 1), texts_of("c", 1)]
    np.testing.assert_array_equal(results.rows("c"), hash_embed(texts_of("c", 1), DIM))


async def test_queries_bypass_a_busy_passage_batch() -> None:
    """A query goes to the backend at once, with kind="query", while a passage call is running."""
    backend, results = GatedBackend(), Results()
    batcher = BatchingEmbedder(backend)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(results.call, batcher, "write", texts_of("w", 3))
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(results.call, batcher, "q", ["why did the canary roll back"], "query")
            await anyio.wait_all_tasks_blocked()
            assert backend.calls[1] == ("query", ["why did the canary roll back"])
            backend.release(1)
            await anyio.wait_all_tasks_blocked()
            assert "q" in results.got and "write" not in results.got
            backend.release(0)


async def test_batched_queries_never_share_a_call_with_passages() -> None:
    """With batch_queries, queries coalesce among themselves, each batch with a single kind."""
    backend, results = GatedBackend(), Results()
    batcher = BatchingEmbedder(backend, batch_queries=True)
    arrivals: list[tuple[str, EmbedKind]] = [
        ("p1", "passage"),
        ("q1", "query"),
        ("p2", "passage"),
        ("q2", "query"),
        ("q3", "query"),
    ]
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for key, kind in arrivals:
                tg.start_soon(results.call, batcher, key, texts_of(key, 1), kind)
                await anyio.wait_all_tasks_blocked()
            for index in range(4):
                backend.release(index)
                await anyio.wait_all_tasks_blocked()
    assert sorted(backend.calls) == sorted(
        [
            ("passage", texts_of("p1", 1)),
            ("query", texts_of("q1", 1)),
            ("passage", texts_of("p2", 1)),
            ("query", texts_of("q2", 1) + texts_of("q3", 1)),
        ]
    )


async def test_unknown_kind_is_refused() -> None:
    """A misspelt kind is a ValueError, not a query silently embedded as a passage."""
    with pytest.raises(ValueError, match="'queries'"):
        await BatchingEmbedder(GatedBackend()).embed(["x"], kind="queries")  # type: ignore[arg-type]


def test_keeps_the_inner_name_and_dim() -> None:
    """Index files see the wrapped embedder's name and dimension."""
    batcher = BatchingEmbedder(GatedBackend())
    assert (batcher.name, batcher.dim) == ("gated", DIM) and isinstance(batcher, Embedder)


async def _in_scope(scope: anyio.CancelScope, fn: Callable[..., Awaitable[object]], *args: object) -> None:
    with scope:
        await fn(*args)
