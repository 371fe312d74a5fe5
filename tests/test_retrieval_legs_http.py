"""`POST /v1/retrieve` with `legs` (issue 13), on the public app as the daemon builds it
(`build_public_app` with the retrieval routes), over the embedded store and the real
MongoDB-wire server, answers cached in the real Redis.

`legs` is validated (400 naming the field), gated by the caller's flags (403 naming the
field), answered by exactly the legs asked for (only their ranks set, cached apart from
other legs' answers), documented in `/openapi.json`, and a delete reaches a lexical-only
answer at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from controller.host.public_http import Readiness, build_public_app
from flags.evaluate import FlagSet
from flags.model import KILL_SWITCH, Constraint, Flag, Operator
from retrieval.cache_redis import RedisCache
from retrieval.embedded_store import EmbeddedStore
from retrieval.gating import CACHE, GATING_FLAGS, GRAPH, HYBRID, VECTOR
from retrieval.graph_store import GraphStore
from retrieval.http_api import retrieval_routes
from retrieval.mongo_store import MongoStore
from retrieval.search import LEGS
from tests.support.retriever_rig import build, sample

pytestmark = pytest.mark.anyio
NOW = datetime(2026, 1, 1, tzinfo=UTC)
COHORT = ("QA", "Deploy")
ALL = dict.fromkeys(GATING_FLAGS, True)

BATCH_TEXT = "Batch QX-5521 rolled back overnight."
MEMORIES: list[dict[str, Any]] = [
    *(
        {
            "id": f"note-{i}",
            "text": f"The incident on the payments service was resolved by the on-call engineer, shift {i}.",
        }
        for i in range(12)
    ),
    {"id": "batch", "text": BATCH_TEXT},
    {"id": "festival", "text": "Green Day closed the Lisbon festival in 2019."},
    {"id": "band", "text": "Green Day\nAn American punk trio formed in 1987 in the East Bay."},
    {"id": "setlist", "text": "Setlist notes for the closing night.", "links": ["festival"]},
]
# Common words, one rare code, one name: every leg has something to find.
QUERY = "Who closed the Lisbon festival after batch QX-5521 and the payments incident?"


def flagset(on: dict[str, bool]) -> FlagSet:
    """The gating flags, each enabled for the cohort when `on[name]`."""
    constraint = Constraint("agent", Operator.IN, COHORT)
    flags = {name: Flag(name, enabled=on.get(name, False), constraints=(constraint,)) for name in GATING_FLAGS}
    flags[KILL_SWITCH] = Flag(KILL_SWITCH, enabled=False)
    return FlagSet(flags)


@dataclass
class Rig:
    client: httpx.AsyncClient
    registry: CollectorRegistry
    flags: FlagSet

    async def retrieve(self, query: str = QUERY, **extra: object) -> httpx.Response:
        return await self.client.post("/v1/retrieve", json={"agent": "QA", "query": query, **extra})

    async def answer(self, query: str = QUERY, **extra: object) -> dict[str, Any]:
        response = await self.retrieve(query, **extra)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture(params=["embedded", "mongo"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], GraphStore]:
    """The embedded SQLite store, or MongoStore on the real MongoDB-wire server."""
    if request.param == "embedded":
        return lambda: EmbeddedStore(tmp_path / "graph")
    port = request.getfixturevalue("mongo_server").port
    return lambda: MongoStore(f"mongodb://127.0.0.1:{port}/rolloutd_test", timeout=1.0)


@pytest.fixture
async def rig(tmp_path: Path, make_store: Callable[[], GraphStore], redis_server: Any) -> AsyncIterator[Rig]:
    """The public app over an open retriever (Redis cache) holding MEMORIES, every flag on for QA."""
    registry = CollectorRegistry()
    retriever = build(tmp_path, store=make_store(), cache=RedisCache(redis_server.url), registry=registry)
    holder: dict[str, Rig] = {}
    routes = retrieval_routes(retriever, lambda: holder["rig"].flags, lambda: NOW)
    app = build_public_app(lambda: holder["rig"].flags, lambda: NOW, CollectorRegistry(), Readiness(), routes)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rolloutd") as client:
        holder["rig"] = Rig(client, registry, flagset(ALL))
        await retriever.open()
        try:
            response = await client.post("/v1/memories:batch", json={"memories": MEMORIES})
            assert response.status_code == 201, response.text
            yield holder["rig"]
        finally:
            await retriever.close()


def ids(body: dict[str, Any]) -> list[str]:
    return [r["id"] for r in body["results"]]


# --- 400: malformed legs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "legs",
    ["lexical", [], ["bm25"], ["lexical", "lexical"], [1], {"lexical": True}, ["Lexical"], [["vector"]], True],
    ids=["string", "empty", "unknown", "duplicate", "number", "object", "wrong-case", "nested", "bool"],
)
async def test_malformed_legs_are_a_400_naming_the_field(rig: Rig, legs: object) -> None:
    """`legs` that is not a non-empty list of distinct known leg names: 400, field "legs", nothing run."""
    response = await rig.retrieve(legs=legs)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["field"] == "legs" and "legs must" in body["error"]
    assert sample(rig.registry, "hybrid_rag_queries_total", path="hybrid") == 0


# --- 403: a leg the caller's path does not grant ----------------------------------------------


@pytest.mark.parametrize(
    ("on", "legs", "refused"),
    [
        ({VECTOR: True}, ["lexical"], "lexical"),
        ({VECTOR: True}, ["graph"], "graph"),
        ({VECTOR: True, HYBRID: True}, ["vector", "lexical"], "lexical"),
        ({GRAPH: True}, ["vector"], "vector"),
        ({GRAPH: True}, ["lexical"], "lexical"),
        ({GRAPH: True, HYBRID: True}, ["graph", "lexical"], "lexical"),
    ],
    ids=[
        "vector-asks-lexical",
        "vector-asks-graph",
        "vector-asks-both",
        "graph-asks-vector",
        "graph-asks-lexical",
        "graph-asks-both",
    ],
)
async def test_a_leg_the_callers_flags_do_not_grant_is_a_403_naming_the_field(
    rig: Rig, on: dict[str, bool], legs: list[str], refused: str
) -> None:
    """A caller whose flags give it the vector or the graph path asking for another leg: 403,
    field "legs", the refused leg and the flags named; its own leg alone is served."""
    rig.flags = flagset({**on, CACHE: True})
    response = await rig.retrieve(legs=legs)
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["field"] == "legs" and f"leg(s) {refused} not rolled out" in body["error"]
    assert body["flags"] == {name: on.get(name, False) or name == CACHE for name in GATING_FLAGS}
    own = "vector" if on.get(VECTOR) else "graph"
    allowed = await rig.answer(legs=[own])
    assert allowed["path"] == own and allowed["results"]
    assert sample(rig.registry, "hybrid_rag_queries_total", path=refused) == 0


async def test_a_caller_outside_the_rollout_is_refused_whatever_legs_it_names(rig: Rig) -> None:
    """An agent outside the cohort naming a leg gets the not-rolled-out 403, not a legs one."""
    response = await rig.client.post("/v1/retrieve", json={"agent": "Legal", "query": QUERY, "legs": ["lexical"]})
    assert response.status_code == 403
    assert "field" not in response.json() and response.json()["flags"] == dict.fromkeys(GATING_FLAGS, False)


# --- 200: one leg at a time on the hybrid path -----------------------------------------------


@pytest.mark.parametrize("leg", LEGS)
async def test_each_single_leg_answers_alone_and_is_cached_apart(rig: Rig, leg: str) -> None:
    """On the hybrid path `legs: [leg]` answers on that leg's path with only its ranks set; the
    cached hybrid answer is not served for it, and its own answer is cached (real Redis)."""
    hybrid = await rig.answer()
    assert hybrid["path"] == "hybrid" and hybrid["cache"] == "miss"
    assert all(set(r["ranks"]) == set(LEGS) for r in hybrid["results"])
    assert any(r["ranks"]["lexical"] is not None for r in hybrid["results"])

    alone = await rig.answer(legs=[leg])
    assert alone["path"] == leg and alone["cache"] == "miss" and alone["degraded"] is False
    assert alone["results"], f"the {leg} leg found nothing for {QUERY!r}"
    for result in alone["results"]:
        assert result["ranks"] == {name: result["ranks"][leg] if name == leg else None for name in LEGS}
    assert [r["ranks"][leg] for r in alone["results"]] == list(range(1, len(alone["results"]) + 1))
    again = await rig.answer(legs=[leg])
    assert again["cache"] == "hit" and again["results"] == alone["results"]
    assert (await rig.answer())["cache"] == "hit"  # the hybrid entry is still there, apart


async def test_leg_sets_reporting_the_same_path_are_cached_apart(rig: Rig) -> None:
    """`["vector"]` and `["vector", "lexical"]` both answer on the vector path, as `["graph",
    "lexical"]` and every leg both answer on hybrid: each is its own cache entry (real Redis)."""
    for narrow, wide, path in ((["vector"], ["vector", "lexical"], "vector"), (["lexical", "graph"], None, "hybrid")):
        first = await rig.answer(legs=narrow)
        other = await rig.answer(legs=wide) if wide else await rig.answer()
        assert (first["path"], other["path"]) == (path, path)
        assert (first["cache"], other["cache"]) == ("miss", "miss"), (narrow, wide)
        asked = set(wide or LEGS)
        assert {leg for r in other["results"] for leg, rank in r["ranks"].items() if rank is not None} == asked
        assert (await rig.answer(legs=narrow))["results"] == first["results"]


async def test_the_lexical_leg_finds_the_rare_code_first(rig: Rig) -> None:
    """`legs: ["lexical"]` puts the memory holding a rare code first, above look-alike notes."""
    body = await rig.answer("the incident on the payments service with batch QX-5521", legs=["lexical"], top_k=5)
    assert ids(body)[0] == "batch" and body["results"][0]["ranks"]["lexical"] == 1


async def test_a_delete_reaches_a_cached_lexical_answer(rig: Rig) -> None:
    """A lexical-only answer cached in Redis holding a memory: after DELETE the same request is a
    miss without it, even asked with the memory's exact text."""
    text = BATCH_TEXT
    first, cached = await rig.answer(text, legs=["lexical"]), await rig.answer(text, legs=["lexical"])
    assert (first["cache"], cached["cache"]) == ("miss", "hit") and ids(cached)[0] == "batch"
    assert (await rig.client.delete("/v1/memories/batch")).status_code == 204
    after = await rig.answer(text, legs=["lexical"])
    assert after["cache"] == "miss" and "batch" not in ids(after)


# --- the document ---------------------------------------------------------------------------


async def test_openapi_documents_legs(rig: Rig) -> None:
    """`GET /openapi.json` describes `legs`: a non-empty array of distinct leg names, and the 403."""
    response = await rig.client.get("/openapi.json")
    assert response.status_code == 200
    operation = response.json()["paths"]["/v1/retrieve"]["post"]
    legs = operation["requestBody"]["content"]["application/json"]["schema"]["properties"]["legs"]
    assert legs["type"] == "array" and legs["items"] == {"enum": list(LEGS)}
    assert (legs["minItems"], legs["maxItems"], legs["uniqueItems"]) == (1, 3, True)
    assert "granted" in legs["description"]
    assert {"400", "403"} <= set(operation["responses"])
    path = operation["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["path"]
    assert "lexical" in path["enum"]
