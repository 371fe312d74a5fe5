"""How a journal entry reads to people, from its fields alone (never from its prose).

    said(d)         the reason led by who acted: "operator: alice: dashboards are red",
                    "signal:SIGUSR1: emergency shutdown requested with SIGUSR1", or the
                    reason alone when rolloutd decided by itself
    is_operator(d)  whether the entry is an operator's command (its trigger says so)
    actor(d)        who acted ("rolloutd", an operator's name, "signal:SIGUSR1")

A journal entry is a decision's JSON (controller/decision.py: `trigger` {kind, detail},
`actor`, `reason`, ...). Views import nothing of ours, so `said` restates
`controller.decision.said` in a few lines; entries the daemon marked `legacy` (written
before decisions carried an actor) already name the actor in their reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ROLLOUTD = "rolloutd"
OPERATOR = "operator"


def actor(d: Mapping[str, Any]) -> str:
    return str(d.get("actor") or ROLLOUTD)


def is_operator(d: Mapping[str, Any]) -> bool:
    return (d.get("trigger") or {}).get("kind") == OPERATOR


def said(d: Mapping[str, Any]) -> str:
    reason, who = str(d.get("reason") or ""), actor(d)
    if (d.get("trigger") or {}).get("legacy") or who == ROLLOUTD:
        return reason
    if is_operator(d) and who != OPERATOR:
        who = f"{OPERATOR}: {who}"
    return f"{who}: {reason}" if reason else who
