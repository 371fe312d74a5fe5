"""Flags files for tests that run a real daemon: the seeds' Phase 5 flags, written before start-up."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PHASE5_FLAGS = (
    "hybrid_rag_enabled",
    "vector_search_enabled",
    "graph_database_enabled",
    "redis_cache_enabled",
    "ground_truth_validation_enabled",
    "performance_benchmarks_enabled",
)
FIRST_COHORTS = ["Builder", "Deploy", "QA", "Support", "Marketing"]


def phase5_flag(percentage: float = 10.0) -> dict[str, Any]:
    """One Phase 5 flag as the seeds write it at the 10% stage, plus the agent constraint."""
    return {
        "enabled": True,
        "rollout_strategy": "progressive",
        "rollout_percentage": percentage,
        "progressive_config": {
            "initial_percentage": 0,
            "end_percentage": 100,
            "start_date": "2025-10-23T09:00:00Z",
            "end_date": "2025-10-30T09:00:00Z",
            "current_percentage": percentage,
        },
        "constraints": [{"context_name": "agent", "operator": "IN", "values": list(FIRST_COHORTS)}],
    }


def seed_flags(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The six Phase 5 flags at 10%, memory_compression_enabled (all, on), emergency_shutdown (off)."""
    flags: dict[str, Any] = {name: phase5_flag() for name in PHASE5_FLAGS}
    flags["memory_compression_enabled"] = {"enabled": True, "rollout_strategy": "all", "rollout_percentage": 100.0}
    flags["emergency_shutdown"] = {"enabled": False, "rollout_strategy": "all", "rollout_percentage": 100.0}
    flags.update(extra or {})
    return flags


def write_seed_flags(config_dir: Path, extra: dict[str, Any] | None = None) -> Path:
    """Write `seed_flags()` to `config_dir/state/flags.json` (write_config's state_dir); return its path."""
    state = config_dir / "state"
    state.mkdir(parents=True, exist_ok=True)
    path = state / "flags.json"
    path.write_text(json.dumps(seed_flags(extra), indent=2) + "\n")
    return path
