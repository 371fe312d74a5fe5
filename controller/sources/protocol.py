"""What the rollout core needs from a guard source: the one seam between it and this wing.

    GuardSource   observe(guard, at) → Observation, never raises (a failure is an ERROR
                  observation); criterion(...) and seed_metric(...) measure checkpoint reports

Implemented by `PrometheusSource` (prometheus.py) and `BuiltinSource` (builtin_signals.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from controller.guards import Observation
from controller.plan import Guard, Plan
from controller.report import Measurement


class GuardSource(Protocol):
    """Where guard values come from: Prometheus, or the daemon's built-in signals. Never raises."""

    async def observe(self, guard: Guard, at: datetime) -> Observation: ...

    async def criterion(self, plan: Plan, guard: Guard, window: float, step: float, at: datetime) -> Measurement:
        """The guard's worst value over the `window` seconds before wall time `at`, stepping by `step` s."""

    async def seed_metric(self, key: str, window: float, at: datetime) -> Measurement:
        """One of the seeds' report metrics (`report.SEED_METRICS`) over the window before `at`."""
