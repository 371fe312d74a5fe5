"""Guard observations and counters: `assess` at and around every threshold, the four
outcomes, and the per-severity streaks, sustain and failure budgets they add up to."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.guards import GuardCounters, Observation, Outcome, assess
from controller.plan import Direction, Guard, NoData, Severity
from controller.plan_load import load_plan

PHASE5 = load_plan(Path(__file__).resolve().parent.parent / "deploy" / "plans" / "phase5.toml")
P95 = PHASE5.guard("p95_latency")  # above: warning 0.2, critical 0.3, emergency 0.5; sustain 5m
PASS_RATE = PHASE5.guard("test_pass_rate")  # below: warning 98, critical 95, emergency 90; no_data hold
T0 = datetime(2025, 10, 23, 9, tzinfo=UTC)
INTERVAL = timedelta(minutes=5)
W, C, E = Severity.WARNING, Severity.CRITICAL, Severity.EMERGENCY


def guard(**overrides) -> Guard:
    """A p95-latency-like guard (above 0.2/0.3/0.5, sustain 5m, no data holds); override any field."""
    fields = dict(
        name="latency",
        query="histogram_quantile(0.95, rate(lat_bucket[{{window}}]))",
        builtin=None,
        direction=Direction.ABOVE,
        thresholds={W: 0.2, C: 0.3, E: 0.5},
        window=timedelta(minutes=5),
        sustain=timedelta(minutes=5),
        no_data=NoData.HOLD,
    )
    fields.update(overrides)
    return Guard(**fields)


def obs(g: Guard, value: float | None, at: int | datetime = 0, error: str | None = None) -> Observation:
    """`assess(g, value)` at T0 plus `at` guard intervals (or at a given moment)."""
    moment = at if isinstance(at, datetime) else T0 + at * INTERVAL
    return assess(g, value, moment, error=error)


def counted(g: Guard, *values: float | None | str) -> GuardCounters:
    """Counters after observing `values` one interval apart; a str is a provider error message."""
    counters = GuardCounters()
    for i, value in enumerate(values):
        o = obs(g, None, i, error=value) if isinstance(value, str) else obs(g, value, i)
        counters = counters.observe(o)
    return counters


# -- assess ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "outcome", "severity"),
    [
        (0.0, Outcome.PASS, None),
        (0.15, Outcome.PASS, None),
        (0.2, Outcome.PASS, None),  # at the warning threshold: not past it
        (0.2000001, Outcome.BREACH, W),
        (0.3, Outcome.BREACH, W),  # at critical: still only warning
        (0.3000001, Outcome.BREACH, C),
        (0.5, Outcome.BREACH, C),
        (0.5000001, Outcome.BREACH, E),
        (12.0, Outcome.BREACH, E),
    ],
)
def test_above_guard_breaches_only_strictly_past_each_threshold(value, outcome, severity):
    """An "above" guard passes at a threshold and breaches at the worst threshold strictly exceeded."""
    o = obs(P95, value)
    assert (o.outcome, o.severity, o.value) == (outcome, severity, value)


@pytest.mark.parametrize(
    ("value", "outcome", "severity"),
    [
        (100.0, Outcome.PASS, None),
        (98.28, Outcome.PASS, None),
        (98.0, Outcome.PASS, None),  # at the warning threshold: not below it
        (97.999, Outcome.BREACH, W),
        (95.0, Outcome.BREACH, W),
        (94.999, Outcome.BREACH, C),
        (90.0, Outcome.BREACH, C),
        (89.999, Outcome.BREACH, E),
        (0.0, Outcome.BREACH, E),
    ],
)
def test_below_guard_breaches_only_strictly_under_each_threshold(value, outcome, severity):
    """A "below" guard passes at a threshold and breaches at the worst threshold it is strictly under."""
    o = obs(PASS_RATE, value)
    assert (o.outcome, o.severity, o.value) == (outcome, severity, value)


def test_guard_without_emergency_threshold_tops_out_at_critical():
    """A value far past every threshold of a guard with no emergency level is a critical breach."""
    cache = PHASE5.guard("cache_hit_rate")
    assert E not in cache.thresholds
    assert obs(cache, 0.0).severity is C


@pytest.mark.parametrize("value", [None, math.nan, math.inf, -math.inf])
def test_missing_nan_and_infinite_values_are_no_data(value):
    """An empty result, NaN or +/-Inf is NO_DATA with no value, never a pass or a breach."""
    o = obs(P95, value)
    assert (o.outcome, o.value, o.severity) == (Outcome.NO_DATA, None, None)
    assert o.detail == ("no samples" if value is None else f"value is {value}")


def test_provider_error_is_error_without_a_value():
    """An error from the provider is ERROR carrying the error text, even if a value came along."""
    o = obs(P95, 0.9, error="Prometheus answered 503")
    assert (o.outcome, o.value, o.severity) == (Outcome.ERROR, None, None)
    assert o.detail == "Prometheus answered 503"


@pytest.mark.parametrize(
    ("g", "value", "detail"),
    [
        (P95, 0.412, "p95_latency 0.412 > critical 0.3"),
        (P95, 0.25, "p95_latency 0.25 > warning 0.2"),
        (PASS_RATE, 94.5, "test_pass_rate 94.5 < critical 95"),
        (PASS_RATE, 80, "test_pass_rate 80 < emergency 90"),
    ],
)
def test_breach_detail_shows_value_against_threshold(g, value, detail):
    """A breach's detail names the guard and shows the observed value against the threshold it crossed."""
    assert obs(g, value).detail == detail


def test_observation_carries_the_resolved_query_and_time():
    """Each observation records the PromQL actually run (window filled in) and when it was taken."""
    moment = T0 + timedelta(hours=30)
    o = obs(P95, 0.1, moment)
    assert o.at == moment
    assert "[5m]" in o.query and "{{window}}" not in o.query


def test_observation_to_dict_is_json_ready():
    """Observation.to_dict gives strings for outcome, severity and time."""
    raw = obs(P95, 0.412).to_dict()
    assert raw["outcome"] == "breach" and raw["severity"] == "critical"
    assert raw["at"] == "2025-10-23T09:00:00+00:00" and raw["value"] == 0.412
    json.dumps(raw)


# -- streaks and sustain ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "streaks"),
    [
        ((0.25,), {W: 1, C: 0, E: 0}),
        ((0.4,), {W: 1, C: 1, E: 0}),
        ((0.6,), {W: 1, C: 1, E: 1}),
        ((0.25, 0.4, 0.6), {W: 3, C: 2, E: 1}),
        ((0.6, 0.4, 0.25), {W: 3, C: 0, E: 0}),  # easing to warning ends the critical streak
        ((0.6, 0.6, 0.1), {W: 0, C: 0, E: 0}),  # a pass resets every streak
        ((0.6, 0.6, None), {W: 0, C: 0, E: 0}),  # so does no data ...
        ((0.6, 0.6, "timeout"), {W: 0, C: 0, E: 0}),  # ... and an error
        ((0.4, 0.1, 0.4), {W: 1, C: 1, E: 0}),
    ],
)
def test_streaks_count_consecutive_breaches_at_or_above_each_severity(values, streaks):
    """A breach extends the streak of its severity and every lesser one; anything else resets them all."""
    assert counted(P95, *values).streaks == streaks


@pytest.mark.parametrize(
    ("sustain", "checks"),
    [
        (timedelta(0), 1),
        (timedelta(minutes=5), 2),
        (timedelta(minutes=10), 3),
        (timedelta(minutes=15), 4),
    ],
)
def test_checks_to_sustain_covers_the_sustain_duration(sustain, checks):
    """A breach lasting `sustain` at a 5m interval takes sustain/interval + 1 evaluations to see (0: one)."""
    assert guard(sustain=sustain).checks_to_sustain(INTERVAL) == checks


def test_checks_to_sustain_rounds_a_partial_interval_up():
    """A 7-minute sustain at a 5-minute interval needs the breach seen at t, t+5m and t+10m."""
    assert guard(sustain=timedelta(minutes=7)).checks_to_sustain(INTERVAL) == 3


def test_phase5_sustain_of_five_minutes_is_two_checks():
    """The seeds' "for 5 minutes" at "every 5 minutes" is two consecutive breaching evaluations."""
    assert P95.checks_to_sustain(PHASE5.guard_interval) == 2
    assert PASS_RATE.checks_to_sustain(PHASE5.guard_interval) == 1  # no sustain: "drops below 95%"


@pytest.mark.parametrize(
    ("values", "sustained"),
    [
        ((), None),
        ((0.4,), None),  # one critical check is not yet 5 minutes
        ((0.4, 0.4), C),
        ((0.6, 0.6), E),
        ((0.4, 0.6), C),  # emergency seen once, critical twice
        ((0.25, 0.4), W),  # warning twice, critical once
        ((0.6, 0.6, 0.1, 0.6), None),  # the pass restarted the count
        ((0.25, 0.25, 0.25), W),
    ],
)
def test_sustained_is_the_worst_severity_held_for_enough_checks(values, sustained):
    """`sustained` returns the worst severity whose streak reached checks_to_sustain, else None."""
    assert counted(P95, *values).sustained(P95, INTERVAL) == sustained


def test_sustain_zero_acts_on_the_first_breach():
    """With no sustain a single breaching evaluation is already sustained."""
    assert counted(PASS_RATE, 94.0).sustained(PASS_RATE, INTERVAL) is C
    assert counted(guard(sustain=timedelta(0)), 0.6).sustained(guard(sustain=timedelta(0)), INTERVAL) is E


def test_sustained_ignores_severities_the_guard_does_not_define():
    """A streak at a severity without a threshold never counts as sustained."""
    g = guard(thresholds={W: 0.2, C: 0.3})
    counters = replace(GuardCounters(), streaks={W: 5, C: 0, E: 5})
    assert counters.sustained(g, INTERVAL) is W


# -- blindness and failures ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("no_data", "values", "blind"),
    [
        (NoData.HOLD, (), True),  # never observed: cannot tell
        (NoData.PASS, (), True),
        (NoData.HOLD, ("timeout",), True),
        (NoData.PASS, ("timeout",), True),  # an error is blind whatever no_data says
        (NoData.HOLD, (None,), True),
        (NoData.PASS, (None,), False),  # silence is fine for this guard
        (NoData.HOLD, (0.1,), False),
        (NoData.HOLD, (0.6,), False),  # a breach is bad news, not blindness
        (NoData.HOLD, ("timeout", 0.1), False),
    ],
)
def test_blind_for_errors_always_and_for_no_data_only_when_it_holds(no_data, values, blind):
    """`blind` is true for ERROR always, for NO_DATA only with no_data="hold", and before any observation."""
    g = guard(no_data=no_data)
    assert counted(g, *values).blind(g) is blind


@pytest.mark.parametrize(
    ("no_data", "values", "failures"),
    [
        (NoData.HOLD, ("timeout",) * 3, 3),
        (NoData.PASS, ("timeout",) * 3, 3),
        (NoData.HOLD, (None,) * 4, 4),
        (NoData.PASS, (None,) * 4, 0),
        (NoData.HOLD, ("timeout", "timeout", 0.1, "timeout"), 1),  # a good check resets the count
        (NoData.HOLD, ("timeout", "timeout", 0.6), 0),  # so does a breach: the data is back
    ],
)
def test_failures_count_consecutive_errors_and_no_data_when_it_holds(no_data, values, failures):
    """`failures` counts consecutive errors, and consecutive no-data only when no_data="hold"."""
    g = guard(no_data=no_data)
    assert counted(g, *values).failures(g) == failures


def test_errors_and_no_data_keep_separate_counts():
    """Errors and no-data each have their own consecutive count, reset by the other outcome."""
    counters = counted(guard(), "timeout", "timeout", None)
    assert (counters.errors, counters.no_data) == (0, 1)
    assert counted(guard(), None, None, "timeout").errors == 1


@pytest.mark.parametrize(
    ("before", "extra", "expected"),
    [
        (("timeout", "timeout"), "timeout", {"errors": 2, "no_data": 0, "breaches": 0}),  # not lengthened
        ((None, None), None, {"errors": 0, "no_data": 2, "breaches": 0}),
        ((0.4, 0.4), 0.4, {"errors": 0, "no_data": 0, "breaches": 2}),
        (("timeout", "timeout"), 0.1, {"errors": 0, "no_data": 0, "breaches": 0}),  # but ended
        ((0.4, 0.4), "timeout", {"errors": 0, "no_data": 0, "breaches": 0}),
        ((0.1,), "timeout", {"errors": 0, "no_data": 0, "breaches": 0}),  # nor started
    ],
)
def test_an_extra_rounds_observation_can_end_a_run_but_never_lengthen_it(before, extra, expected):
    """observe(regular=False) keeps the observation as the latest, and lowers counts at most, never raises them."""
    g = guard()
    o = obs(g, None, 9, error=extra) if isinstance(extra, str) else obs(g, extra, 9)
    counters = counted(g, *before).observe(o, regular=False)
    assert {"errors": counters.errors, "no_data": counters.no_data, "breaches": counters.breaches} == expected
    assert counters.last == o


# -- persistence ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        (),
        (0.25, 0.4, 0.6),
        (0.1,),
        (None, None),
        ("connection refused",),
    ],
)
def test_counters_round_trip_through_json(values):
    """GuardCounters survive to_dict -> JSON -> from_dict unchanged (they are durable state)."""
    counters = counted(P95, *values)
    again = GuardCounters.from_dict(json.loads(json.dumps(counters.to_dict())))
    assert again == counters
    assert again.sustained(P95, INTERVAL) == counters.sustained(P95, INTERVAL)
