"""Plan time and wall time, and noticing when the wall clock jumps.

The plan counts hours from the rollout's start. With `time_scale` s, one wall second
is s plan seconds, measured from the start (where the two coincide):

    plan = start + (wall - start) * s        wall = start + (plan - start) / s

So the mapping needs no state beyond the durable start time: a restart at the same
scale lands at the same plan time as an uninterrupted run would. In production s = 1
and plan time is wall time; rehearsals use the same code with s = 60 or 3600.

Plan time is read from the wall clock, so a wall clock that jumps (an NTP step, a
hand-set date, a resumed VM) would make stages fall due that nobody waited for.
`JumpDetector` compares the wall clock's progress with the monotonic clock's between
two readings; a difference past the tolerance is a jump, and the controller holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

Clock = Callable[[], datetime]


def iso_z(moment: datetime) -> str:
    """An aware UTC datetime as ISO-8601 with `Z`, the form the journal, reports and status use."""
    return moment.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class PlanClock:
    start: datetime
    scale: float = 1.0

    def plan_time(self, wall: datetime) -> datetime:
        return self.start + (wall - self.start) * self.scale

    def wall_time(self, plan: datetime) -> datetime:
        return self.start + (plan - self.start) / self.scale

    def wall_duration(self, plan: timedelta) -> timedelta:
        return plan / self.scale


class JumpDetector:
    """Compare wall-clock progress with monotonic progress between checks."""

    def __init__(
        self, wall: Clock, monotonic: Callable[[], float] = time.monotonic, tolerance: timedelta = timedelta(seconds=5)
    ) -> None:
        self._wall, self._monotonic, self._tolerance = wall, monotonic, tolerance
        self._last: tuple[datetime, float] | None = None

    def check(self) -> str | None:
        """None while the clocks agree; otherwise what happened, in words."""
        wall, mono = self._wall(), self._monotonic()
        last, self._last = self._last, (wall, mono)
        if last is None:
            return None
        wall_passed = wall - last[0]
        mono_passed = timedelta(seconds=mono - last[1])
        jump = wall_passed - mono_passed
        if abs(jump) <= self._tolerance:
            return None
        direction = "forward" if jump > timedelta(0) else "backward"
        return (
            f"the wall clock jumped {direction} by {abs(jump).total_seconds():.0f}s "
            f"({wall_passed.total_seconds():.0f}s by the wall clock, {mono_passed.total_seconds():.0f}s "
            f"by the monotonic clock); holding: check the host's clock, then `rolloutctl resume`"
        )
