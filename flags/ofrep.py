"""The OpenFeature Remote Evaluation Protocol (OFREP) over Starlette.

    POST /ofrep/v1/evaluate/flags/{key}   one flag    200 | 400 | 404
    POST /ofrep/v1/evaluate/flags         every flag  200 (ETag) | 304 | 400
    GET  /ofrep/v1/configuration          capabilities (polling for the bulk endpoint)

The request body is ``{"context": {"targetingKey": ..., "agent": ..., ...}}``, at most
MAX_BODY bytes (413 past it) and read through `flags.request_json` (no lone surrogates,
no nesting past its depth limit, 64-bit integers). Errors use the protocol's codes:
PARSE_ERROR (body not JSON, too deep, too large), INVALID_CONTEXT (context not an object,
a targetingKey that is not a string, a value no hash may be given), TARGETING_KEY_MISSING
(a percentage flag needs one), FLAG_NOT_FOUND (404).

OpenFeature's reasons are a closed set in several SDKs (the Python OFREP provider
does ``Reason[reason]``), so the kill switch answers DISABLED and says why in the
metadata: ``{"disabledBy": "emergency_shutdown"}``.

The bulk ETag is a digest of the response body itself, not of the flags' revision:
a progressive flag's percentage moves with time while the file stays the same, and
a client must see that change.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from flags.evaluate import ErrorCode, FlagSet, Reason, Resolution
from flags.model import KILL_SWITCH
from flags.request_json import RequestRejected, read_json

Snapshot = Callable[[], FlagSet]
Clock = Callable[[], datetime]
POLL_INTERVAL_MS = 30_000
MAX_BODY = 1 << 20  # an evaluation context; the same bound as one memory on /v1/memories


class _BadRequest(Exception):
    def __init__(self, code: ErrorCode, details: str, status: int = 400) -> None:
        self.code = code
        self.details = details
        self.status = status


def ofrep_routes(snapshot: Snapshot, clock: Clock) -> list[Route]:
    """The OFREP routes, reading flags from `snapshot()` at the time `clock()` gives."""

    async def evaluate_one(request: Request) -> Response:
        key = request.path_params["key"]
        try:
            context = await _read_context(request)
        except _BadRequest as bad:
            return _json({"key": key, "errorCode": bad.code, "errorDetails": bad.details}, bad.status)
        flags = snapshot()
        resolution = flags.evaluate(key, context, clock())
        if resolution.error is ErrorCode.FLAG_NOT_FOUND:
            return _json(_failure(resolution), 404)
        if resolution.error is not None:
            return _json(_failure(resolution), 400)
        return _json(_success(resolution, flags, clock()), 200)

    async def evaluate_bulk(request: Request) -> Response:
        try:
            context = await _read_context(request)
        except _BadRequest as bad:
            return _json({"errorCode": bad.code, "errorDetails": bad.details}, bad.status)
        flags = snapshot()
        now = clock()
        items = [_failure(r) if r.error else _success(r, flags, now) for r in flags.evaluate_all(context, now)]
        body = json.dumps({"flags": items}, separators=(",", ":")).encode()
        etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
        wanted = _etags(request.headers.get("if-none-match", ""))
        if etag in wanted or "*" in wanted:
            return Response(status_code=304, headers={"ETag": etag})
        return Response(body, 200, media_type="application/json", headers={"ETag": etag})

    async def configuration(request: Request) -> Response:
        return _json(
            {
                "name": "rolloutd",
                "capabilities": {
                    "cacheInvalidation": {"polling": {"enabled": True, "minPollingIntervalMs": POLL_INTERVAL_MS}},
                    "flagEvaluation": {"supportedTypes": ["boolean"]},
                },
            },
            200,
        )

    return [
        Route("/ofrep/v1/evaluate/flags/{key:path}", evaluate_one, methods=["POST"]),
        Route("/ofrep/v1/evaluate/flags", evaluate_bulk, methods=["POST"]),
        Route("/ofrep/v1/configuration", configuration, methods=["GET"]),
    ]


async def _read_context(request: Request) -> dict[str, Any]:
    try:
        body = await read_json(request, MAX_BODY, empty={})
    except RequestRejected as exc:
        code = ErrorCode.INVALID_CONTEXT if exc.field else ErrorCode.PARSE_ERROR
        raise _BadRequest(code, exc.problem, exc.status) from None
    if not isinstance(body, dict):
        raise _BadRequest(ErrorCode.INVALID_CONTEXT, 'request body must be an object like {"context": {...}}')
    context = body.get("context", {})
    if context is None:
        return {}
    if not isinstance(context, dict):
        raise _BadRequest(ErrorCode.INVALID_CONTEXT, f"context must be an object, got {type(context).__name__}")
    key = context.get("targetingKey")
    if key is not None and not isinstance(key, str):
        raise _BadRequest(ErrorCode.INVALID_CONTEXT, f"targetingKey must be a string, got {type(key).__name__}")
    return context


def _success(resolution: Resolution, flags: FlagSet, now: datetime) -> dict[str, Any]:
    flag = flags.flags[resolution.key]
    metadata: dict[str, Any] = {"percentage": round(flag.percentage_at(now), 4)}
    reason = resolution.reason
    if reason is Reason.KILL_SWITCH:
        reason = Reason.DISABLED
        metadata["disabledBy"] = KILL_SWITCH
    return {
        "key": resolution.key,
        "value": resolution.value,
        "reason": str(reason),
        "variant": resolution.variant,
        "metadata": metadata,
    }


def _failure(resolution: Resolution) -> dict[str, Any]:
    return {"key": resolution.key, "errorCode": str(resolution.error), "errorDetails": resolution.detail}


def _etags(header: str) -> set[str]:
    tags = {t.strip() for t in header.split(",") if t.strip()}
    return tags | {t[2:] for t in tags if t.startswith("W/")}


def _json(body: Mapping[str, Any], status: int) -> Response:
    return JSONResponse(body, status_code=status)
