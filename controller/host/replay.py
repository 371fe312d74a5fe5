"""`rolloutd replay`: run a plan against Prometheus history, through the daemon's own code.

    rolloutd replay --config PATH --from T0 [--to T1] [--json] [--approve] [--reports DIR]

Hour 0 of the plan is T0. A simulated clock steps from T0 the way the daemon's
scheduler does — every guard interval, plus an evaluation at each moment a stage or
checkpoint falls due — and each step is a real `Controller.evaluate()`: the guards are
instant queries with `time=` the simulated instant, the decisions are `decide()`'s, the
checkpoint reports are measured and judged, and flags are written to a scratch flags
store. Nothing touches the daemon's state_dir. Each decision is printed as it is taken
(`--json`: one JSON object a line). `--approve` answers approval gates at once, saying
so in the journal, as the demo does; without it the replay waits there, as would the
daemon.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from controller.decide import Phase
from controller.decision import Decision
from controller.errors import ConfigError, PlanError
from controller.host.config import load_config
from controller.host.logs import configure_logging
from controller.plan_clock import iso_z
from controller.plan_load import load_plan
from controller.service import Controller
from controller.sources.prometheus import PrometheusSource
from controller.state_db import StateDB
from flags.store import FlagStore

EX_USAGE, EX_CONFIG = 2, 78


@dataclass
class SimClock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


def parse_time(text: str) -> datetime:
    """ISO-8601 (`2025-10-23T09:00:00Z`) or a unix timestamp; naive means UTC."""
    try:
        moment = datetime.fromtimestamp(float(text), UTC)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a time: write 2025-10-23T09:00:00Z or a unix timestamp"
            ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rolloutd replay", description="Run the plan against Prometheus history.")
    p.add_argument("--config", required=True, type=Path, help="the rolloutd config (its plan and [prometheus] url)")
    p.add_argument("--from", dest="start", required=True, type=parse_time, metavar="T0", help="the plan's hour 0")
    p.add_argument(
        "--to",
        dest="end",
        type=parse_time,
        metavar="T1",
        help="where to stop (default: the plan's last event plus two guard intervals, or now)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object a line per decision")
    p.add_argument(
        "--approve", action="store_true", help="approve checkpoints as soon as they ask (said in the journal)"
    )
    p.add_argument("--reports", type=Path, metavar="DIR", help="copy the checkpoint reports here")
    p.add_argument("--verbose", action="store_true", help="log every guard evaluation to stderr (JSON lines)")
    return p


async def replay(argv: list[str], out: TextIO = sys.stdout) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(sys.stderr, logging.INFO if args.verbose else logging.ERROR)  # stdout is the decisions
    try:
        config = load_config(args.config)
        if config.daemon.plan is None:
            raise ConfigError(args.config, "[daemon] plan is not set: replay needs a plan")
        if config.prometheus_url is None:
            raise ConfigError(args.config, "[prometheus] url is not set: replay reads Prometheus history")
        plan = replace(load_plan(config.daemon.plan), start=args.start)  # hour 0 is T0, whatever the plan says
    except (ConfigError, PlanError) as exc:
        print(f"rolloutd replay: {exc}", file=sys.stderr)
        return EX_CONFIG
    now = datetime.now(UTC)
    end = args.end or min(now, args.start + plan.end + 2 * plan.guard_interval)
    if end <= args.start:
        print(f"rolloutd replay: --to {end.isoformat()} is not after --from {args.start.isoformat()}", file=sys.stderr)
        return EX_USAGE
    clock = SimClock(args.start)
    totals: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="rolloutd-replay-") as scratch:
        store = FlagStore.open(Path(scratch))
        db = StateDB(Path(scratch), durable=False)
        client = PrometheusSource.build_client(config.prometheus_url, timeout=config.prometheus_timeout)
        controller = Controller(
            plan,
            db,
            store,
            PrometheusSource(client),
            wall=clock,
            state_dir=Path(scratch),
            auto_approve="approved by `rolloutd replay --approve`" if args.approve else None,
        )
        try:
            _print(await controller.open(), args.start, args.json, out, totals)
            regular_at = clock.now  # the regular rounds' grid, as the daemon's guards job keeps it
            while clock.now <= end and controller.state.phase not in (Phase.COMPLETED, Phase.EMERGENCY):
                regular = clock.now >= regular_at
                _print(await controller.evaluate(regular=regular), args.start, args.json, out, totals)
                if regular:
                    regular_at += plan.guard_interval
                clock.now = _next_step(controller, clock.now, regular_at)
            if args.reports:
                args.reports.mkdir(parents=True, exist_ok=True)
                for path in controller.reports():
                    shutil.copy2(path, args.reports / path.name)
        finally:
            await client.aclose()
            db.close()
            store.close()
        state = controller.state
    summary = {
        "summary": True,
        "phase": str(state.phase),
        "stage": state.stage,
        "percentage": state.percentage,
        "rollbacks": state.rollbacks,
        "decisions": totals,
        "from": iso_z(args.start),
        "to": iso_z(min(clock.now, end)),
    }
    print(
        json.dumps(summary)
        if args.json
        else f"replay ended {summary['to']}: {state.phase} at {state.percentage:g}% (stage {state.stage}), "
        f"{state.rollbacks} rollback(s)",
        file=out,
    )
    return 0


def _next_step(controller: Controller, now: datetime, regular_at: datetime) -> datetime:
    """As the daemon's scheduler: the next regular round, or an extra one sooner when a stage
    or checkpoint falls due (budgets count regular rounds only: `evaluate(regular=False)`)."""
    wake = controller.next_wake()
    return wake if wake is not None and now < wake < regular_at else regular_at


def _print(decisions: list[Decision], start: datetime, as_json: bool, out: TextIO, totals: dict[str, int]) -> None:
    for d in decisions:
        totals[d.action] = totals.get(d.action, 0) + 1
        hours = (d.at - start).total_seconds() / 3600
        if as_json:
            print(json.dumps({**d.to_dict(), "plan_hour": round(hours, 4)}), file=out, flush=True)
        else:
            print(
                f"{iso_z(d.at)}  +{hours:6.2f}h  {d.action:<17} stage {d.stage:>2} {d.percentage:>5g}%  {d.said}",
                file=out,
                flush=True,
            )
