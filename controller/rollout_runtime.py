"""The rollout inside the daemon: open it at start, reload its plan on SIGHUP, close it.

Everything the controller needs from the outside world is built here from the config —
the plan, the SQLite state, the Prometheus client, the notifications, the scheduler —
so that `Controller` itself only sees small interfaces.
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio
import httpx
import structlog

from controller.config import Config
from controller.notify import Notifications
from controller.plan_clock import Clock, JumpDetector
from controller.plan_load import PlanError, load_plan
from controller.prometheus import PrometheusSource
from controller.schedule import Schedule
from controller.service import Controller, PlanMismatch
from controller.state_db import StateDB
from flags.store import FlagStore

log = structlog.get_logger("rolloutd.rollout")


class RolloutStartError(Exception):
    """The rollout cannot start; the message says what to fix."""


@dataclass
class Rollout:
    controller: Controller
    schedule: Schedule
    notifications: Notifications
    db: StateDB
    client: httpx.AsyncClient

    async def stop(self, drain_seconds: float = 5.0) -> None:
        """Stop scheduling (an evaluation in progress finishes) and give notifications a
        bounded time to go out; call while the notifications' run() still runs."""
        await self.schedule.stop()
        await self.notifications.drain(timeout=drain_seconds)

    async def close(self) -> None:
        await self.schedule.stop()
        await self.client.aclose()
        self.db.close()


async def open_rollout(config: Config, store: FlagStore, wall: Clock) -> Rollout | None:
    """The configured rollout, recovered and ready to schedule; None when no plan is configured."""
    if config.daemon.plan is None:
        return None
    try:
        plan = load_plan(config.daemon.plan)
    except PlanError as exc:
        raise RolloutStartError(str(exc)) from None
    if config.prometheus_url is None:
        raise RolloutStartError(
            f"{config.source}: the plan's guards need [prometheus] url; built-in guard signals "
            "(no Prometheus) are not available yet")
    client = PrometheusSource.build_client(config.prometheus_url, timeout=config.prometheus_timeout)
    notifications = Notifications(config.webhook_urls, config.alertmanager_url)
    db = await anyio.to_thread.run_sync(StateDB, config.daemon.state_dir)
    controller = Controller(plan, db, store, PrometheusSource(client), wall=wall,
                            state_dir=config.daemon.state_dir, time_scale=config.daemon.time_scale,
                            notifications=notifications, jumps=JumpDetector(wall))
    try:
        await controller.open()
    except PlanMismatch as exc:
        await client.aclose()
        db.close()
        raise RolloutStartError(str(exc)) from None
    return Rollout(controller, Schedule(controller, config.daemon.time_scale), notifications, db, client)


def reload_plan(rollout: Rollout, config: Config) -> None:
    """Adopt the plan file again (SIGHUP); a bad or foreign plan is rejected and the old one kept."""
    if config.daemon.plan is None:
        log.error("plan.reload_rejected", problem="[daemon] plan was removed from the config; a rollout "
                  "cannot be dropped by a reload", kept=rollout.controller.plan.name)
        return
    try:
        plan = load_plan(config.daemon.plan)
        rollout.controller.set_plan(plan)
    except PlanError as exc:
        log.error("plan.reload_rejected", file=str(exc.file), problems=[p.render(exc.file) for p in exc.problems],
                  kept=rollout.controller.plan.digest[:12])
        return
    except PlanMismatch as exc:
        log.error("plan.reload_rejected", file=str(config.daemon.plan), problem=str(exc),
                  kept=rollout.controller.plan.digest[:12])
        return
    rollout.schedule.replan()
    log.info("plan.reloaded", file=str(config.daemon.plan), rollout=plan.name, digest=plan.digest[:12])

