"""The small plans the tests run, written by one builder instead of copied as TOML text.

    plan_toml(...)     a plan file: the [plan] table, then [[stages]], [[checkpoints]] and
                       [[guards]] tables given as plain dicts, rendered in the order given
    stage(...), checkpoint(...), guard(...)
                       one table each (keys as the plan reference spells them)
    compact_toml(...) / compact_plan(...)
                       the compact plan of the decision and service tests: a 5m interval,
                       failure_limit 3, 0% at 0h, 10% of Builder at 1h, 50% of Builder and QA
                       at 2h, the "mid-point review" at 1h30, and the `latency` guard
                       (warning 0.2, critical 0.3, sustained 5m: two checks)
    latency_guard(...), pass_rate_guard(...), ERROR_RATIO
                       the guards those plans use

A live daemon's plan is `plan_toml` with one stage that is due now and one that never falls
due within a test, over a built-in guard (`ERROR_RATIO`) that passes on silence, so guard
rounds are clean without traffic or Prometheus.

Keys are rendered exactly as given (`guard_interval = "5m"`, `percentage = 0`), so a test may
still edit the text of a plan to break it on purpose.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from controller.plan import Plan
from controller.plan_load import parse_plan

Table = Mapping[str, Any]

LATENCY_QUERY = "histogram_quantile(0.95, sum by (le) (rate(latency_bucket[{{window}}])))"
# a built-in signal, silence a pass: clean rounds with no traffic and no Prometheus
ERROR_RATIO: Table = {"name": "errors", "builtin": "error_ratio", "warning": 0.05, "critical": 0.1, "no_data": "pass"}


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"no TOML rendering for {value!r} here")


def _table(header: str, fields: Table) -> str:
    return "\n".join([header, *(f"{key} = {_value(value)}" for key, value in fields.items() if value is not None)])


def stage(at: int | float | str, percentage: int | float, agents: Sequence[str] = (), **more: Any) -> Table:
    """One [[stages]] table; `more` adds keys such as `name`, written first as in the shipped plans."""
    return {**more, "at": at, "percentage": percentage, "agents": list(agents)}


def checkpoint(at: int | float | str, **more: Any) -> Table:
    """One [[checkpoints]] table; `name` first when given, then `at`, then the rest of `more`."""
    name = more.pop("name", None)
    return {"name": name, "at": at, **more}


def guard(name: str, **fields: Any) -> Table:
    """One [[guards]] table (`query` or `builtin`, direction, thresholds, ...); None leaves a key out."""
    return {"name": name, **fields}


def plan_toml(
    *,
    name: str,
    flags: Sequence[str],
    stages: Iterable[Table],
    guards: Iterable[Table],
    checkpoints: Iterable[Table] = (),
    guard_interval: str = "5m",
    description: str | None = None,
    failure_limit: int | None = None,
    failure_response: str | None = None,
) -> str:
    """A plan file's text; a head key left at None is left out (the loader's default applies)."""
    head = {
        "name": name,
        "description": description,
        "flags": list(flags),
        "guard_interval": guard_interval,
        "failure_limit": failure_limit,
        "failure_response": failure_response,
    }
    parts = [
        _table("[plan]", head),
        *(_table("[[stages]]", s) for s in stages),
        *(_table("[[checkpoints]]", c) for c in checkpoints),
        *(_table("[[guards]]", g) for g in guards),
    ]
    return "\n\n".join(parts) + "\n"


def latency_guard(*, emergency: float | None = None, sustain: str = "5m", on_warning: str | None = None) -> Table:
    """The compact plan's `latency` guard: p95 above warning 0.2 / critical 0.3, silence a pass."""
    return guard(
        "latency",
        query=LATENCY_QUERY,
        direction="above",
        warning=0.2,
        critical=0.3,
        emergency=emergency,
        sustain=sustain,
        no_data="pass",
        on_warning=on_warning,
    )


def pass_rate_guard(*, no_data: str = "hold") -> Table:
    """A `pass_rate` guard: below warning 98 / critical 95."""
    return guard("pass_rate", query="min(pass_rate)", direction="below", warning=98, critical=95, no_data=no_data)


COMPACT_STAGES = (stage(0, 0), stage(1, 10, ["Builder"]), stage(2, 50, ["Builder", "QA"]))


def compact_toml(
    *,
    stages: Iterable[Table] = COMPACT_STAGES,
    guards: Iterable[Table] | None = None,
    failure_limit: int = 3,
    failure_response: str | None = None,
    requires_approval: bool | None = None,
) -> str:
    """The compact plan's text (guards: `latency_guard()` unless given)."""
    return plan_toml(
        name="compact",
        flags=["new_ranker"],
        stages=stages,
        checkpoints=[checkpoint("1h30m", name="mid-point review", requires_approval=requires_approval)],
        guards=(latency_guard(),) if guards is None else guards,
        failure_limit=failure_limit,
        failure_response=failure_response,
    )


def compact_plan(**options: Any) -> Plan:
    """The compact plan, parsed (`options` as for `compact_toml`)."""
    return parse_plan(compact_toml(**options), "compact.toml")
