"""`rolloutctl report --html`: the page (controller/views/report_html.py) rendered from a real
controller's answers, and a real daemon's page rendered by headless Chromium.

The pure tests drive the service rig's Controller (simulated clock, real StateDB) through
a rollout with an automatic rollback, a checkpoint NO-GO, a provider outage and operator
commands, then render its status, journal, observations and reports. The live test runs
rolloutd against Prometheus at time_scale 600 (tests/support/rehearsal.py), writes the page with
the real rolloutctl and has Debian's `chromium` load it: the DOM must hold the charts and
texts, and a screenshot must show more than a blank page.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from controller.views.report_charts import MAX_POINTS
from controller.views.report_html import render_html
from deploy.report_page import prometheus_series
from tests.support.realservers import PrometheusServer, free_port
from tests.support.rehearsal import (  # noqa: F401  (fixtures)
    P95,
    P95_GUARD,
    PASS_RATE_GUARD,
    CheckpointSpec,
    Exporter,
    Rehearsal,
    Stage,
    daemons,
    exporter,
    rehearse,
    rolloutctl,
    scraped,
)
from tests.support.service_rig import PHASE5, T0, rigs  # noqa: F401  (rigs is a fixture)

SCRIPT = "<script>alert('x')</script>"
CHROMIUM_TIMEOUT = 90


def iso(hours: float) -> str:
    return (T0 + timedelta(hours=hours)).isoformat().replace("+00:00", "Z")


@pytest.fixture
async def rollout(rigs) -> dict[str, Any]:  # noqa: F811
    """What `rolloutctl report --html` fetches, from a phase5 rollout with two rollbacks (a p95 breach, then
    the 24h checkpoint's NO-GO), a two-round provider outage, and an operator's resume and hold."""
    rig = rigs()
    await rig.controller.open()

    async def every_half_hour(start: float, end: float) -> None:
        await rig.at(*(start + k / 2 for k in range(int((end - start) * 2) + 1)))

    await every_half_hour(0, 12)
    rig.source.guards["p95_latency"] = 0.4
    await rig.at(12 + 5 / 60, 12 + 10 / 60)
    rig.source.guards["p95_latency"] = 0.1
    await rig.controller.command("resume", reason=f"p95 fine again {SCRIPT}", actor="alice")
    await every_half_hour(13, 13.5)
    rig.source.guards["error_rate"] = "connection refused <b>by proxy</b>"
    await every_half_hour(14, 14.5)
    rig.source.guards["error_rate"] = 0.0005
    await every_half_hour(15, 24)
    await rig.controller.command("hold", reason="look at the day-1 report", actor="bob")
    status = rig.controller.status()
    reports = [json.loads(p.read_text()) for p in rig.controller.reports()]
    return {
        "status": status,
        "decisions": rig.controller.journal(limit=10_000),
        "observations": rig.controller.observations(limit=10_000),
        "reports": reports,
    }


def page_of(rollout: dict[str, Any], **extra: Any) -> str:
    return render_html(rollout["status"], rollout["decisions"], rollout["observations"], rollout["reports"], **extra)


@pytest.mark.anyio
async def test_daemon_texts_are_escaped_and_the_page_loads_nothing(rollout: dict[str, Any]) -> None:
    """A reason holding <script> appears escaped; the page has no script, and no src/href/url() to elsewhere."""
    page = page_of(rollout, prometheus={"url": "http://prometheus.example:9090", "error": SCRIPT, "metrics": []})
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "connection refused &lt;b&gt;by proxy&lt;/b&gt;" in page
    assert "<script" not in page.lower() and "<b>" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert not re.search(r"<(link|img|iframe|object|embed)\b|@import|url\(", page, re.I)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")


@pytest.mark.anyio
async def test_the_timeline_marks_every_rollback_checkpoint_and_operator_action(rollout: dict[str, Any]) -> None:
    """One red marker per rollback (with its reason as a tooltip), one operator marker per person's command,
    each checkpoint with its verdict, and the applied percentage as a step line."""
    decisions, page = rollout["decisions"], page_of(rollout)
    rollbacks = [d for d in decisions if d["action"] == "rollback"]
    assert len(rollbacks) == 2, [d["action"] for d in decisions]
    assert page.count('class="marker rollback"') == 2
    timeline = page[page.index('<svg class="chart timeline"') : page.index("</svg>", page.index("chart timeline"))]
    assert "p95_latency 0.4 &gt; critical 0.3" in timeline and "Day 1 checkpoint (24 hours): NO-GO" in timeline
    assert page.count('class="marker operator"') == 2, "alice's resume and bob's hold"
    assert "checkpoint 1: NO-GO" in timeline and "checkpoint 2: pending" in timeline
    assert timeline.count('class="applied"') == 1 and 'class="planned"' in timeline
    assert page.count('class="marker hold"') >= 1, "the outage's automatic hold"


@pytest.mark.anyio
async def test_every_guard_has_a_chart_against_its_thresholds(rollout: dict[str, Any]) -> None:
    """A chart per guard with a line per threshold; breaches are dots, error rounds are ticks."""
    page = page_of(rollout)
    for guard in PHASE5.guards:
        start = page.index(f'<svg class="chart guard guard-{guard.name}"')
        chart = page[start : page.index("</svg>", start)]
        assert chart.count('<line class="th th-') == len(guard.thresholds), guard.name
        assert 'class="value"' in chart, guard.name
    p95 = page[page.index("guard guard-p95_latency") :]
    p95 = p95[: p95.index("</svg>")]
    assert p95.count('class="breach sev-critical"') == 2
    errors = page[page.index("guard guard-error_rate") :]
    errors = errors[: errors.index("</svg>")]
    assert errors.count('class="t-error"') == 2 and "connection refused" in errors


@pytest.mark.anyio
async def test_the_reports_and_decisions_are_tables(rollout: dict[str, Any]) -> None:
    """Each checkpoint report's criteria, metrics and recommendation, and every decision, are in tables."""
    page = page_of(rollout)
    report = rollout["reports"][0]
    assert report["recommendation"] == "NO-GO"
    assert f'{report["checkpoint"]}: <span class="nogo">NO-GO</span>' in page
    for row in report["criteria"]:
        assert f"<td>{row['criterion']}</td><td>{html.escape(row['threshold'])}</td>" in page
    assert "<td>cost_reduction_percentage</td><td>-</td><td>rolloutd exports no cost signal" in page
    table = page[page.index('<table class="decisions">') :]
    assert table.count("<tr") == len(rollout["decisions"]) + 1


@pytest.mark.anyio
async def test_long_histories_are_downsampled_keeping_every_breach_and_gap(rollout: dict[str, Any]) -> None:
    """30,000 rounds of one guard draw at most ~2,000 points, and the single breach and outage still show."""
    rounds = [
        {
            "seq": k + 1,
            "at": iso(k / 600),
            "guard": "p95_latency",
            "outcome": "pass",
            "value": 0.1,
            "severity": None,
            "detail": None,
        }
        for k in range(30_000)
    ]
    rounds[12_345].update(outcome="breach", value=0.45, severity="critical")
    rounds[20_000].update(outcome="error", value=None, detail="timeout")
    page = render_html(rollout["status"], [], rounds, [])
    chart = page[page.index("guard guard-p95_latency") :]
    chart = chart[: chart.index("</svg>")]
    points = sum(len(p.split()) for p in re.findall(r'<polyline class="value" points="([^"]*)"', chart))
    assert MAX_POINTS // 2 < points <= MAX_POINTS
    assert chart.count('class="breach sev-critical"') == 1 and chart.count('class="t-error"') == 1
    assert "30000 rounds: 29998 pass, 1 breach, 0 no data, 1 error" in page


@pytest.mark.anyio
async def test_an_unreachable_prometheus_is_a_line_in_the_page(rollout: dict[str, Any]) -> None:
    """`--prometheus` at a closed port: the series come back as an error the page shows, not an exception."""
    series = prometheus_series(f"http://127.0.0.1:{free_port()}", rollout["status"], timeout=3)
    assert series["error"] and "ConnectError" in series["error"], series
    page = page_of(rollout, prometheus=series)
    assert "Prometheus unreachable: " in page


# -- a real daemon, a real browser -------------------------------------------------------------------


def chromium() -> str:
    found = shutil.which("chromium")
    assert found, "Debian's chromium is not installed: `make system-deps` installs it (the report test needs it)"
    return found


def run_chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT)


def test_a_rehearsed_rollout_with_a_rollback_renders_in_headless_chromium(
    tmp_path: Path,
    rehearse: Callable[..., Rehearsal],
    exporter: Exporter,  # noqa: F811
    scraped: PrometheusServer,
) -> None:  # noqa: F811
    """A live rollout (checkpoint GO, a sustained breach's rollback, an operator's resume and hold) written by
    `rolloutctl report --html --prometheus` loads in Chromium with its charts, markers and texts."""
    exporter.set("hybrid_rag_precision_at_10", 0.86)  # one seed metric for the Prometheus section
    guards = (replace(P95_GUARD, sustain="10m"), PASS_RATE_GUARD)  # 3 breaching rounds act: one rollback
    r = rehearse(
        [
            Stage("0m", 0),
            Stage("10m", 5, ("Builder",)),
            Stage("20m", 10, ("Builder", "QA")),
            Stage("100h", 25, ("Builder", "QA", "Support")),
        ],
        time_scale=600.0,
        guards=guards,
        checkpoints=(CheckpointSpec("15m", "quarter-hour review"),),
    )
    r.wait_stage(2)
    exporter.pulse(P95, 0.35, scrapes=2)
    r.wait_status(lambda s: s["phase"] == "rolled_back", "a rollback after a sustained critical breach")
    assert rolloutctl(r.daemon.socket, "resume", "--reason", "p95 is back").returncode == 0
    r.wait_stage(2)
    held = rolloutctl(r.daemon.socket, "hold", "--reason", f"read the report first {SCRIPT}")
    assert held.returncode == 0, held.stderr
    r.wait_evaluations(2)

    out = tmp_path / "out.html"
    done = rolloutctl(r.daemon.socket, "report", "--html", str(out), "--prometheus", scraped.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out.resolve())
    page = out.read_text()
    assert page.count('class="marker rollback"') == 1 and page.count('class="marker operator"') == 2
    assert "<script" not in page

    dom = run_chromium(tmp_path / "profile-dom", "--dump-dom", out.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = dom.stdout
    assert "<title>Rollout rehearsal: HOLDING</title>" in rendered
    assert len(re.findall(r'<svg class="chart ', rendered)) >= 1 + 2 + 1, "timeline, two guards, precision@10"
    for name in ("timeline", "guard guard-p95_latency", "guard guard-test_pass_rate", "prometheus"):
        assert f'<svg class="chart {name}"' in rendered, name
    assert 'class="breach sev-critical"' in rendered and "checkpoint 1: GO" in rendered
    assert "read the report first &lt;script&gt;" in rendered and "<script>" not in rendered
    assert 'quarter-hour review: <span class="go">GO</span>' in rendered
    assert "no samples in Prometheus for this period" in rendered, "p95, errors and cache are not exported here"

    shot = tmp_path / "shot.png"
    taken = run_chromium(
        tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1200,2000", "--hide-scrollbars", out.as_uri()
    )
    assert taken.returncode == 0 and shot.exists(), taken.stderr[-2000:]
    width, height, distinct = png_facts(shot.read_bytes())
    assert (width, height) == (1200, 2000)
    assert shot.stat().st_size > 30_000, "a near-empty screenshot"
    assert distinct > 64, "the screenshot is (almost) a single colour"

    failed = rolloutctl(r.daemon.socket, "report", "--html", str(tmp_path / "no-such-dir" / "out.html"))
    assert (failed.returncode, failed.stdout) == (1, ""), failed.stderr
    assert "cannot write" in failed.stderr
    usage = rolloutctl(r.daemon.socket, "report", "--prometheus", scraped.url)
    assert usage.returncode == 2 and "--prometheus needs --html" in usage.stderr


def png_facts(data: bytes) -> tuple[int, int, int]:
    """A PNG's width, height and how many distinct byte values its pixel data holds (a one-colour
    image, filtered row by row, has a handful; a rendered page has nearly all 256)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    offset, idat, size = 8, b"", (0, 0)
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        chunk = data[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            size = struct.unpack(">II", chunk[:8])
        elif kind == b"IDAT":
            idat += chunk
        offset += 12 + length
    return size[0], size[1], len(set(zlib.decompress(idat)))
