"""`rolloutd demo`: the seeds' 72-hour plan in about three minutes, through the real daemon.

    rolloutd demo [--speed 1440] [--inject latency@30h] [--out DIR] [--rate 150] [--memories 3000]

What runs is `run_daemon` itself — the same scheduler, decisions, flags store, retriever
and built-in guard signals as production — on embedded defaults: no Prometheus, MongoDB
or Redis. The demo only adds what a real fleet would bring: agents querying the
retriever (`demo_fleet.Fleet`), a regression suite pushing its pass rate, a memory
corpus, and, on request, faults injected into the retriever (`demo_inject`). The 48-hour
approval gate is answered by the demo, and the journal says so.

Output: a live view (the `rolloutctl watch` screen) on a terminal, one line per decision
otherwise; then a summary. Everything is kept in `--out` (default `./rolloutd-demo`):
the daemon's log, its state, the checkpoint reports and an HTML report.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import anyio
import httpx

from controller.demo.fleet import RegressionSuite, Tally, start_fleet
from controller.demo.inject import Injection, active_faults, parse_injection
from controller.demo.view import DemoView
from controller.host.config import Config, load_config
from controller.host.daemon import DaemonHooks, Running, run_daemon
from controller.host.logs import configure_logging
from controller.host.sdnotify import Notifier
from retrieval.corpus import generate
from retrieval.faults import Faults
from retrieval.gating import ALL_ON

PLAN = Path(__file__).resolve().parents[2] / "deploy" / "plans" / "phase5.toml"
MARKER = ".rolloutd-demo"
AUTO_APPROVE = "approved automatically by `rolloutd demo`; in production an operator runs `rolloutctl approve`"
DEFAULT_SPEED = 1440.0  # plan seconds per wall second: 72 plan hours in 180 s
MIN_WINDOW_QUERIES = 15  # fewer retrievals than this in a guard window make its ratios noise
SUITE_EVERY = 0.5  # wall seconds between regression-suite runs (each pushes its pass rate)
WARM = 2000  # questions in the cache before the rollout starts: yesterday's traffic


@dataclass
class Outcome:
    """What the demo saw, for the summary."""

    code: int = 0
    running: Running | None = None
    wall_seconds: float = 0.0
    injected: list[str] = field(default_factory=list)


def demo(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        injections = [parse_injection(text) for text in args.inject]
    except ValueError as exc:
        parser.error(str(exc))
    if args.speed <= 0 or args.rate <= 0 or args.memories < 3:
        parser.error("--speed and --rate must be positive, --memories at least 3")
    try:
        out = _prepare(args.out)
    except OSError as exc:
        parser.error(str(exc))
    config = load_config(_write_config(out, args.speed))
    with (out / "rolloutd.log").open("w") as log:
        configure_logging(log)
        return anyio.run(partial(run_demo, config, args, injections, out, sys.stdout), backend="asyncio")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rolloutd demo",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="faults: latency@30h, latency=250ms@30h+2h, errors@40h, errors=2%%@40h+90m",
    )
    p.add_argument(
        "--speed",
        type=float,
        default=DEFAULT_SPEED,
        help="plan seconds per wall second (default 1440: the 72-hour plan in about 3 minutes)",
    )
    p.add_argument(
        "--inject",
        action="append",
        default=[],
        metavar="KIND[=AMOUNT]@HOUR[+DURATION]",
        help="inject a fault into the retriever at a plan time (repeatable)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("rolloutd-demo"),
        help="where the demo keeps its state, reports and log (default ./rolloutd-demo; replaced)",
    )
    p.add_argument("--rate", type=float, default=150.0, help="the fleet's maximum queries per wall second (150)")
    p.add_argument("--memories", type=int, default=3000, help="memories in the synthetic corpus (3000)")
    p.add_argument("--plain", action="store_true", help="one line per decision even on a terminal")
    return p


def _prepare(out: Path) -> Path:
    """A fresh output directory; refuses to replace one that a demo did not create."""
    if out.exists():
        if not (out / MARKER).exists() and any(out.iterdir()):
            raise OSError(f"{out} exists and was not made by `rolloutd demo`; pass another --out")
        shutil.rmtree(out)
    (out / "state").mkdir(parents=True)
    (out / MARKER).write_text("made by rolloutd demo; replaced by the next run\n")
    return out.resolve()


def _write_config(out: Path, speed: float) -> Path:
    with socket.socket() as probe:  # a free port for the public listener
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sock = out / "admin.sock"
    if len(str(sock)) > 100:  # AF_UNIX paths are short
        sock = Path(f"/tmp/rolloutd-demo-{os.getpid()}.sock")
    text = (
        f'[daemon]\nstate_dir = {json.dumps(str(out / "state"))}\nlisten = "127.0.0.1:{port}"\n'
        f"admin_socket = {json.dumps(str(sock))}\nplan = {json.dumps(str(PLAN))}\ntime_scale = {speed!r}\n"
        "drain_seconds = 2\n\n[retrieval]\n# validation every 6 plan hours: the gauges keep their value between rounds\n"
        "validation_interval_seconds = 21600\n"
    )
    path = out / "rolloutd.toml"
    path.write_text(text)
    return path


async def run_demo(
    config: Config, args: argparse.Namespace, injections: list[Injection], out: Path, screen: TextIO
) -> int:
    outcome, started = Outcome(), anyio.Event()
    faults = Faults()

    def on_started(running: Running) -> None:
        outcome.running = running
        started.set()

    hooks = DaemonHooks(faults=faults, auto_approve=AUTO_APPROVE, started=on_started)
    began = time.monotonic()
    view = DemoView(screen, plain=args.plain or not screen.isatty())
    async with anyio.create_task_group() as tg:

        async def daemon() -> None:
            outcome.code = await run_daemon(config, notifier=Notifier(env={}), hooks=hooks)
            started.set()
            tg.cancel_scope.cancel()

        tg.start_soon(daemon)
        await started.wait()
        if outcome.running is None or outcome.running.rollout is None:
            return outcome.code or 1
        tg.start_soon(_drive, outcome, args, injections, faults, view, out)
    outcome.wall_seconds = time.monotonic() - began
    view.close()
    if outcome.running is not None and outcome.running.rollout is not None:
        view.summary(outcome, out, args)
    return outcome.code


async def _drive(
    outcome: Outcome, args: argparse.Namespace, injections: list[Injection], faults: Faults, view: DemoView, out: Path
) -> None:
    """Seed, start the fleet, the suite and the faults, show the timeline, stop at the plan's end."""
    running = outcome.running
    assert running is not None and running.rollout is not None
    controller = running.rollout.controller
    base = f"http://{running.host}:{running.port}"
    corpus = generate(args.memories, namespace="default")
    async with httpx.AsyncClient(base_url=base, timeout=30.0, trust_env=False) as client:
        await _ready(client)
        for i in range(0, len(corpus.memories), 1000):
            response = await client.post("/v1/memories:batch", json={"memories": corpus.memories[i : i + 1000]})
            response.raise_for_status()
        await _warm(running.retriever, corpus.questions[:WARM])
    view.note(
        f"seeded {len(corpus.memories)} memories, cached the {min(WARM, len(corpus.questions))} most asked "
        "questions; "
        f"fleet of 8 agents at up to {args.rate:g} q/s; "
        f"plan hour 0 was {controller.state.started_at:%H:%M:%S} UTC"
    )
    window = min(g.window for g in controller.plan.guards).total_seconds() / args.speed
    if window * args.rate < MIN_WINDOW_QUERIES:
        view.note(
            f"note: at {args.speed:g}x a guard window is {window * 1000:.0f} ms of wall time, about "
            f"{window * args.rate:.0f} retrievals at {args.rate:g} q/s: ratios that noisy can breach "
            "on their own (lower --speed or raise --rate)"
        )
    tally = out / "fleet.json"
    process, stop = start_fleet(base, running.store.path, [q.query for q in corpus.questions], args.rate, tally)
    suite = RegressionSuite(running.retriever, corpus.questions, partial(_push, running), interval=SUITE_EVERY)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(suite.run)
            tg.start_soon(_apply_faults, controller, injections, faults, view, outcome)
            while not _finished(controller):
                view.refresh(controller, Tally.read(tally))
                await anyio.sleep(0.1)
            tg.cancel_scope.cancel()
    finally:
        stop.set()
        with anyio.CancelScope(shield=True):  # Ctrl-C stops the daemon first; still reap the fleet
            await anyio.to_thread.run_sync(process.join, 10)
    view.refresh(controller, Tally.read(tally))
    view.finish(controller, out / "report.html")  # read while the state is still open
    os.kill(os.getpid(), signal.SIGTERM)  # the daemon's own graceful stop


async def _warm(retriever: Any, questions: list[Any]) -> None:
    """Yesterday's traffic: the most asked questions are in the cache when the rollout begins."""
    for question in questions:
        await retriever.retrieve(question.query, question.namespace, 10, ALL_ON, quiet=True)


async def _push(running: Running, value: float) -> None:
    """The suite's result, as a CI runner would post it: over the admin socket."""
    transport = httpx.AsyncHTTPTransport(uds=str(running.admin_socket))
    async with httpx.AsyncClient(transport=transport, base_url="http://rolloutd", timeout=5.0) as client:
        (await client.post("/v1/signals/regression_pass_rate", json={"value": value})).raise_for_status()


def _finished(controller: Any) -> bool:
    """Past the plan's end with every checkpoint judged, or past it by an hour when a rollback,
    hold or emergency keeps checkpoints from being judged (they wait for an operator)."""
    elapsed = controller.plan_now() - controller.state.started_at
    if elapsed < controller.plan.end:
        return False
    done = len(controller.state.checkpoints_done) >= len(controller.plan.checkpoints)
    return done or elapsed >= controller.plan.end + timedelta(hours=1)


async def _ready(client: httpx.AsyncClient, timeout: float = 120.0) -> None:
    with anyio.fail_after(timeout):
        while (await client.get("/readyz")).status_code != 200:
            await anyio.sleep(0.05)


async def _apply_faults(
    controller: Any, injections: list[Injection], faults: Faults, view: DemoView, outcome: Outcome
) -> None:
    """Turn the injections on and off as plan time passes."""
    current = (0.0, 0.0)
    while injections:
        elapsed: timedelta = controller.plan_now() - controller.state.started_at
        wanted = active_faults(injections, elapsed)
        if wanted != current:
            faults.latency, faults.error_ratio = wanted
            hours = elapsed.total_seconds() / 3600
            text = (
                f"h{hours:5.2f} fault: " + ", ".join(i.describe() for i in injections if i.active(elapsed))
                if any(wanted)
                else f"h{hours:5.2f} fault cleared"
            )
            outcome.injected.append(text)
            view.note(text)
            current = wanted
        await anyio.sleep(0.02)
