"""Live rehearsals: a real rolloutd running a small plan against a real Prometheus.

    Exporter           gauges served in Prometheus text format on a free loopback port
                       (prometheus_client's own server thread, its own registry); a
                       value can be set for good or pulsed for a number of scrapes
    Stage, CheckpointSpec, GuardSpec
                       the parts of a small test plan; `plan_text` / `write_plan` render it
    write_rehearsal_config   write_config() plus plan, time_scale and [prometheus]
    Admin              status(), journal(), command() over the daemon's admin socket
    Rehearsal          one rehearsing daemon: its Admin, flags.json, waits on its status
    rolloutctl()       the real CLI in a subprocess
    wait_until()       poll quickly; on timeout say what was awaited, what was last seen
                       and the daemon's recent log lines

Fixtures (import them into a test module): `exporter` (running, healthy), `scraped`
(a Prometheus that has the exporter's healthy values), `daemons` (starts rolloutd
processes, stops whichever still run at teardown), `rehearse` (a daemon running a
given plan against `scraped`).

Prometheus hands static targets to its scraper on a 5 s discovery tick, so `scraped`
costs ~6 s; a daemon is started only once the guards' series exist, so a rehearsal
begins clean instead of blind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tests.support.daemon_harness import REPO, Daemon, write_config
from tests.support.realservers import HOST, PrometheusServer, free_port

T = TypeVar("T")
P95 = "rehearsal_p95_seconds"
PASS_RATE = "rehearsal_pass_rate_percent"
HEALTHY = {P95: 0.05, PASS_RATE: 99.5}
PLAN_FLAGS = ("rehearsal_search_enabled", "rehearsal_cache_enabled")
POLL = 0.03
LOG_TAIL = 25


class Exporter:
    """Settable gauges, scraped by Prometheus from a real HTTP server in a background thread.

    `set` changes a gauge for good; `pulse` serves a value for the next N scrapes only,
    so a breach lasts exactly N scrape intervals in Prometheus however late the test
    thread runs (what a guard sees then depends on scrapes, not on the test's timing).
    """

    def __init__(self) -> None:
        self._values = _Gauges()
        self.registry = CollectorRegistry()
        self.registry.register(self._values)
        self.port = free_port()
        self._server, self._thread = start_http_server(self.port, addr=HOST, registry=self.registry)

    @property
    def target(self) -> str:
        return f"{HOST}:{self.port}"

    def set(self, name: str, value: float) -> None:
        self._values.set(name, value)

    def set_all(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.set(name, value)

    def pulse(self, name: str, value: float, scrapes: int) -> None:
        self._values.pulse(name, value, scrapes)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _Gauges(Collector):
    """The exporter's values; each scrape (a `collect`) uses up one scrape of every pulse."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._steady: dict[str, float] = {}
        self._pulses: dict[str, tuple[float, int]] = {}

    def set(self, name: str, value: float) -> None:
        with self._lock:
            self._steady[name] = value
            self._pulses.pop(name, None)

    def pulse(self, name: str, value: float, scrapes: int) -> None:
        with self._lock:
            self._pulses[name] = (value, scrapes)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # nothing to check at registration; names come and go with `set`

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            values = dict(self._steady)
            for name, (value, left) in list(self._pulses.items()):
                values[name] = value
                if left > 1:
                    self._pulses[name] = (value, left - 1)
                else:
                    del self._pulses[name]
        for name, value in values.items():
            yield GaugeMetricFamily(name, f"rehearsal gauge {name}", value=value)


@dataclass(frozen=True)
class GuardSpec:
    """A guard over one exporter gauge: `query = "max(METRIC)"` (or min, for "below")."""

    name: str
    metric: str
    warning: float
    critical: float
    emergency: float | None = None
    direction: str = "above"
    window: str = "5m"
    sustain: str = "5m"
    no_data: str = "hold"

    def toml(self) -> str:
        fn = "max" if self.direction == "above" else "min"
        lines = [
            "[[guards]]",
            f"name = {json.dumps(self.name)}",
            f"query = {json.dumps(f'{fn}({self.metric})')}",
            f"direction = {json.dumps(self.direction)}",
            f"warning = {self.warning!r}",
            f"critical = {self.critical!r}",
        ]
        if self.emergency is not None:
            lines.append(f"emergency = {self.emergency!r}")
        lines += [
            f"window = {json.dumps(self.window)}",
            f"sustain = {json.dumps(self.sustain)}",
            f"no_data = {json.dumps(self.no_data)}",
        ]
        return "\n".join(lines)


@dataclass(frozen=True)
class Stage:
    at: str  # an offset such as "30m" or "2h"
    percentage: float
    agents: tuple[str, ...] = ()

    def toml(self) -> str:
        return (
            f"[[stages]]\nat = {json.dumps(self.at)}\npercentage = {self.percentage!r}\n"
            f"agents = {json.dumps(list(self.agents))}"
        )


@dataclass(frozen=True)
class CheckpointSpec:
    at: str
    name: str
    requires_approval: bool = False

    def toml(self) -> str:
        return (
            f"[[checkpoints]]\nat = {json.dumps(self.at)}\nname = {json.dumps(self.name)}\n"
            f"requires_approval = {json.dumps(self.requires_approval)}\nmax_rollbacks = 0"
        )


P95_GUARD = GuardSpec("p95_latency", P95, warning=0.2, critical=0.3, emergency=0.5)
PASS_RATE_GUARD = GuardSpec("test_pass_rate", PASS_RATE, warning=98.0, critical=95.0, emergency=90.0, direction="below")


def plan_text(
    stages: list[Stage],
    *,
    guards: tuple[GuardSpec, ...] = (P95_GUARD, PASS_RATE_GUARD),
    checkpoints: tuple[CheckpointSpec, ...] = (),
    name: str = "rehearsal",
    guard_interval: str = "5m",
    failure_limit: int = 5,
    flags: tuple[str, ...] = PLAN_FLAGS,
) -> str:
    head = (
        f"[plan]\nname = {json.dumps(name)}\nflags = {json.dumps(list(flags))}\n"
        f"guard_interval = {json.dumps(guard_interval)}\nfailure_limit = {failure_limit}\n"
        f'failure_response = "rollback_zero"'
    )
    parts = [head, *(s.toml() for s in stages), *(c.toml() for c in checkpoints), *(g.toml() for g in guards)]
    return "\n\n".join(parts) + "\n"


def write_plan(path: Path, stages: list[Stage], **options: Any) -> Path:
    path.write_text(plan_text(stages, **options))
    return path


def write_rehearsal_config(
    directory: Path, plan: Path, prometheus_url: str, time_scale: float, **daemon: object
) -> Path:
    """The daemon's config for a rehearsal: [daemon] with the plan and time_scale, and [prometheus]."""
    directory.mkdir(parents=True, exist_ok=True)
    path = write_config(directory, plan=str(plan), time_scale=time_scale, **daemon)
    # A short timeout: a guard round must not wait 10 s on a Prometheus being restarted.
    with path.open("a") as handle:
        handle.write(f"\n[prometheus]\nurl = {json.dumps(prometheus_url)}\ntimeout_seconds = 2.0\n")
    return path


class Admin:
    """The rollout's admin API over the unix socket; one connection per call, so a
    restarted daemon never meets a stale pooled connection."""

    def __init__(self, socket: Path, timeout: float = 5.0) -> None:
        self.socket, self.timeout = socket, timeout

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        transport = httpx.HTTPTransport(uds=str(self.socket))
        with httpx.Client(transport=transport, base_url="http://rolloutd", timeout=self.timeout) as client:
            return client.request(method, path, **kwargs)

    def status(self) -> dict[str, Any]:
        response = self._call("GET", "/v1/rollout")
        assert response.status_code == 200, response.text
        return response.json()

    def journal(self, limit: int = 1000) -> list[dict[str, Any]]:
        response = self._call("GET", "/v1/rollout/journal", params={"limit": limit})
        assert response.status_code == 200, response.text
        return response.json()["decisions"]

    def command(self, name: str, **body: Any) -> httpx.Response:
        """POST /v1/rollout/NAME; the caller checks the status code (a refusal is a 409)."""
        return self._call("POST", f"/v1/rollout/{name}", json=body)


def rolloutctl(socket: Path, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run `python -m deploy.cli --socket SOCKET ARGS...` as an operator would (bounded)."""
    env = {k: v for k, v in os.environ.items() if k != "ROLLOUTD_SOCKET"}
    return subprocess.run(
        [sys.executable, "-m", "deploy.cli", "--socket", str(socket), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def log_tail(daemon: Daemon | None, lines: int = LOG_TAIL) -> str:
    if daemon is None:
        return "(no daemon given)"
    recent = daemon.lines[-lines:]
    return "".join(line if len(line) <= 400 else line[:400] + "...\n" for line in recent) or "(no output yet)"


def wait_until(
    predicate: Callable[[], T], timeout: float, what: str, daemon: Daemon | None = None, poll: float = POLL
) -> T:
    """Return the predicate's first truthy result; fail after `timeout` seconds naming `what`,
    the last result seen and the daemon's recent log lines. A daemon that is not answering
    (restarting, or its socket not there yet) counts as "not yet"."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
        except (httpx.TransportError, FileNotFoundError, ConnectionRefusedError) as exc:
            last = f"(not answering: {type(exc).__name__}: {exc})"
        else:
            if last:
                return last
        if daemon is not None and daemon.proc is not None and daemon.proc.poll() is not None:
            raise AssertionError(
                f"waiting for {what}: rolloutd exited with {daemon.proc.returncode}\n"
                f"last seen: {_short(last)}\nrolloutd's last log lines:\n{log_tail(daemon)}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(
                f"waiting for {what}: not within {timeout:g}s\nlast seen: {_short(last)}\n"
                f"rolloutd's last log lines:\n{log_tail(daemon)}"
            )
        time.sleep(poll)


def _short(value: Any, limit: int = 1500) -> str:
    text = json.dumps(value, default=str) if isinstance(value, (dict, list)) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass
class Rehearsal:
    """One rehearsing daemon: its process, its admin API, its plan file and its state_dir."""

    daemon: Daemon
    plan: Path

    @property
    def admin(self) -> Admin:
        return Admin(self.daemon.socket)

    @property
    def state_dir(self) -> Path:
        return self.daemon.config.parent / "state"

    def flags(self) -> dict[str, Any]:
        return read_flags(self.state_dir)

    def wait_status(
        self, predicate: Callable[[dict[str, Any]], bool], what: str, timeout: float = 15.0
    ) -> dict[str, Any]:
        """The first status for which `predicate` holds."""

        def check() -> dict[str, Any] | None:
            status = self.admin.status()
            return status if predicate(status) else None

        return wait_until(check, timeout, what, self.daemon)

    def wait_stage(self, stage: int, timeout: float = 15.0) -> dict[str, Any]:
        return self.wait_status(lambda s: s["stage"] == stage, f"stage {stage} to be applied", timeout)

    def wait_evaluations(self, rounds: int, timeout: float = 15.0) -> dict[str, Any]:
        """Let `rounds` more guard evaluations happen (counted by their plan times)."""
        seen: list[str] = []

        def later(status: dict[str, Any]) -> bool:
            at = status["last_evaluation_plan_at"]
            if at and at not in seen:
                seen.append(at)
            return len(seen) > rounds

        return self.wait_status(later, f"{rounds} more guard evaluations", timeout)

    def journal(self) -> list[dict[str, Any]]:
        return self.admin.journal()


def applied_stages(journal: list[dict[str, Any]]) -> list[int]:
    return [d["stage"] for d in journal if d["action"] == "stage_applied"]


def read_flags(state_dir: Path) -> dict[str, Any]:
    return json.loads((state_dir / "flags.json").read_text())


def rollout_view(flags: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    """What a rollout decides about each flag: enabled, percentage, constraints (no audit ids or times)."""
    return {
        name: (body["enabled"], body.get("rollout_percentage"), json.dumps(body.get("constraints", [])))
        for name, body in flags.items()
    }


def plan_flags_at(flags: dict[str, Any], percentage: float, agents: tuple[str, ...]) -> bool:
    """Every plan flag on, at `percentage` of the cohort `agents`."""
    cohort = [{"context_name": "agent", "operator": "IN", "values": list(agents)}]
    return all(
        flags.get(name, {}).get("enabled") is True
        and flags[name].get("rollout_percentage") == percentage
        and flags[name].get("constraints") == cohort
        for name in PLAN_FLAGS
    )


def events_named(daemon: Daemon, name: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e.get("event") == name]


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def exporter() -> Iterator[Exporter]:
    """A live exporter with healthy gauge values."""
    live = Exporter()
    live.set_all(HEALTHY)
    try:
        yield live
    finally:
        live.close()


@pytest.fixture
def scraped(prometheus_server: PrometheusServer, exporter: Exporter) -> PrometheusServer:
    """Prometheus scraping the exporter every second, with the healthy values already in."""
    prometheus_server.start(targets=[exporter.target], scrape_interval="1s")
    for metric in HEALTHY:
        prometheus_server.wait_for_query(metric)
    return prometheus_server


@pytest.fixture
def daemons() -> Iterator[Callable[[Path], Daemon]]:
    """`start(config)`: a running rolloutd; every one still running is stopped at teardown."""
    started: list[Daemon] = []

    def start(config: Path) -> Daemon:
        daemon = Daemon(config)
        started.append(daemon)
        return daemon.start()

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture
def rehearse(tmp_path: Path, scraped: PrometheusServer, daemons: Callable[[Path], Daemon]) -> Callable[..., Rehearsal]:
    """`rehearse(stages, time_scale=600, directory="rollout", **plan_options)`: a daemon
    running that plan against `scraped`, its state under tmp_path/directory."""

    def start(
        stages: list[Stage], *, time_scale: float = 600.0, directory: str = "rollout", **plan_options: Any
    ) -> Rehearsal:
        base = tmp_path / directory
        base.mkdir()
        plan = write_plan(base / "plan.toml", stages, **plan_options)
        return Rehearsal(daemons(write_rehearsal_config(base, plan, scraped.url, time_scale)), plan)

    return start
