"""The rollout's Prometheus metrics, read from the controller's state at scrape time.

    rolloutd_rollout_stage{rollout}                   index of the applied stage (-1: none)
    rolloutd_rollout_percentage{rollout}              the applied stage's percentage
    rolloutd_rollout_phase{rollout, phase}            1 for the current phase, 0 for the others
    rolloutd_rollout_rollbacks_total{rollout, trigger} rollbacks by what triggered them: a guard's
                                                      name, failure_limit, checkpoint, operator
    rolloutd_guard_value{rollout, guard}              the guard's last value (absent: no value)
    rolloutd_guard_verdict{rollout, guard, verdict}   1 for the last verdict (pass, breach, no_data, error)
    rolloutd_guard_consecutive_breaches{rollout, guard}
    rolloutd_guard_consecutive_failures{rollout, guard}  what failure_limit counts
    rolloutd_rollout_emergency{rollout}               1 while the rollout is in EMERGENCY

The rollback counts are rebuilt from the journal on start, so the counter only ever
goes up across restarts (as `_total` promises).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.decide import Phase
from controller.guards import Outcome
from controller.service import Controller


class RolloutCollector(Collector):
    def __init__(self, controller: Controller) -> None:
        self._controller = controller

    def collect(self) -> Iterator[Metric]:
        c = self._controller
        state, plan = c.state, c.plan
        name = [plan.name]
        yield _gauge("rolloutd_rollout_stage", "Index of the applied stage (-1: none yet).", name, state.stage)
        yield _gauge(
            "rolloutd_rollout_percentage", "The applied stage's rollout percentage (0-100).", name, state.percentage
        )
        phase = GaugeMetricFamily(
            "rolloutd_rollout_phase", "1 for the rollout's current phase.", labels=["rollout", "phase"]
        )
        for p in Phase:
            phase.add_metric([plan.name, str(p)], 1.0 if state.phase is p else 0.0)
        yield phase
        yield _gauge(
            "rolloutd_rollout_emergency",
            "1 while the rollout is in emergency shutdown.",
            name,
            1.0 if state.phase is Phase.EMERGENCY else 0.0,
        )
        rollbacks = CounterMetricFamily(
            "rolloutd_rollout_rollbacks", "Rollbacks, by what triggered them.", labels=["rollout", "trigger"]
        )
        for trigger, count in sorted(c.rollback_counts.items()):
            rollbacks.add_metric([plan.name, trigger], count)
        yield rollbacks
        value = GaugeMetricFamily(
            "rolloutd_guard_value", "The guard's last observed value.", labels=["rollout", "guard"]
        )
        verdict = GaugeMetricFamily(
            "rolloutd_guard_verdict", "1 for the guard's last verdict.", labels=["rollout", "guard", "verdict"]
        )
        breaches = GaugeMetricFamily(
            "rolloutd_guard_consecutive_breaches", "Consecutive breaching evaluations.", labels=["rollout", "guard"]
        )
        failures = GaugeMetricFamily(
            "rolloutd_guard_consecutive_failures",
            "Consecutive failed evaluations (errors, or no data where silence is blindness).",
            labels=["rollout", "guard"],
        )
        for guard in plan.guards:
            counters = state.guards.get(guard.name)
            last = counters.last if counters else None
            if last is not None and last.value is not None:
                value.add_metric([plan.name, guard.name], last.value)
            for outcome in Outcome:
                verdict.add_metric(
                    [plan.name, guard.name, str(outcome)], 1.0 if last is not None and last.outcome is outcome else 0.0
                )
            breaches.add_metric([plan.name, guard.name], counters.breaches if counters else 0)
            failures.add_metric([plan.name, guard.name], counters.failures(guard) if counters else 0)
        yield from (value, verdict, breaches, failures)


def _gauge(metric: str, documentation: str, labels: list[str], value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(metric, documentation, labels=["rollout"])
    family.add_metric(labels, value)
    return family
