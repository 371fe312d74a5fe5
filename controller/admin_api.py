"""The admin API on the unix socket (mode 0660): what `rolloutctl` talks to.

    GET  /v1/health                 liveness, readiness, what this daemon serves
    GET  /v1/flags                  every flag with its effective percentage now
    GET  /v1/flags/{name}           one flag as stored, plus its recent audit records
    POST /v1/flags/{name}           {"enabled"?, "percentage"?, "reason", "actor"}
    GET  /v1/flags-backups          backups of flags.json, oldest first
    POST /v1/flags-restore          {"backup", "reason", "actor"}
    POST /v1/emergency-stop         {"reason", "actor"}: turn the kill switch on (with a rollout
                                    running: every plan flag off too, through the controller)
    /v1/rollout..., /v1/reports...  the rollout's own routes: controller/rollout_api.py

Errors are ``{"error": "..."}`` with 400 (bad request), 404 (no such flag or backup)
or 409 (the flags file on disk is invalid). Store calls block on fsync, so they run
in a worker thread.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from datetime import datetime
from functools import partial
from typing import Any, Awaitable, Callable

import anyio
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from controller.public_http import Readiness
from flags.errors import BackupNotFoundError, FlagsError, FlagsFileError, FlagValidationError, UnknownFlagError
from flags.model import KILL_SWITCH, Flag
from flags.store import FlagStore

log = structlog.get_logger("rolloutd.admin")
Handler = Callable[[Request], Awaitable[Response]]


class BadRequest(Exception):
    pass


def flag_summary(flag: Flag, now: datetime) -> dict[str, Any]:
    return {
        "name": flag.name,
        "enabled": flag.enabled,
        "strategy": str(flag.rollout_strategy),
        "percentage": round(flag.percentage_at(now), 4),
        "constraints": [str(c) for c in flag.constraints],
        "audit_id": flag.audit_id,
    }


async def emergency_stop(store: FlagStore, actor: str, reason: str) -> None:
    """Turn the kill switch on, durably, before anything else happens."""
    kill = store.snapshot.flags.get(KILL_SWITCH) or Flag(name=KILL_SWITCH, enabled=True)
    if store.load_error is not None:
        log.error("emergency.overwrites_invalid_flags_file", file=str(store.path), problem=store.load_error.problem,
                  kept_as="a backup in " + str(store.backup_dir))
    change = {KILL_SWITCH: replace(kill, enabled=True)}
    await anyio.to_thread.run_sync(partial(store.apply, change, actor=actor, reason=reason, force=True))
    log.critical("emergency.activated", actor=actor, reason=reason)


Emergency = Callable[[str, str], Awaitable[Any]]   # (actor, reason)


def build_admin_app(store: FlagStore, clock: Callable[[], datetime], readiness: Readiness,
                    info: dict[str, Any], *, emergency: Emergency | None = None,
                    extra_routes: list[Route] | None = None) -> Starlette:
    """The admin app; `emergency` replaces the kill-switch-only stop when a rollout runs
    (its flags go off too), and `extra_routes` are the rollout's own (rollout_api.py)."""
    started = time.monotonic()

    async def health(request: Request) -> Response:
        snap = store.snapshot
        return JSONResponse({
            "status": "ok", "ready": readiness.ready, "problems": readiness.problems,
            "pid": os.getpid(), "uptime_seconds": round(time.monotonic() - started, 3),
            "flags": len(snap), "revision": snap.revision, "kill_switch": snap.kill_switch, **info,
        })

    async def list_flags(request: Request) -> Response:
        snap, now = store.snapshot, clock()
        return JSONResponse({"revision": snap.revision, "kill_switch": snap.kill_switch,
                             "flags": [flag_summary(f, now) for _, f in sorted(snap.flags.items())]})

    async def show_flag(request: Request) -> Response:
        flag = store.get(request.path_params["name"])
        audit = [r for r in await anyio.to_thread.run_sync(store.audit.tail, 500) if r.get("flag") == flag.name]
        return JSONResponse({**flag_summary(flag, clock()), "stored": flag.to_dict(), "audit": audit[-10:]})

    async def set_flag(request: Request) -> Response:
        body = await body_of(request)
        enabled, percentage = body.get("enabled"), body.get("percentage")
        if enabled is None and percentage is None:
            raise BadRequest("nothing to change: give enabled and/or percentage")
        if enabled is not None and not isinstance(enabled, bool):
            raise BadRequest(f"enabled must be true or false, got {enabled!r}")
        if percentage is not None and (isinstance(percentage, bool) or not isinstance(percentage, (int, float))):
            raise BadRequest(f"percentage must be a number from 0 to 100, got {percentage!r}")
        name = request.path_params["name"]
        actor, reason = actor_of(body), reason_of(body)
        await anyio.to_thread.run_sync(partial(store.set, name, enabled=enabled, percentage=percentage, actor=actor, reason=reason))
        log.warning("flag.set", flag=name, enabled=enabled, percentage=percentage, actor=actor, reason=reason)
        return JSONResponse(flag_summary(store.get(name), clock()))

    async def backups(request: Request) -> Response:
        items = await anyio.to_thread.run_sync(store.backups)
        return JSONResponse({"directory": str(store.backup_dir), "backups": [
            {"name": b.name, "size": b.size, "flags": b.flags, "problem": b.problem} for b in items]})

    async def restore(request: Request) -> Response:
        body = await body_of(request)
        name = body.get("backup")
        if not isinstance(name, str) or not name:
            raise BadRequest("give the backup's name, as `rolloutctl flags restore` lists them")
        actor, reason = actor_of(body), reason_of(body)
        snap = await anyio.to_thread.run_sync(partial(store.restore, name, actor=actor, reason=reason))
        log.warning("flags.restored", backup=name, actor=actor, reason=reason, revision=snap.revision)
        return JSONResponse({"restored": name, "revision": snap.revision, "flags": len(snap)})

    async def stop(request: Request) -> Response:
        body = await body_of(request)
        actor, reason = actor_of(body), reason_of(body)
        if emergency is not None:
            await emergency(actor, reason)
        else:
            await emergency_stop(store, actor, reason)
        return JSONResponse({"kill_switch": store.snapshot.kill_switch})

    routes = [
        Route("/v1/health", health, methods=["GET"]),
        Route("/v1/flags", list_flags, methods=["GET"]),
        Route("/v1/flags/{name}", guarded(show_flag), methods=["GET"]),
        Route("/v1/flags/{name}", guarded(set_flag), methods=["POST"]),
        Route("/v1/flags-backups", guarded(backups), methods=["GET"]),
        Route("/v1/flags-restore", guarded(restore), methods=["POST"]),
        Route("/v1/emergency-stop", guarded(stop), methods=["POST"]),
        *(extra_routes or []),
    ]
    return Starlette(routes=routes)


def guarded(handler: Handler) -> Handler:
    """Turn our exceptions into JSON errors with the right status."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except BadRequest as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except (UnknownFlagError, BackupNotFoundError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        except FlagsFileError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        except (FlagValidationError, FlagsError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    return wrapped


async def body_of(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError as exc:
        raise BadRequest(f"request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def reason_of(body: dict[str, Any]) -> str:
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise BadRequest("a reason is required (--reason \"...\"): it goes into the audit log")
    return reason.strip()


def actor_of(body: dict[str, Any]) -> str:
    actor = body.get("actor")
    return actor.strip() if isinstance(actor, str) and actor.strip() else "unknown"
