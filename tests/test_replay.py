"""`rolloutd replay` against real Prometheus history (backfilled with promtool).

Each test runs the shipped phase5 plan with hour 0 at the scenario's start, through the
daemon's own Controller, and checks the decisions it prints: the seeds' schedule while
healthy, the rollback after a sustained P95 breach, holds through a metrics gap, and
the failure limit after consecutive provider errors.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from controller.host.replay import replay
from tests.support.history import GAP, HEALTHY, P95_BREACH_AT_30H, Scenario
from tests.support.realservers import free_port

REPO = Path(__file__).resolve().parent.parent
PLAN = REPO / "deploy" / "plans" / "phase5.toml"
pytestmark = pytest.mark.anyio


def write_config(directory: Path, prometheus_url: str) -> Path:
    path = directory / "rolloutd.toml"
    path.write_text(
        f'[daemon]\nstate_dir = "{directory / "state"}"\nplan = "{PLAN}"\n[prometheus]\nurl = "{prometheus_url}"\n'
    )
    return path


async def run_replay(config: Path, scenario: Scenario, to_hour: float | None, *extra: str) -> list[dict[str, Any]]:
    argv = ["--config", str(config), "--from", scenario.at(0).isoformat(), "--json", *extra]
    if to_hour is not None:
        argv += ["--to", scenario.at(to_hour).isoformat()]
    out = io.StringIO()
    assert await replay(argv, out=out) == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


def hour(scenario: Scenario, decision: dict[str, Any]) -> float:
    """The decision's plan hour, rounded to the second (so 30h10m compares equal to 30 + 10/60)."""
    at = datetime.fromisoformat(decision["at"].replace("Z", "+00:00"))
    return round((at - scenario.at(0)).total_seconds()) / 3600


def of(decisions: list[dict[str, Any]], *actions: str) -> list[dict[str, Any]]:
    return [d for d in decisions if d.get("action") in actions]


async def test_breach_at_hour_30_rolls_back_after_the_seed_schedule(history_prometheus: Any, tmp_path: Path) -> None:
    """Stages at 0/4/12h, the 24h checkpoint GO, then a rollback within one guard interval of
    the P95 breach having been sustained for 5 minutes."""
    server = history_prometheus(P95_BREACH_AT_30H)
    reports = tmp_path / "reports"
    decisions = await run_replay(write_config(tmp_path, server.url), P95_BREACH_AT_30H, 31, "--reports", str(reports))
    s = P95_BREACH_AT_30H
    assert [(hour(s, d), d["stage"], d["percentage"]) for d in of(decisions, "stage_applied")] == [
        (0, 0, 0),
        (4, 1, 5),
        (12, 2, 10),
    ]
    (verdict,) = of(decisions, "verdict")
    assert (hour(s, verdict), verdict["recommendation"]) == (24, "GO")
    first = of(decisions, "rollback")[0]
    # the 5m rate window is all-breach from 30:05; sustained (2 checks) at 30:10
    assert 30 < hour(s, first) <= round(30 + 10 / 60, 6) + 1e-9, first
    assert (first["stage"], first["percentage"], first["guard"], first["severity"]) == (1, 5, "p95_latency", "critical")
    assert "p95_latency" in first["reason"] and "consecutive" in first["reason"]
    assert not [d for d in of(decisions, "stage_applied") if hour(s, d) > 30]
    summary = decisions[-1]
    assert summary["summary"] and summary["phase"] == "rolled_back"
    (report_file,) = reports.glob("checkpoint-1-*.json")
    report = json.loads(report_file.read_text())
    assert report["recommendation"] == "GO" and report["hours_elapsed"] == 24
    assert report["metrics"]["p95_latency_ms"] == pytest.approx(120, rel=0.1)
    assert report["metrics"]["cost_reduction_percentage"] is None and report["unmeasured"]["cost_reduction_percentage"]


async def test_healthy_history_completes_the_72_hour_plan_with_approval(
    history_prometheus: Any, tmp_path: Path
) -> None:
    """With --approve the 48h gate is answered (and journaled as such), stages 49/52/56h apply, 72h completes."""
    server = history_prometheus(HEALTHY)
    decisions = await run_replay(write_config(tmp_path, server.url), HEALTHY, None, "--approve")
    s = HEALTHY
    assert [hour(s, d) for d in of(decisions, "stage_applied")] == [0, 4, 12, 49, 52, 56]
    assert [(hour(s, d), d["recommendation"]) for d in of(decisions, "verdict")] == [(24, "GO"), (48, "GO"), (72, "GO")]
    (approved,) = of(decisions, "approved")
    assert hour(s, approved) == 48 and "rolloutd replay --approve" in approved["reason"]
    assert [hour(s, d) for d in of(decisions, "completed")] == [72]
    assert not of(decisions, "rollback", "hold", "warning")
    for d in decisions[:-1]:
        assert {"at", "action", "stage", "percentage", "reason"} <= set(d)
        assert d["at"].endswith("Z")


async def test_without_approval_the_replay_waits_at_the_48h_gate(history_prometheus: Any, tmp_path: Path) -> None:
    server = history_prometheus(HEALTHY)
    decisions = await run_replay(write_config(tmp_path, server.url), HEALTHY, 53)
    assert [hour(HEALTHY, d) for d in of(decisions, "awaiting_approval")] == [48]
    assert [hour(HEALTHY, d) for d in of(decisions, "stage_applied")] == [0, 4, 12]
    assert decisions[-1]["phase"] == "awaiting_approval"


async def test_short_gap_holds_and_the_overdue_stage_waits(history_prometheus: Any, tmp_path: Path) -> None:
    """No samples from 11:45 to 12:06: the pass-rate gauge goes blind at 11:50 (its last
    sample, 11:44:45, ages out of the 5m lookback), four blind checks hold (4 < failure_limit
    5), the 12h stage is not applied while blind, and applies at the first clean check, 12:10."""
    scenario = HEALTHY.with_gap(11.75, 12.1)
    server = history_prometheus(scenario)
    decisions = await run_replay(write_config(tmp_path, server.url), scenario, 13)
    (held,) = of(decisions, "hold")
    assert hour(scenario, held) == pytest.approx(11 + 50 / 60)
    assert "blind" in held["reason"] and "test_pass_rate" in held["reason"]
    (resumed,) = of(decisions, "resume")
    assert hour(scenario, resumed) == pytest.approx(12 + 10 / 60)
    last = of(decisions, "stage_applied")[-1]
    assert (last["stage"], hour(scenario, last)) == (2, hour(scenario, resumed))
    assert not of(decisions, "rollback")


async def test_long_gap_holds_then_the_failure_limit_rolls_back(history_prometheus: Any, tmp_path: Path) -> None:
    """A 4-hour outage: hold at once, and after failure_limit (5) blind checks roll back to 0%."""
    server = history_prometheus(GAP)
    decisions = await run_replay(write_config(tmp_path, server.url), GAP, 14.5)
    held, rolled = of(decisions, "hold")[0], of(decisions, "rollback")[0]
    assert hour(GAP, held) == pytest.approx(10 + 5 / 60)
    assert hour(GAP, rolled) == pytest.approx(10 + 25 / 60)  # the 5th consecutive no-data check
    assert rolled["percentage"] == 0 and "failure_limit 5" in rolled["reason"]
    assert [d["stage"] for d in of(decisions, "stage_applied")] == [0, 1]  # 12h never applied


class FailingWindow(BaseHTTPRequestHandler):
    """Forwards queries to Prometheus, except those whose `time=` is in [fail_from, fail_to): 503 HTML."""

    upstream = ""
    fail_from = fail_to = 0.0

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        query = parse_qs(urlsplit(self.path).query)
        at = float(query.get("time", ["0"])[0])
        if self.fail_from <= at < self.fail_to:
            body = b"<html><body><h1>503 Service Unavailable</h1></body></html>"
            self.send_response(503)
            self.send_header("Content-Type", "text/html")
        else:
            reply = httpx.get(self.upstream + self.path, timeout=10, trust_env=False)
            body = reply.content
            self.send_response(reply.status_code)
            self.send_header("Content-Type", reply.headers.get("content-type", "application/json"))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def failing_proxy(history_prometheus: Any) -> Iterator[str]:
    server = history_prometheus(HEALTHY)
    handler = type(
        "Handler",
        (FailingWindow,),
        {
            "upstream": server.url,
            "fail_from": HEALTHY.at(20).timestamp(),
            "fail_to": HEALTHY.at(21).timestamp(),
        },
    )
    proxy = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{proxy.server_address[1]}"
    finally:
        proxy.shutdown()
        proxy.server_close()


async def test_five_consecutive_errors_roll_back(failing_proxy: str, tmp_path: Path) -> None:
    """Prometheus answers 503 from hour 20: the first error holds, the fifth rolls back to 0%."""
    decisions = await run_replay(write_config(tmp_path, failing_proxy), HEALTHY, 21)
    held, rolled = of(decisions, "hold")[0], of(decisions, "rollback")[0]
    assert hour(HEALTHY, held) == 20 and "error" in held["reason"] and "503" in held["reason"]
    assert hour(HEALTHY, rolled) == pytest.approx(20 + 20 / 60)  # errors at 20:00 .. 20:20
    assert rolled["percentage"] == 0 and "errors" in rolled["reason"] and "failure_limit 5" in rolled["reason"]


def test_replay_command_line(history_prometheus: Any, tmp_path: Path) -> None:
    """`rolloutd replay` as a command: text lines on stdout; a config without Prometheus exits 78."""
    server = history_prometheus(HEALTHY)
    config = write_config(tmp_path, server.url)
    cmd = [
        sys.executable,
        "-m",
        "controller.main",
        "replay",
        "--config",
        str(config),
        "--from",
        HEALTHY.at(0).isoformat(),
        "--to",
        HEALTHY.at(5).isoformat(),
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "stage_applied" in lines[0] and "+  0.00h" in lines[0]
    assert "Hour 4: 5% of low-risk agents" in lines[1]
    assert lines[-1].startswith("replay ended") and "running at 5%" in lines[-1]
    config.write_text(f'[daemon]\nplan = "{PLAN}"\n')
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 78 and "[prometheus] url" in done.stderr
    done = subprocess.run(cmd[:-2] + ["--to", "yesterday"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "not a time" in done.stderr
