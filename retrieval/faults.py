"""Faults injected into the retriever on purpose: `rolloutd demo --inject latency@30h`.

The retriever awaits `Faults.before_search()` first thing in every retrieval, cache hits
included (as a saturated host or a bad deploy would slow or fail them all), so an
injected fault travels the real paths: added latency lands in
`hybrid_rag_retrieval_latency_seconds`, an injected failure is a `RetrievalFailed`
counted in `hybrid_rag_errors_total{reason="injected"}` and answered 503.
Nothing in production builds one; `Retriever(faults=None)` costs one attribute test.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import anyio


class InjectedFault(RuntimeError):
    """A failure injected on purpose (the demo's `--inject errors@...`)."""


@dataclass
class Faults:
    latency: float = 0.0  # seconds added to every search
    error_ratio: float = 0.0  # share of searches that fail (0-1)
    rng: random.Random = field(default_factory=lambda: random.Random(1307))

    @property
    def active(self) -> bool:
        return self.latency > 0 or self.error_ratio > 0

    def clear(self) -> None:
        self.latency, self.error_ratio = 0.0, 0.0

    async def before_search(self) -> None:
        if self.latency > 0:
            await anyio.sleep(self.latency)
        if self.error_ratio > 0 and self.rng.random() < self.error_ratio:
            raise InjectedFault(f"injected failure ({self.error_ratio:.1%} of searches fail)")
