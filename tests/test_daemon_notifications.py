"""The running daemon announces its decisions: a rollback reaches a real webhook receiver
(Slack-shaped) and a real HTTP endpoint speaking Alertmanager's v2 alerts API."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.support.daemon_harness import Daemon
from tests.support.realservers import PrometheusServer
from tests.support.rehearsal import (  # noqa: F401  (fixtures)
    P95,
    Exporter,
    Rehearsal,
    Stage,
    daemons,
    exporter,
    scraped,
    write_plan,
    write_rehearsal_config,
)
from tests.test_notify import Receiver, receiver  # noqa: F401  (fixture)
from tests.test_rehearsal import COHORT_1, COHORT_2, FAR, PULSE_SCRAPES, SCALE, SUSTAIN_3


def test_a_rollback_is_announced_to_webhooks_and_alertmanager(
    tmp_path: Path,
    scraped: PrometheusServer,
    exporter: Exporter,
    daemons: Callable[[Path], Daemon],
    receiver: Callable[..., Receiver],
) -> None:
    hook, alertmanager = receiver(), receiver()
    plan = write_plan(
        tmp_path / "plan.toml",
        [Stage("0m", 0), Stage("10m", 5, COHORT_1), Stage("20m", 10, COHORT_2), FAR],
        guards=SUSTAIN_3,
    )
    config = write_rehearsal_config(tmp_path, plan, scraped.url, SCALE)
    config.write_text(
        config.read_text() + f'\n[notifications]\nwebhook_urls = ["{hook.url}/hooks/rollouts"]\n'
        f'alertmanager_url = "{alertmanager.url}"\n'
    )
    r = Rehearsal(daemons(config), plan)
    r.wait_stage(2)
    exporter.pulse(P95, 0.35, scrapes=PULSE_SCRAPES)
    r.wait_status(lambda s: s["phase"] == "rolled_back", "a rollback after a sustained critical breach")
    assert hook.wait_for(2, timeout=10) and alertmanager.wait_for(2, timeout=10)
    slack = [q for q in hook.requests if "rollback" in q.body["text"]]
    assert slack and slack[0].path == "/hooks/rollouts", [q.body["text"] for q in hook.requests]
    fields = {f["title"]: f["value"] for f in slack[0].body["attachments"][0]["fields"]}
    assert fields["guard"] == "p95_latency" and fields["percentage"] == "5.0", fields
    alerts = [a for q in alertmanager.requests for a in q.body if a["labels"]["alertname"] == "RolloutdRollback"]
    assert alertmanager.requests[0].path == "/api/v2/alerts"
    assert alerts and alerts[0]["labels"]["severity"] == "critical" and alerts[0]["labels"]["guard"] == "p95_latency"
    assert "p95_latency 0.35 > critical 0.3" in alerts[0]["annotations"]["description"]
