"""Checkpoint reports: measure them, write them, list them.

    state_dir/reports/checkpoint-1-day-1-checkpoint-24-hours.json

A report covers the period since the previous checkpoint (or the rollout's start).
Each go/no-go criterion is the guard's worst value over that period, and the seeds'
metrics (`SEED_METRICS`) are measured over it, both by the guard source (PromQL, or the
built-in signals); whatever could not be measured is null, with the reason next to it. Files are written atomically, so
a reader never sees half a report, and re-measuring after a crash replaces the file.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from controller.decide import RolloutState
from controller.plan import Plan
from controller.plan_clock import PlanClock, iso_z
from controller.report import SEED_METRICS, build_report
from controller.sources.protocol import GuardSource
from flags.atomic import atomic_write

REPORTS = "reports"


async def measure_report(
    plan: Plan,
    state: RolloutState,
    index: int,
    now: datetime,
    clock: PlanClock,
    source: GuardSource,
    journal: list[dict[str, Any]],
) -> dict[str, Any]:
    """The checkpoint's report at plan time `now`, measured through `source`."""
    checkpoint = plan.checkpoints[index]
    earlier = [cp.at for cp in plan.checkpoints if cp.at < checkpoint.at]
    period_start = state.started_at + (max(earlier) if earlier else timedelta(0))
    wall_at = clock.wall_time(now)
    window = clock.wall_duration(now - period_start).total_seconds()
    step = clock.wall_duration(plan.guard_interval).total_seconds()
    criteria = {
        name: await source.criterion(plan, plan.guard(name), window, step, wall_at) for name in checkpoint.criteria
    }
    metrics = {key: await source.seed_metric(key, window, wall_at) for key in SEED_METRICS}
    period = [d for d in journal if period_start <= _plan_at(d) <= now]
    report = build_report(plan, state, index, now, criteria, period, metrics)
    report["period_start"] = iso_z(period_start)
    report["queries"] = {
        "criteria": {name: m.query for name, m in criteria.items() if m.query},
        "metrics": {name: m.query for name, m in metrics.items() if m.query},
    }
    return report


def _plan_at(decision: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(decision["at"].replace("Z", "+00:00"))


def report_path(state_dir: Path, plan: Plan, index: int) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", plan.checkpoints[index].name.lower()).strip("-")[:60]
    return Path(state_dir) / REPORTS / f"checkpoint-{index + 1}-{slug}.json"


def write_report(state_dir: Path, plan: Plan, index: int, report: dict[str, Any]) -> Path:
    path = report_path(state_dir, plan, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (json.dumps(report, indent=2) + "\n").encode(), mode=0o640)
    return path


def list_reports(state_dir: Path) -> list[Path]:
    directory = Path(state_dir) / REPORTS
    return (
        sorted(directory.glob("checkpoint-*.json"), key=lambda p: int(p.name.split("-")[1]))
        if directory.is_dir()
        else []
    )
