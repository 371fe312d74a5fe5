"""The rollout inside the daemon: open it at start, reload its plan on SIGHUP, close it.

Everything the controller needs from the outside world is built here from the config —
the plan, the SQLite state, the guard source (Prometheus, or the built-in signals when no
Prometheus is configured), the notifications, the scheduler — so that `Controller`
itself only sees small interfaces.
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio
import httpx
import structlog

from controller.errors import PlanError, PlanMismatch, RolloutStartError
from controller.host.config import Config
from controller.notify import Notifications
from controller.plan import BUILTIN_SIGNALS
from controller.plan_clock import Clock, JumpDetector
from controller.plan_load import load_plan
from controller.schedule import Schedule
from controller.service import Controller
from controller.sources.builtin_signals import BuiltinSource, Sampler, missing_builtins
from controller.sources.prometheus import PrometheusSource
from controller.sources.protocol import GuardSource
from controller.state_db import StateDB
from flags.store import FlagStore

log = structlog.get_logger("rolloutd.rollout")


@dataclass
class Rollout:
    controller: Controller
    schedule: Schedule
    notifications: Notifications
    db: StateDB
    client: httpx.AsyncClient | None  # the Prometheus client, when guards read Prometheus
    builtin: BuiltinSource | None = None  # the built-in signals, when they serve the guards

    async def stop(self, drain_seconds: float = 5.0) -> None:
        """Stop scheduling (an evaluation in progress finishes) and give notifications a
        bounded time to go out; call while the notifications' run() still runs."""
        await self.schedule.stop()
        await self.notifications.drain(timeout=drain_seconds)

    async def close(self) -> None:
        await self.schedule.stop()
        if self.client is not None:
            await self.client.aclose()
        self.db.close()


async def open_rollout(
    config: Config, store: FlagStore, wall: Clock, sampler: Sampler | None = None, *, auto_approve: str | None = None
) -> Rollout | None:
    """The configured rollout, recovered and ready to schedule; None when no plan is configured.
    `sampler` reads the daemon's own measurements: the guards' source when no Prometheus is set."""
    if config.daemon.plan is None:
        return None
    try:
        plan = load_plan(config.daemon.plan)
    except PlanError as exc:
        raise RolloutStartError(str(exc)) from None
    client, builtin = None, None
    if config.prometheus_url is not None:
        client = PrometheusSource.build_client(config.prometheus_url, timeout=config.prometheus_timeout)
        source: GuardSource = PrometheusSource(client)
    else:
        if missing := missing_builtins(plan):
            raise RolloutStartError(_needs_prometheus(config, missing))
        if sampler is None:
            raise RolloutStartError(f"{config.source}: no [prometheus] url and no built-in signals to read")
        source = builtin = BuiltinSource(sampler, plan, config.daemon.time_scale)
    notifications = Notifications(config.webhook_urls, config.alertmanager_url)
    db: StateDB | None = None
    try:
        db = await anyio.to_thread.run_sync(StateDB, config.daemon.state_dir)
        controller = Controller(
            plan,
            db,
            store,
            source,
            wall=wall,
            state_dir=config.daemon.state_dir,
            time_scale=config.daemon.time_scale,
            notifications=notifications,
            jumps=JumpDetector(wall),
            auto_approve=auto_approve,
        )
        await controller.open()
    except BaseException as exc:
        if db is not None:
            db.close()
        if client is not None:
            await client.aclose()
        if isinstance(exc, PlanMismatch):
            raise RolloutStartError(str(exc)) from None
        raise  # StateFileError: the daemon names the file and the remedy
    log.info(
        "rollout.guard_source",
        source="prometheus" if client else "builtin",
        prometheus=config.prometheus_url,
        **({"sample_every_seconds": builtin.resolution} if builtin else {}),
    )
    return Rollout(controller, Schedule(controller, config.daemon.time_scale), notifications, db, client, builtin)


def _needs_prometheus(config: Config, guards: list[str]) -> str:
    return (
        f"{config.source}: no [prometheus] url is configured, so guards read built-in signals, but "
        f"guard(s) {', '.join(guards)} of {config.daemon.plan} name no `builtin` signal; set [prometheus] url, "
        f"or give each of them `builtin = ...` (one of: {', '.join(BUILTIN_SIGNALS)})"
    )


def reload_plan(rollout: Rollout, config: Config) -> None:
    """Adopt the plan file again (SIGHUP); a bad or foreign plan is rejected and the old one kept."""
    if config.daemon.plan is None:
        log.error(
            "plan.reload_rejected",
            problem="[daemon] plan was removed from the config; a rollout cannot be dropped by a reload",
            kept=rollout.controller.plan.name,
        )
        return
    try:
        plan = load_plan(config.daemon.plan)
        if rollout.builtin is not None and (missing := missing_builtins(plan)):
            log.error(
                "plan.reload_rejected",
                file=str(config.daemon.plan),
                problem=_needs_prometheus(config, missing),
                kept=rollout.controller.plan.digest[:12],
            )
            return
        rollout.controller.set_plan(plan)
    except PlanError as exc:
        log.error(
            "plan.reload_rejected",
            file=str(exc.file),
            problems=[p.render(exc.file) for p in exc.problems],
            kept=rollout.controller.plan.digest[:12],
        )
        return
    except PlanMismatch as exc:
        log.error(
            "plan.reload_rejected",
            file=str(config.daemon.plan),
            problem=str(exc),
            kept=rollout.controller.plan.digest[:12],
        )
        return
    rollout.schedule.replan()
    log.info("plan.reloaded", file=str(config.daemon.plan), rollout=plan.name, digest=plan.digest[:12])
