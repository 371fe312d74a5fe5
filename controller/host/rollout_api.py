"""The rollout's part of the admin API (unix socket), used by `rolloutctl`.

    GET  /v1/rollout                  status: phase, stage, next transition, every guard
    GET  /v1/rollout/journal          decisions, oldest first (?since=SEQ&limit=N, or ?before=SEQ to page back)
    GET  /v1/rollout/observations     guard observations, oldest first (?since=SEQ&limit=N&guard=NAME)
    POST /v1/rollout/{command}        hold | resume | approve | promote | rollback
                                      {"reason", "actor", "to" (rollback), "clear_emergency" (resume)}
    GET  /v1/reports                  checkpoint reports written so far
    GET  /v1/reports/{name}           one report

A command that does not apply in the current phase is a 409 with the reason; a daemon
running without a plan answers 409 on all of these, naming the setting.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from controller.errors import CommandRefused
from controller.host.admin_api import BadRequest, actor_of, body_of, guarded, reason_of
from controller.service import COMMANDS, Controller

NO_PLAN = "this daemon runs no rollout: set [daemon] plan in its config and restart it"
NEEDS_REASON = ("hold", "rollback")
MAX_OBSERVATIONS = 10_000  # rows per request


def rollout_routes(controller: Controller | None, on_change: Callable[[], None] = lambda: None) -> list[Route]:
    def need() -> Controller:
        if controller is None:
            raise CommandRefused(NO_PLAN)
        return controller

    async def status(request: Request) -> Response:
        return JSONResponse(need().status())

    async def journal(request: Request) -> Response:
        since, limit = _int(request, "since", 0), _int(request, "limit", 100)
        before = _int(request, "before", 0)
        return JSONResponse({"decisions": need().journal(limit=limit, since_seq=since, before_seq=before)})

    async def observations(request: Request) -> Response:
        since, limit = _int(request, "since", 0), _int(request, "limit", 1000)
        if not 1 <= limit <= MAX_OBSERVATIONS:
            raise BadRequest(f"limit must be 1 to {MAX_OBSERVATIONS}, got {limit}; page on with ?since=SEQ")
        guard = request.query_params.get("guard")  # a guard a reloaded plan dropped still has its history
        if guard is not None and not guard.strip():
            raise BadRequest("guard must name a guard, got an empty value")
        read = partial(need().observations, since_seq=since, limit=limit, guard=guard)
        return JSONResponse({"observations": await anyio.to_thread.run_sync(read)})  # ~10 ms a 5000-row page

    async def command(request: Request) -> Response:
        name = request.path_params["command"]
        if name not in COMMANDS:
            raise BadRequest(f"unknown command {name!r}; commands: {', '.join(COMMANDS)}")
        body = await body_of(request)
        reason = reason_of(body) if name in NEEDS_REASON else _optional_text(body, "reason")
        to = body.get("to")
        if name != "rollback" and to is not None:
            raise BadRequest(f'"to" is for rollback only; {name} takes no stage')
        if name == "rollback" and (isinstance(to, bool) or not isinstance(to, int)):
            raise BadRequest(f'rollback needs "to": a stage index (0 for the first stage, -1 for none), got {to!r}')
        clear = body.get("clear_emergency", False)
        if not isinstance(clear, bool):
            raise BadRequest(f"clear_emergency must be true or false, got {clear!r}")
        decisions = await need().command(name, reason=reason, actor=actor_of(body), to_stage=to, clear_emergency=clear)
        on_change()
        return JSONResponse({"decisions": [d.to_dict() for d in decisions], "status": need().status()})

    async def reports(request: Request) -> Response:
        return JSONResponse({"reports": [p.name for p in need().reports()]})

    async def report(request: Request) -> Response:
        name = request.path_params["name"]
        for path in need().reports():
            if path.name == name or path.stem == name:
                return JSONResponse(json.loads(path.read_text()))
        return JSONResponse({"error": f"no report {name!r}; `rolloutctl report` lists them"}, status_code=404)

    return [
        Route("/v1/rollout", refusing(status), methods=["GET"]),
        Route("/v1/rollout/journal", refusing(journal), methods=["GET"]),
        Route("/v1/rollout/observations", refusing(observations), methods=["GET"]),
        Route("/v1/rollout/{command}", refusing(command), methods=["POST"]),
        Route("/v1/reports", refusing(reports), methods=["GET"]),
        Route("/v1/reports/{name}", refusing(report), methods=["GET"]),
    ]


def refusing(handler: Any) -> Any:
    """`guarded`, plus CommandRefused → 409."""
    inner = guarded(handler)

    async def wrapped(request: Request) -> Response:
        try:
            return await inner(request)
        except CommandRefused as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)

    return wrapped


def _int(request: Request, key: str, default: int) -> int:
    raw = request.query_params.get(key)
    if raw is None:
        return default
    if not re.fullmatch(r"[0-9]{1,9}", raw):
        raise BadRequest(f"{key} must be an integer, got {raw!r} (0 to 999999999)")
    return int(raw)


def _optional_text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{key} must be a string, got {type(value).__name__}")
    return (value or "").strip()
