"""When the controller evaluates: APScheduler 3.11's AsyncIOScheduler in the daemon's loop.

Two jobs, both derived from the plan and the durable state (so a restart rebuilds them):

    guards      the regular rounds: every guard interval (plan time, divided by
                `time_scale` for the wall), first run at once on start
    transition  one extra round at the moment the plan's next stage or checkpoint falls
                due, so a stage is not up to one interval late; moved after every round
                and every command

Budgets ("sustained for N checks", `failure_limit`) count regular rounds only, so the
extra round tells the controller it is one (`evaluate(regular=False)`): a stage falling
due during an outage must not make the outage one interval shorter than the plan allows.

An evaluation never overlaps another: a job that fires while one runs is skipped
(counted in `skipped`), which at high time scales is the normal way to keep up. The one
exception: a regular round that fires while an extra round runs is owed, and runs right
after it — a stage falling due on the guard grid (the usual case) must not cost one.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import anyio
import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from controller.plan_clock import Clock
from controller.service import Controller
from flags.errors import StorageError

log = structlog.get_logger("rolloutd.schedule")


def utc_now() -> datetime:
    return datetime.now(UTC)


class Schedule:
    def __init__(self, controller: Controller, time_scale: float, wall: Clock = utc_now) -> None:
        self.controller = controller
        self._scale = time_scale
        self._wall = wall
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        self._done: anyio.Event | None = None  # set when the evaluation in progress ends
        self._owed = False  # a regular round fired during an extra one
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
        self._scheduler.add_job(
            self.regular_round,
            IntervalTrigger(seconds=self.interval.total_seconds()),
            id="guards",
            next_run_time=self._wall(),
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )
        log.info(
            "schedule.started",
            rollout=self.controller.plan.name,
            interval_seconds=self.interval.total_seconds(),
            time_scale=self._scale,
        )

    def replan(self) -> None:
        """The plan changed (SIGHUP): the guard interval and the next transition may have."""
        self._scheduler.reschedule_job("guards", trigger=IntervalTrigger(seconds=self.interval.total_seconds()))
        self.wake_at_next_transition()

    async def regular_round(self) -> None:
        """The guards job: a round that counts towards every budget."""
        await self._run(regular=True)

    async def transition_round(self) -> None:
        """The transition job: an extra round, so the stage that fell due applies on time."""
        await self._run(regular=False)

    async def _run(self, regular: bool) -> None:
        if self._done is not None:
            self.skipped += 1
            self._owed = self._owed or regular
            return
        self._done = done = anyio.Event()
        try:
            await self._evaluate(regular)
            if not regular and self._owed:
                await self._evaluate(True)
        finally:
            self._owed = False
            self._done = None
            done.set()
            self.wake_at_next_transition()

    async def _evaluate(self, regular: bool) -> None:
        try:
            await self.controller.evaluate(regular=regular)
            self.evaluations += 1
        except StorageError as exc:  # a disk that refuses writes: one line a round names it, not a traceback
            log.error("evaluation.not_recorded", rollout=self.controller.plan.name, regular=regular, error=str(exc))
        except Exception:
            log.exception("evaluation.failed", rollout=self.controller.plan.name, regular=regular)

    def wake_at_next_transition(self) -> None:
        wake = self.controller.next_wake()
        if wake is None or wake <= self._wall():
            if self._scheduler.get_job("transition"):
                self._scheduler.remove_job("transition")
            return
        self._scheduler.add_job(
            self.transition_round, DateTrigger(wake), id="transition", replace_existing=True, misfire_grace_time=None
        )

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop scheduling, and let an evaluation in progress finish (bounded)."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        done = self._done
        if done is not None:
            with anyio.move_on_after(timeout):
                await done.wait()
