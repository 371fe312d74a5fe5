"""The rolloutd process: composition, lifecycle and signals.

    rolloutd --config PATH

Start-up: read the config → open (and lock) the flags store → open the rollout (its
plan, its durable state, recovering what a crash interrupted) → bind the public TCP
listener and the admin socket → serve → schedule guard checks → READY=1. Any start-up error
of a file or a setting (the config, state_dir and the files in it, the plan, a listener)
is one critical log event naming what is wrong and the remedy, the same words on stderr,
and an exit with status 78 (EX_CONFIG), which the unit's RestartPreventExitStatus= keeps
systemd from retrying in a loop. A bug stays a crash (`daemon.crashed`, exit 1).

Signals (handled in the event loop, never in a signal handler):
    SIGTERM, SIGINT   stop accepting, drain in-flight requests for `drain_seconds`, exit 0
    SIGHUP            reload the config, the plan and flags.json; a bad file is rejected, the old kept
    SIGUSR1           emergency shutdown: every rollout flag off and the kill switch on, durably,
                      first; the rollout stays in EMERGENCY until `rolloutctl resume --clear-emergency`
    SIGUSR2           log a full status snapshot
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import structlog
import uvicorn
from anyio.abc import TaskStatus
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette

from controller.errors import ConfigError, ListenerError, RolloutStartError, StateFileError
from controller.host.admin_api import build_admin_app, engage_emergency
from controller.host.config import Config, check_state_dir, load_config
from controller.host.http_errors import contain_errors
from controller.host.listeners import bind_tcp, bind_unix
from controller.host.logs import configure_logging
from controller.host.metrics import build_registry
from controller.host.openapi_admin import admin_document
from controller.host.openapi_public import document_route
from controller.host.public_http import Readiness, build_public_app
from controller.host.retrieval_runtime import build_retriever, build_validation, load_validation_set, open_and_keep
from controller.host.rollout_api import rollout_routes
from controller.host.rollout_metrics import RolloutCollector
from controller.host.rollout_runtime import Rollout, open_rollout, reload_plan
from controller.host.sdnotify import Notifier
from controller.host.signals_api import signal_routes
from controller.sources.builtin_signals import Sampler
from flags.clock import utcnow
from flags.errors import FlagsFileError, StorageError, StoreLockedError
from flags.store import FlagStore
from retrieval.faults import Faults
from retrieval.http_api import retrieval_routes
from retrieval.quality import LabelledSetError
from retrieval.retriever import Retriever
from retrieval.validation import ValidationJob

log = structlog.get_logger("rolloutd")
EX_CONFIG = 78
HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
Clock = Callable[[], datetime]


def run(argv: list[str]) -> int:
    """`rolloutd --config PATH`: the daemon in the foreground until SIGTERM; the exit status."""
    parser = argparse.ArgumentParser(
        prog="rolloutd",
        description="Roll feature flags out to an agent fleet, safely.",
        epilog="Also: rolloutd demo [--speed N] [--inject KIND@HOUR] (see `rolloutd demo --help`), "
        "rolloutd replay --config PATH --from T0 [--to T1] [--json]",
    )
    parser.add_argument("--config", required=True, type=Path, help="the TOML config file (see systemd/rolloutd.toml)")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _refuse("config.invalid", exc, file=str(exc.path), problem=exc.problem)
    try:
        return anyio.run(partial(run_daemon, config), backend="asyncio")
    except KeyboardInterrupt:
        return 0


@dataclass(frozen=True)
class Running:
    """What a started daemon holds, for `DaemonHooks.started` (the demo drives traffic through it)."""

    retriever: Retriever
    rollout: Rollout | None
    store: FlagStore
    host: str
    port: int
    admin_socket: Path


@dataclass(frozen=True)
class DaemonHooks:
    """What `rolloutd demo` adds to the daemon's run; production runs pass none."""

    faults: Faults | None = None  # injected into the retriever on purpose
    auto_approve: str | None = None  # answers approval gates, with this reason journaled
    started: Callable[[Running], None] | None = None  # called once serving, before READY=1


async def run_daemon(
    config: Config, *, notifier: Notifier | None = None, clock: Clock = utcnow, hooks: DaemonHooks = DaemonHooks()
) -> int:
    """Run until SIGTERM/SIGINT; return the process exit status."""
    notifier = notifier or Notifier()
    with anyio.open_signal_receiver(*HANDLED) as signals:  # queue signals that arrive during start-up
        try:
            check_state_dir(config)
            store = FlagStore.open(config.daemon.state_dir, clock=clock)
        except (ConfigError, FlagsFileError, StoreLockedError, OSError) as exc:
            return _refuse_store(exc, config)
        try:
            validation_set = load_validation_set(config)
        except LabelledSetError as exc:
            store.close()
            return _refuse(
                "retrieval.labelled_set_invalid",
                exc,
                problem=str(exc),
                remedy="fix the file or remove [retrieval] labelled_set to use the synthetic corpus",
            )
        registry = build_registry(lambda: store.snapshot, clock)
        retriever = build_retriever(config, registry, hooks.faults)
        validation = build_validation(config, retriever, validation_set, registry, store, clock)
        try:
            rollout = await open_rollout(
                config,
                store,
                clock,
                Sampler(retriever.metrics, validation.gauges, clock),
                auto_approve=hooks.auto_approve,
            )
        except RolloutStartError as exc:
            store.close()
            return _refuse("rollout.cannot_start", exc, problem=str(exc))
        except StateFileError as exc:
            store.close()
            return _refuse("state.unusable", exc, file=str(exc.path), problem=exc.problem, remedy=exc.remedy)
        except StorageError as exc:  # a full disk refused what opening the rollout had to write
            store.close()
            return _refuse("state_dir.full", exc, error=str(exc))
        try:
            return await _serve_until_stopped(
                config, store, rollout, Retrieval(retriever, validation, registry), notifier, signals, clock, hooks
            )
        except ListenerError as exc:
            return _refuse("listen.failed", exc, error=str(exc))
        finally:
            if rollout is not None:
                await rollout.close()
            store.close()


def _refuse(event: str, message: object, **fields: Any) -> int:
    """A start-up failure: one critical event, the same words on stderr, and EX_CONFIG, which
    the unit's RestartPreventExitStatus= keeps systemd from retrying in a loop."""
    log.critical(event, **fields)
    print(f"rolloutd: {message}", file=sys.stderr, flush=True)
    return EX_CONFIG


def _refuse_store(exc: Exception, config: Config) -> int:
    """Why the flag store (the first thing opened in state_dir) could not be opened."""
    if isinstance(exc, FlagsFileError):
        return _refuse(
            "flags.invalid",
            exc,
            file=str(exc.path),
            line=exc.line,
            problem=exc.problem,
            remedy="fix the file or run `rolloutctl flags restore --state-dir DIR`",
        )
    if isinstance(exc, StoreLockedError):
        return _refuse("flags.locked", exc, error=str(exc))
    if isinstance(exc, StorageError):  # a full disk at the very first start: flags.json cannot be created
        return _refuse("state_dir.full", exc, error=str(exc))
    if isinstance(exc, ConfigError):
        return _refuse("state_dir.unusable", exc, file=str(config.daemon.state_dir), problem=exc.problem)
    assert isinstance(exc, OSError)
    if exc.filename is None:  # a sentence already (the store's StorageError: a full disk, ...)
        return _refuse("state_dir.unusable", exc, file=str(config.daemon.state_dir), problem=str(exc))
    remedy = "move aside or repair what is named, or restore state_dir from a backup"
    problem = exc.strerror or str(exc)
    return _refuse(
        "state_dir.unusable",
        f"{exc.filename}: {problem}; {remedy}",
        file=str(exc.filename),
        problem=problem,
        remedy=remedy,
    )


@dataclass(frozen=True)
class Retrieval:
    retriever: Retriever
    validation: ValidationJob
    registry: CollectorRegistry


async def _serve_until_stopped(
    config: Config,
    store: FlagStore,
    rollout: Rollout | None,
    retrieval: Retrieval,
    notifier: Notifier,
    signals: Any,
    clock: Clock,
    hooks: DaemonHooks,
) -> int:
    readiness = Readiness()
    snapshot = lambda: store.snapshot  # noqa: E731  (always the current snapshot)
    registry, retriever, validation = retrieval.registry, retrieval.retriever, retrieval.validation
    info = {
        "listen": config.daemon.listen,
        "admin_socket": str(config.daemon.admin_socket),
        "state_dir": str(config.daemon.state_dir),
        "config": str(config.source),
    }
    public = _server(
        build_public_app(
            snapshot, clock, registry, readiness, extra_routes=retrieval_routes(retriever, snapshot, clock)
        ),
        config,
        "public",
    )
    controller = rollout.controller if rollout else None
    if controller is not None:
        registry.register(RolloutCollector(controller))
    emergency = controller.emergency_stop if controller else None
    routes = rollout_routes(controller, rollout.schedule.wake_at_next_transition if rollout else lambda: None)
    routes += signal_routes(rollout.builtin if rollout else None)
    routes.append(document_route("/v1/openapi.json", admin_document()))
    admin = _server(
        build_admin_app(store, clock, readiness, info, emergency=emergency, extra_routes=routes), config, "admin"
    )
    tcp = bind_tcp(config.daemon.listen_host, config.daemon.listen_port)
    uds = bind_unix(config.daemon.admin_socket, config.daemon.admin_socket_group)
    holder = {"config": config}
    try:
        async with anyio.create_task_group() as background:
            async with anyio.create_task_group() as serving:
                await serving.start(_serve, public, tcp)
                await serving.start(_serve, admin, uds)
                readiness.set("starting", None)
                readiness.set("retrieval", retriever.problem)

                def retrieval_problem(problem: str | None) -> None:
                    readiness.set("retrieval", problem)
                    if problem is None:
                        validation.wake()  # measure now rather than one interval after start

                background.start_soon(open_and_keep, retriever, retrieval_problem)
                background.start_soon(validation.run)
                if rollout is not None:
                    background.start_soon(rollout.notifications.run)
                    if rollout.builtin is not None:
                        background.start_soon(rollout.builtin.run)
                    rollout.schedule.start()
                host, port = tcp.getsockname()[:2]
                if hooks.started is not None:
                    hooks.started(Running(retriever, rollout, store, host, port, config.daemon.admin_socket))
                log.info(
                    "daemon.ready",
                    listen=f"{host}:{port}",
                    admin_socket=str(config.daemon.admin_socket),
                    flags=len(store.snapshot),
                    kill_switch=store.snapshot.kill_switch,
                    priority="notice",
                )
                notifier.ready(_status(store, host, port, rollout))
                if notifier.watchdog_seconds:
                    background.start_soon(_watchdog, notifier, notifier.watchdog_seconds)
                await _handle_signals(
                    signals,
                    store,
                    rollout,
                    holder,
                    notifier,
                    partial(_status, store, host, port, rollout),
                    (public, admin),
                )
                readiness.set("stopping", "draining in-flight requests")
                notifier.stopping(f"draining for up to {holder['config'].daemon.drain_seconds:g}s")
                for server in (public, admin):
                    server.should_exit = True
            if rollout is not None:
                await rollout.stop()
            background.cancel_scope.cancel()
    finally:
        config.daemon.admin_socket.unlink(missing_ok=True)
        with anyio.CancelScope(shield=True):
            await retriever.close()  # saves the vector indexes changed since the last save
    log.info("daemon.stopped", priority="notice")
    return 0


def _server(app: Starlette, config: Config, listener: str) -> uvicorn.Server:
    settings = uvicorn.Config(
        contain_errors(app, listener),
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        http="httptools",
        # uvicorn annotates int, and hands it to asyncio as a timeout, which takes seconds as a float
        timeout_graceful_shutdown=config.daemon.drain_seconds,  # type: ignore[arg-type]  # see above
    )
    return uvicorn.Server(settings)


async def _serve(server: uvicorn.Server, sock: socket.socket, *, task_status: TaskStatus[None]) -> None:
    """uvicorn's serve() minus its signal handling, which is ours: start, signal, run, drain."""
    server.config.load()
    server.lifespan = server.config.lifespan_class(server.config)
    await server.startup(sockets=[sock])
    task_status.started()
    await server.main_loop()
    await server.shutdown(sockets=[sock])


async def _handle_signals(
    signals: Any,
    store: FlagStore,
    rollout: Rollout | None,
    holder: dict[str, Config],
    notifier: Notifier,
    status: Callable[[], str],
    servers: tuple[uvicorn.Server, ...],
) -> None:
    """React to signals until one says stop."""
    async for signum in signals:
        name = signal.Signals(signum).name
        if signum in (signal.SIGTERM, signal.SIGINT):
            log.info("daemon.stopping", signal=name, priority="notice")
            return
        if signum == signal.SIGHUP:
            notifier.reloading()
            await _reload(store, holder, servers)
            if rollout is not None:
                reload_plan(rollout, holder["config"])
            notifier.ready(status())
        elif signum == signal.SIGUSR1:  # never raises: the kill switch is on in memory first, whatever the disk says
            stop = rollout.controller.emergency_stop if rollout is not None else None
            await engage_emergency(store, stop, "signal:SIGUSR1", "emergency shutdown requested with SIGUSR1")
            if rollout is not None:
                rollout.schedule.wake_at_next_transition()
            notifier.status(status())
        elif signum == signal.SIGUSR2:
            log.info(
                "daemon.status",
                status=status(),
                revision=store.snapshot.revision,
                flags={n: f.to_dict() for n, f in store.snapshot.flags.items()},
                rollout=rollout.controller.status() if rollout else None,
            )


async def _reload(store: FlagStore, holder: dict[str, Config], servers: tuple[uvicorn.Server, ...]) -> None:
    current = holder["config"]
    try:
        new = load_config(current.source)
    except ConfigError as exc:
        log.error("config.reload_rejected", file=str(exc.path), problem=exc.problem, kept="the running config")
    else:
        needs_restart = current.restart_needed_for(new)
        if needs_restart:
            log.warning("config.restart_needed", settings=needs_restart)
        for server in servers:
            server.config.timeout_graceful_shutdown = new.daemon.drain_seconds  # type: ignore[assignment]  # as above
        holder["config"] = new
        log.info("config.reloaded", file=str(new.source))
    try:
        snap = await anyio.to_thread.run_sync(store.reload)
    except FlagsFileError as exc:
        log.error(
            "flags.reload_rejected",
            file=str(exc.path),
            line=exc.line,
            problem=exc.problem,
            kept_revision=store.snapshot.revision,
        )
    else:
        log.info("flags.reloaded", revision=snap.revision, flags=len(snap))


async def _watchdog(notifier: Notifier, interval: float) -> None:
    """WATCHDOG=1 at half systemd's interval, from the event loop: if the loop stalls, pings stop.

    The pings keep a schedule on the loop's monotonic clock, so a busy loop that is late
    to each wake-up does not add its lag to every period and drift towards the limit.
    After a stall (the schedule already past), the schedule restarts from now: the missed
    pings are not sent in a burst, which would tell systemd nothing.
    """
    period = interval / 2
    deadline = anyio.current_time()
    while True:
        notifier.watchdog()
        now = anyio.current_time()
        deadline = deadline + period if deadline + period > now else now + period  # else: a stall
        await anyio.sleep_until(deadline)


def _status(store: FlagStore, host: str, port: int, rollout: Rollout | None = None) -> str:
    snap = store.snapshot
    kill = "ON" if snap.kill_switch else "off"
    text = f"serving {len(snap)} flags on {host}:{port}; kill switch {kill}"
    if rollout is not None:
        state = rollout.controller.state
        text += f"; rollout {state.plan} {state.phase} at {state.percentage:g}%"
    return text
