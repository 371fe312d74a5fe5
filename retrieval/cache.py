"""The retrieval cache: results by (namespace, query digest), made stale by an epoch.

Every namespace has an epoch. An entry lives under `rolloutd:rag:{namespace}:{epoch}:{key}`,
and `invalidate(namespace)` -- called on every add or delete of a memory -- moves the
epoch on, so every older entry becomes unreachable at once, without scanning for it;
old entries simply expire (TTL) or are evicted. A deleted memory never comes back.

This module is the contract both backends share: the `RetrievalCache` protocol, its
`CacheStats`, and `FillEpochs`, which keeps a cache-aside fill that outlived an
invalidate from being stored under the new epoch. The backends, one file each:

- `cache_memory.LocalCache`: in process, LRU bounded by entries and bytes, TTL, a
  counter per namespace (no `[retrieval] redis_url`).
- `cache_redis.RedisCache`: `redis.asyncio`, shared by replicas; the epoch lives in
  Redis so replicas agree on it. Its guarantees are drawn in that module's docstring.

`retrieval.backends.build_cache` picks one from the config.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal, Protocol

Clock = Callable[[], float]
PREFIX = "rolloutd:rag"
DEFAULT_TTL = 300.0
Outcome = Literal["hit", "miss", "bypass"]
PENDING_FILLS = 10_000  # misses waiting for their set(); older ones are forgotten


@dataclass
class CacheStats:
    """Counters since start. `bypassed`: calls that did not consult the backend (a pending
    invalidate, or Redis marked down after an error); `errors`: backend calls that failed."""

    hits: int = 0
    misses: int = 0
    errors: int = 0
    bypassed: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class RetrievalCache(Protocol):
    """Bytes by (namespace, key); `invalidate(namespace)` makes every older entry unreachable."""

    stats: CacheStats

    async def get(self, namespace: str, key: str) -> bytes | None: ...

    async def lookup(self, namespace: str, key: str) -> tuple[bytes | None, Outcome]:
        """`get`, also saying why: "hit", "miss", or "bypass" (the backend was not usable)."""
        ...

    async def set(self, namespace: str, key: str, value: bytes) -> None: ...

    async def invalidate(self, namespace: str) -> None: ...

    async def aclose(self) -> None: ...


class FillEpochs:
    """The epoch each recent miss looked under, so a fill that outlived an invalidate is
    recognised and dropped."""

    def __init__(self, limit: int = PENDING_FILLS) -> None:
        self._epochs: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._limit = limit

    def remember(self, namespace: str, key: str, epoch: int) -> None:
        self._epochs[namespace, key] = epoch
        self._epochs.move_to_end((namespace, key))
        if len(self._epochs) > self._limit:
            self._epochs.popitem(last=False)

    def take(self, namespace: str, key: str) -> int | None:
        return self._epochs.pop((namespace, key), None)
