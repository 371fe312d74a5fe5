"""The retrieval endpoints on the daemon's public listener.

    POST   /v1/retrieve          {"agent", "query", "top_k": 10, "namespace": "default",
                                  "targetingKey"?, "context"?: {...}, "legs"?: ["vector", "lexical", "graph"]}
                                 → 200 {"results": [{"id", "score", "text", "ranks"}], "path",
                                        "cache", "degraded", "latency_ms"[, "reasons"]}
    POST   /v1/memories          {"id"?, "text", "namespace": "default", "links": [], "metadata": {}}
                                 → 201 {"id"}
    POST   /v1/memories:batch    {"memories": [...]} (at most 1000, one atomic write) → 201 {"ids"}
    DELETE /v1/memories/{id}?namespace=default → 204, or 404

The caller's flags decide the path (`retrieval.gating`): the context is `targetingKey`
(default: the agent name) + `agent` + any `context` attributes. Errors are JSON
`{"error": "...", "field": "..."}`:

    400  malformed body, a field of the wrong type or out of range (the field is named)
    403  no retrieval flag is on for this caller (the flags are listed), or `legs` names a leg
         its path does not grant (hybrid grants all three; vector and graph their own)
    404  DELETE of a memory that does not exist
    409  two memories hash to one key (rename one)
    413  body too large
    403  ... or a write to the reserved namespace `rolloutd-validation`
    422  links to memories that do not exist in the namespace ("missing" lists them)
    503  emergency shutdown is on; the retriever is loading; the graph store is down (writes);
         no source could answer -- with Retry-After where waiting helps
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from flags.evaluate import FlagSet
from flags.request_json import RequestRejected, read_json
from retrieval.gating import route_for
from retrieval.graph_store import KeyCollision, StoreUnavailable, UnknownLinks
from retrieval.memory import InvalidMemory, Memory, new_memory_id, validate_id, validate_namespace, validate_text
from retrieval.retriever import MAX_TOP_K, NotReady, RetrievalFailed, Retriever
from retrieval.search import LEGS

log = structlog.get_logger("rolloutd.retrieval")

MAX_QUERY_CHARS = 4096
MAX_BATCH = 1000
MAX_BODY = 1 << 20  # one memory: 32 KiB of text, 16 KiB of metadata, 256 links
MAX_BATCH_BODY = 64 << 20
RESERVED_NAMESPACES = ("rolloutd-validation",)  # the daemon's own ground truth (retrieval.validation)
RETRIEVE_FIELDS = {"agent", "query", "top_k", "namespace", "targetingKey", "context", "legs"}
MEMORY_FIELDS = {"id", "text", "namespace", "links", "metadata"}
Handler = Callable[[Request], Awaitable[Response]]


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.field, self.extra = status, field, extra

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"error": str(self)}
        if self.field is not None:
            body["field"] = self.field
        extra = dict(self.extra)
        retry_after = extra.pop("retry_after", None)
        body.update(extra)
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        return JSONResponse(body, status_code=self.status, headers=headers)


def retrieval_routes(
    retriever: Retriever, snapshot: Callable[[], FlagSet], clock: Callable[[], datetime]
) -> list[Route]:
    def guarded(handler: Handler) -> Handler:
        async def wrapped(request: Request) -> Response:
            try:
                if snapshot().kill_switch:
                    raise ApiError(
                        503,
                        "emergency shutdown is on: retrieval refuses requests until an operator "
                        "clears it (`rolloutctl resume --clear-emergency`)",
                    )
                return await handler(request)
            except ApiError as exc:
                return exc.response()
            except RequestRejected as exc:
                return ApiError(exc.status, exc.problem, exc.field).response()
            except InvalidMemory as exc:
                return ApiError(400, exc.problem, exc.field).response()
            except NotReady as exc:
                return ApiError(503, str(exc), retry_after=2).response()
            except UnknownLinks as exc:
                return ApiError(422, str(exc), "links", missing=list(exc.missing)).response()
            except KeyCollision as exc:
                return ApiError(409, str(exc), "id").response()
            except StoreUnavailable as exc:
                return ApiError(503, str(exc), retry_after=5).response()
            except RetrievalFailed as exc:
                return ApiError(503, f"no retrieval source answered: {exc}", retry_after=1).response()

        return wrapped

    @guarded
    async def retrieve(request: Request) -> Response:
        body = await _body(request, MAX_BODY)
        _no_unknown(body, RETRIEVE_FIELDS)
        agent = _string(body, "agent", required=True, limit=128)
        query = _string(body, "query", required=True, limit=MAX_QUERY_CHARS)
        namespace = validate_namespace(body.get("namespace", "default"))
        top_k = body.get("top_k", 10)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            raise ApiError(400, f"top_k must be a whole number from 1 to {MAX_TOP_K}, got {top_k!r}", "top_k")
        legs = _legs(body)
        context = _context(body, agent)
        route = route_for(snapshot(), context, clock())
        if route.path is None:
            raise ApiError(
                403,
                f"retrieval is not rolled out to this caller (agent {agent!r}, targetingKey "
                f"{context['targetingKey']!r}): every retrieval flag is off for it",
                flags=dict(route.flags),
            )
        outside = route.refused(legs or ())
        if outside:
            raise ApiError(
                403,
                f"leg(s) {', '.join(outside)} not rolled out to this caller: its flags grant the {route.path} "
                f"path, legs {', '.join(route.sources)}",
                "legs",
                flags=dict(route.flags),
            )
        answer = await retriever.retrieve(query, namespace, top_k, route, legs=legs)
        return JSONResponse(answer.to_dict())

    @guarded
    async def add_one(request: Request) -> Response:
        body = await _body(request, MAX_BODY)
        memory = _memory(body, "")
        await retriever.add([memory])
        return JSONResponse({"id": memory.id}, status_code=201)

    @guarded
    async def add_batch(request: Request) -> Response:
        body = await _body(request, MAX_BATCH_BODY)
        _no_unknown(body, {"memories"})
        items = body.get("memories")
        if not isinstance(items, list) or not items:
            raise ApiError(400, "memories must be a non-empty list of memory objects", "memories")
        if len(items) > MAX_BATCH:
            raise ApiError(413, f"{len(items)} memories in one batch; send at most {MAX_BATCH} a request", "memories")
        memories = [_memory(item, f"memories[{n}].") for n, item in enumerate(items)]
        ids = await retriever.add(memories)
        return JSONResponse({"ids": ids}, status_code=201)

    @guarded
    async def delete(request: Request) -> Response:
        memory_id = validate_id(request.path_params["memory_id"])
        namespace = _writable(validate_namespace(request.query_params.get("namespace", "default")), "namespace")
        if not await retriever.delete(namespace, memory_id):
            raise ApiError(404, f"no memory {memory_id!r} in namespace {namespace!r}", "id")
        return Response(status_code=204)

    return [
        Route("/v1/retrieve", retrieve, methods=["POST"]),
        Route("/v1/memories", add_one, methods=["POST"]),
        Route("/v1/memories:batch", add_batch, methods=["POST"]),
        Route("/v1/memories/{memory_id:path}", delete, methods=["DELETE"]),
    ]


async def _body(request: Request, limit: int) -> dict[str, Any]:
    body = await read_json(request, limit, empty={})
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def _no_unknown(body: dict[str, Any], known: set[str], prefix: str = "") -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]!r}; known: {', '.join(sorted(known))}", prefix + unknown[0])


def _string(body: dict[str, Any], field: str, *, required: bool, limit: int) -> str:
    value = body.get(field)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, f"{field} must be a non-empty string", field)
    if len(value) > limit:
        raise ApiError(400, f"{field} is {len(value)} characters; at most {limit}", field)
    return value


def _legs(body: dict[str, Any]) -> list[str] | None:
    """The legs a caller narrowed the answer to (`None`: every leg its path grants)."""
    if "legs" not in body:
        return None
    legs = body["legs"]
    if not isinstance(legs, list) or not legs or not all(isinstance(leg, str) for leg in legs):
        raise ApiError(400, f"legs must be a non-empty list of {', '.join(LEGS)}", "legs")
    unknown = [leg for leg in legs if leg not in LEGS]
    if unknown or len(set(legs)) != len(legs):
        raise ApiError(400, f"legs must name each of {', '.join(LEGS)} at most once, got {legs!r}"[:300], "legs")
    return legs


def _context(body: dict[str, Any], agent: str) -> dict[str, Any]:
    extra = body.get("context", {})
    if not isinstance(extra, dict) or not all(
        isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in extra.values()
    ):
        raise ApiError(400, "context must be an object of string or number attributes", "context")
    key = body.get("targetingKey", agent)
    if not isinstance(key, str) or not key:
        raise ApiError(400, "targetingKey must be a non-empty string (default: the agent name)", "targetingKey")
    return {**extra, "agent": agent, "targetingKey": key}


def _writable(namespace: str, field: str) -> str:
    if namespace in RESERVED_NAMESPACES:
        raise ApiError(
            403,
            f"namespace {namespace!r} is reserved for the daemon's ground-truth validation set; "
            "write your memories to another namespace",
            field,
        )
    return namespace


def _memory(raw: Any, prefix: str) -> Memory:
    if not isinstance(raw, dict):
        raise ApiError(400, "a memory must be a JSON object", prefix.rstrip(".") or None)
    _no_unknown(raw, MEMORY_FIELDS, prefix)
    links = raw.get("links", [])
    if not isinstance(links, list):
        raise ApiError(400, "links must be a list of memory ids", prefix + "links")
    metadata = raw.get("metadata", {})
    try:
        namespace = _writable(validate_namespace(raw.get("namespace", "default")), prefix + "namespace")
        return Memory(
            id=raw["id"] if "id" in raw else new_memory_id(),
            namespace=namespace,
            text=validate_text(raw.get("text")),
            links=tuple(links),
            metadata=metadata,
        )
    except InvalidMemory as exc:
        raise ApiError(400, exc.problem, prefix + exc.field) from None
