"""rolloutctl's rollout commands end to end: a real `python -m deploy` against a real rolloutd
running a plan, its guards answered by a real Prometheus.

The shared daemon rehearses a small plan at time_scale 3600 (a guard check every ~0.08 s)
whose later stages lie thousands of plan hours away, so between the tests' own commands
its position is stable: 0% at stage 0, running. Prometheus scrapes only itself, so every
guard query has no data, and the guards say no_data = "pass". Each test that moves the
rollout starts from that position (`steady`), which puts it back if an earlier test moved it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.daemon_harness import REPO, Daemon, write_config
from tests.support.plans import checkpoint, guard, plan_toml, stage
from tests.support.realservers import HOST, PrometheusServer

TIMEOUT = 30.0
# created at 0%; the later stages never fall due within a test
STAGES = (
    stage(0, 0, name="Hour 0: created at 0%"),
    stage(10000, 10, ["Builder"], name="Hour 10000: 10% of Builder"),
    stage(20000, 50, ["Builder", "QA"]),
)
GUARDS = (
    guard(
        "p95_latency",
        query="histogram_quantile(0.95, sum by (le) (rate(cli_latency_seconds_bucket[{{window}}])))",
        direction="above",
        warning=0.2,
        critical=0.3,
        no_data="pass",
    ),
    guard(
        "error_ratio",
        query="sum(rate(cli_errors_total[{{window}}])) / sum(rate(cli_requests_total[{{window}}]))",
        direction="above",
        warning=0.01,
        critical=0.05,
        no_data="pass",
    ),
)


def write_plan(directory: Path, checkpoint_at: str = "15000h", checkpoint_name: str = "far review") -> Path:
    path = directory / "plan.toml"
    path.write_text(
        plan_toml(
            name="cli_rehearsal",
            description="rolloutctl end to end",
            flags=["cli_ranker", "cli_cache"],
            failure_limit=5,
            stages=STAGES,
            checkpoints=[checkpoint(checkpoint_at, name=checkpoint_name, requires_approval=True)],
            guards=GUARDS,
        )
    )
    return path


def rollout_config(directory: Path, prometheus_url: str | None, **daemon: object) -> Path:
    """write_config() with the plan in `directory`, time_scale 3600 and, if given, [prometheus] url."""
    config = write_config(directory, plan=str(directory / "plan.toml"), time_scale=3600.0, **daemon)
    if prometheus_url is not None:
        config.write_text(config.read_text() + f"[prometheus]\nurl = {json.dumps(prometheus_url)}\n")
    return config


def ctl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run rolloutctl (bounded) and return its exit status and output."""
    env = {k: v for k, v in os.environ.items() if k != "ROLLOUTD_SOCKET"}
    return subprocess.run(
        [sys.executable, "-m", "deploy", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def admin(daemon: Daemon, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """The daemon's admin API directly (test set-up, not under test)."""
    transport = httpx.HTTPTransport(uds=str(daemon.socket))
    with httpx.Client(transport=transport, base_url="http://rolloutd", timeout=10.0) as client:
        response = client.request(method, path, json=body)
    assert response.status_code < 400, response.text
    return response.json()


def wait_until(check: Callable[[], Any], what: str, daemon: Daemon, timeout: float = 15.0) -> Any:
    """Poll `check` until it is truthy; on timeout fail saying what, with the daemon's last log lines."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.05)
    tail = "".join(daemon.lines[-15:])
    raise AssertionError(f"not within {timeout}s: {what}\nrolloutd's last lines:\n{tail}")


def evaluated_at(status: dict[str, Any]) -> datetime:
    """The plan time of the daemon's last guard check."""
    return datetime.fromisoformat(status["last_evaluation_plan_at"])


def plan_flags(daemon: Daemon) -> dict[str, Any]:
    flags = json.loads((daemon.config.parent / "state" / "flags.json").read_text())
    return {name: flags[name] for name in ("cli_ranker", "cli_cache")}


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """One Prometheus for the module, scraping only itself: no series the guards ask for."""
    server = PrometheusServer(tmp_path_factory.mktemp("prometheus"))
    server.start(targets=[f"{HOST}:{server.port}"])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, prometheus: PrometheusServer) -> Iterator[Daemon]:
    """One rolloutd for the module, running the CLI plan against `prometheus`."""
    directory = tmp_path_factory.mktemp("rollout-cli")
    write_plan(directory)
    daemon = Daemon(rollout_config(directory, prometheus.url)).start()
    yield daemon
    daemon.stop()


@pytest.fixture
def steady(shared: Daemon) -> Daemon:
    """The shared daemon, running at stage 0 (0%): put back there if an earlier test moved it."""
    reset = {"reason": "test set-up", "actor": "pytest"}
    status = admin(shared, "GET", "/v1/rollout")
    if status["phase"] == "emergency":
        status = admin(shared, "POST", "/v1/rollout/resume", {**reset, "clear_emergency": True})["status"]
    if status["stage"] > 0:
        status = admin(shared, "POST", "/v1/rollout/rollback", {**reset, "to": 0})["status"]
    if status["phase"] in ("holding", "rolled_back"):
        admin(shared, "POST", "/v1/rollout/resume", reset)
    wait_until(
        lambda: (s := admin(shared, "GET", "/v1/rollout"))["phase"] == "running" and s["stage"] == 0,
        "running at stage 0 (the first stage applies at the first clean guard check)",
        shared,
    )
    return shared


# -- status ------------------------------------------------------------------------------------


def test_status_prints_the_phase_the_next_transition_and_every_guard(steady: Daemon) -> None:
    """`status` exits 0 and shows phase and stage, the next transition, the kill switch, each guard and checkpoint."""
    done = ctl("--socket", steady.socket, "status")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "rollout cli_rehearsal: RUNNING at 0% (stage 0: Hour 0: created at 0%)"
    assert "  agents: (none)" in lines
    assert "time_scale 3600; guards every 5m" in done.stdout
    assert "  next: Hour 10000: 10% of Builder at " in done.stdout
    assert "  kill switch: off;" in done.stdout
    header = next(line for line in lines if line.strip().startswith("GUARD"))
    assert header.split() == ["GUARD", "VERDICT", "VALUE", "THRESHOLD", "BREACHES", "FAILURES"]
    rows = {
        line.split()[0]: line.split()
        for line in lines[lines.index(header) + 1 :]
        if line.startswith("  ") and not line.strip().startswith("checkpoint")
    }
    assert rows["p95_latency"][1:] == ["no_data", "-", ">", "0.2", "0", "0"]
    assert rows["error_ratio"][1:] == ["no_data", "-", ">", "0.01", "0", "0"]
    assert any(
        line.startswith("  checkpoint far review at ") and line.endswith(": pending, needs approval") for line in lines
    )


def test_json_status_is_the_daemons_answer(steady: Daemon) -> None:
    """`--json status` exits 0 and prints the status JSON with the fields scripts read."""
    done = ctl("--config", steady.config, "--json", "status")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert (status["rollout"], status["phase"], status["stage"], status["percentage"], status["agents"]) == (
        "cli_rehearsal",
        "running",
        0,
        0.0,
        [],
    )
    assert status["next_transition"] == "Hour 10000: 10% of Builder"
    assert status["emergency"] is False and status["time_scale"] == 3600.0
    assert [
        (g["name"], g["verdict"], g["value"], g["threshold"], g["consecutive_breaches"]) for g in status["guards"]
    ] == [("p95_latency", "no_data", None, 0.2, 0), ("error_ratio", "no_data", None, 0.01, 0)]


def test_status_json_after_the_command_as_documented(steady: Daemon) -> None:
    """`status --json`, as the README writes it, prints the status JSON."""
    done = ctl("--socket", steady.socket, "status", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rollout"] == "cli_rehearsal"


# -- commands --------------------------------------------------------------------------------


def test_hold_then_resume(steady: Daemon) -> None:
    """`hold --reason` holds with the operator's reason shown by `status`; `resume` runs again."""
    held = ctl("--socket", steady.socket, "hold", "--reason", "customer report OPS-7")
    assert held.returncode == 0, held.stderr
    first, last = held.stdout.splitlines()
    assert first.startswith("hold: operator: ")
    assert first.endswith("via rolloutctl: customer report OPS-7 (stage 0, 0%)")
    assert last == "rollout cli_rehearsal is holding at 0%"
    status = ctl("--socket", steady.socket, "status").stdout
    assert "rollout cli_rehearsal: HOLDING at 0%" in status
    assert "  why: operator: " in status and "customer report OPS-7" in status

    held_at = evaluated_at(admin(steady, "GET", "/v1/rollout"))
    later = wait_until(
        lambda: evaluated_at(s := admin(steady, "GET", "/v1/rollout")) > held_at and s,
        "a guard check after the hold",
        steady,
    )
    assert later["phase"] == "holding", "an operator's hold outlasts clean guard checks"
    resumed = ctl("--socket", steady.socket, "resume", "--reason", "false alarm")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.splitlines()[0].startswith("resume: operator: ")
    assert resumed.stdout.splitlines()[-1] == "rollout cli_rehearsal is running at 0%"


def test_promote_then_rollback_to_0(steady: Daemon) -> None:
    """`promote` applies the next stage to the flags at once; `rollback --to 0 --reason` takes them back to 0%."""
    promoted = ctl("--socket", steady.socket, "promote", "--reason", "skip ahead")
    assert promoted.returncode == 0, promoted.stderr
    first, last = promoted.stdout.splitlines()
    assert first.startswith("stage_applied: operator: ")
    assert first.endswith("via rolloutctl: promoted to Hour 10000: 10% of Builder: skip ahead (stage 1, 10%)")
    assert last == "rollout cli_rehearsal is running at 10%"
    for flag in plan_flags(steady).values():
        assert (flag["enabled"], flag["rollout_percentage"]) == (True, 10.0)
        assert {"context_name": "agent", "operator": "IN", "values": ["Builder"]} in flag["constraints"]

    rolled = ctl("--socket", steady.socket, "rollback", "--to", "0", "--reason", "latency creeping")
    assert rolled.returncode == 0, rolled.stderr
    first, last = rolled.stdout.splitlines()
    assert first.startswith("rollback: operator: ") and first.endswith(": latency creeping (stage 0, 0%)")
    assert last == "rollout cli_rehearsal is rolled_back at 0%"
    assert all(flag["rollout_percentage"] == 0.0 for flag in plan_flags(steady).values())
    journal = admin(steady, "GET", "/v1/rollout/journal?limit=2")["decisions"]
    assert [(d["action"], d["stage"], d["status"]) for d in journal] == [
        ("stage_applied", 1, "done"),
        ("rollback", 0, "done"),
    ]
    assert [(d["trigger"], d["reason"]) for d in journal] == [
        ({"kind": "operator", "detail": "promote"}, "promoted to Hour 10000: 10% of Builder: skip ahead"),
        ({"kind": "operator", "detail": "rollback"}, "latency creeping"),
    ] and journal[1]["actor"].endswith("via rolloutctl")


def test_json_command_prints_the_daemons_answer(steady: Daemon) -> None:
    """`--json hold` prints the decisions and the status after them."""
    done = ctl("--socket", steady.socket, "--json", "hold", "--reason", "scripted")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert [d["action"] for d in answer["decisions"]] == ["hold"]
    assert answer["status"]["phase"] == "holding"


def test_approve_with_nothing_waiting_exits_1_with_the_daemons_reason(steady: Daemon) -> None:
    """`approve` when no checkpoint waits exits 1 and says why; the rollout is unchanged."""
    done = ctl("--socket", steady.socket, "approve", "--reason", "sign-off")
    assert done.returncode == 1
    assert done.stderr.strip() == "rolloutctl: no checkpoint is waiting for approval: the rollout is running"
    assert done.stdout == ""
    assert admin(steady, "GET", "/v1/rollout")["phase"] == "running"


def test_rollback_ahead_of_the_applied_stage_exits_1(steady: Daemon) -> None:
    """`rollback --to 2` from stage 0 is refused with the remedy (`promote`)."""
    done = ctl("--socket", steady.socket, "rollback", "--to", "2", "--reason", "r")
    assert done.returncode == 1
    assert "stage 2 is ahead of the applied stage 0; use `promote` to advance" in done.stderr


def test_report_with_no_reports_yet(steady: Daemon) -> None:
    """`report` before any checkpoint says there are none (and `--json report` is an empty list)."""
    done = ctl("--socket", steady.socket, "report")
    assert (done.returncode, done.stdout) == (0, "no checkpoint reports yet\n"), done.stderr
    as_json = ctl("--socket", steady.socket, "--json", "report")
    assert (as_json.returncode, json.loads(as_json.stdout)) == (0, [])
    missing = ctl("--socket", steady.socket, "report", "checkpoint-1-nothing")
    assert missing.returncode == 1
    assert "no report 'checkpoint-1-nothing'; `rolloutctl report` lists them" in missing.stderr


def test_emergency_stop_then_resume_needs_clear_emergency(steady: Daemon) -> None:
    """After `emergency-stop`, `status` shows EMERGENCY and the kill switch on; `resume` exits 1 naming
    --clear-emergency; `resume --clear-emergency` leaves it, rolled back at 0% with the kill switch off."""
    stopped = ctl("--socket", steady.socket, "emergency-stop", "--reason", "P0: wrong answers")
    assert stopped.returncode == 0, stopped.stderr
    status = ctl("--socket", steady.socket, "status").stdout
    assert "rollout cli_rehearsal: EMERGENCY at 0% (no stage applied)" in status
    assert "  kill switch: ON;" in status
    assert all(flag["enabled"] is False for flag in plan_flags(steady).values())

    refused = ctl("--socket", steady.socket, "resume", "--reason", "too soon")
    assert refused.returncode == 1
    assert "`rolloutctl resume --clear-emergency` clears it" in refused.stderr
    cleared = ctl("--socket", steady.socket, "resume", "--clear-emergency", "--reason", "P0 fixed")
    assert cleared.returncode == 0, cleared.stderr
    assert cleared.stdout.splitlines()[0].startswith("emergency_cleared: ")
    assert cleared.stdout.splitlines()[-1] == "rollout cli_rehearsal is rolled_back at 0%"
    assert admin(steady, "GET", "/v1/rollout")["kill_switch"] is False


# -- usage errors and an absent daemon ----------------------------------------------------------


def test_rollback_without_to_is_a_usage_error() -> None:
    """`rollback --reason r` without --to exits 2 naming --to (no daemon needed)."""
    done = ctl("--socket", "/nonexistent/admin.sock", "rollback", "--reason", "r")
    assert done.returncode == 2
    assert "--to" in done.stderr and "required" in done.stderr


def test_hold_without_reason_is_a_usage_error() -> None:
    """`hold` without --reason exits 2 naming --reason."""
    done = ctl("--socket", "/nonexistent/admin.sock", "hold")
    assert done.returncode == 2 and "--reason" in done.stderr


@pytest.mark.parametrize("command", [("status",), ("hold", "--reason", "r"), ("report",)])
def test_an_unreachable_socket_exits_3(tmp_path: Path, command: tuple[str, ...]) -> None:
    """With no daemon on the socket, every rollout command exits 3 naming the socket and how it was found."""
    socket_path = tmp_path / "admin.sock"
    done = ctl("--socket", socket_path, *command)
    assert done.returncode == 3
    assert f"cannot reach rolloutd at {socket_path} (from --socket)" in done.stderr


# -- a checkpoint on a live daemon ---------------------------------------------------------------


def test_a_checkpoint_report_on_a_live_daemon(tmp_path: Path, prometheus: PrometheusServer) -> None:
    """At a checkpoint with nothing measurable the daemon writes a HOLD report; `report` lists it and prints
    its go/no-go table with each unmeasured value and why, and the rollout waits for approval."""
    write_plan(tmp_path, checkpoint_at="1h", checkpoint_name="hour one review")
    daemon = Daemon(rollout_config(tmp_path, prometheus.url)).start()
    try:
        name = "checkpoint-1-hour-one-review.json"
        wait_until(
            lambda: ctl("--socket", daemon.socket, "report").stdout == name + "\n",
            "the hour-one report (1 s of wall time at time_scale 3600)",
            daemon,
        )
        status = admin(daemon, "GET", "/v1/rollout")
        assert status["phase"] == "awaiting_approval" and status["reports"] == [name]
        shown = ctl("--socket", daemon.socket, "report", name.removesuffix(".json"))
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert lines[0] == (
            "hour one review: HOLD (error_ratio unmeasured: no samples in the checkpoint's period; "
            "p95_latency unmeasured: no samples in the checkpoint's period)"
        )
        assert "0% of no agents" in lines[1]
        assert lines[2] == "  rollbacks 0, manual interventions 0; next: "
        table = {line.split()[0]: line.split() for line in lines[4:6]}
        assert table["p95_latency"][1:5] == ["-", "<=", "0.2", "HOLD"]
        assert "no samples in the checkpoint's period" in shown.stdout
        assert "    cost_reduction_percentage: -  (rolloutd exports no cost signal" in shown.stdout
        report = json.loads((tmp_path / "state" / "reports" / name).read_text())
        assert report["recommendation"] == "HOLD" and report["metrics"]["p95_latency_ms"] is None
    finally:
        daemon.stop()


# -- start-up errors -------------------------------------------------------------------------------


def test_a_plan_without_prometheus_url_stops_start_up_with_78(tmp_path: Path) -> None:
    """A daemon given a plan but no [prometheus] url exits 78 with a message naming `[prometheus] url`."""
    write_plan(tmp_path)
    daemon = Daemon(rollout_config(tmp_path, None)).start(wait=False)
    assert daemon.wait() == 78
    event = next(e for e in daemon.events() if e["event"] == "rollout.cannot_start")
    assert "[prometheus] url" in event["problem"] and str(daemon.config) in event["problem"]
    assert event["_priority"] == 2
    assert not daemon.socket.exists()


def test_a_plan_with_errors_stops_start_up_with_78_naming_file_and_line(tmp_path: Path) -> None:
    """A plan file with a mistake exits 78; the message names the file and the line, and `plan validate`."""
    plan = write_plan(tmp_path)
    lines = plan.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("percentage = 10"))
    lines[at] = "percentage = 150"
    plan.write_text("\n".join(lines) + "\n")
    daemon = Daemon(rollout_config(tmp_path, "http://127.0.0.1:9")).start(wait=False)
    assert daemon.wait() == 78
    problem = next(e for e in daemon.events() if e["event"] == "rollout.cannot_start")["problem"]
    assert f"{plan}:{at + 1}:" in problem, problem
    assert "150" in problem and f"rolloutctl plan validate {plan}" in problem
