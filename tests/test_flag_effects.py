"""What decisions do to flags: the seeds' fields, cohorts as constraints, idempotence."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from controller.decide import Decision
from controller.flag_effects import flag_changes
from controller.plan_load import load_plan
from flags.evaluate import FlagSet
from flags.model import KILL_SWITCH, Flag
from flags.parse import parse_flags_text

PLAN = load_plan(Path(__file__).resolve().parent.parent / "deploy" / "plans" / "phase5.toml")
NOW = datetime(2025, 10, 23, 13, tzinfo=UTC)
COHORT = ("Builder", "Deploy", "QA")


def decision(action: str, percentage: float = 5.0, agents: tuple[str, ...] = COHORT) -> Decision:
    return Decision(at=NOW, action=action, stage=1, percentage=percentage, agents=agents, reason="test")


def test_stage_creates_every_plan_flag_for_its_cohort() -> None:
    """A stage sets all six flags to its percentage, restricted to its agents, sharing one hash group."""
    changes = flag_changes(PLAN, decision("stage_applied"), {})
    assert sorted(changes) == sorted(PLAN.flags)
    for flag in changes.values():
        assert flag.enabled and flag.rollout_percentage == 5.0
        assert [str(c) for c in flag.constraints] == ["agent IN [Builder, Deploy, QA]"]
        assert flag.bucket_group == PLAN.name
    flags = FlagSet({**changes, KILL_SWITCH: Flag(KILL_SWITCH, enabled=False)})
    on = {
        name: [flags.evaluate(name, {"targetingKey": f"t{i}", "agent": "QA"}, NOW).value for i in range(2000)]
        for name in PLAN.flags
    }
    assert len({tuple(v) for v in on.values()}) == 1, "flags of one plan must turn on for the same contexts"
    assert 50 < sum(on["hybrid_rag_enabled"]) < 150
    assert not flags.evaluate("hybrid_rag_enabled", {"targetingKey": "t1", "agent": "Legal"}, NOW).value


def test_progressive_flags_get_both_seed_fields() -> None:
    """An existing progressive flag gets rollout_percentage and current_percentage, as the seeds write them."""
    seed = parse_flags_text(
        '{"hybrid_rag_enabled": {"enabled": true, "rollout_strategy": "progressive", '
        '"rollout_percentage": 0, "progressive_config": {"initial_percentage": 0, '
        '"end_percentage": 100, "start_date": "2025-10-23T09:00:00Z", '
        '"end_date": "2025-10-30T09:00:00Z"}}}',
        "seed",
    )
    flag = flag_changes(PLAN, decision("stage_applied", 10.0), seed)["hybrid_rag_enabled"]
    assert flag.rollout_percentage == 10.0
    assert flag.progressive_config.current_percentage == 10.0
    assert flag.group_id is None, "an existing flag keeps its own hash group"


def test_applying_twice_changes_nothing() -> None:
    """Effects set flags to values, so re-applying an intent after a crash is a no-op."""
    once = flag_changes(PLAN, decision("stage_applied"), {})
    twice = flag_changes(PLAN, decision("stage_applied"), once)
    assert once == twice


def test_emergency_turns_plan_flags_off_and_the_kill_switch_on() -> None:
    """An emergency disables every rollout flag and enables emergency_shutdown; other flags are untouched."""
    current = {
        **flag_changes(PLAN, decision("stage_applied"), {}),
        KILL_SWITCH: Flag(KILL_SWITCH, enabled=False),
        "memory_compression_enabled": Flag("memory_compression_enabled", True),
    }
    changes = flag_changes(PLAN, decision("emergency", 0.0, ()), current)
    assert changes[KILL_SWITCH].enabled is True
    assert all(not changes[name].enabled for name in PLAN.flags)
    assert "memory_compression_enabled" not in changes


def test_decisions_that_do_not_touch_flags_change_nothing() -> None:
    """Warnings, holds and checkpoints leave the flags alone."""
    for action in ("warning", "hold", "resume", "checkpoint", "awaiting_approval", "approved", "completed"):
        assert flag_changes(PLAN, decision(action), {}) == {}
