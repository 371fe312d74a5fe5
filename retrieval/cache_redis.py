"""The retrieval cache in Redis (`redis.asyncio`), shared by replicas.

The epoch scheme and the protocol are in `retrieval.cache`. Here the epoch lives in
Redis (`INCR rolloutd:rag:epoch:{namespace}`) so replicas agree on it.

Guarantees of `RedisCache` (read before relying on it):

1. After `invalidate()` returns, no `get()` in this process returns an entry written
   before it: the INCR's answer replaces the locally cached epoch, and an epoch read that
   was in flight during the INCR is discarded rather than stored over it.
2. Cache-aside fills are safe against a concurrent invalidate: a `get()` miss remembers
   the epoch it looked under, and the `set()` of the same (namespace, key) is dropped if
   the epoch has moved since -- a value computed from data older than an invalidate is
   never stored under the new epoch. (A `set()` with no preceding miss uses the current
   epoch; the last `PENDING_FILLS` misses are remembered.)
3. If the INCR fails (Redis down or unreachable), the namespace is marked dirty here:
   until an INCR succeeds, `get()` bypasses the cache and `set()` does nothing, so
   entries from before the invalidate are not served when Redis returns. Every later
   use retries the pending INCR (several pending invalidates collapse into one).
4. Redis errors never reach the caller: they are counted, logged (the first at once,
   then one line per `log_every` seconds with the count), and the call degrades to a miss.

What is NOT guaranteed: other replicas cache the epoch for `epoch_ttl` seconds (default
1 s, to save a round trip per query), so after an invalidate here another replica may
serve an older entry for up to that long. While this process holds a pending (dirty)
invalidate that it cannot deliver, other replicas that still reach Redis keep serving
the old epoch until the INCR goes through.

Epochs start at a random 48-bit value (`SET NX` before the first `INCR`), not at 1: if
Redis restarts empty or evicts the epoch key, a replica still holding a pre-restart
epoch cannot write under a number the new counter will later reach.

Timeouts and retries are explicit, because redis-py's defaults (5 s socket timeouts,
10 retries) would turn a Redis outage into a retrieval outage: see `RedisCache`.
"""

from __future__ import annotations

import random
import time
from typing import cast

import anyio
import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from retrieval.cache import DEFAULT_TTL, PREFIX, CacheStats, Clock, FillEpochs, Outcome

log = structlog.get_logger("rolloutd.retrieval.cache")


class _ErrorLog:
    """Logs the first error of an outage at once, then one line per `every` seconds with
    the count since the last line, and one line when the backend answers again."""

    def __init__(self, every: float, clock: Clock) -> None:
        self.every, self._clock = every, clock
        self._last: float | None = None
        self._unlogged = 0
        self._in_outage = 0

    def error(self, op: str, namespace: str, exc: BaseException) -> None:
        self._in_outage += 1
        self._unlogged += 1
        now = self._clock()
        if self._last is not None and now - self._last < self.every:
            return
        log.warning(
            "cache.redis.error",
            op=op,
            namespace=namespace,
            error=type(exc).__name__,
            detail=str(exc),
            errors_since_last_log=self._unlogged,
            errors_in_outage=self._in_outage,
        )
        self._last, self._unlogged = now, 0

    def success(self) -> None:
        if self._in_outage:
            log.info("cache.redis.recovered", errors_in_outage=self._in_outage)
            self._in_outage, self._unlogged, self._last = 0, 0, None


def _escape(namespace: str) -> str:
    # ':' separates key fields; escaping keeps "a:1" from aliasing namespace "a", epoch 1.
    return namespace.replace("%", "%25").replace(":", "%3A")


class RedisCache:
    """The cache in Redis, shared by replicas; see the module docstring for its guarantees.

    Timeouts: `socket_connect_timeout` and `socket_timeout` default to 0.25 s -- a cache
    GET on loopback or a LAN answers in well under 1 ms, so 0.25 s only fires when Redis
    is gone or black-holed, and then caps what a query pays for the cache.
    Retries: one, after 10 ms. It covers the common transient failure -- a pooled
    connection that Redis closed (restart, idle timeout) fails once and the retry
    reconnects -- while an outage costs at most 2 x 0.25 s plus 10 ms per call. More
    retries would only multiply that. After a connection or timeout error, Redis is
    skipped (`bypassed`) for `down_for` seconds, so a black-holed Redis costs one slow
    call per `down_for`, not one per query; the next call after that probes again, which
    is how the cache reconnects on its own.
    """

    def __init__(
        self,
        client_or_url: Redis | str,
        *,
        ttl: float = DEFAULT_TTL,
        epoch_ttl: float = 1.0,
        socket_timeout: float = 0.25,
        socket_connect_timeout: float = 0.25,
        retries: int = 1,
        down_for: float = 1.0,
        log_every: float = 10.0,
        max_connections: int = 64,
        clock: Clock = time.monotonic,
    ) -> None:
        if isinstance(client_or_url, str):
            retry = Retry(ExponentialBackoff(cap=0.05, base=0.005), retries)
            self._redis = Redis.from_url(
                client_or_url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_connect_timeout,
                retry=retry,
                max_connections=max_connections,
            )
            self._owns_client = True
        else:
            self._redis, self._owns_client = client_or_url, False
        self.stats = CacheStats()
        self.ttl, self.epoch_ttl, self.down_for = ttl, epoch_ttl, down_for
        self._clock = clock
        self._errors = _ErrorLog(log_every, clock)
        self._down_until = float("-inf")
        self._epochs: dict[str, tuple[int, float]] = {}  # namespace -> (epoch, read at)
        self._generation: dict[str, int] = {}  # bumped by invalidate; stale reads are dropped
        self._dirty: set[str] = set()  # invalidated here, INCR not yet taken by Redis
        self._increment_lock = anyio.Lock()
        self._fills = FillEpochs()

    async def get(self, namespace: str, key: str) -> bytes | None:
        return (await self.lookup(namespace, key))[0]

    async def lookup(self, namespace: str, key: str) -> tuple[bytes | None, Outcome]:
        epoch = await self._usable_epoch(namespace, "get")
        if epoch is None:
            return None, "bypass"
        try:
            value = await self._redis.get(self._key(namespace, epoch, key))
        except (RedisError, OSError) as exc:
            self._failed("get", namespace, exc)
            return None, "bypass"
        self._answered()
        if value is None:
            self.stats.misses += 1
            self._fills.remember(namespace, key, epoch)
            return None, "miss"
        self.stats.hits += 1
        return cast(bytes, value), "hit"  # a client of ours never decodes responses

    async def set(self, namespace: str, key: str, value: bytes) -> None:
        fill_epoch = self._fills.take(namespace, key)
        epoch = await self._usable_epoch(namespace, "set")
        if epoch is None or (fill_epoch is not None and fill_epoch != epoch):
            return  # the value may predate an invalidate: nobody current could read it anyway
        try:
            await self._redis.set(self._key(namespace, epoch, key), value, px=max(1, round(self.ttl * 1000)))
        except (RedisError, OSError) as exc:
            self._failed("set", namespace, exc)
            return
        self._answered()

    async def invalidate(self, namespace: str) -> None:
        self._dirty.add(namespace)
        self._epochs.pop(namespace, None)
        self._generation[namespace] = self._generation.get(namespace, 0) + 1
        delivered = await self._increment(namespace)
        if delivered is False or (delivered is None and self._is_down()):
            log.warning(
                "cache.invalidate.pending",
                namespace=namespace,
                effect="cache bypassed for this namespace until Redis takes the INCR",
            )

    async def aclose(self) -> None:
        if self._owns_client:
            await self._redis.aclose()

    def _key(self, namespace: str, epoch: int, key: str) -> str:
        return f"{PREFIX}:{_escape(namespace)}:{epoch}:{key}"

    def _epoch_key(self, namespace: str) -> str:
        return f"{PREFIX}:epoch:{_escape(namespace)}"

    async def _usable_epoch(self, namespace: str, op: str) -> int | None:
        """The namespace's epoch, or None (counted as bypassed or error) if the cache must
        not be used now: Redis marked down, or an invalidate not yet delivered."""
        if self._is_down():
            self.stats.bypassed += 1
            return None
        if namespace in self._dirty:
            delivered = await self._increment(namespace)
            if delivered is None:
                self.stats.bypassed += 1
            if not delivered:
                return None  # a failed INCR (False) was counted as an error
        cached = self._epochs.get(namespace)
        if cached is not None and self._clock() - cached[1] < self.epoch_ttl:
            return cached[0]
        return await self._read_epoch(namespace, op)

    async def _read_epoch(self, namespace: str, op: str) -> int | None:
        generation = self._generation.get(namespace, 0)
        try:
            epoch = await self._epoch_command(namespace, increment=False)
        except (RedisError, OSError) as exc:
            self._failed(op, namespace, exc)
            return None
        self._answered()
        # An invalidate that ran while this read was in flight wins: its epoch is newer.
        if self._generation.get(namespace, 0) == generation and namespace not in self._dirty:
            self._epochs[namespace] = (epoch, self._clock())
        return epoch

    async def _epoch_command(self, namespace: str, *, increment: bool) -> int:
        """The namespace's epoch, read (GET) or moved on (INCR), in one transaction with the
        `SET NX` of a random start (see the module docstring). Redis errors propagate."""
        key = self._epoch_key(namespace)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(key, random.getrandbits(48), nx=True)
            if increment:
                pipe.incr(key)
            else:
                pipe.get(key)
            _, value = await pipe.execute()
        return int(value)

    async def _increment(self, namespace: str) -> bool | None:
        """Deliver pending invalidates: True once Redis has taken an INCR issued after the
        latest one, False if the INCR failed (an error is counted), None if not delivered
        for another reason (Redis marked down, or a newer invalidate is queued)."""
        # Serialised, so INCR answers are applied in the order Redis gave them.
        async with self._increment_lock:
            if namespace not in self._dirty:
                return True  # delivered while we waited, by an INCR issued after our invalidate
            if self._is_down():
                return None
            generation = self._generation.get(namespace, 0)
            try:
                epoch = await self._epoch_command(namespace, increment=True)
            except (RedisError, OSError) as exc:
                self._failed("invalidate", namespace, exc)
                return False
            self._answered()
            self._epochs[namespace] = (epoch, self._clock())
            if self._generation.get(namespace, 0) != generation:
                return None  # an invalidate came in meanwhile; it delivers its own INCR next
            self._dirty.discard(namespace)
            return True

    def _is_down(self) -> bool:
        return self._clock() < self._down_until

    def _failed(self, op: str, namespace: str, exc: BaseException) -> None:
        self.stats.errors += 1
        if isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError)):
            self._down_until = self._clock() + self.down_for
        self._errors.error(op, namespace, exc)

    def _answered(self) -> None:
        self._errors.success()
