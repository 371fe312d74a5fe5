"""Coalesce concurrent embed calls into one backend call per batch.

Many single-memory writes arriving at once would each pay a thread hop (static, e5) or
an HTTP round trip; `BatchingEmbedder` wraps any `Embedder` and sends what piles up as
one call instead:

- Idle, a call goes straight to the backend: no timer, no added latency.
- While a backend call for a kind is running, calls of that kind queue. When it returns,
  the oldest waiting caller leads the next batch: every queued call, oldest first, up to
  `max_batch` texts (a single call larger than that goes alone, unsplit).
- Each caller gets its own rows, in its own order. A backend error is raised to every
  caller of that batch, and only to them.
- Cancel-safe. A caller cancelled while queued leaves the queue; one cancelled while its
  batch runs just drops its rows. A cancelled leader (the caller whose task makes the
  backend call) abandons that call at its next checkpoint (for static and e5, when the
  running worker-thread chunk returns); the other callers of its batch go back to
  the head of the queue and the oldest of them leads it again. Cancellation stays prompt
  (a shielded call would hold a stopping daemon for a whole batch: ~40 s of e5 passages
  at the cap) at the price of embedding those texts twice.

Queries bypass the batcher by default (`batch_queries=False`). A query is one short text
on the latency-critical path: coalescing could only make it wait for a call already
running (up to one whole batch), and a one-text query call costs little — hashing embeds
it inline, wordllama in ~0.3 ms. Passages and queries are never mixed in one call:
asymmetric models embed them differently.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel
import numpy as np

from retrieval.embedder import EMBED_KINDS, Embedder, EmbedderError, EmbedKind, check_kind

DEFAULT_MAX_BATCH = 256


@dataclass(eq=False)
class _Call:
    """One caller's texts, and what the batch that took them produced."""

    texts: list[str]
    done: anyio.Event = field(default_factory=anyio.Event)
    rows: np.ndarray | None = None
    error: Exception | None = None
    leads: bool = False  # woken to lead the next batch rather than with a result
    abandoned: bool = False  # its caller was cancelled: never put it back in the queue


@dataclass(eq=False)
class _Lane:
    """The queue and busy flag of one kind; passages and queries never share a call."""

    queue: deque[_Call] = field(default_factory=deque)
    busy: bool = False


class BatchingEmbedder:
    """An `Embedder` that coalesces concurrent calls of the same kind into one call to `inner`."""

    def __init__(self, inner: Embedder, *, max_batch: int = DEFAULT_MAX_BATCH, batch_queries: bool = False) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch {max_batch} < 1")
        self.inner, self.max_batch, self.batch_queries = inner, max_batch, batch_queries
        self._lanes: dict[EmbedKind, _Lane] = {kind: _Lane() for kind in EMBED_KINDS}
        self.backend_calls = 0  # how many calls reached `inner` (tests and metrics)

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def dim(self) -> int:
        return self.inner.dim

    async def embed(self, texts: Sequence[str], *, kind: EmbedKind = "passage") -> np.ndarray:
        kind = check_kind(kind)
        texts = list(texts)
        if not texts or (kind == "query" and not self.batch_queries):
            self.backend_calls += 1
            return await self.inner.embed(texts, kind=kind)
        lane, call = self._lanes[kind], _Call(texts)
        lane.queue.append(call)
        if lane.busy:
            await self._wait(lane, call)
        else:
            lane.busy = True
            call.leads = True
        if call.leads:
            await self._lead(lane, call, kind)
        if call.rows is None:  # the batch failed: its error, raised to each of its callers
            raise call.error or EmbedderError(self.name, "a batch ended without rows")
        return call.rows

    async def _wait(self, lane: _Lane, call: _Call) -> None:
        """Wait for this call's rows, or to be told to lead; on cancellation leave cleanly."""
        try:
            await call.done.wait()
            if call.leads:  # woken to lead but cancelled meanwhile: lead nothing
                await anyio.lowlevel.checkpoint_if_cancelled()
        except BaseException:
            call.abandoned = True
            if call in lane.queue:  # not taken by a batch yet: nobody will miss it
                lane.queue.remove(call)
            if call.leads:  # promoted just as it was cancelled: pass the lead on
                self._hand_off(lane)
            raise

    async def _lead(self, lane: _Lane, call: _Call, kind: EmbedKind) -> None:
        """Run one batch, `call` (the queue's head) first, and hand the lane on."""
        batch = self._take(lane)
        try:
            self.backend_calls += 1
            rows = await self.inner.embed([t for c in batch for t in c.texts], kind=kind)
            self._deliver(batch, rows)
        except Exception as exc:
            for c in batch:
                c.error = exc
                c.done.set()
            raise
        except BaseException:  # the leader was cancelled: the rest of its batch goes back, in order
            call.abandoned = True
            lane.queue.extendleft(reversed([c for c in batch if not c.abandoned]))
            raise
        finally:
            self._hand_off(lane)

    def _take(self, lane: _Lane) -> list[_Call]:
        """The oldest queued calls, up to `max_batch` texts (at least one call)."""
        batch = [lane.queue.popleft()]
        size = len(batch[0].texts)
        while lane.queue and size + len(lane.queue[0].texts) <= self.max_batch:
            size += len(lane.queue[0].texts)
            batch.append(lane.queue.popleft())
        return batch

    def _deliver(self, batch: list[_Call], rows: np.ndarray) -> None:
        expected = sum(len(c.texts) for c in batch)
        if rows.ndim != 2 or rows.shape[0] != expected:
            raise EmbedderError(self.name, f"backend returned {rows.shape[0]} rows for {expected} texts")
        start = 0
        for c in batch:
            c.rows, start = rows[start : start + len(c.texts)], start + len(c.texts)
            c.done.set()

    def _hand_off(self, lane: _Lane) -> None:
        """Wake the oldest queued call to lead the next batch, or mark the lane idle."""
        if lane.queue:
            nxt = lane.queue[0]
            nxt.leads = True
            nxt.done.set()
        else:
            lane.busy = False
