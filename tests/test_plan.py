"""The rollout plan: the shipped phase5.toml against the seeds, every kind of bad plan
reported with its line, PromQL parsed by promtool and by a real Prometheus, the model's
helpers, and `rolloutctl plan validate` as operators run it (no daemon)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from controller.plan import (
    Direction,
    Guard,
    NoData,
    Plan,
    Response,
    Severity,
    format_duration,
    parse_duration,
)
from controller.plan_load import PlanError, Problem, check_promql, load_plan, parse_plan

REPO = Path(__file__).resolve().parents[1]
PHASE5 = REPO / "deploy" / "plans" / "phase5.toml"
PROMTOOL = "/usr/bin/promtool"
W, C, E = Severity.WARNING, Severity.CRITICAL, Severity.EMERGENCY

# A small valid plan. Each bad-plan case edits it and marks the line the problem must
# be reported on with `# HERE` (a TOML comment), so no line number is hard-coded.
BASE = """\
[plan]
name = "small"
flags = ["hybrid_rag_enabled"]
guard_interval = "5m"

[[stages]]
at = 0
percentage = 0
agents = []

[[stages]]
at = 4
percentage = 5
agents = ["Builder", "Deploy", "QA"]

[[stages]]
at = 12
percentage = 10
agents = ["Builder", "Deploy", "QA", "Support"]

[[checkpoints]]
at = 24
criteria = ["error_rate"]

[[checkpoints]]
at = 48
requires_approval = true

[[guards]]
name = "error_rate"
query = "sum(rate(errors_total[{{window}}]))"
direction = "above"
warning = 0.001
critical = 0.005
sustain = "5m"

[[guards]]
name = "pass_rate"
query = "min(pass_rate)"
direction = "below"
warning = 98
critical = 95
"""


def edit(text: str, *edits: tuple[str, str]) -> str:
    """`text` with each (old, new) applied; each `old` must occur exactly once."""
    for old, new in edits:
        assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times"
        text = text.replace(old, new)
    return text


def line_of(text: str, marker: str = "# HERE") -> int:
    """The 1-based number of the one line of `text` containing `marker`."""
    numbers = [n for n, line in enumerate(text.splitlines(), start=1) if marker in line]
    assert len(numbers) == 1, f"{marker!r} marks lines {numbers}"
    return numbers[0]


def problems_of(text: str) -> list[Problem]:
    """The problems `parse_plan` reports for `text` (which must not load)."""
    with pytest.raises(PlanError) as caught:
        parse_plan(text, "bad.toml")
    return caught.value.problems


def guard(
    direction: Direction = Direction.ABOVE,
    thresholds: dict[Severity, float] | None = None,
    query: str | None = "rate(x[{{window}}])",
    window: str = "5m",
    sustain: str = "5m",
) -> Guard:
    """A guard with only what a test cares about set."""
    return Guard(
        name="g",
        query=query,
        builtin=None,
        direction=direction,
        thresholds=thresholds or {W: 1.0, C: 2.0},
        window=parse_duration(window),
        sustain=parse_duration(sustain),
    )


@pytest.fixture(scope="module")
def phase5() -> Plan:
    """The shipped plan, loaded once."""
    return load_plan(PHASE5)


# -- (a) the shipped plan reproduces the seeds -------------------------------------------------


def test_base_plan_is_valid() -> None:
    """The small plan the bad-plan cases edit loads as it is, so each case's problem is its edit's."""
    plan = parse_plan(BASE)
    assert [g.name for g in plan.guards] == ["error_rate", "pass_rate"] and len(plan.stages) == 3


def test_phase5_rolls_out_the_six_phase5_flags(phase5: Plan) -> None:
    """phase5.toml rolls out exactly the six Phase 5.3/5.4 flags, not the kill switch."""
    assert phase5.name == "phase5_hybrid_rag"
    assert phase5.flags == (
        "hybrid_rag_enabled",
        "vector_search_enabled",
        "graph_database_enabled",
        "redis_cache_enabled",
        "ground_truth_validation_enabled",
        "performance_benchmarks_enabled",
    )


def test_phase5_stages_follow_the_seed_timeline(phase5: Plan) -> None:
    """Stages are 0h 0%, 4h 5%, 12h 10%, 49h 15%, 52h 20%, 56h 25% with the seeds' cumulative cohorts."""
    low_risk = ("Builder", "Deploy", "QA")
    ten = low_risk + ("Support", "Marketing")
    wide = ten + ("Analyst", "Legal", "Thon")
    expected = [(0, 0, ()), (4, 5, low_risk), (12, 10, ten), (49, 15, ten), (52, 20, ten), (56, 25, wide)]
    assert [(s.at, s.percentage, s.agents) for s in phase5.stages] == [
        (timedelta(hours=h), float(p), a) for h, p, a in expected
    ]
    assert [s.index for s in phase5.stages] == list(range(6))


def test_phase5_checkpoints_at_24_48_72_with_approval_at_48(phase5: Plan) -> None:
    """Checkpoints fall at 24h, 48h and 72h, and only the 48h go/no-go requires an operator's approval."""
    assert [(c.at, c.requires_approval) for c in phase5.checkpoints] == [
        (timedelta(hours=24), False),
        (timedelta(hours=48), True),
        (timedelta(hours=72), False),
    ]
    assert all(set(c.criteria) == {g.name for g in phase5.guards} for c in phase5.checkpoints)
    assert phase5.end == timedelta(hours=72)


def test_phase5_guard_interval_and_failure_limit(phase5: Plan) -> None:
    """Guards run every 5 minutes and 5 consecutive failed checks roll every flag back to 0%."""
    assert phase5.guard_interval == timedelta(minutes=5)
    assert phase5.failure_limit == 5
    assert phase5.failure_response is Response.ROLLBACK_ZERO
    assert phase5.start is None


@pytest.mark.parametrize(
    ("name", "direction", "thresholds"),
    [
        ("error_rate", Direction.ABOVE, {W: 0.001, C: 0.005, E: 0.01}),
        ("p95_latency", Direction.ABOVE, {W: 0.2, C: 0.3, E: 0.5}),
        ("test_pass_rate", Direction.BELOW, {W: 98, C: 95, E: 90}),
        ("cache_hit_rate", Direction.BELOW, {W: 0.5, C: 0.3}),
        ("retrieval_precision", Direction.BELOW, {W: 0.7, C: 0.5}),
    ],
)
def test_phase5_guard_thresholds_follow_the_seeds(
    phase5: Plan, name: str, direction: Direction, thresholds: dict[Severity, float]
) -> None:
    """Each guard has the seeds' direction and warning/critical/emergency thresholds, and a 5m window."""
    g = phase5.guard(name)
    assert (g.direction, g.thresholds) == (direction, thresholds)
    assert g.window == timedelta(minutes=5)
    assert g.responses == {W: Response.NOTIFY, C: Response.ROLLBACK_STAGE, E: Response.ROLLBACK_ZERO}


def test_phase5_guards_and_their_order(phase5: Plan) -> None:
    """phase5.toml has exactly the five guards the seeds monitor."""
    assert [g.name for g in phase5.guards] == [
        "error_rate",
        "p95_latency",
        "test_pass_rate",
        "cache_hit_rate",
        "retrieval_precision",
    ]


@pytest.mark.parametrize("name", ["error_rate", "p95_latency", "cache_hit_rate"])
def test_phase5_for_5_minutes_is_two_checks(phase5: Plan, name: str) -> None:
    """The seeds' "for 5 minutes" guards sustain 5m, which at a 5m interval is 2 consecutive checks."""
    g = phase5.guard(name)
    assert g.sustain == timedelta(minutes=5)
    assert g.checks_to_sustain(phase5.guard_interval) == 2


def test_phase5_no_data_meanings(phase5: Plan) -> None:
    """Traffic guards pass on no data (0% means no traffic); the regression suite's silence holds."""
    assert {g.name: g.no_data for g in phase5.guards} == {
        "error_rate": NoData.PASS,
        "p95_latency": NoData.PASS,
        "test_pass_rate": NoData.HOLD,
        "cache_hit_rate": NoData.PASS,
        "retrieval_precision": NoData.PASS,
    }


def test_phase5_queries_use_the_seed_metric_names(phase5: Plan) -> None:
    """Resolved queries read the seeds' metrics over a [5m] range and leave no placeholder."""
    queries = {g.name: g.resolved_query() for g in phase5.guards}
    assert "hybrid_rag_errors_total[5m]" in queries["error_rate"]
    assert "hybrid_rag_retrieval_latency_seconds_bucket[5m]" in queries["p95_latency"]
    assert "genesis_regression_pass_rate" in queries["test_pass_rate"]
    assert "redis_cache_misses_total[5m]" in queries["cache_hit_rate"]
    assert "hybrid_rag_precision_at_10" in queries["retrieval_precision"]
    assert not any("{{" in q for q in queries.values())


def test_phase5_promql_parses_with_promtool(phase5: Plan) -> None:
    """promtool parses every guard query of phase5.toml."""
    assert check_promql(phase5, promtool=PROMTOOL, plan_text=PHASE5.read_text()) == []


# -- (b) every kind of bad plan, with its line and a message naming the fix --------------------

BAD = [
    pytest.param("(syntax)", [("at = 4\n", "at = = 4  # HERE\n")], ["not valid TOML"], 1, id="invalid-toml"),
    pytest.param(
        "stage",
        [(BASE, BASE + "\n[[stage]]  # HERE\nat = 60\n")],
        ["unknown section", "did you mean 'stages'?"],
        1,
        id="unknown-array-section",
    ),
    pytest.param(
        "rollback",
        [(BASE, BASE + "\n[rollback]  # HERE\nto = 0\n")],
        ["unknown section", "known: checkpoints, guards, plan, stages"],
        1,
        id="unknown-table-section",
    ),
    pytest.param("plans", [(BASE, "plans = 1  # HERE\n" + BASE)], ["unknown section"], 1, id="unknown-top-level-key"),
    pytest.param(
        "stages[1].percentge",
        [("percentage = 5\n", "percentge = 5  # HERE\n")],
        ["unknown key", "did you mean 'percentage'?"],
        2,
        id="unknown-key",
    ),
    pytest.param(
        "plan.name",
        [("[plan]\n", "[plan]  # HERE\n"), ('name = "small"\n', "")],
        ["missing", "add `name = ...`"],
        1,
        id="missing-plan-name",
    ),
    pytest.param(
        "plan.flags",
        [('flags = ["hybrid_rag_enabled"]', "flags = []  # HERE")],
        ["at least one flag"],
        1,
        id="flags-empty",
    ),
    pytest.param(
        "plan.flags",
        [('flags = ["hybrid_rag_enabled"]', 'flags = ["hybrid_rag_enabled", "emergency_shutdown"]  # HERE')],
        ["emergency_shutdown is the kill switch"],
        1,
        id="flags-kill-switch",
    ),
    pytest.param(
        "stages[2].at",
        [("at = 12\n", "at = 3  # HERE\n")],
        ["3h is not after the previous stage's 4h", "list stages in time order"],
        1,
        id="stages-out-of-order",
    ),
    pytest.param(
        "stages[1].percentage",
        [("percentage = 5\n", "percentage = -1  # HERE\n")],
        ["-1 is outside 0-100"],
        1,
        id="percentage-negative",
    ),
    pytest.param(
        "stages[2].percentage",
        [("percentage = 10\n", "percentage = 101  # HERE\n")],
        ["101 is outside 0-100"],
        1,
        id="percentage-over-100",
    ),
    pytest.param(
        "stages[2].percentage",
        [("percentage = 10\n", "percentage = 4  # HERE\n")],
        ["4% is below the previous stage's 5%", "only expands"],
        1,
        id="percentage-decreasing",
    ),
    pytest.param(
        "stages[2].agents",
        [('agents = ["Builder", "Deploy", "QA", "Support"]', 'agents = ["Builder", "QA", "Support"]  # HERE')],
        ["cohorts are cumulative", "Deploy"],
        1,
        id="cohort-drops-an-agent",
    ),
    pytest.param(
        "checkpoints[0].criteria",
        [('criteria = ["error_rate"]', 'criteria = ["error_ratio"]  # HERE')],
        ["no guard named 'error_ratio'", "guards: error_rate, pass_rate"],
        1,
        id="criteria-unknown-guard",
    ),
    pytest.param(
        "checkpoints[1].at",
        [("at = 48\n", "at = 20  # HERE\n")],
        ["20h is not after the previous checkpoint's 1d", "list checkpoints in time order"],
        1,
        id="checkpoints-out-of-order",
    ),
    pytest.param(
        "guards[1].name",
        [('name = "pass_rate"', 'name = "error_rate"  # HERE')],
        ["a guard named 'error_rate' is already defined"],
        1,
        id="duplicate-guard",
    ),
    pytest.param(
        "guards[1]",
        [('[[guards]]\nname = "pass_rate"\nquery = "min(pass_rate)"\n', '[[guards]]  # HERE\nname = "pass_rate"\n')],
        ["needs a PromQL `query`, a `builtin` signal, or both"],
        1,
        id="guard-without-query-or-builtin",
    ),
    pytest.param(
        "guards[1]",
        [
            ('[[guards]]\nname = "pass_rate"', '[[guards]]  # HERE\nname = "pass_rate"'),
            ("warning = 98\ncritical = 95\n", ""),
        ],
        ["at least one of warning, critical, emergency"],
        1,
        id="guard-without-thresholds",
    ),
    pytest.param(
        "guards[0].critical",
        [("critical = 0.005", "critical = 0.0005  # HERE")],
        ["critical 0.0005 must be above warning 0.001", 'direction = "above"'],
        1,
        id="thresholds-above-wrong",
    ),
    pytest.param(
        "guards[1].critical",
        [("critical = 95", "critical = 99  # HERE")],
        ["critical 99 must be below warning 98", 'direction = "below"'],
        1,
        id="thresholds-below-wrong",
    ),
    pytest.param(
        "guards[0].query",
        [('[{{window}}]))"', '[{{interval}}]))"  # HERE')],
        ["unknown placeholder(s) {{interval}}", "only {{window}} is filled in"],
        1,
        id="unknown-placeholder",
    ),
    pytest.param(
        "plan.guard_interval",
        [('guard_interval = "5m"', 'guard_interval = "5 minutes"  # HERE')],
        ["cannot read duration '5 minutes'", 'write it like "5m"'],
        1,
        id="duration-in-words",
    ),
    pytest.param(
        "guards[0].sustain",
        [('sustain = "5m"', 'sustain = "-5m"  # HERE')],
        ["cannot read duration '-5m'", 'write it like "5m"'],
        1,
        id="duration-negative-text",
    ),
    pytest.param(
        "stages[1].at", [("at = 4\n", "at = -4  # HERE\n")], ["-4 is negative"], 1, id="offset-negative-number"
    ),
    pytest.param(
        "guards[0].no_data",
        [('sustain = "5m"', 'sustain = "5m"\nno_data = "fail"  # HERE')],
        ["expected one of 'hold', 'pass'", "'fail'"],
        1,
        id="unknown-no-data",
    ),
    pytest.param(
        "guards[1].direction",
        [('direction = "below"', 'direction = "down"  # HERE')],
        ["expected one of 'above', 'below'", "'down'"],
        1,
        id="unknown-direction",
    ),
    pytest.param(
        "guards[0].on_critical",
        [('sustain = "5m"', 'sustain = "5m"\non_critical = "panic"  # HERE')],
        ["expected one of 'notify', 'rollback_stage', 'rollback_zero'", "'panic'"],
        1,
        id="unknown-on-critical",
    ),
]


@pytest.mark.parametrize(("where", "edits", "fragments", "count"), BAD)
def test_bad_plan_is_reported_at_its_line(
    where: str, edits: list[tuple[str, str]], fragments: list[str], count: int
) -> None:
    """Each kind of mistake is reported once (no follow-on noise), at the marked line, saying what to write instead."""
    text = edit(BASE, *edits)
    problems = problems_of(text)
    assert len(problems) == count, problems
    found = [p for p in problems if p.where == where]
    assert len(found) == 1, problems
    assert found[0].line == line_of(text), found[0]
    for fragment in fragments:
        assert fragment in found[0].message


def test_misspelt_key_also_reports_the_key_it_lacks() -> None:
    """A misspelt required key is reported twice: unknown where written, missing at its table's header."""
    text = edit(BASE, ("[[stages]]\nat = 4\npercentage = 5\n", "[[stages]]  # HERE\nat = 4\npercentge = 5\n"))
    missing = [p for p in problems_of(text) if p.where == "stages[1].percentage"]
    assert [(p.line, p.message) for p in missing] == [(line_of(text), "missing; add `percentage = ...`")]


def test_several_mistakes_are_all_reported_in_one_error() -> None:
    """A plan with seven mistakes raises one PlanError listing all seven, each at its own line."""
    text = edit(
        BASE,
        ('flags = ["hybrid_rag_enabled"]', 'flags = ["emergency_shutdown"]  # E1'),
        ('guard_interval = "5m"', 'guard_intervall = "5m"  # E2'),
        ("percentage = 5\n", "percentage = 101  # E3\n"),
        ("at = 48\n", "at = 20  # E4\n"),
        ("critical = 0.005", "critical = 0.0005  # E5"),
        ('direction = "below"', 'direction = "below"\nno_data = "fail"  # E6'),
        (BASE.splitlines()[-1], BASE.splitlines()[-1] + "\n\n[[rollbacks]]  # E7\nto = 0"),
    )
    with pytest.raises(PlanError) as caught:
        parse_plan(text, "several.toml")
    expected = {
        ("plan.flags", line_of(text, "# E1")),
        ("plan.guard_intervall", line_of(text, "# E2")),
        ("stages[1].percentage", line_of(text, "# E3")),
        ("checkpoints[1].at", line_of(text, "# E4")),
        ("guards[0].critical", line_of(text, "# E5")),
        ("guards[1].no_data", line_of(text, "# E6")),
        ("rollbacks", line_of(text, "# E7")),
    }
    assert len(caught.value.problems) == 7
    assert {(p.where, p.line) for p in caught.value.problems} == expected
    assert "7 problem(s)" in str(caught.value) and "rolloutctl plan validate several.toml" in str(caught.value)


def test_missing_file_is_one_problem_without_a_line(tmp_path: Path) -> None:
    """A plan file that does not exist is a PlanError saying it cannot be read, not an OSError."""
    with pytest.raises(PlanError) as caught:
        load_plan(tmp_path / "nope.toml")
    [problem] = caught.value.problems
    assert problem.line is None and "cannot read it" in problem.message


def test_problem_renders_as_file_line_where_message() -> None:
    """A problem renders as FILE:LINE: where: message, and without a line as FILE: where: message."""
    assert Problem("stages[1].at", 12, "m").render("p.toml") == "p.toml:12: stages[1].at: m"
    assert Problem("(file)", None, "m").render("p.toml") == "p.toml: (file): m"


# -- (c) PromQL that does not parse ------------------------------------------------------------

UNCLOSED = edit(BASE, ('query = "min(pass_rate)"', 'query = "min(pass_rate"  # HERE'))


def test_promtool_reports_an_unparsable_query_at_its_line() -> None:
    """An unclosed parenthesis is reported by promtool at the guard's query line; the good query is not."""
    problems = check_promql(parse_plan(UNCLOSED), promtool=PROMTOOL, plan_text=UNCLOSED)
    assert [(p.where, p.line) for p in problems] == [("guards[1].query", line_of(UNCLOSED))]
    assert "PromQL does not parse" in problems[0].message and "unclosed left parenthesis" in problems[0].message


def test_promtool_reports_every_unparsable_query() -> None:
    """Two broken queries are two problems, each at its own guard's query line."""
    text = edit(
        UNCLOSED,
        ('query = "sum(rate(errors_total[{{window}}]))"', 'query = "sum(rate(errors_total{[{{window}}])"  # E0'),
    )
    problems = check_promql(parse_plan(text), promtool=PROMTOOL, plan_text=text)
    assert sorted((p.where, p.line) for p in problems) == [
        ("guards[0].query", line_of(text, "# E0")),
        ("guards[1].query", line_of(text)),
    ]


def test_prometheus_reports_an_unparsable_query_at_its_line(prometheus_server) -> None:
    """With promtool switched off, a real Prometheus finds the unclosed parenthesis, at the same line."""
    prometheus_server.start(targets=[])
    # A promtool path that does not exist: were it used, check_promql would raise.
    problems = check_promql(
        parse_plan(UNCLOSED),
        promtool="/nonexistent/promtool",
        use_promtool=False,
        prometheus_url=prometheus_server.url,
        plan_text=UNCLOSED,
    )
    assert [(p.where, p.line) for p in problems] == [("guards[1].query", line_of(UNCLOSED))]
    assert "unclosed left parenthesis" in problems[0].message


def test_prometheus_accepts_the_phase5_queries(prometheus_server, phase5: Plan) -> None:
    """A real Prometheus parses every phase5.toml query."""
    prometheus_server.start(targets=[])
    assert check_promql(phase5, use_promtool=False, prometheus_url=prometheus_server.url) == []


def test_unchecked_promql_is_an_error_not_a_pass() -> None:
    """With neither promtool nor a Prometheus URL, check_promql raises instead of returning no problems."""
    with pytest.raises(RuntimeError, match="--prometheus URL"):
        check_promql(parse_plan(BASE), use_promtool=False)


def test_unreachable_prometheus_is_a_runtime_error() -> None:
    """A Prometheus that does not answer is a RuntimeError naming it, not an httpx exception."""
    with pytest.raises(RuntimeError, match="127.0.0.1:9"):
        check_promql(parse_plan(BASE), use_promtool=False, prometheus_url="http://127.0.0.1:9")


# -- (d) model helpers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "delta", "shortest"),
    [
        ("5m", timedelta(minutes=5), "5m"),
        ("90s", timedelta(seconds=90), "90s"),
        ("4h", timedelta(hours=4), "4h"),
        ("1h30m", timedelta(minutes=90), "90m"),
        ("1d", timedelta(days=1), "1d"),
        (4, timedelta(hours=4), "4h"),
        (0.5, timedelta(minutes=30), "30m"),
        (49, timedelta(hours=49), "49h"),
    ],
)
def test_durations_round_trip(text: str | float, delta: timedelta, shortest: str) -> None:
    """parse_duration reads units (bare numbers are hours) and format_duration writes the shortest form back."""
    assert parse_duration(text) == delta
    assert format_duration(delta) == shortest
    assert parse_duration(format_duration(delta)) == delta


@pytest.mark.parametrize("value", ["5 minutes", "-5m", "5", "", "m", "5x", True, float("nan"), None])
def test_unreadable_durations_raise(value: object) -> None:
    """Words, signs, missing units, booleans, NaN and None are not durations."""
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.0009, None),
        (0.001, None),
        (0.0011, W),
        (0.005, W),
        (0.0051, C),
        (0.01, C),
        (0.0101, E),
        (5.0, E),
    ],
)
def test_severity_above_breaches_strictly_greater(value: float, expected: Severity | None) -> None:
    """For direction above, a value breaches a threshold only when strictly greater; the worst breach wins."""
    g = guard(Direction.ABOVE, {W: 0.001, C: 0.005, E: 0.01})
    assert g.severity_of(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (100.0, None),
        (98.0, None),
        (97.99, W),
        (95.0, W),
        (94.99, C),
        (90.0, C),
        (89.99, E),
        (0.0, E),
    ],
)
def test_severity_below_breaches_strictly_less(value: float, expected: Severity | None) -> None:
    """For direction below, a value breaches a threshold only when strictly less; the worst breach wins."""
    g = guard(Direction.BELOW, {W: 98, C: 95, E: 90})
    assert g.severity_of(value) == expected


def test_severity_with_two_thresholds_never_reaches_emergency() -> None:
    """A guard without an emergency threshold reports critical at worst, however far the value falls."""
    assert guard(Direction.BELOW, {W: 0.5, C: 0.3}).severity_of(0.0) == C


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        ("5m", "rate(x[5m]) / rate(y[5m])"),
        ("90s", "rate(x[90s]) / rate(y[90s])"),
        ("1h30m", "rate(x[90m]) / rate(y[90m])"),
    ],
)
def test_resolved_query_fills_every_window(window: str, expected: str) -> None:
    """resolved_query replaces every {{window}} with the guard's window in Prometheus form."""
    assert guard(query="rate(x[{{window}}]) / rate(y[{{window}}])", window=window).resolved_query() == expected


def test_resolved_query_of_a_builtin_only_guard_is_none() -> None:
    """A guard with no PromQL has no resolved query."""
    assert guard(query=None).resolved_query() is None


@pytest.mark.parametrize(
    ("sustain", "interval", "checks"),
    [
        ("5m", "5m", 2),
        ("0s", "5m", 1),
        ("10m", "5m", 3),
        ("2m", "5m", 2),
        ("7m", "5m", 3),
        ("5m", "1m", 6),
    ],
)
def test_checks_to_sustain(sustain: str, interval: str, checks: int) -> None:
    """A breach is sustained after ceil(sustain / interval) + 1 consecutive breaching checks (t .. t + sustain)."""
    assert guard(sustain=sustain).checks_to_sustain(parse_duration(interval)) == checks


# -- (e) rolloutctl plan validate --------------------------------------------------------------


def validate(*args: str | Path, tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m deploy plan validate ...` with no daemon: $ROLLOUTD_SOCKET names a path that does not exist."""
    base = {**os.environ, "ROLLOUTD_SOCKET": str(tmp_path / "no-daemon" / "admin.sock")}
    return subprocess.run(
        [sys.executable, "-m", "deploy", "plan", "validate", *map(str, args)],
        cwd=REPO,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_cli_validates_phase5_and_prints_the_summary(tmp_path: Path) -> None:
    """`plan validate phase5.toml` exits 0 with no daemon and summarises flags, stages, checkpoints and guards."""
    done = validate("deploy/plans/phase5.toml", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "plan phase5_hybrid_rag is valid (PromQL parsed by promtool)" in out
    assert "performance_benchmarks_enabled" in out
    assert re.search(r"^\s+4h\s+5%\s+Builder, Deploy, QA$", out, re.M)
    assert re.search(r"^\s+56h\s+25%\s+Builder, Deploy, QA, Support, Marketing, Analyst, Legal, Thon$", out, re.M)
    assert re.search(r"^\s+48h\s+required\s+Day 2", out, re.M) and re.search(r"^\s+24h\s+-\s+Day 1", out, re.M)
    assert "checked every 5m (5 failed checks in a row: rollback_zero)" in out
    assert re.search(r"^\s+error_rate\s+above\s+0\.001\s+0\.005\s+0\.01\s+5m \(2 checks\)\s+pass$", out, re.M)
    assert re.search(r"^\s+cache_hit_rate\s+below\s+0\.5\s+0\.3\s+-\s+", out, re.M)
    assert not (tmp_path / "no-daemon").exists() and "cannot reach" not in done.stderr


def test_cli_needs_no_socket_even_with_an_unreadable_config(tmp_path: Path) -> None:
    """`plan validate` ignores --socket and --config: it never looks for the daemon."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "deploy",
            "--socket",
            tmp_path / "x.sock",
            "--config",
            tmp_path / "missing.toml",
            "plan",
            "validate",
            PHASE5,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr


def test_cli_prints_every_problem_as_file_line(tmp_path: Path) -> None:
    """A plan with three mistakes exits 1 and prints each as FILE:LINE: where: message, in line order."""
    text = edit(
        BASE,
        ('flags = ["hybrid_rag_enabled"]', "flags = []  # E1"),
        ("percentage = 10\n", "percentage = 4  # E2\n"),
        ('direction = "below"', 'direction = "down"  # E3'),
    )
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    done = validate(bad, tmp_path=tmp_path)
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(": ")[0:2] for line in lines[:3]] == [
        [f"{bad}:{line_of(text, '# E1')}", "plan.flags"],
        [f"{bad}:{line_of(text, '# E2')}", "stages[2].percentage"],
        [f"{bad}:{line_of(text, '# E3')}", "guards[1].direction"],
    ]
    assert lines[3] == f"{bad}: 3 problem(s); the plan is NOT valid" and len(lines) == 4


def test_cli_reports_unparsable_promql_at_its_line(tmp_path: Path) -> None:
    """A plan that loads but whose query does not parse exits 1 naming FILE:LINE of the query."""
    bad = tmp_path / "promql.toml"
    bad.write_text(UNCLOSED)
    done = validate(bad, tmp_path=tmp_path)
    assert done.returncode == 1
    assert done.stdout.startswith(f"{bad}:{line_of(UNCLOSED)}: guards[1].query: PromQL does not parse")


def test_cli_json_shape(tmp_path: Path) -> None:
    """`--json` prints {valid, problems, plan}, with the plan summary when valid and each problem's line when not."""
    good = json.loads(validate(PHASE5, "--json", tmp_path=tmp_path).stdout)
    assert good["valid"] is True and good["problems"] == []
    plan = good["plan"]
    assert plan["name"] == "phase5_hybrid_rag" and len(plan["flags"]) == 6
    assert plan["guard_interval"] == "5m" and plan["failure_limit"] == 5
    assert [(s["at_hours"], s["percentage"]) for s in plan["stages"]] == [
        (0, 0),
        (4, 5),
        (12, 10),
        (49, 15),
        (52, 20),
        (56, 25),
    ]
    assert plan["stages"][1]["agents"] == ["Builder", "Deploy", "QA"]
    assert [(c["at"], c["requires_approval"]) for c in plan["checkpoints"]] == [
        ("24h", False),
        ("48h", True),
        ("72h", False),
    ]
    error_rate = plan["guards"][0]
    assert error_rate["thresholds"] == {"warning": 0.001, "critical": 0.005, "emergency": 0.01}
    assert (error_rate["direction"], error_rate["checks_to_sustain"]) == ("above", 2)

    bad = tmp_path / "bad.toml"
    bad.write_text(edit(BASE, ("percentage = 5\n", "percentage = 101  # HERE\n")))
    done = validate(bad, "--json", tmp_path=tmp_path)
    answer = json.loads(done.stdout)
    assert done.returncode == 1
    assert answer["valid"] is False and answer["plan"] is None
    assert [(p["where"], p["line"]) for p in answer["problems"]] == [("stages[1].percentage", line_of(bad.read_text()))]
    assert answer["problems"][0]["text"].startswith(f"{bad}:{line_of(bad.read_text())}: ")


def test_cli_json_before_the_command_works_too(tmp_path: Path) -> None:
    """`rolloutctl --json plan validate FILE` prints the same JSON as `--json` after the command."""
    done = subprocess.run(
        [sys.executable, "-m", "deploy", "--json", "plan", "validate", PHASE5],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0 and json.loads(done.stdout)["valid"] is True


def test_cli_without_promtool_or_prometheus_refuses_to_call_it_valid(tmp_path: Path) -> None:
    """With no promtool on PATH and no --prometheus, the plan is not called valid and the exit is 1."""
    (tmp_path / "bin").mkdir()
    done = validate(PHASE5, tmp_path=tmp_path, env={"PATH": str(tmp_path / "bin")})
    assert done.returncode == 1
    assert "valid" not in done.stdout
    assert "no promtool on PATH" in done.stderr and "--prometheus URL" in done.stderr and "NOT validated" in done.stderr


def test_cli_without_promtool_uses_prometheus(tmp_path: Path, prometheus_server) -> None:
    """With no promtool on PATH, `--prometheus URL` parses the queries and the plan is valid."""
    prometheus_server.start(targets=[])
    (tmp_path / "bin").mkdir()
    done = validate(
        PHASE5, "--prometheus", prometheus_server.url, tmp_path=tmp_path, env={"PATH": str(tmp_path / "bin")}
    )
    assert done.returncode == 0, done.stderr
    assert f"PromQL parsed by Prometheus at {prometheus_server.url}" in done.stdout


@pytest.mark.parametrize("value", ["[" * 12 + "]" * 12, "[" * 5000 + "]" * 5000, "{a = " * 3000 + "1" + "}" * 3000])
def test_a_deeply_nested_plan_is_one_problem_not_a_recursion_error(value: str) -> None:
    """Arrays or inline tables nested past any sensible depth are a PlanError saying so, however deep."""
    with pytest.raises(PlanError) as caught:
        parse_plan(BASE.replace('guard_interval = "5m"', f"guard_interval = {value}"), "deep.toml")
    [problem] = caught.value.problems
    assert "nested too deeply" in problem.message and len(str(caught.value)) < 400


def test_a_number_too_long_to_read_is_one_problem() -> None:
    """A 5000-digit number (past Python's integer-string limit) is a PlanError, not a bare ValueError."""
    with pytest.raises(PlanError) as caught:
        parse_plan(BASE.replace('guard_interval = "5m"', "failure_limit = " + "1" * 5000), "long.toml")
    [problem] = caught.value.problems
    assert "4300 digits" in problem.message


@pytest.mark.parametrize("value", ['"99999999999999999999999h"', "99999999999999999999999", '"1000000d"'])
def test_an_offset_beyond_any_rollout_is_a_problem_at_its_line(value: str) -> None:
    """A stage offset too large for a date (or past 100 years) is reported at its line, not an OverflowError."""
    text = BASE.replace("at = 48", f"at = {value}  # HERE")
    [problem] = problems_of(text)
    assert problem.line == line_of(text) and "100 years" in problem.message
