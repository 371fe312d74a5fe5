"""The daemon's own Prometheus metrics, read from live state at scrape time.

Collectors read the current snapshot when Prometheus scrapes, so a gauge can never
be stale or disagree with the flags file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from flags.evaluate import FlagSet


class FlagsCollector(Collector):
    """Per-flag enabled state and rollout percentage, and the kill switch."""

    def __init__(self, snapshot: Callable[[], FlagSet], clock: Callable[[], datetime]) -> None:
        self._snapshot = snapshot
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        flags = self._snapshot()
        now = self._clock()
        enabled = GaugeMetricFamily(
            "rolloutd_flag_enabled", "1 when the flag is enabled in flags.json.", labels=["flag"]
        )
        percent = GaugeMetricFamily(
            "rolloutd_flag_rollout_percent", "Share of contexts (0-100) the flag is rolled out to now.", labels=["flag"]
        )
        for name, flag in sorted(flags.flags.items()):
            enabled.add_metric([name], 1.0 if flag.enabled else 0.0)
            percent.add_metric([name], flag.percentage_at(now))
        yield enabled
        yield percent
        yield GaugeMetricFamily(
            "rolloutd_emergency_shutdown",
            "1 while emergency_shutdown (the kill switch) is on.",
            value=1.0 if flags.kill_switch else 0.0,
        )


def build_registry(snapshot: Callable[[], FlagSet], clock: Callable[[], datetime]) -> CollectorRegistry:
    """A registry of our own (never the global one), with process metrics."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.register(FlagsCollector(snapshot, clock))
    return registry
