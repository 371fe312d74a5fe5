"""When the controller evaluates: APScheduler 3.11's AsyncIOScheduler in the daemon's loop.

Two jobs, both derived from the plan and the durable state (so a restart rebuilds them):

    guards      every guard interval (plan time, divided by `time_scale` for the wall),
                first run at once on start
    transition  one extra evaluation at the moment the plan's next stage or checkpoint
                falls due, so a stage is not up to one interval late; moved after
                every round and every command

An evaluation never overlaps another: a job that fires while one runs is skipped
(counted in `skipped`), which at high time scales is the normal way to keep up.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import anyio
import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from controller.service import Controller

log = structlog.get_logger("rolloutd.schedule")


class Schedule:
    def __init__(self, controller: Controller, time_scale: float) -> None:
        self.controller = controller
        self._scale = time_scale
        self._scheduler = AsyncIOScheduler(timezone=timezone.utc)
        self._running = False
        self.evaluations = 0
        self.skipped = 0
        # APScheduler logs every job run at INFO and every skipped run at WARNING; the
        # controller logs what matters itself, so keep the scheduler's own chatter out.
        logging.getLogger("apscheduler").setLevel(logging.ERROR)

    @property
    def interval(self) -> timedelta:
        return self.controller.plan.guard_interval / self._scale

    def start(self) -> None:
        self._scheduler.start()
        self._scheduler.add_job(self.evaluate, IntervalTrigger(seconds=self.interval.total_seconds()), id="guards",
                                next_run_time=datetime.now(timezone.utc), max_instances=1, coalesce=True,
                                misfire_grace_time=None)
        log.info("schedule.started", rollout=self.controller.plan.name, interval_seconds=self.interval.total_seconds(),
                 time_scale=self._scale)

    def replan(self) -> None:
        """The plan changed (SIGHUP): the guard interval and the next transition may have."""
        self._scheduler.reschedule_job("guards", trigger=IntervalTrigger(seconds=self.interval.total_seconds()))
        self.wake_at_next_transition()

    async def evaluate(self) -> None:
        if self._running:
            self.skipped += 1
            return
        self._running = True
        try:
            await self.controller.evaluate()
            self.evaluations += 1
        except Exception:
            log.exception("evaluation.failed", rollout=self.controller.plan.name)
        finally:
            self._running = False
            self.wake_at_next_transition()

    def wake_at_next_transition(self) -> None:
        wake = self.controller.next_wake()
        now = datetime.now(timezone.utc)
        if wake is None or wake <= now:
            if self._scheduler.get_job("transition"):
                self._scheduler.remove_job("transition")
            return
        self._scheduler.add_job(self.evaluate, DateTrigger(wake), id="transition", replace_existing=True,
                                misfire_grace_time=None)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop scheduling, and let an evaluation in progress finish (bounded)."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        with anyio.move_on_after(timeout):
            while self._running:
                await anyio.sleep(0.02)
