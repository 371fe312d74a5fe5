"""The retrieval endpoints: gating by the caller's flags, validation naming the field,
503s (emergency, loading, store down), and the round trip add → retrieve → delete."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from flags.evaluate import FlagSet
from flags.model import KILL_SWITCH, Constraint, Flag, Operator
from retrieval.cache_memory import LocalCache
from retrieval.embedded_store import EmbeddedStore
from retrieval.embedder_hashing import HashingEmbedder
from retrieval.gating import CACHE, GRAPH, HYBRID, VECTOR, choose_route
from retrieval.http_api import retrieval_routes
from retrieval.retriever import Retriever

pytestmark = pytest.mark.anyio
NOW = datetime(2026, 1, 1, tzinfo=UTC)
COHORT = ("Builder", "Deploy", "QA")


def flagset(on: dict[str, bool], *, kill: bool = False, cohort: tuple[str, ...] = COHORT) -> FlagSet:
    """The gating flags, each enabled for the cohort when `on[name]`."""
    constraint = Constraint("agent", Operator.IN, cohort)
    flags = {
        name: Flag(name, enabled=on.get(name, False), constraints=(constraint,))
        for name in (HYBRID, VECTOR, GRAPH, CACHE)
    }
    flags[KILL_SWITCH] = Flag(KILL_SWITCH, enabled=kill)
    return FlagSet(flags)


class Rig:
    def __init__(self, retriever: Retriever, client: httpx.AsyncClient) -> None:
        self.retriever, self.client = retriever, client
        self.flags = flagset(dict.fromkeys((HYBRID, VECTOR, GRAPH, CACHE), True))

    async def post(self, path: str, body: object) -> httpx.Response:
        return await self.client.post(path, json=body)

    async def retrieve(self, query: str, agent: str = "QA", **extra: object) -> httpx.Response:
        return await self.post("/v1/retrieve", {"agent": agent, "query": query, **extra})


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    retriever = Retriever(EmbeddedStore(tmp_path), LocalCache(), HashingEmbedder(), tmp_path)
    holder: dict[str, Rig] = {}
    app = Starlette(routes=retrieval_routes(retriever, lambda: holder["rig"].flags, lambda: NOW))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rolloutd") as client:
        holder["rig"] = Rig(retriever, client)
        await retriever.open()
        yield holder["rig"]
        await retriever.close()


async def seed(rig: Rig) -> None:
    response = await rig.post(
        "/v1/memories:batch",
        {
            "memories": [
                {"id": "owner", "text": "Dana Okafor owns ledger-sync and signs off every change to it."},
                {
                    "id": "release",
                    "text": "Release R-4821 of ledger-sync shipped with batch retries.",
                    "links": ["owner"],
                },
                {"id": "incident", "text": "Incident INC-1307 was traced to release R-4821.", "links": ["release"]},
                {"id": "other", "text": "Incident INC-9999 was traced to a config typo.", "namespace": "team-b"},
            ]
        },
    )
    assert response.status_code == 201, response.text
    assert response.json() == {"ids": ["owner", "release", "incident", "other"]}


async def test_round_trip_hybrid_answer_in_the_contract_shape(rig: Rig) -> None:
    await seed(rig)
    response = await rig.retrieve("Who signs off the system behind incident INC-1307?", top_k=3)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"results", "path", "cache", "degraded", "latency_ms"}
    assert body["path"] == "hybrid" and body["cache"] == "miss" and body["degraded"] is False
    assert sorted(r["id"] for r in body["results"]) == ["incident", "owner", "release"]
    by_id = {r["id"]: r for r in body["results"]}
    assert set(by_id["owner"]) == {"id", "score", "text", "ranks"}
    assert (
        by_id["owner"]["ranks"]["graph"] == 3 and by_id["owner"]["ranks"]["vector"] is not None
    )  # one result, two ranks
    assert by_id["incident"]["text"].startswith("Incident INC-1307")
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)
    again = (await rig.retrieve("Who signs off the system behind incident INC-1307?", top_k=3)).json()
    assert again["cache"] == "hit" and again["results"] == body["results"]


async def test_the_callers_flags_choose_the_path(rig: Rig) -> None:
    await seed(rig)
    rig.flags = flagset({VECTOR: True})
    body = (await rig.retrieve("INC-1307")).json()
    assert body["path"] == "vector" and body["cache"] == "bypass"
    assert all(r["ranks"]["graph"] is None for r in body["results"])
    rig.flags = flagset({GRAPH: True, CACHE: True})
    body = (await rig.retrieve("INC-1307")).json()
    assert body["path"] == "graph" and body["cache"] == "miss"
    assert [r["id"] for r in body["results"]] == ["incident", "release", "owner"]
    # An agent outside the cohort has no flag on: 403, with the flags that said so.
    response = await rig.retrieve("INC-1307", agent="Legal")
    assert response.status_code == 403
    assert response.json()["flags"] == {HYBRID: False, VECTOR: False, GRAPH: False, CACHE: False}


async def test_namespaces_do_not_leak(rig: Rig) -> None:
    await seed(rig)
    body = (await rig.retrieve("Incident INC-9999 config typo")).json()
    assert "other" not in [r["id"] for r in body["results"]]
    body = (await rig.retrieve("Incident INC-9999 config typo", namespace="team-b")).json()
    assert [r["id"] for r in body["results"]] == ["other"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"agent": "QA", "query": ""}, "query"),
        ({"agent": "QA", "query": "   "}, "query"),
        ({"agent": "QA", "query": 42}, "query"),
        ({"agent": "QA", "query": "x" * 5000}, "query"),
        ({"query": "q"}, "agent"),
        ({"agent": "QA", "query": "q", "top_k": 0}, "top_k"),
        ({"agent": "QA", "query": "q", "top_k": 101}, "top_k"),
        ({"agent": "QA", "query": "q", "top_k": "10"}, "top_k"),
        ({"agent": "QA", "query": "q", "top_k": True}, "top_k"),
        ({"agent": "QA", "query": "q", "namespace": "no spaces"}, "namespace"),
        ({"agent": "QA", "query": "q", "context": {"tier": [1]}}, "context"),
        ({"agent": "QA", "query": "q", "targetingKey": 7}, "targetingKey"),
        ({"agent": "QA", "query": "q", "topk": 3}, "topk"),
    ],
)
async def test_bad_retrieve_requests_name_the_field(rig: Rig, body: dict, field: str) -> None:
    response = await rig.post("/v1/retrieve", body)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field


@pytest.mark.parametrize(
    "memory, field, status",
    [
        ({"text": ""}, "text", 400),
        ({"text": 7}, "text", 400),
        ({"text": "x" * (32 * 1024 + 1)}, "text", 400),
        ({"text": "t", "links": "a"}, "links", 400),
        ({"text": "t", "links": [1]}, "links", 400),
        ({"text": "t", "links": ["nobody"]}, "links", 422),
        ({"text": "t", "metadata": []}, "metadata", 400),
        ({"text": "t", "id": ""}, "id", 400),
        ({"text": "t", "colour": "red"}, "colour", 400),
    ],
)
async def test_bad_memories_name_the_field_and_write_nothing(rig: Rig, memory: dict, field: str, status: int) -> None:
    response = await rig.post("/v1/memories", memory)
    assert response.status_code == status, response.text
    assert response.json()["field"] == field
    batch = await rig.post("/v1/memories:batch", {"memories": [{"id": "fine", "text": "fine"}, memory]})
    assert batch.status_code == status and batch.json()["field"] in (f"memories[1].{field}", "links")
    assert rig.retriever.count() == 0


async def test_the_validation_namespace_is_not_writable(rig: Rig) -> None:
    response = await rig.post("/v1/memories", {"text": "t", "namespace": "rolloutd-validation"})
    assert response.status_code == 403 and response.json()["field"] == "namespace"
    response = await rig.post("/v1/memories:batch", {"memories": [{"text": "t", "namespace": "rolloutd-validation"}]})
    assert response.status_code == 403 and response.json()["field"] == "memories[0].namespace"
    response = await rig.client.delete("/v1/memories/owner-1?namespace=rolloutd-validation")
    assert response.status_code == 403


async def test_unknown_links_list_what_is_missing(rig: Rig) -> None:
    response = await rig.post("/v1/memories", {"id": "a", "text": "t", "links": ["x", "y"]})
    assert response.status_code == 422 and response.json()["missing"] == ["x", "y"]


async def test_not_json_and_oversized_bodies(rig: Rig) -> None:
    response = await rig.client.post("/v1/retrieve", content=b"{nope")
    assert response.status_code == 400 and "not JSON" in response.json()["error"]
    response = await rig.client.post("/v1/memories", content=b"[1]")
    assert response.status_code == 400
    response = await rig.client.post("/v1/memories", content=b"x" * (2 << 20))
    assert response.status_code == 413


async def test_delete_then_never_returned_even_from_the_cache(rig: Rig) -> None:
    await seed(rig)
    query = "Who signs off the system behind incident INC-1307?"
    assert "owner" in [r["id"] for r in (await rig.retrieve(query)).json()["results"]]
    assert (await rig.retrieve(query)).json()["cache"] == "hit"
    response = await rig.client.delete("/v1/memories/owner")
    assert response.status_code == 204
    body = (await rig.retrieve(query)).json()
    assert body["cache"] == "miss" and "owner" not in [r["id"] for r in body["results"]]
    assert (await rig.client.delete("/v1/memories/owner")).status_code == 404
    assert (await rig.client.delete("/v1/memories/other")).status_code == 404  # lives in team-b
    assert (await rig.client.delete("/v1/memories/other?namespace=team-b")).status_code == 204


async def test_emergency_shutdown_refuses_everything(rig: Rig) -> None:
    await seed(rig)
    rig.flags = flagset(dict.fromkeys((HYBRID, VECTOR, GRAPH, CACHE), True), kill=True)
    for response in (
        await rig.retrieve("INC-1307"),
        await rig.post("/v1/memories", {"text": "t"}),
        await rig.client.delete("/v1/memories/owner"),
    ):
        assert response.status_code == 503 and "emergency shutdown" in response.json()["error"]
    assert rig.retriever.count() == 4


async def test_loading_is_a_503_with_retry_after(tmp_path: Path) -> None:
    retriever = Retriever(EmbeddedStore(tmp_path), LocalCache(), HashingEmbedder(), tmp_path)
    flags = flagset(dict.fromkeys((HYBRID, VECTOR, GRAPH), True))
    app = Starlette(routes=retrieval_routes(retriever, lambda: flags, lambda: NOW))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rolloutd") as client:
        response = await client.post("/v1/retrieve", json={"agent": "QA", "query": "q"})
    assert response.status_code == 503 and response.headers["retry-after"] == "2"
    assert "loading" in response.json()["error"]


def test_route_table() -> None:
    assert choose_route({HYBRID: True, VECTOR: True, GRAPH: True}).path == "hybrid"
    assert choose_route({HYBRID: True, VECTOR: True}).path == "vector"
    assert choose_route({HYBRID: True, GRAPH: True}).path == "graph"
    assert choose_route({VECTOR: True, GRAPH: True}).path == "vector"
    assert choose_route({HYBRID: True}).path is None
    assert choose_route({CACHE: True}).cache and choose_route({CACHE: True}).path is None
