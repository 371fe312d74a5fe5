"""The admin API on the unix socket (mode 0660): what `rolloutctl` talks to.

    GET  /v1/health                 liveness, readiness, what this daemon serves
    GET  /v1/flags                  every flag with its effective percentage now
    GET  /v1/flags/{name}           one flag as stored, plus its recent audit records
    POST /v1/flags/{name}           {"enabled"?, "percentage"?, "reason", "actor"}
    GET  /v1/flags-backups          backups of flags.json, oldest first
    POST /v1/flags-restore          {"backup", "reason", "actor"}
    POST /v1/emergency-stop         {"reason", "actor"}: turn the kill switch on (with a rollout
                                    running: every plan flag off too, through the controller)
    /v1/rollout..., /v1/reports...  the rollout's own routes: controller/host/rollout_api.py

Errors are ``{"error": "..."}`` with 400 (bad request), 404 (no such flag or backup),
409 (the flags file on disk is invalid) or 507 (the disk refused the write — full,
read-only, failing — and nothing changed; the message names the cause). The emergency
stop never fails for the disk: it adds `"durable": false` and why, while the kill
switch is in force in memory and written as soon as the disk allows. Store calls block
on fsync, so they run in a worker thread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial
from typing import Any

import anyio
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from controller.host.public_http import Readiness
from flags.errors import (
    BackupNotFoundError,
    FlagsError,
    FlagsFileError,
    FlagValidationError,
    StorageError,
    UnknownFlagError,
)
from flags.model import Flag
from flags.request_json import RequestRejected, read_json
from flags.store import FlagStore

log = structlog.get_logger("rolloutd.admin")
MAX_BODY = 64 << 10  # a reason, an actor, a flag change: far below this
Handler = Callable[[Request], Awaitable[Response]]


class BadRequest(Exception):
    """A 4xx answer in waiting: raised by a handler, turned into `{"error": problem}` by `guarded`.

    Outside controller/errors.py's tree on purpose: it is HTTP plumbing (a status code and
    the text of the answer), raised and caught within these ASGI apps, never seen by a caller.
    """

    def __init__(self, problem: str, status: int = 400) -> None:
        super().__init__(problem)
        self.status = status


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
    """Turn the kill switch on: in memory at once, then durably (emergency.state, flags.json);
    a disk that refuses the writes delays them, never the kill switch (see FlagStore.kill)."""
    store.kill()
    if store.load_error is not None:
        log.error(
            "emergency.overwrites_invalid_flags_file",
            file=str(store.path),
            problem=store.load_error.problem,
            kept_as="a backup in " + str(store.backup_dir),
        )
    await anyio.to_thread.run_sync(partial(store.persist_kill, actor=actor, reason=reason))
    log.critical("emergency.activated", actor=actor, reason=reason)


Emergency = Callable[[str, str], Awaitable[Any]]  # (actor, reason)


async def engage_emergency(store: FlagStore, emergency: Emergency | None, actor: str, reason: str) -> None:
    """The emergency from SIGUSR1 or the admin API: the kill switch on in memory first, whatever
    follows; then the controller's stop (the plan's flags off too) or the store's. It never
    raises: should anything after the kill switch fail, that is logged at crit and the store
    still makes the kill switch durable — the daemon must outlive a disk that refuses writes."""
    store.kill()
    try:
        await (emergency(actor, reason) if emergency is not None else emergency_stop(store, actor, reason))
    except Exception as exc:  # noqa: BLE001  (the kill switch is on; say what failed after it)
        log.critical(
            "emergency.incomplete",
            actor=actor,
            error=f"{type(exc).__name__}: {exc}",
            kill_switch="on, in memory",
            note="the kill switch is still written to disk",
        )
        await anyio.to_thread.run_sync(partial(store.persist_kill, actor=actor, reason=reason))


def durability(store: FlagStore) -> dict[str, Any]:
    """Nothing when what is served is on disk; else `durable: false` and why (an emergency held on a full disk)."""
    if store.durable:
        return {}
    return {"durable": False, "problem": str(store.held_error) if store.held_error else "the write is pending"}


def build_admin_app(
    store: FlagStore,
    clock: Callable[[], datetime],
    readiness: Readiness,
    info: dict[str, Any],
    *,
    emergency: Emergency | None = None,
    extra_routes: list[Route] | None = None,
) -> Starlette:
    """The admin app; `emergency` replaces the kill-switch-only stop when a rollout runs
    (its flags go off too), and `extra_routes` are the rollout's own (rollout_api.py)."""
    started = time.monotonic()

    async def health(request: Request) -> Response:
        snap = store.snapshot
        return JSONResponse(
            {
                "status": "ok",
                "ready": readiness.ready,
                "problems": readiness.problems,
                "pid": os.getpid(),
                "uptime_seconds": round(time.monotonic() - started, 3),
                "flags": len(snap),
                "revision": snap.revision,
                "kill_switch": snap.kill_switch,
                **info,
            }
        )

    async def list_flags(request: Request) -> Response:
        snap, now = store.snapshot, clock()
        return JSONResponse(
            {
                "revision": snap.revision,
                "kill_switch": snap.kill_switch,
                "flags": [flag_summary(f, now) for _, f in sorted(snap.flags.items())],
            }
        )

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
        await anyio.to_thread.run_sync(
            partial(store.set, name, enabled=enabled, percentage=percentage, actor=actor, reason=reason)
        )
        log.warning("flag.set", flag=name, enabled=enabled, percentage=percentage, actor=actor, reason=reason)
        return JSONResponse(flag_summary(store.get(name), clock()))

    async def backups(request: Request) -> Response:
        items = await anyio.to_thread.run_sync(store.backups)
        return JSONResponse(
            {
                "directory": str(store.backup_dir),
                "backups": [{"name": b.name, "size": b.size, "flags": b.flags, "problem": b.problem} for b in items],
            }
        )

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
        await engage_emergency(store, emergency, actor, reason)
        return JSONResponse({"kill_switch": store.snapshot.kill_switch, **durability(store)})

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
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        except (UnknownFlagError, BackupNotFoundError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        except FlagsFileError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        except StorageError as exc:  # the disk refused a write; nothing was changed
            return JSONResponse({"error": str(exc)}, status_code=507)
        except (FlagValidationError, FlagsError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    return wrapped


async def body_of(request: Request) -> dict[str, Any]:
    try:
        body = await read_json(request, MAX_BODY, empty={})
    except RequestRejected as exc:
        raise BadRequest(exc.problem, exc.status) from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def reason_of(body: dict[str, Any]) -> str:
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise BadRequest('a reason is required (--reason "..."): it goes into the audit log')
    return reason.strip()


def actor_of(body: dict[str, Any]) -> str:
    actor = body.get("actor")
    if actor is not None and not isinstance(actor, str):
        raise BadRequest(f"actor must be a string (who asked, for the audit log), got {type(actor).__name__}")
    return actor.strip() if actor and actor.strip() else "unknown"
