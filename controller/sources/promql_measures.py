"""Checkpoint measurements for sources that answer PromQL: each criterion and seed metric is a query.

    PromQLMeasures           criterion/seed_metric built from `value(promql, at, direction)`,
                             shared by PrometheusSource and the tests' scripted sources

The built-in signals (`controller/sources/builtin_signals.py`) answer the same three questions
from the daemon's own measurements, without PromQL.
"""

from __future__ import annotations

from datetime import datetime

from controller.errors import PrometheusError
from controller.plan import Direction, Guard, Plan
from controller.report import UNMEASURABLE, Measurement, seed_metric_query, window_query


class PromQLMeasures:
    """criterion() and seed_metric() for a source whose `value` answers PromQL."""

    async def value(self, promql: str, at: datetime, direction: Direction | None = None) -> float | None:
        raise NotImplementedError

    async def criterion(self, plan: Plan, guard: Guard, window: float, step: float, at: datetime) -> Measurement:
        query = window_query(plan, guard.name, window, step)
        if query is None:
            return Measurement(None, "the guard has no PromQL query")
        return await self._measure(query, at, guard.direction)

    async def seed_metric(self, key: str, window: float, at: datetime) -> Measurement:
        query = seed_metric_query(key, window)
        if query is None:
            return Measurement(None, UNMEASURABLE.get(key, "not measured"))
        return await self._measure(query, at, None)

    async def _measure(self, query: str, at: datetime, direction: Direction | None) -> Measurement:
        try:
            value = await self.value(query, at, direction)
        except PrometheusError as exc:
            return Measurement(None, str(exc), query)
        return measured(value, query)


def measured(value: float | None, query: str | None) -> Measurement:
    """A value as a report Measurement: None, NaN and infinities become the reason there is none."""
    if value is None or value != value or value in (float("inf"), float("-inf")):
        return Measurement(
            None, "no samples in the checkpoint's period" if value is None else f"value is {value}", query
        )
    return Measurement(value, "", query)
