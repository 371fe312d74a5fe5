"""What a decision does to the flags: a pure function from (plan, decision, flags) to changes.

The plan's flags move together: a stage sets each of them to the stage's percentage,
restricted to its cumulative agent cohort (``agent IN [...]``), the way the seeds
write it (`rollout_percentage` and `progressive_config.current_percentage` both).
Flags the plan creates share one hash group (the plan's name), so an agent that gets
`hybrid_rag_enabled` also gets the `vector_search_enabled` it depends on; existing
flags keep their group. Constraints on other context fields are left alone.

Setting flags *to* values makes every effect idempotent: re-applying an intent after
a crash changes nothing that was already applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from controller.decision import Action, Decision
from controller.plan import Plan
from flags.model import KILL_SWITCH, Constraint, Flag, Operator, Strategy
from flags.store import with_percentage

COHORT_FIELD = "agent"


def flag_changes(plan: Plan, decision: Decision, current: Mapping[str, Flag]) -> dict[str, Flag]:
    """The flags to write for `decision` (empty when it changes none)."""
    if not decision.changes_flags:
        return {}
    if decision.action is Action.EMERGENCY:
        changes = {name: replace(_existing(plan, name, current), enabled=False) for name in plan.flags}
        changes[KILL_SWITCH] = replace(current.get(KILL_SWITCH) or Flag(KILL_SWITCH, enabled=True), enabled=True)
        return changes
    changes = {
        name: rolled_out(_existing(plan, name, current), decision.percentage, decision.agents) for name in plan.flags
    }
    if decision.action is Action.EMERGENCY_CLEARED and KILL_SWITCH in current:
        changes[KILL_SWITCH] = replace(current[KILL_SWITCH], enabled=False)
    return changes


def rolled_out(flag: Flag, percentage: float, agents: tuple[str, ...]) -> Flag:
    """`flag` on for `percentage` % of the cohort `agents`."""
    others = tuple(c for c in flag.constraints if c.context_name != COHORT_FIELD)
    cohort = Constraint(COHORT_FIELD, Operator.IN, tuple(agents))
    return replace(with_percentage(flag, percentage), enabled=True, constraints=(cohort, *others))


def _existing(plan: Plan, name: str, current: Mapping[str, Flag]) -> Flag:
    return current.get(name) or Flag(
        name=name,
        enabled=False,
        rollout_strategy=Strategy.PERCENTAGE,
        rollout_percentage=0.0,
        group_id=plan.name,
        description=f"rolled out by plan {plan.name}",
    )
