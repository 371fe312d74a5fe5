"""The public HTTP API (OFREP, retrieval, health, metrics) as an OpenAPI 3.1 document.

Served at `GET /openapi.json` on `[daemon] listen`; the admin socket's own document is
`controller/host/openapi_admin.py`. Limits come from the modules that enforce them, so the
document cannot drift from the code on a number; `tests/test_openapi.py` checks that
every route the daemon serves is described and nothing else, and the fuzz suite
(`tests/test_fuzz_http.py`) drives a real daemon from these documents.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from flags.ofrep import MAX_BODY as OFREP_MAX_BODY
from flags.request_json import MAX_DEPTH
from retrieval.http_api import MAX_BATCH, MAX_BATCH_BODY, MAX_BODY, MAX_QUERY_CHARS
from retrieval.memory import ID_PATTERN, MAX_LINKS, NAMESPACE_PATTERN
from retrieval.retriever import MAX_TOP_K
from retrieval.search import LEGS

Schema = dict[str, Any]
VERSION = "1"

ERROR: Schema = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}, "field": {"type": "string"}},
}
OFREP_FAILURE: Schema = {
    "type": "object",
    "required": ["errorCode"],
    "properties": {
        "key": {"type": "string"},
        "errorCode": {"enum": ["PARSE_ERROR", "TARGETING_KEY_MISSING", "INVALID_CONTEXT", "GENERAL", "FLAG_NOT_FOUND"]},
        "errorDetails": {"type": "string"},
    },
}
OFREP_SUCCESS: Schema = {
    "type": "object",
    "required": ["key", "value", "reason", "variant"],
    "properties": {
        "key": {"type": "string"},
        "value": {"type": "boolean"},
        "reason": {"type": "string"},
        "variant": {"enum": ["on", "off"]},
        "metadata": {"type": "object"},
    },
}
CONTEXT: Schema = {
    "type": ["object", "null"],
    "additionalProperties": True,
    "description": f"OpenFeature evaluation context: `targetingKey`, `agent` and any attributes; JSON nested at "
    f"most {MAX_DEPTH} levels, no lone surrogates, integers within 64 bits",
    "properties": {"targetingKey": {"type": ["string", "null"], "description": "null: none given"}},
}
MEMORY: Schema = {
    "type": "object",
    "required": ["text"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "pattern": f"^{ID_PATTERN.pattern}$"},
        "text": {"type": "string", "minLength": 1, "description": "at most 32 KiB of UTF-8"},
        "namespace": {"type": "string", "pattern": f"^{NAMESPACE_PATTERN.pattern}$", "default": "default"},
        "links": {
            "type": "array",
            "maxItems": MAX_LINKS,
            "items": {"type": "string", "pattern": f"^{ID_PATTERN.pattern}$"},
        },
        "metadata": {"type": "object", "description": "plain JSON, at most 16 KiB; keys without '$', '.' or NUL"},
    },
}


def json_body(schema: Schema, limit: int, *, required: bool = True) -> Schema:
    return {
        "required": required,
        "description": f"JSON, at most {limit:,} bytes (413 past it)",
        "content": {"application/json": {"schema": schema}},
    }


def answer(description: str, schema: Schema | None = None, media: str = "application/json") -> Schema:
    out: Schema = {"description": description}
    if schema is not None:
        out["content"] = {media: {"schema": schema}}
    return out


def errors(*statuses: int, schema: Schema = ERROR) -> dict[str, Schema]:
    texts = {
        400: "malformed body or a field out of range (the field is named)",
        403: "refused for this caller",
        404: "not found",
        409: "conflict",
        413: "body over the limit",
        422: "links to missing memories",
        503: "emergency shutdown on, loading, or a store down (Retry-After when waiting helps)",
    }
    return {str(s): answer(texts[s], schema) for s in statuses}


def _ofrep() -> dict[str, Schema]:
    # an empty body is an empty context
    request = json_body({"type": "object", "properties": {"context": CONTEXT}}, OFREP_MAX_BODY, required=False)
    return {
        "/ofrep/v1/evaluate/flags/{key}": {
            "post": {
                "summary": "evaluate one flag (OFREP)",
                "operationId": "ofrepEvaluateFlag",
                "parameters": [{"name": "key", "in": "path", "required": True, "schema": {"type": "string"}}],
                "requestBody": request,
                "responses": {
                    "200": answer("the flag's value for the context", OFREP_SUCCESS),
                    **errors(400, 404, 413, schema=OFREP_FAILURE),
                },
            }
        },
        "/ofrep/v1/evaluate/flags": {
            "post": {
                "summary": "evaluate every flag (OFREP bulk)",
                "operationId": "ofrepEvaluateFlags",
                "parameters": [
                    {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}}
                ],
                "requestBody": request,
                "responses": {
                    "200": answer(
                        "every flag",
                        {
                            "type": "object",
                            "required": ["flags"],
                            "properties": {
                                "flags": {"type": "array", "items": {"anyOf": [OFREP_SUCCESS, OFREP_FAILURE]}}
                            },
                        },
                    ),
                    "304": answer("unchanged since the ETag given"),
                    **errors(400, 413, schema=OFREP_FAILURE),
                },
            }
        },
        "/ofrep/v1/configuration": {
            "get": {
                "summary": "OFREP capabilities",
                "operationId": "ofrepConfiguration",
                "responses": {"200": answer("capabilities", {"type": "object", "required": ["capabilities"]})},
            }
        },
    }


def _retrieval() -> dict[str, Schema]:
    retrieve = {
        "type": "object",
        "required": ["agent", "query"],
        "additionalProperties": False,
        "properties": {
            "agent": {"type": "string", "minLength": 1, "maxLength": 128},
            "query": {"type": "string", "minLength": 1, "maxLength": MAX_QUERY_CHARS},
            "top_k": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K, "default": 10},
            "namespace": MEMORY["properties"]["namespace"],
            "targetingKey": {"type": "string", "minLength": 1},
            "context": {"type": "object", "additionalProperties": {"type": ["string", "number"]}},
            "legs": {
                "type": "array",
                "minItems": 1,
                "maxItems": len(LEGS),
                "uniqueItems": True,
                "items": {"enum": list(LEGS)},
                "description": "run only these legs (each must be granted by the caller's path; default: all it grants)",
            },
        },
    }
    result = {"type": "object", "required": ["id", "score", "text", "ranks"]}
    return {
        "/v1/retrieve": {
            "post": {
                "summary": "hybrid retrieval, gated by the caller's flags",
                "operationId": "retrieve",
                "requestBody": json_body(retrieve, MAX_BODY),
                "responses": {
                    "200": answer(
                        "the results",
                        {
                            "type": "object",
                            "required": ["results", "path", "cache", "degraded", "latency_ms"],
                            "properties": {
                                "results": {"type": "array", "items": result},
                                "path": {"enum": ["hybrid", "vector", "graph", "lexical"]},
                                "cache": {"enum": ["hit", "miss", "bypass"]},
                                "degraded": {"type": "boolean"},
                            },
                        },
                    ),
                    **errors(400, 403, 413, 503),
                },
            }
        },
        "/v1/memories": {
            "post": {
                "summary": "add or replace one memory",
                "operationId": "addMemory",
                "requestBody": json_body(MEMORY, MAX_BODY),
                "responses": {
                    "201": answer("stored", {"type": "object", "required": ["id"]}),
                    **errors(400, 403, 409, 413, 422, 503),
                },
            }
        },
        "/v1/memories:batch": {
            "post": {
                "summary": "add or replace memories in one atomic write",
                "operationId": "addMemories",
                "requestBody": json_body(
                    {
                        "type": "object",
                        "required": ["memories"],
                        "additionalProperties": False,
                        "properties": {
                            "memories": {"type": "array", "minItems": 1, "maxItems": MAX_BATCH, "items": MEMORY}
                        },
                    },
                    MAX_BATCH_BODY,
                ),
                "responses": {
                    "201": answer("stored", {"type": "object", "required": ["ids"]}),
                    **errors(400, 403, 409, 413, 422, 503),
                },
            }
        },
        "/v1/memories/{memory_id}": {
            "delete": {
                "summary": "delete one memory",
                "operationId": "deleteMemory",
                "parameters": [
                    {"name": "memory_id", "in": "path", "required": True, "schema": MEMORY["properties"]["id"]},
                    {
                        "name": "namespace",
                        "in": "query",
                        "required": False,
                        "schema": MEMORY["properties"]["namespace"],
                    },
                ],
                "responses": {"204": answer("deleted"), **errors(400, 403, 404, 503)},
            }
        },
    }


def _service() -> dict[str, Schema]:
    return {
        "/metrics": {
            "get": {
                "summary": "Prometheus exposition",
                "operationId": "metrics",
                "responses": {"200": answer("metrics", {"type": "string"}, "text/plain")},
            }
        },
        "/healthz": {
            "get": {
                "summary": "liveness",
                "operationId": "healthz",
                "responses": {"200": answer("the event loop answers", {"type": "object"})},
            }
        },
        "/readyz": {
            "get": {
                "summary": "readiness",
                "operationId": "readyz",
                "responses": {
                    "200": answer("ready", {"type": "object"}),
                    "503": answer("not ready; problems named", {"type": "object"}),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "this document",
                "operationId": "openapi",
                "responses": {"200": answer("OpenAPI 3.1", {"type": "object"})},
            }
        },
    }


def public_document() -> Schema:
    """The public listener's API as an OpenAPI 3.1 document (a fresh dict each call)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "rolloutd public API",
            "version": VERSION,
            "description": "OFREP flag evaluation, the hybrid retriever, health and metrics.",
        },
        "paths": {**_ofrep(), **_retrieval(), **_service()},
    }


def document_route(path: str, document: Schema) -> Route:
    """`GET path` answering `document`."""

    async def serve(request: Request) -> Response:
        return JSONResponse(document)

    return Route(path, serve, methods=["GET"])
