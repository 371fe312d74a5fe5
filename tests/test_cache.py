"""The retrieval cache: one contract suite over LocalCache and RedisCache (real redis-server),
then Redis's shared epochs, outages, pending invalidates and recovery, then LocalCache's bounds.

Time is a `FakeClock` handed to the cache (epoch TTL, down-marking, log rate limit, local
TTL); only Redis's own key expiry is waited out in real time, for 0.25 s.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio
import pytest
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from structlog.testing import capture_logs

from retrieval.backends import build_cache
from retrieval.cache_memory import LocalCache
from retrieval.cache_redis import RedisCache
from tests.support.clocks import FakeClock
from tests.support.realservers import RedisServer

STEP = 5.0  # bound on any single awaited step; every call here should take milliseconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client for looking behind the cache's back."""
    # One retry: without it redis-py 8.1's from_url client fails the first command after a
    # restart on the dead pooled connection instead of reconnecting.
    retry = Retry(ExponentialBackoff(), 1)
    client = redis.asyncio.Redis.from_url(redis_server.url, socket_timeout=2, retry=retry)
    yield client
    await client.aclose()


@pytest.fixture(params=["local", "redis"])
async def cache(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[LocalCache | RedisCache]:
    """Each backend, built through build_cache as the daemon builds it."""
    url = request.getfixturevalue("redis_server").url if request.param == "redis" else None
    built = build_cache(url, clock=clock)
    yield built
    await built.aclose()


@pytest.fixture
async def rcache(redis_server: RedisServer, clock: FakeClock) -> AsyncIterator[RedisCache]:
    built = RedisCache(redis_server.url, clock=clock)
    yield built
    await built.aclose()


# --- contract, both backends -----------------------------------------------------------


@pytest.mark.anyio
async def test_miss_then_hit_is_counted(cache):
    """A get before any set is a miss, after set it returns the bytes and counts a hit."""
    with anyio.fail_after(STEP):
        assert await cache.get("default", "q1") is None
        await cache.set("default", "q1", b"results")
        assert await cache.get("default", "q1") == b"results"
        assert await cache.get("default", "q2") is None
    assert cache.stats.to_dict() == {"hits": 1, "misses": 2, "errors": 0, "bypassed": 0}


@pytest.mark.anyio
async def test_invalidate_hides_older_entries_and_serves_new_ones(cache):
    """After invalidate returns, an entry written before it is unreachable; a new set is served."""
    with anyio.fail_after(STEP):
        await cache.set("default", "q", b"old")
        assert await cache.get("default", "q") == b"old"
        await cache.invalidate("default")
        assert await cache.get("default", "q") is None
        await cache.set("default", "q", b"new")
        assert await cache.get("default", "q") == b"new"


@pytest.mark.anyio
async def test_fill_computed_before_an_invalidate_is_not_stored(cache):
    """A miss, an invalidate, then the miss's fill: the fill is dropped, not served as current."""
    with anyio.fail_after(STEP):
        assert await cache.get("default", "q") is None  # caller starts computing from old data
        await cache.invalidate("default")  # a memory is deleted meanwhile
        await cache.set("default", "q", b"computed-before-delete")
        assert await cache.get("default", "q") is None


@pytest.mark.anyio
async def test_invalidate_touches_only_its_namespace(cache):
    """Invalidating one namespace leaves another namespace's entries served."""
    with anyio.fail_after(STEP):
        await cache.set("a", "q", b"A")
        await cache.set("b", "q", b"B")
        await cache.invalidate("a")
        assert await cache.get("a", "q") is None
        assert await cache.get("b", "q") == b"B"


@pytest.mark.anyio
async def test_colon_in_namespace_does_not_alias_another_key(cache):
    """Namespace "a:1" and namespace "a" with key "1:q" are different entries."""
    with anyio.fail_after(STEP):
        await cache.set("a:1", "q", b"first")
        assert await cache.get("a", "1:q") is None
        assert await cache.get("a:1", "q") == b"first"


@pytest.mark.anyio
async def test_local_entries_expire_after_ttl(clock):
    """A LocalCache entry is served until its TTL and is a miss after it."""
    cache = LocalCache(ttl=10, clock=clock)
    await cache.set("default", "q", b"v")
    clock.advance(9.9)
    assert await cache.get("default", "q") == b"v"
    clock.advance(0.2)
    assert await cache.get("default", "q") is None
    assert len(cache) == 0 and cache.nbytes == 0


@pytest.mark.anyio
async def test_redis_entries_expire_after_ttl(redis_server, raw):
    """RedisCache writes with a millisecond TTL, and the entry is gone once it passes."""
    cache = RedisCache(redis_server.url, ttl=0.1)
    try:
        with anyio.fail_after(STEP):
            await cache.set("default", "q", b"v")
            [key] = [k async for k in raw.scan_iter(match=b"rolloutd:rag:default:*")]
            assert 0 < await raw.pttl(key) <= 100
            assert await cache.get("default", "q") == b"v"
            await anyio.sleep(0.25)  # Redis's own clock; it cannot be injected
            assert await cache.get("default", "q") is None
    finally:
        await cache.aclose()


# --- Redis: shared epochs ---------------------------------------------------------------


@pytest.mark.anyio
async def test_replicas_share_the_epoch_within_epoch_ttl(redis_server, clock):
    """One RedisCache invalidates; another on the same Redis stops serving within epoch_ttl."""
    writer = RedisCache(redis_server.url, clock=clock, epoch_ttl=1.0)
    reader = RedisCache(redis_server.url, clock=clock, epoch_ttl=1.0)
    try:
        with anyio.fail_after(STEP):
            await writer.set("default", "q", b"old")
            assert await reader.get("default", "q") == b"old"  # reader caches the epoch
            await writer.invalidate("default")
            assert await writer.get("default", "q") is None
            # The documented window: the reader still holds the old epoch for up to 1 s.
            assert await reader.get("default", "q") == b"old"
            clock.advance(1.01)
            assert await reader.get("default", "q") is None
            await writer.set("default", "q", b"new")
            assert await reader.get("default", "q") == b"new"
    finally:
        await writer.aclose()
        await reader.aclose()


@pytest.mark.anyio
async def test_epoch_restarts_at_a_random_base_after_redis_loses_it(rcache, raw):
    """A lost epoch key is recreated at a random 48-bit base, not at 1, so old epochs are not reused."""
    with anyio.fail_after(STEP):
        await rcache.set("default", "q", b"v")
        first = int(await raw.get("rolloutd:rag:epoch:default"))
        await raw.flushall()
        await rcache.invalidate("default")
        second = int(await raw.get("rolloutd:rag:epoch:default"))
    assert first > 1000 and second > 1000 and second != first + 1


@pytest.mark.anyio
async def test_concurrent_invalidates_and_reads_leave_no_old_entry_reachable(rcache, raw):
    """Many invalidates racing reads and fills: once all return, the old entry is gone and the
    locally cached epoch is the newest Redis handed out."""
    with anyio.fail_after(STEP):
        await rcache.set("default", "q", b"old")
        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(rcache.invalidate, "default")
                tg.start_soon(rcache.get, "default", f"other{i}")
                tg.start_soon(rcache.set, "default", f"other{i}", b"x")
        assert await rcache.get("default", "q") is None
        assert rcache._epochs["default"][0] == int(await raw.get("rolloutd:rag:epoch:default"))
    assert rcache.stats.errors == 0


# --- Redis: outages ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_redis_stopped_calls_return_quickly_and_never_raise(redis_server, rcache, clock):
    """With Redis stopped, get/set/invalidate return at once, get is a miss, errors are counted."""
    await rcache.set("default", "q", b"v")
    redis_server.stop()
    started = time.monotonic()
    with anyio.fail_after(STEP):
        for i in range(10):
            assert await rcache.get("default", "q") is None
            await rcache.set("default", f"k{i}", b"v")
            clock.advance(0.5)  # half of the calls probe Redis, half find it marked down
        await rcache.invalidate("other")
    elapsed = time.monotonic() - started
    assert elapsed < 1.5, f"20 calls took {elapsed:.3f}s with Redis down"
    stats = rcache.stats
    assert stats.errors >= 5 and stats.bypassed >= 5
    assert stats.hits == 0 and stats.misses == 0


@pytest.mark.anyio
async def test_unresponsive_redis_costs_one_timeout_then_is_bypassed(redis_server, raw, clock):
    """A Redis that accepts but does not answer (CLIENT PAUSE) costs one bounded wait, then is skipped."""
    cache = RedisCache(redis_server.url, clock=clock, socket_timeout=0.1)
    await cache.set("default", "q", b"v")
    # The pause also holds the pausing client, so it is left to expire instead of unpaused.
    await raw.client_pause(800, all=True)
    try:
        with anyio.fail_after(STEP):
            started = time.monotonic()
            assert await cache.get("default", "q") is None
            first = time.monotonic() - started
            started = time.monotonic()
            for _ in range(10):
                assert await cache.get("default", "q") is None
            rest = time.monotonic() - started
    finally:
        await cache.aclose()
        await raw.ping()  # returns once the pause is over
    assert 0.1 <= first < 0.5, f"first call {first:.3f}s: expected 2 attempts x 0.1 s timeout"
    assert rest < 0.05, f"10 calls while marked down took {rest:.3f}s"
    assert cache.stats.errors == 1 and cache.stats.bypassed == 10


@pytest.mark.anyio
async def test_cache_recovers_on_its_own_and_logs_sparingly(redis_server, rcache, clock):
    """An outage logs its first error, then one line per 10 s with a count, and a line on recovery."""
    redis_server.stop()
    with capture_logs() as logs, anyio.fail_after(STEP):
        for _ in range(5):
            await rcache.get("default", "q")
            clock.advance(1.5)  # past down_for: every call probes and fails
        clock.advance(10)
        await rcache.get("default", "q")
        redis_server.start()
        clock.advance(1.5)
        assert await rcache.get("default", "q") is None  # answered: a plain miss
        await rcache.set("default", "q", b"back")
        assert await rcache.get("default", "q") == b"back"
    errors = [e for e in logs if e["event"] == "cache.redis.error"]
    assert [e["errors_since_last_log"] for e in errors] == [1, 5]
    assert [e["errors_in_outage"] for e in logs if e["event"] == "cache.redis.recovered"] == [6]
    assert rcache.stats.errors == 6 and rcache.stats.hits == 1


@pytest.mark.anyio
async def test_invalidate_during_outage_keeps_old_entry_unserved_after_return(redis_server, raw, rcache, clock):
    """An invalidate Redis never received bypasses the cache until its INCR lands, so an entry
    that survives the outage (as with persistence) is never served again."""
    with anyio.fail_after(STEP):
        await rcache.set("default", "q", b"pre-outage")
        assert await rcache.get("default", "q") == b"pre-outage"
        saved = {k: await raw.get(k) for k in [k async for k in raw.scan_iter()]}
        redis_server.stop()
        await rcache.invalidate("default")  # a memory was deleted; Redis cannot hear it
        clock.advance(1.5)
        assert await rcache.get("default", "q") is None  # probe: INCR fails again
        assert await rcache.get("default", "q") is None  # marked down: bypassed
        await rcache.set("default", "q", b"during")  # does nothing
        redis_server.start()
        for key, value in saved.items():  # Redis comes back with its data, as if persisted
            await raw.set(key, value)
        assert await rcache.get("default", "q") is None  # still marked down: bypassed
        clock.advance(1.5)
        assert await rcache.get("default", "q") is None  # INCR lands: new epoch, a miss
        epoch_after = int(await raw.get("rolloutd:rag:epoch:default"))
        assert epoch_after > int(saved[b"rolloutd:rag:epoch:default"])
        await rcache.set("default", "q", b"fresh")
        assert await rcache.get("default", "q") == b"fresh"
    assert rcache.stats.bypassed == 3 and rcache.stats.hits == 2 and rcache.stats.misses == 1


# --- LocalCache bounds ------------------------------------------------------------------


@pytest.mark.anyio
async def test_local_lru_evicts_least_recently_used_by_count(clock):
    """Past max_entries, the entry used longest ago goes first; a get counts as a use."""
    cache = LocalCache(max_entries=2, clock=clock)
    await cache.set("n", "a", b"1")
    await cache.set("n", "b", b"2")
    assert await cache.get("n", "a") == b"1"
    await cache.set("n", "c", b"3")
    assert await cache.get("n", "b") is None
    assert await cache.get("n", "a") == b"1" and await cache.get("n", "c") == b"3"
    assert len(cache) == 2


@pytest.mark.anyio
async def test_local_lru_is_bounded_by_bytes(clock):
    """Stored value bytes never exceed max_bytes; a value larger than the bound is not stored."""
    cache = LocalCache(max_bytes=10, clock=clock)
    await cache.set("n", "a", b"1234")
    await cache.set("n", "b", b"5678")
    await cache.set("n", "c", b"9012")
    assert cache.nbytes == 8 and await cache.get("n", "a") is None
    await cache.set("n", "b", b"123456")  # replacing counts the new size, not both
    assert cache.nbytes == 10
    await cache.set("n", "huge", b"x" * 11)
    assert await cache.get("n", "huge") is None and cache.nbytes == 10


@pytest.mark.anyio
async def test_build_cache_picks_the_backend():
    """No Redis URL gives the in-process cache; a URL gives RedisCache with its options."""
    assert isinstance(build_cache(None, max_entries=5), LocalCache)
    remote = build_cache("redis://127.0.0.1:1/0", ttl=5)
    assert isinstance(remote, RedisCache) and remote.ttl == 5
    await remote.aclose()
