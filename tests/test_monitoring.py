"""The monitoring assets in deploy/monitoring/: promtool accepts the scrape config and the
alert rules and passes their unit tests; the seeds' alerts exist and agree with the plan's
guards; every dashboard query parses in a real Prometheus; and every metric the dashboard
and the rules read is one rolloutd exports, as a live registry shows it.

The rules are read as Prometheus loaded them (/api/v1/rules), not re-parsed from YAML: that
is what gets evaluated, and it keeps PyYAML out of the test dependencies.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import Metric

from controller.host.metrics import build_registry
from controller.host.rollout_metrics import RolloutCollector
from controller.plan import Direction, Plan, Severity
from controller.plan_load import load_plan
from retrieval.metrics import RetrievalMetrics
from retrieval.quality import Scores
from retrieval.validation import Latency, ValidationGauges
from tests.support.realservers import PrometheusServer, require_binary
from tests.support.service_rig import Rig, rigs  # noqa: F401  (the fixture)

REPO = Path(__file__).resolve().parents[1]
MONITORING = REPO / "deploy" / "monitoring"
ALERTS = MONITORING / "alerts.yml"
PHASE5 = REPO / "deploy" / "plans" / "phase5.toml"
PROMTOOL_TIMEOUT = 60.0

# The seeds' alerts and the controller's own (the issue's list).
REQUIRED_ALERTS = {
    "HybridRAGLatencyHigh",
    "HybridRAGAccuracyLow",
    "HybridRAGErrorRateHigh",
    "CacheHitRateLow",
    "RolloutRolledBack",
    "RolloutGuardProviderUnreachable",
    "RolloutEmergencyActive",
}
SEVERITY_LABEL = {Severity.WARNING: "warning", Severity.CRITICAL: "critical", Severity.EMERGENCY: "page"}

# Names allowed beyond what rolloutd exports, and only where the seeds (or Prometheus) put them:
# the seeds' Genesis regression-suite exporter publishes the pass rate that their panels 1
# and 33 and their TestPassRateLow alert read (as does the plan's test_pass_rate guard);
# `up` is Prometheus's own series for a scrape, the only sign that rolloutd is gone.
EXTERNAL = {
    "genesis_regression_pass_rate": {"panel 1", "panel 33", "alert TestPassRateLow"},
    "up": {"alert RolloutdDown"},
}

# What the dashboard must show: the seeds' metric names (DESIGN.md) and the controller's.
DASHBOARD_MUST_READ = {
    "hybrid_rag_retrieval_latency_seconds_bucket",
    "hybrid_rag_queries_total",
    "hybrid_rag_errors_total",
    "redis_cache_hits_total",
    "redis_cache_misses_total",
    "vector_db_searches_total",
    "graph_db_queries_total",
    "hybrid_rag_top3_accuracy_percent",
    "hybrid_rag_precision_at_10",
    "hybrid_rag_recall_at_10",
    "genesis_regression_pass_rate",
    "rolloutd_rollout_stage",
    "rolloutd_rollout_percentage",
    "rolloutd_rollout_phase",
    "rolloutd_guard_value",
    "rolloutd_guard_verdict",
    "rolloutd_rollout_rollbacks_total",
    "rolloutd_rollout_emergency",
    "rolloutd_flag_rollout_percent",
}

# Grafana's variables, as a 5-minute panel would expand them.
GRAFANA_VARIABLES = {"__rate_interval": "5m", "__interval": "5m", "__range": "5m", "rollout": ".*", "instance": ".*"}
LABEL_VALUES = re.compile(r"label_values\((?P<selector>.+),\s*\w+\)")
TEMPLATE_QUERY = re.compile(r'printf\s+"(?P<format>(?:[^"\\]|\\.)*)"[^|}]*\|\s*query')
THRESHOLD_RULE = re.compile(r"\((?P<query>.+)\) (?P<op>[<>]) (?P<threshold>[-+0-9.eE]+)")


# --- promtool ---------------------------------------------------------------------------------


def promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    """Run promtool from PATH (missing: the test fails; `make test` installs it)."""
    return subprocess.run(
        [require_binary("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT
    )


def assert_succeeded(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, f"`{shlex.join(done.args)}` exited {done.returncode}:\n{done.stdout}{done.stderr}"


def test_promtool_accepts_the_scrape_config() -> None:
    """`promtool check config` passes, which also resolves and checks the rule file it names."""
    done = promtool("check", "config", "prometheus.yml")
    assert_succeeded(done)
    assert "1 rule files found" in done.stdout + done.stderr


def test_promtool_accepts_the_alert_rules() -> None:
    """`promtool check rules` passes on alerts.yml."""
    assert_succeeded(promtool("check", "rules", "alerts.yml"))


def test_promtool_unit_tests_pass() -> None:
    """`promtool test rules` passes: every alert fires where it should, with its labels and annotations."""
    assert_succeeded(promtool("test", "rules", "alerts_test.yml"))


def test_the_unit_tests_catch_a_threshold_moved_by_a_few_milliseconds(tmp_path: Path) -> None:
    """Moving the critical p95 threshold from 300ms to 303ms makes `promtool test rules` fail."""
    for name in ("alerts.yml", "alerts_test.yml"):
        (tmp_path / name).write_text((MONITORING / name).read_text())
    rules = tmp_path / "alerts.yml"
    text, critical = rules.read_text(), "[5m])))) > 0.3\n"
    assert text.count(critical) == 1
    rules.write_text(text.replace(critical, "[5m])))) > 0.303\n"))
    done = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert done.returncode != 0 and "HybridRAGLatencyHigh" in done.stdout + done.stderr


# --- the rules as a real Prometheus loaded them -------------------------------------------------


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """One real Prometheus for this module, with alerts.yml loaded and nothing to scrape."""
    server = PrometheusServer(tmp_path_factory.mktemp("prometheus"))
    server.start(targets=[], rule_files=[ALERTS])
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def http(prometheus: PrometheusServer) -> Iterator[httpx.Client]:
    """A client for that Prometheus's API (one, not one per query: each would build an SSL context)."""
    # trust_env=False: a developer's HTTP_PROXY must not intercept loopback requests.
    with httpx.Client(base_url=prometheus.url, timeout=10, trust_env=False) as client:
        yield client


def api(http: httpx.Client, path: str, **params: str) -> Any:
    """The `data` of a Prometheus API answer; an error answer fails the test."""
    body = http.get(path, params=params).json()
    assert body["status"] == "success", f"{path} {params}: {body.get('error')}"
    return body["data"]


@pytest.fixture(scope="module")
def alert_rules(http: httpx.Client) -> list[dict[str, Any]]:
    """The alerting rules Prometheus loaded from alerts.yml, as /api/v1/rules shows them."""
    rules = [rule for group in api(http, "/api/v1/rules", type="alert")["groups"] for rule in group["rules"]]
    assert rules, "Prometheus loaded no alerting rules from alerts.yml"
    return rules


def test_every_required_alert_exists_with_a_severity_and_a_runbook(alert_rules: list[dict[str, Any]]) -> None:
    """The seeds' and the controller's alerts exist; each rule has a severity, a summary, a
    description and a runbook naming the rolloutctl command to start from."""
    names = {rule["name"] for rule in alert_rules}
    assert REQUIRED_ALERTS <= names, f"missing alerts: {sorted(REQUIRED_ALERTS - names)}"
    for rule in alert_rules:
        labels, annotations = rule["labels"], rule["annotations"]
        assert labels.get("severity") in SEVERITY_LABEL.values(), (rule["name"], labels)
        assert annotations.get("summary") and annotations.get("description"), (rule["name"], annotations)
        assert "rolloutctl " in annotations.get("runbook", ""), (rule["name"], annotations)


def shown(value: float, unit: str) -> str:
    """A threshold as the descriptions write it: 300ms, 0.5%, 95%."""
    return {"seconds": f"{value * 1000:g}ms", "ratio": f"{value * 100:g}%", "percent": f"{value:g}%"}[unit]


def rule_disagreements(rule: dict[str, Any], plan: Plan, normal: Callable[[str], str]) -> list[str]:
    """How one rule labelled `guard` differs from that guard at the rule's severity (none: [])."""
    labels, where = rule["labels"], f"{rule['name']} ({rule['labels'].get('severity')})"
    guard = next((g for g in plan.guards if g.name == labels["guard"]), None)
    severity = next((s for s, label in SEVERITY_LABEL.items() if label == labels.get("severity")), None)
    if guard is None or severity not in guard.thresholds:
        return [f"{where}: the plan has no guard {labels['guard']!r} with that severity"]
    match = THRESHOLD_RULE.fullmatch(rule["query"])
    if match is None or guard.resolved_query() is None:
        return [f"{where}: expected `(<the guard's query>) > or < <threshold>`, got {rule['query']}"]
    threshold, description = guard.thresholds[severity], rule["annotations"].get("description", "")
    checks = [
        (
            normal(match["query"]) == normal(guard.resolved_query()),
            f"query {match['query']} is not the guard's {guard.resolved_query()}",
        ),
        (
            match["op"] == (">" if guard.direction is Direction.ABOVE else "<"),
            f"compares with {match['op']}; the guard is breached {guard.direction} its threshold",
        ),
        (float(match["threshold"]) == threshold, f"threshold {match['threshold']} != the plan's {threshold:g}"),
        (
            rule["duration"] == guard.sustain.total_seconds(),
            f"for: {rule['duration']:g}s != the guard's sustain {guard.sustain.total_seconds():g}s",
        ),
        (
            f"{severity} {shown(threshold, guard.unit)}" in description,
            f"description does not say '{severity} {shown(threshold, guard.unit)}'",
        ),
        ("$value" in description, "description does not show {{ $value }}"),
    ]
    return [f"{where}: {problem}" for ok, problem in checks if not ok]


def plan_disagreements(rules: list[dict[str, Any]], plan: Plan, normal: Callable[[str], str]) -> list[str]:
    """Every way the guard-labelled rules and the plan's guards disagree: numbers, operators,
    queries, sustains, and a (guard, severity) with no rule or with two."""
    problems, seen = [], set()
    for rule in (r for r in rules if "guard" in r["labels"]):
        problems += rule_disagreements(rule, plan, normal)
        key = (rule["labels"]["guard"], rule["labels"].get("severity"))
        if key in seen:
            problems.append(f"{rule['name']}: a second rule for guard {key[0]} at {key[1]}")
        seen.add(key)
    for guard in plan.guards:
        for severity, threshold in guard.thresholds.items():
            if (guard.name, SEVERITY_LABEL[severity]) not in seen:
                problems.append(
                    f"guard {guard.name} has no {SEVERITY_LABEL[severity]} alert (plan: {severity} {threshold:g})"
                )
    return problems


def formatter(http: httpx.Client) -> Callable[[str], str]:
    """PromQL in Prometheus's own format, so spacing and redundant parentheses do not count."""
    return functools.cache(lambda query: api(http, "/api/v1/format_query", query=query))


def test_alert_thresholds_agree_with_the_plan(alert_rules: list[dict[str, Any]], http: httpx.Client) -> None:
    """Each guard of phase5.toml has one rule per severity with the guard's query, direction,
    threshold and sustain, so changing one file without the other fails here."""
    assert plan_disagreements(alert_rules, load_plan(PHASE5), formatter(http)) == []


def test_a_threshold_changed_in_one_place_only_is_reported(
    alert_rules: list[dict[str, Any]], http: httpx.Client
) -> None:
    """A rule whose threshold or sustain no longer matches the plan is named, and nothing else is."""
    normal = formatter(http)
    edited = [dict(rule) for rule in alert_rules]
    for rule in edited:
        if rule["labels"] == {"guard": "p95_latency", "severity": "critical"}:
            rule["query"] = rule["query"].replace("> 0.3", "> 0.35")
        if rule["labels"] == {"guard": "error_rate", "severity": "warning"}:
            rule["duration"] = 180  # the monitoring guide's "for 3min"
    assert plan_disagreements(edited, load_plan(PHASE5), normal) == [
        "HybridRAGLatencyHigh (critical): threshold 0.35 != the plan's 0.3",
        "HybridRAGErrorRateHigh (warning): for: 180s != the guard's sustain 300s",
    ]


# --- the dashboard ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    """The dashboard JSON (a parse error fails every test that uses it)."""
    return json.loads((MONITORING / "grafana-dashboard.json").read_text())


def dashboard_panels(container: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, depth first: a collapsed row keeps its panels inside itself."""
    for panel in container.get("panels", []):
        yield panel
        yield from dashboard_panels(panel)


def expand(expr: str) -> str:
    """Substitute Grafana's variables ($x, ${x}) as a 5-minute panel would; an unknown one fails."""

    def value(match: re.Match[str]) -> str:
        name = match["name"]
        assert name in GRAFANA_VARIABLES, f"unknown Grafana variable ${name} in {expr}"
        return GRAFANA_VARIABLES[name]

    return re.sub(r"\$\{?(?P<name>\w+)\}?", value, expr)


def dashboard_expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every query the dashboard runs: panel targets, annotations, variables."""
    found = [
        (f"panel {panel['id']}", target["expr"])
        for panel in dashboard_panels(dashboard)
        for target in panel.get("targets", [])
    ]
    found += [(f"annotation {a['name']}", a["expr"]) for a in dashboard["annotations"]["list"] if "expr" in a]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            selector = LABEL_VALUES.fullmatch(query)
            assert selector, f"variable {variable['name']}: expected label_values(<selector>, <label>), got {query}"
            found.append((f"variable {variable['name']}", selector["selector"]))
    return [(where, expand(expr)) for where, expr in found]


def rejected(http: httpx.Client, expressions: list[tuple[str, str]]) -> list[str]:
    """The expressions a real Prometheus refuses to run, each with its error (a parse error is 400 bad_data)."""
    problems = []
    for where, expr in expressions:
        response = http.post("/api/v1/query", data={"query": expr})
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            problems.append(f"{where}: {expr}: {response.status_code} {body.get('errorType')}: {body.get('error')}")
    return problems


def test_every_dashboard_panel_queries_prometheus_through_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    """Every panel (rows' nested panels included) has targets with an expression, all through
    ${DS_PROMETHEUS}, a datasource variable, so the dashboard imports into any Grafana."""
    panels = [p for p in dashboard_panels(dashboard) if p["type"] != "row"]
    assert len(panels) >= 20 and any(p["type"] == "row" and p["panels"] for p in dashboard_panels(dashboard))
    for panel in panels:
        assert panel.get("targets"), f"panel {panel['id']} ({panel['title']}) has no targets"
        for source in [panel["datasource"]] + [t["datasource"] for t in panel["targets"]]:
            assert source == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, (panel["id"], source)
        assert all(t.get("expr") for t in panel["targets"]), f"panel {panel['id']} has a target without expr"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert dashboard["uid"] == "phase5-rollout" and dashboard["schemaVersion"] >= 36


def test_the_dashboard_shows_the_seeds_metrics_and_latency_quantiles(dashboard: dict[str, Any]) -> None:
    """The seeds' panels are there: each of their metrics, the controller's, and p50/p95/p99 latency."""
    expressions = [expr for _, expr in dashboard_expressions(dashboard)]
    read = set().union(*(metric_names(expr) for expr in expressions))
    assert DASHBOARD_MUST_READ <= read, f"not on the dashboard: {sorted(DASHBOARD_MUST_READ - read)}"
    for q in ("0.5", "0.95", "0.99"):
        assert any(
            e.startswith(f"histogram_quantile({q}, ") and "hybrid_rag_retrieval_latency_seconds_bucket" in e
            for e in expressions
        ), f"no p{q} retrieval latency panel"


def test_every_dashboard_query_parses_in_prometheus(http: httpx.Client, dashboard: dict[str, Any]) -> None:
    """A real Prometheus accepts every panel, annotation and variable query."""
    expressions = dashboard_expressions(dashboard)
    assert len(expressions) > 30
    assert rejected(http, expressions) == []


def test_prometheus_rejects_a_malformed_query(http: httpx.Client) -> None:
    """The check above has teeth: an aggregation missing its parentheses is refused, a good query is not."""
    problems = rejected(
        http,
        [
            ("panel 99", "sum by (le) rate(hybrid_rag_queries_total[5m])"),
            ("panel 98", "sum(rate(hybrid_rag_queries_total[5m]))"),
        ],
    )
    assert len(problems) == 1 and problems[0].startswith("panel 99:") and "400 bad_data" in problems[0]


# --- metric names -------------------------------------------------------------------------------

# PromQL's words that are not metric names (functions are recognised by the "(" after them).
KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "limitk",
    "limit_ratio",
}
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}  # a "(labels)" follows
TOKENS = re.compile(
    r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<open>[({\[]) | (?P<close>[)}\]])
  | (?P<space>\s+) | (?P<other>.)
""",
    re.X,
)
CLOSING = {"(": ")", "{": "}", "[": "]"}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads: identifiers that are not functions, keywords,
    label names (inside {...} and after by/on/...), strings, numbers or durations."""
    tokens = [(m.lastgroup, m.group()) for m in TOKENS.finditer(expr) if m.lastgroup != "space"]
    names, skip_to = set(), None
    for i, (kind, text) in enumerate(tokens):
        if skip_to is not None:  # inside {...}, [...] or a label list: nothing here is a metric
            skip_to = None if (kind, text) == skip_to else skip_to
            continue
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "open" and text in "{[":
            skip_to = ("close", CLOSING[text])
        elif kind == "ident" and text in LABEL_LISTS and following == "(":
            skip_to = ("close", ")")
        elif kind == "ident" and following != "(" and text.lower() not in KEYWORDS:
            names.add(text)
    return names


def test_metric_names_skips_functions_keywords_labels_strings_and_durations() -> None:
    """Only the three metric names come out of an expression that uses every other kind of word."""
    expr = (
        'sum without (path) (rate(foo_bucket{path=~"a|b", le!="0.5", x="}"}[5m] offset 1h30m)) '
        "/ ignoring (le, path) group_left (instance) bar:ratio_5m or on (job) vector(0) > bool 1e3 "
        'unless max_over_time(baz[30m:1m] @ start()) and label_replace(up2, "dst", "$1", "src", "(.*)")'
        ' + count_values("code", x2) - topk by (le) (3, y) * -Inf'
    )
    assert metric_names(expr) == {"foo_bucket", "bar:ratio_5m", "baz", "up2", "x2", "y"}


SERIES_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "gauge": ("",),
    "unknown": ("",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
}


def series_names(family: Metric) -> set[str]:
    """The series names a family exposes, samples or not: a labelled counter that has not
    counted yet shows no sample, but `hybrid_rag_errors_total` is still its name."""
    return {family.name + suffix for suffix in SERIES_SUFFIXES[family.type]} | {s.name for s in family.samples}


async def exported_metric_names(rig: Rig) -> set[str]:
    """Every series name rolloutd's /metrics can show, from the collectors the daemon registers
    (controller/host/daemon.py), with the validation gauges live: they hide while nothing is measured."""
    await rig.controller.open()
    registry = build_registry(lambda: rig.store.snapshot, rig.clock)
    RetrievalMetrics(registry)
    gauges = ValidationGauges(registry)
    gauges.publish_scores({"hybrid": Scores(0.8, 0.7, 0.9, 0.85, 0.8)}, at=1_761_210_000.0)
    gauges.publish_latency(Latency(p50=0.012, p95=0.034, queries=50, degraded=0))
    registry.register(RolloutCollector(rig.controller))
    return {name for family in registry.collect() for name in series_names(family)}


def rule_expressions(rules: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(where, PromQL) for each rule's expression and the queries its annotations run."""
    found = []
    for rule in rules:
        found.append((f"alert {rule['name']}", rule["query"]))
        for text in rule["annotations"].values():
            for match in TEMPLATE_QUERY.finditer(text):
                found.append((f"alert {rule['name']}", match["format"].replace('\\"', '"').replace("%q", '"x"')))
    return found


def unknown_metrics(expressions: list[tuple[str, str]], exported: set[str]) -> list[str]:
    """Each metric an expression reads that rolloutd does not export (nor EXTERNAL allows there)."""
    problems = []
    for where, expr in expressions:
        allowed = exported | {name for name, places in EXTERNAL.items() if where in places}
        problems += [f"{where}: {name} is not exported by rolloutd" for name in sorted(metric_names(expr) - allowed)]
    return problems


@pytest.mark.anyio
async def test_every_metric_read_is_one_rolloutd_exports(
    rigs: Callable[..., Rig],  # noqa: F811
    alert_rules: list[dict[str, Any]],
    dashboard: dict[str, Any],
) -> None:
    """Every name the dashboard and the alert rules read is in rolloutd's live registry, or
    is an EXTERNAL name used where the seeds use it."""
    exported = await exported_metric_names(rigs())
    assert {"hybrid_rag_queries_total", "hybrid_rag_precision_at_10", "rolloutd_guard_verdict"} <= exported
    expressions = dashboard_expressions(dashboard) + rule_expressions(alert_rules)
    assert any("rolloutd_rollout_rollbacks_total" in expr for where, expr in expressions if where.startswith("alert"))
    assert unknown_metrics(expressions, exported) == []


def test_an_unexported_name_or_an_external_one_out_of_place_is_reported() -> None:
    """A counter read without `_total`, and the Genesis pass rate outside the seeds' panels, are reported."""
    exported = {"hybrid_rag_queries_total"}
    assert unknown_metrics(
        [
            ("panel 12", "rate(hybrid_rag_queries[5m])"),
            ("panel 13", "genesis_regression_pass_rate"),
            ("panel 1", "min(genesis_regression_pass_rate)"),
        ],
        exported,
    ) == [
        "panel 12: hybrid_rag_queries is not exported by rolloutd",
        "panel 13: genesis_regression_pass_rate is not exported by rolloutd",
    ]
