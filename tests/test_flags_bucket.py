"""Sticky bucketing: the same answers as the Unleash SDK at whole percentages, monotone at
fractional ones, and evenly spread.

The reference is the real UnleashClient 6.9.1 (its Rust engine, yggdrasil), built offline
from a bootstrapped in-memory cache: the constructor loads the bootstrap into the engine,
and without `initialize_client()` no thread is started and nothing touches the network.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import random
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from UnleashClient import UnleashClient

from flags.bucket import in_rollout, normalized_hash, rollout_position
from flags.evaluate import CompiledFlag
from flags.model import Constraint, Flag, Operator, Strategy
from tests.support.unleash_offline import offline_unleash

NOW = datetime(2025, 10, 24, 12, tzinfo=UTC)
GROUP = "hybrid_rag_enabled"
COHORT = ("Builder", "Deploy", "QA")
AGENTS = ("Builder", "Deploy", "QA", "Support", "Legal")
PERCENTAGES = range(101)
N_CONTEXTS = 10_000


def rollout_feature(p: int) -> dict[str, Any]:
    """Unleash's flexibleRollout at `p`% for the cohort, bucketed on targetingKey in GROUP."""
    return {
        "name": f"p{p}",
        "enabled": True,
        "type": "release",
        "project": "default",
        "strategies": [
            {
                "name": "flexibleRollout",
                "parameters": {"rollout": str(p), "stickiness": "targetingKey", "groupId": GROUP},
                "constraints": [{"contextName": "agent", "operator": "IN", "values": list(COHORT)}],
            }
        ],
    }


def our_flag(p: float) -> Flag:
    """Our equivalent of `rollout_feature(p)`."""
    return Flag(
        name=f"p{p}",
        enabled=True,
        rollout_strategy=Strategy.PERCENTAGE,
        rollout_percentage=float(p),
        constraints=(Constraint("agent", Operator.IN, COHORT),),
        stickiness="targetingKey",
        group_id=GROUP,
    )


def make_keys(n: int, seed: int = 20251023) -> list[str]:
    """`n` distinct targetingKeys of several shapes: task ids, hex ids, UUID-like, non-ASCII."""
    rng = random.Random(seed)
    shapes = [
        lambda i: f"task-{i}",
        lambda i: f"{rng.getrandbits(64):016x}",
        lambda i: "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}".format(*(rng.getrandbits(b) for b in (32, 16, 12, 16, 48))),
        lambda i: f"агент-{i}-ü-🚀",
        lambda i: str(i),
    ]
    keys = list(dict.fromkeys(shapes[i % len(shapes)](i) for i in range(n)))
    assert len(keys) == n
    return keys


def make_contexts(n: int = N_CONTEXTS) -> list[dict[str, str]]:
    rng = random.Random(7)
    return [{"targetingKey": key, "agent": rng.choice(AGENTS)} for key in make_keys(n)]


# Runs in pool workers forked from the test process: one client per worker.
_WORKER_CLIENT: UnleashClient | None = None


def _compare_chunk(contexts: list[dict[str, str]]) -> tuple[list[tuple], list[int], list[int]]:
    """For each context and every whole percentage, Unleash's answer against ours."""
    global _WORKER_CLIENT
    if _WORKER_CLIENT is None:
        _WORKER_CLIENT = offline_unleash([rollout_feature(p) for p in PERCENTAGES])
    client = _WORKER_CLIENT
    ours = [CompiledFlag(our_flag(p)) for p in PERCENTAGES]
    disagreements: list[tuple] = []
    on_theirs, on_ours = [0] * len(PERCENTAGES), [0] * len(PERCENTAGES)
    for context in contexts:
        for p in PERCENTAGES:
            theirs = client.is_enabled(f"p{p}", context)
            mine = ours[p].evaluate(context, NOW, False).value
            on_theirs[p] += theirs
            on_ours[p] += mine
            if theirs != mine:
                disagreements.append((context["targetingKey"], context["agent"], p, mine, theirs))
    return disagreements, on_theirs, on_ours


@pytest.fixture(scope="module")
def unleash() -> UnleashClient:
    return offline_unleash([rollout_feature(p) for p in PERCENTAGES])


# -- (a) agreement with Unleash ---------------------------------------------------------------


def test_unleash_reads_targeting_key_where_we_put_it(unleash):
    """Harness check: Unleash turns p{h} on and p{h-1} off for a key in bucket h, so it sees our targetingKey."""
    for key in ["task-1", "task-2", "a", "b", "x9", "агент-1", "00000000-0000-4000-8000-000000000000"]:
        bucket = normalized_hash(GROUP, key)
        context = {"targetingKey": key, "agent": "Builder"}

        assert unleash.is_enabled(f"p{bucket}", context) is True, key
        assert unleash.is_enabled(f"p{bucket - 1}", context) is False, key
        assert unleash.is_enabled(f"p{bucket}", {"properties": context}) is True, key
        assert unleash.is_enabled("p100", {**context, "agent": "Legal"}) is False, key


@pytest.mark.slow
def test_agrees_with_unleash_at_every_whole_percentage():
    """For 10,000 contexts and every whole percentage 0-100, our answer equals UnleashClient.is_enabled."""
    contexts = make_contexts()
    workers = max(1, min(8, os.cpu_count() or 1))
    chunks = [contexts[i :: workers * 4] for i in range(workers * 4)]
    started = time.perf_counter()

    with multiprocessing.get_context("fork").Pool(workers) as pool:
        results = pool.map_async(_compare_chunk, chunks).get(timeout=300)

    disagreements = [d for r in results for d in r[0]]
    on_theirs = [sum(r[1][p] for r in results) for p in PERCENTAGES]
    on_ours = [sum(r[2][p] for r in results) for p in PERCENTAGES]
    cohort = sum(c["agent"] in COHORT for c in contexts)
    print(
        f"\n{len(contexts)} contexts x {len(PERCENTAGES)} percentages = {len(contexts) * len(PERCENTAGES)} "
        f"comparisons in {time.perf_counter() - started:.1f}s on {workers} workers; {cohort} contexts in the cohort"
    )
    print(
        "on (ours/unleash) at "
        + ", ".join(f"{p}%: {on_ours[p]}/{on_theirs[p]}" for p in (0, 1, 5, 10, 25, 50, 99, 100))
    )

    assert disagreements == [], f"{len(disagreements)} disagreements, first: {disagreements[:10]}"
    assert on_theirs == on_ours
    assert on_theirs[0] == 0 and on_theirs[100] == cohort and 0 < cohort < len(contexts)
    assert abs(on_theirs[10] - cohort * 0.10) < 5 * math.sqrt(cohort * 0.1 * 0.9)
    assert on_theirs == sorted(on_theirs)


OPERATOR_CASES = [
    (op, inverted, case_insensitive)
    for op in ("IN", "NOT_IN", "STR_CONTAINS", "STR_STARTS_WITH", "STR_ENDS_WITH")
    for inverted in (False, True)
    # Unleash ignores caseInsensitive for IN/NOT_IN; we honour it for every operator. A known
    # difference of ours, so those combinations are not compared.
    for case_insensitive in ((False, True) if op.startswith("STR_") else (False,))
]
AGENT_VALUES = [None, "", "Builder", "builder", "Build", "xBuilder", "Builderx", "QA", "Legal"]
KNOWN_DIVERGENCES = {("NOT_IN", False, False, None), ("NOT_IN", True, False, None)}


def constraint_feature(op: str, inverted: bool, case_insensitive: bool) -> dict[str, Any]:
    return {
        "name": f"{op}-{inverted}-{case_insensitive}",
        "enabled": True,
        "strategies": [
            {
                "name": "default",
                "parameters": {},
                "constraints": [
                    {
                        "contextName": "agent",
                        "operator": op,
                        "values": ["Builder", "QA"],
                        "inverted": inverted,
                        "caseInsensitive": case_insensitive,
                    }
                ],
            }
        ],
    }


def constraint_answers() -> dict[tuple, tuple[bool, bool]]:
    client = offline_unleash([constraint_feature(*case) for case in OPERATOR_CASES])
    answers = {}
    for op, inverted, case_insensitive in OPERATOR_CASES:
        flag = CompiledFlag(
            Flag(
                name="f",
                enabled=True,
                constraints=(Constraint("agent", Operator(op), ("Builder", "QA"), case_insensitive, inverted),),
            )
        )
        for agent in AGENT_VALUES:
            context = {"targetingKey": "task-1"} | ({} if agent is None else {"agent": agent})
            theirs = client.is_enabled(f"{op}-{inverted}-{case_insensitive}", context)
            answers[(op, inverted, case_insensitive, agent)] = (flag.evaluate(context, NOW, False).value, theirs)
    return answers


def test_constraints_agree_with_unleash():
    """Every operator shared with Unleash, plain and inverted, matches the values Unleash matches."""
    answers = constraint_answers()

    disagreements = {case: a for case, a in answers.items() if a[0] != a[1] and case not in KNOWN_DIVERGENCES}

    assert disagreements == {}
    assert {a[1] for a in answers.values()} == {True, False}


def test_not_in_on_a_missing_field_agrees_with_unleash():
    """`agent NOT_IN [...]` with no agent in the context gives Unleash's answer, plain and inverted."""
    answers = constraint_answers()

    assert {case: answers[case] for case in KNOWN_DIVERGENCES} == {
        case: (answers[case][1], answers[case][1]) for case in KNOWN_DIVERGENCES
    }


# -- (b) monotonicity --------------------------------------------------------------------------


def fractional_percentages(seed: int = 11) -> list[float]:
    rng = random.Random(seed)
    grid = [i * 0.25 for i in range(401)]
    extra = [rng.uniform(0, 100) for _ in range(200)] + [1e-9, 0.0001, 0.00015, 5.5, 99.9999, 99.99999]
    return sorted(set(grid + extra))


def test_raising_a_fractional_percentage_only_adds_contexts():
    """Over 0, 0.25, ..., 100 plus random floats, a context once on stays on as the percentage grows."""
    percentages = fractional_percentages()
    for group in (GROUP, "vector_search_enabled"):
        for key in make_keys(3000):
            answers = [in_rollout(group, key, p) for p in percentages]
            first_on = answers.index(True)  # 100% is in the list, so it exists
            assert answers == [False] * first_on + [True] * (len(answers) - first_on), (group, key)


def test_flag_evaluation_is_monotone_in_the_percentage():
    """Through the evaluator too, the set of contexts on only grows with the percentage."""
    contexts = [c for c in make_contexts(2000) if c["agent"] in COHORT]
    previous: set[str] = set()

    for p in fractional_percentages():
        flag = CompiledFlag(our_flag(p))
        now_on = {c["targetingKey"] for c in contexts if flag.evaluate(c, NOW, False).value}
        assert previous <= now_on, p
        previous = now_on
    assert previous == {c["targetingKey"] for c in contexts}


def test_whole_percentages_are_unleash_buckets():
    """At whole percentages, in_rollout is exactly `normalized_hash(group, key) <= p`."""
    for key in make_keys(10_000):
        bucket = normalized_hash(GROUP, key)
        assert 1 <= bucket <= 100
        assert [in_rollout(GROUP, key, p) for p in PERCENTAGES] == [bucket <= p for p in PERCENTAGES], key


def test_position_is_in_the_unleash_bucket_and_decides_fractions():
    """A key's position lies in its Unleash bucket, and it is on at p exactly when position < p."""
    for key in make_keys(2000):
        position = rollout_position(GROUP, key)
        assert normalized_hash(GROUP, key) - 1 <= position < normalized_hash(GROUP, key)
        for p in (0.5, 5.5, 10.25, 33.3333, 99.5):
            assert in_rollout(GROUP, key, p) is (position < p)


def test_a_fractional_percentage_splits_the_next_bucket():
    """At 5.5% buckets 1-5 are on, 7+ are off, and bucket 6 is split roughly in half."""
    by_bucket: dict[int, list[bool]] = {}
    for key in make_keys(10_000):
        by_bucket.setdefault(normalized_hash(GROUP, key), []).append(in_rollout(GROUP, key, 5.5))

    assert all(all(by_bucket[b]) for b in range(1, 6))
    assert not any(on for b in range(7, 101) for on in by_bucket[b])
    sixth = by_bucket[6]
    assert 0.25 < sum(sixth) / len(sixth) < 0.75, (sum(sixth), len(sixth))


# -- (c) distribution ----------------------------------------------------------------------------


@pytest.mark.parametrize("p", [1, 10, 10.5, 50, 90])
def test_share_on_is_close_to_the_percentage(p):
    """Of 10,000 keys about p% are in, within five binomial standard deviations."""
    keys = make_keys(10_000)
    on = sum(in_rollout(GROUP, key, p) for key in keys)
    expected, sigma = len(keys) * p / 100, math.sqrt(len(keys) * p / 100 * (1 - p / 100))

    assert abs(on - expected) < 5 * sigma, (on, expected, sigma)


def test_groups_choose_independent_contexts():
    """Two groups at 10% overlap in about 1% of keys: the group really changes the bucket."""
    keys = make_keys(10_000)
    a = {k for k in keys if in_rollout("hybrid_rag_enabled", k, 10)}
    b = {k for k in keys if in_rollout("vector_search_enabled", k, 10)}

    assert abs(len(a & b) - 100) < 5 * math.sqrt(100 * 0.99)
