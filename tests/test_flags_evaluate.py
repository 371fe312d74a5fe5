"""Evaluation semantics: kill switch, enabled, constraints, percentages, progressive ramps,
and the snapshot's revision."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from flags.bucket import in_rollout
from flags.evaluate import CompiledFlag, ErrorCode, FlagSet, Reason, Resolution, content_revision, evaluate
from flags.model import KILL_SWITCH, Constraint, Flag, Operator, ProgressiveConfig, Strategy

NOW = datetime(2025, 10, 24, 12, tzinfo=UTC)
START = datetime(2025, 10, 23, 9, tzinfo=UTC)
END = datetime(2025, 10, 30, 9, tzinfo=UTC)
KEYS = [f"task-{i}" for i in range(2000)]


def make_flag(**overrides) -> Flag:
    """An enabled `all` flag named hybrid_rag_enabled; override any field."""
    fields = dict(name="hybrid_rag_enabled", enabled=True)
    fields.update(overrides)
    return Flag(**fields)


def pct_flag(percentage: float, **overrides) -> Flag:
    """An enabled percentage flag at `percentage`."""
    return make_flag(rollout_strategy=Strategy.PERCENTAGE, rollout_percentage=percentage, **overrides)


def ramp_flag(initial=0.0, end=100.0, current=None, **overrides) -> Flag:
    """An enabled progressive flag ramping from `initial`% at START to `end`% at END."""
    config = ProgressiveConfig(initial, end, START, END, current)
    return make_flag(
        rollout_strategy=Strategy.PROGRESSIVE, rollout_percentage=10.0, progressive_config=config, **overrides
    )


def ctx(key: str | None = "task-1", agent: str | None = "Builder", **attributes) -> dict:
    """An evaluation context; None leaves a field out."""
    out = {"targetingKey": key, "agent": agent, **attributes}
    return {k: v for k, v in out.items() if v is not None}


def on_keys(flag: Flag, now: datetime = NOW, agent: str = "Builder") -> set[str]:
    """The keys of KEYS for which `flag` is on at `now`."""
    compiled = CompiledFlag(flag)
    return {k for k in KEYS if compiled.evaluate(ctx(k, agent), now, False).value}


def kill_switch(on: bool) -> Flag:
    return Flag(name=KILL_SWITCH, enabled=on)


# -- enabled and kill switch ---------------------------------------------------------------


def test_enabled_all_flag_is_on_for_everyone():
    """An enabled `all` flag without constraints is on, statically."""
    assert evaluate(make_flag(), ctx(), NOW) == Resolution("hybrid_rag_enabled", True, Reason.STATIC)


@pytest.mark.parametrize(
    "flag",
    [make_flag(enabled=False), pct_flag(100, enabled=False), ramp_flag(enabled=False)],
    ids=["all", "percentage", "progressive"],
)
def test_disabled_flag_is_off_with_reason_disabled(flag):
    """A disabled flag is off with reason DISABLED whatever its strategy or the context."""
    result = evaluate(flag, ctx(), END)

    assert (result.value, result.reason, result.error) == (False, Reason.DISABLED, None)
    assert result.variant == "off"


def test_kill_switch_turns_every_other_flag_off():
    """With emergency_shutdown on, every other flag is off with reason KILL_SWITCH, and the switch reports on."""
    flags = {
        KILL_SWITCH: kill_switch(True),
        "all_on": make_flag(name="all_on"),
        "full": pct_flag(100, name="full"),
        "ramp": ramp_flag(name="ramp", current=100.0),
        "off": make_flag(name="off", enabled=False),
    }
    snapshot = FlagSet(flags)

    results = {r.key: r for r in snapshot.evaluate_all(ctx(), NOW)}

    assert snapshot.kill_switch is True
    assert results[KILL_SWITCH].value is True and results[KILL_SWITCH].variant == "on"
    for name in ("all_on", "full", "ramp", "off"):
        assert (results[name].value, results[name].reason) == (False, Reason.KILL_SWITCH), name
        assert snapshot.evaluate(name, ctx(), NOW) == results[name]


def test_kill_switch_off_leaves_flags_alone():
    """With emergency_shutdown present but off, other flags evaluate normally and the switch reports off."""
    snapshot = FlagSet({KILL_SWITCH: kill_switch(False), "all_on": make_flag(name="all_on")})

    assert snapshot.kill_switch is False
    assert snapshot.evaluate("all_on", ctx(), NOW).value is True
    assert snapshot.evaluate(KILL_SWITCH, ctx(), NOW) == Resolution(KILL_SWITCH, False, Reason.STATIC)


def test_kill_switch_wins_over_missing_targeting_key():
    """Under the kill switch a flag is off without complaining about the context."""
    result = evaluate(pct_flag(50), {}, NOW, kill_switch=True)

    assert (result.value, result.reason, result.error) == (False, Reason.KILL_SWITCH, None)


# -- constraints ------------------------------------------------------------------------------

CONSTRAINT_CASES = [
    # operator, values, agent in context, expected
    (Operator.IN, ("Builder", "Deploy", "QA"), "Deploy", True),
    (Operator.IN, ("Builder", "Deploy", "QA"), "Legal", False),
    (Operator.IN, ("Builder",), "builder", False),
    (Operator.NOT_IN, ("Support", "Legal"), "QA", True),
    (Operator.NOT_IN, ("Support", "Legal"), "Legal", False),
    (Operator.STR_EQ, ("QA",), "QA", True),
    (Operator.STR_EQ, ("QA",), "QA2", False),
    (Operator.STR_CONTAINS, ("uil", "xyz"), "Builder", True),
    (Operator.STR_CONTAINS, ("xyz",), "Builder", False),
    (Operator.STR_STARTS_WITH, ("Bu", "De"), "Deploy", True),
    (Operator.STR_STARTS_WITH, ("ploy",), "Deploy", False),
    (Operator.STR_ENDS_WITH, ("ploy",), "Deploy", True),
    (Operator.STR_ENDS_WITH, ("Dep",), "Deploy", False),
]


@pytest.mark.parametrize(("op", "values", "agent", "expected"), CONSTRAINT_CASES)
def test_constraint_operators(op, values, agent, expected):
    """Each operator matches exactly the values it should, case-sensitively by default."""
    flag = make_flag(constraints=(Constraint("agent", op, values),))

    result = evaluate(flag, ctx(agent=agent), NOW)

    assert result.value is expected
    assert result.reason is (Reason.TARGETING_MATCH if expected else Reason.DEFAULT)


@pytest.mark.parametrize(("op", "values", "agent", "expected"), CONSTRAINT_CASES)
def test_inverted_constraint_negates_the_match(op, values, agent, expected):
    """`inverted` turns every match into a miss and every miss into a match."""
    flag = make_flag(constraints=(Constraint("agent", op, values, inverted=True),))

    assert evaluate(flag, ctx(agent=agent), NOW).value is (not expected)


@pytest.mark.parametrize(
    ("op", "values", "agent"),
    [
        (Operator.IN, ("builder",), "BUILDER"),
        (Operator.STR_EQ, ("qa",), "QA"),
        (Operator.STR_CONTAINS, ("UILD",), "Builder"),
        (Operator.STR_STARTS_WITH, ("dep",), "Deploy"),
        (Operator.STR_ENDS_WITH, ("LOY",), "Deploy"),
        (Operator.STR_EQ, ("straße",), "STRASSE"),
    ],
)
def test_case_insensitive_constraint(op, values, agent):
    """`case_insensitive` folds case on both sides (full Unicode case folding); without it, no match."""
    sensitive = make_flag(constraints=(Constraint("agent", op, values),))
    insensitive = make_flag(constraints=(Constraint("agent", op, values, case_insensitive=True),))

    assert evaluate(insensitive, ctx(agent=agent), NOW).value is True
    assert evaluate(sensitive, ctx(agent=agent), NOW).value is False


@pytest.mark.parametrize(
    "op", [Operator.IN, Operator.STR_EQ, Operator.STR_CONTAINS, Operator.STR_STARTS_WITH, Operator.STR_ENDS_WITH]
)
def test_missing_field_matches_nothing(op):
    """A context without the constrained field is off (DEFAULT), and on when the constraint is inverted."""
    plain = make_flag(constraints=(Constraint("agent", op, ("Builder",)),))
    inverted = make_flag(constraints=(Constraint("agent", op, ("Builder",), inverted=True),))

    assert evaluate(plain, ctx(agent=None), NOW) == Resolution("hybrid_rag_enabled", False, Reason.DEFAULT)
    assert evaluate(inverted, ctx(agent=None), NOW).value is True


def test_not_in_on_a_missing_field_matches_as_in_unleash():
    """`agent NOT_IN [Support]` holds for a context that has no agent at all."""
    flag = make_flag(constraints=(Constraint("agent", Operator.NOT_IN, ("Support",)),))

    assert evaluate(flag, ctx(agent=None), NOW).value is True


def test_non_string_field_is_compared_as_text():
    """A numeric context value is compared by its text."""
    flag = make_flag(constraints=(Constraint("tier", Operator.IN, ("2", "3")),))

    assert evaluate(flag, ctx(tier=2), NOW).value is True
    assert evaluate(flag, ctx(tier=4), NOW).value is False


def test_every_constraint_must_match():
    """Constraints are ANDed: one miss turns the flag off."""
    flag = make_flag(
        constraints=(
            Constraint("agent", Operator.IN, ("Builder", "QA")),
            Constraint("region", Operator.STR_STARTS_WITH, ("eu-",)),
        )
    )

    assert evaluate(flag, ctx(agent="QA", region="eu-west"), NOW).value is True
    assert evaluate(flag, ctx(agent="QA", region="us-east"), NOW).value is False
    assert evaluate(flag, ctx(agent="Legal", region="eu-west"), NOW).value is False


def test_constraints_are_checked_before_the_bucket():
    """A context outside the constraints is off with DEFAULT, even without a targetingKey."""
    flag = pct_flag(50, constraints=(Constraint("agent", Operator.IN, ("Builder",)),))

    assert evaluate(flag, ctx(key=None, agent="Legal"), NOW) == Resolution("hybrid_rag_enabled", False, Reason.DEFAULT)


# -- percentages ------------------------------------------------------------------------------


@pytest.mark.parametrize(("percentage", "expected"), [(0, False), (100, True)])
def test_percentage_0_and_100_need_no_targeting_key(percentage, expected):
    """At 0% and 100% the answer is the same for everyone, so no targetingKey is needed."""
    result = evaluate(pct_flag(percentage), ctx(key=None), NOW)

    assert (result.value, result.reason, result.error) == (expected, Reason.SPLIT, None)


def test_missing_targeting_key_is_an_error():
    """Between 0 and 100% a context without targetingKey is off with TARGETING_KEY_MISSING."""
    for context in (ctx(key=None), ctx(key="")):
        result = evaluate(pct_flag(50), context, NOW)

        assert (result.value, result.reason, result.error) == (False, Reason.ERROR, ErrorCode.TARGETING_KEY_MISSING)
        assert "targetingKey" in result.detail


def test_missing_custom_stickiness_field_is_invalid_context():
    """A flag bucketed on another field reports INVALID_CONTEXT when that field is missing."""
    result = evaluate(pct_flag(50, stickiness="sessionId"), ctx(), NOW)

    assert (result.value, result.reason, result.error) == (False, Reason.ERROR, ErrorCode.INVALID_CONTEXT)
    assert "sessionId" in result.detail


@pytest.mark.parametrize("value", [True, ["a"], {"k": 1}])
def test_unbucketable_stickiness_value_is_invalid_context(value):
    """A boolean, list or object targetingKey cannot be bucketed: INVALID_CONTEXT."""
    result = evaluate(pct_flag(50), ctx(key=value), NOW)

    assert (result.value, result.error) == (False, ErrorCode.INVALID_CONTEXT)


def test_custom_stickiness_buckets_on_that_field():
    """With stickiness sessionId the bucket follows the session, not the targetingKey."""
    flag = pct_flag(30, stickiness="sessionId")

    for key in KEYS[:300]:
        result = evaluate(flag, ctx(key="same-task", sessionId=key), NOW)
        assert result.value is in_rollout("hybrid_rag_enabled", key, 30)


def test_numeric_targeting_key_buckets_like_its_text():
    """targetingKey 123 lands in the same bucket as "123"."""
    for number in range(300):
        assert evaluate(pct_flag(40), ctx(key=number), NOW) == evaluate(pct_flag(40), ctx(key=str(number)), NOW)


def test_percentage_flag_follows_the_sticky_bucket():
    """A percentage flag is on exactly for the keys whose bucket of group:key is under the percentage."""
    flag = pct_flag(25, group_id="rag_group")

    on = on_keys(flag)

    assert on == {k for k in KEYS if in_rollout("rag_group", k, 25)}
    assert 0 < len(on) < len(KEYS)
    assert all(evaluate(flag, ctx(k), NOW).reason is Reason.SPLIT for k in KEYS[:50])


def test_group_defaults_to_the_flag_name():
    """Without group_id two flags at the same percentage choose different contexts."""
    a, b = pct_flag(50, name="a"), pct_flag(50, name="b")

    assert on_keys(a) == {k for k in KEYS if in_rollout("a", k, 50)}
    assert on_keys(a) != on_keys(b)
    assert on_keys(pct_flag(50, name="a", group_id="g")) == on_keys(pct_flag(50, name="b", group_id="g"))


def test_answer_is_sticky():
    """The same context gets the same answer every time and in every snapshot."""
    first = [evaluate(pct_flag(37), ctx(k), NOW).value for k in KEYS]

    assert [FlagSet({"f": pct_flag(37)}).evaluate("f", ctx(k), END).value for k in KEYS] == first


def test_all_flag_ignores_rollout_percentage():
    """An `all` flag is on for every matching context whatever rollout_percentage says."""
    assert on_keys(make_flag(rollout_percentage=0.0)) == set(KEYS)


# -- progressive ------------------------------------------------------------------------------


def test_progressive_with_current_percentage_uses_it():
    """Once the controller set current_percentage, the dates are ignored."""
    flag = ramp_flag(current=5.0)

    for moment in (START - timedelta(days=1), NOW, END + timedelta(days=30)):
        assert flag.percentage_at(moment) == 5.0
        assert on_keys(flag, moment) == {k for k in KEYS if in_rollout("hybrid_rag_enabled", k, 5.0)}


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (START - timedelta(days=2), 10.0),
        (START, 10.0),
        (START + timedelta(days=1), 10.0 + 20.0 / 7),
        (START + (END - START) / 2, 20.0),
        (END, 30.0),
        (END + timedelta(seconds=1), 30.0),
        (END + timedelta(days=365), 30.0),
    ],
    ids=["before-start", "start", "one-day-in", "middle", "end", "just-after-end", "a-year-after"],
)
def test_progressive_without_current_percentage_ramps_linearly(moment, expected):
    """Without current_percentage the percentage moves linearly from initial to end between the dates, clamped."""
    assert ramp_flag(initial=10.0, end=30.0).percentage_at(moment) == pytest.approx(expected)


def test_progressive_ramp_decides_who_is_on():
    """Evaluating a ramping flag buckets at the ramp's percentage for `now`."""
    flag = ramp_flag()
    middle = START + (END - START) / 2

    assert on_keys(flag, START - timedelta(hours=1)) == set()
    assert on_keys(flag, START) == set()
    assert on_keys(flag, middle) == {k for k in KEYS if in_rollout("hybrid_rag_enabled", k, 50.0)}
    assert on_keys(flag, END) == set(KEYS)
    assert on_keys(flag, END + timedelta(days=1)) == set(KEYS)


def test_progressive_ramp_only_adds_contexts_as_time_passes():
    """Over the ramp, a context once on stays on."""
    flag = ramp_flag()
    seen: set[str] = set()

    for hour in range(0, 7 * 24 + 1, 6):
        now_on = on_keys(flag, START + timedelta(hours=hour))
        assert seen <= now_on, hour
        seen = now_on
    assert seen == set(KEYS)


def test_seed_flag_after_its_end_date_is_fully_on():
    """The seeds' example (10% written, no current_percentage) is served at the ramp's end after end_date."""
    # This pins the documented model; it means a seeds-era file loaded today is at 100%, not 10%.
    flag = ramp_flag()

    assert flag.rollout_percentage == 10.0
    assert flag.percentage_at(datetime(2026, 1, 1, tzinfo=UTC)) == 100.0


# -- the snapshot ---------------------------------------------------------------------------------


def test_unknown_flag_is_flag_not_found():
    """Evaluating a flag the snapshot does not have is off with FLAG_NOT_FOUND."""
    result = FlagSet({"a": make_flag(name="a")}).evaluate("nope", ctx(), NOW)

    assert (result.key, result.value, result.reason, result.error) == (
        "nope",
        False,
        Reason.ERROR,
        ErrorCode.FLAG_NOT_FOUND,
    )


def test_snapshot_is_independent_of_the_mapping_it_was_built_from():
    """Changing the dict after building a FlagSet does not change the snapshot."""
    source = {"a": make_flag(name="a")}
    snapshot = FlagSet(source)
    source["b"] = make_flag(name="b")

    assert "b" not in snapshot and len(snapshot) == 1


BASE = {
    "a": pct_flag(10, name="a", constraints=(Constraint("agent", Operator.IN, ("QA",)),)),
    "b": ramp_flag(name="b"),
    KILL_SWITCH: kill_switch(False),
}


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("a", {"enabled": False}),
        ("a", {"rollout_percentage": 10.5}),
        ("a", {"rollout_strategy": Strategy.ALL}),
        ("a", {"constraints": (Constraint("agent", Operator.IN, ("QA", "Deploy")),)}),
        ("a", {"constraints": (Constraint("agent", Operator.IN, ("QA",), inverted=True),)}),
        ("a", {"stickiness": "sessionId"}),
        ("a", {"group_id": "g"}),
        ("a", {"description": "why"}),
        ("a", {"extra": {"owner": "me"}}),
        ("b", {"progressive_config": ProgressiveConfig(0.0, 100.0, START, END, 5.0)}),
        ("b", {"progressive_config": ProgressiveConfig(0.0, 100.0, START, END + timedelta(seconds=1))}),
        (KILL_SWITCH, {"enabled": True}),
    ],
)
def test_revision_changes_when_any_flag_changes(name, change):
    """Any change to any field of any flag gives a different revision."""
    changed = {**BASE, name: replace(BASE[name], **change)}

    assert FlagSet(changed).revision != FlagSet(BASE).revision


def test_revision_changes_when_a_flag_is_added_or_removed():
    """Adding or removing a flag changes the revision."""
    fewer = {k: v for k, v in BASE.items() if k != "b"}
    more = {**BASE, "c": make_flag(name="c")}

    assert len({FlagSet(BASE).revision, FlagSet(fewer).revision, FlagSet(more).revision}) == 3


def test_revision_is_stable_for_the_same_content():
    """The same flags in another order, or rebuilt, give the same revision."""
    reordered = dict(reversed(list(BASE.items())))
    rebuilt = {n: replace(f) for n, f in BASE.items()}

    assert FlagSet(reordered).revision == FlagSet(rebuilt).revision == content_revision(BASE)
