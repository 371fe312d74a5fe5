"""Ground-truth validation and the latency probe, over a real embedded retriever."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import anyio
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from retrieval.cache_memory import LocalCache
from retrieval.embedded_store import EmbeddedStore
from retrieval.embedder_hashing import HashingEmbedder
from retrieval.graph_store import StoreUnavailable
from retrieval.memory import Memory
from retrieval.quality import LabelledSetError
from retrieval.retriever import Retriever
from retrieval.validation import (
    PATHS,
    ROUTES,
    VALIDATION_NAMESPACE,
    Round,
    Status,
    ValidationGauges,
    ValidationJob,
    ValidationSet,
    measure,
    percentile,
    probe_questions,
    validate,
)

pytestmark = pytest.mark.anyio

UNLABELLED = ("hybrid_rag_top3_accuracy_percent", "hybrid_rag_precision_at_10", "hybrid_rag_recall_at_10")
PROBE = ("hybrid_rag_benchmark_p50_latency_seconds", "hybrid_rag_benchmark_p95_latency_seconds")


class FlakyStore(EmbeddedStore):
    """The embedded store, with writes and pings failing as a down system of record does while `down`."""

    down = False

    async def put_many(self, memories: Sequence[Memory]) -> None:
        if self.down:
            raise StoreUnavailable("SQLite (test)", "put_many", "disk unplugged")
        await super().put_many(memories)

    async def ping(self) -> None:
        if self.down:
            raise StoreUnavailable("SQLite (test)", "ping", "disk unplugged")
        await super().ping()


class Switch:
    """A predicate the test flips, like a flag being turned on and off."""

    def __init__(self, on: bool = True) -> None:
        self.on = on

    def __call__(self) -> bool:
        return self.on


class StepTimer:
    """A timer under which the k-th timed query takes durations[k] seconds."""

    def __init__(self, durations: Sequence[float]) -> None:
        self.durations, self.now, self.calls = list(durations), 100.0, 0

    def __call__(self) -> float:
        if self.calls % 2:
            self.now += self.durations[self.calls // 2]
        self.calls += 1
        return self.now


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample /metrics would show, by (name, sorted labels)."""
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def names(registry: CollectorRegistry) -> set[str]:
    return {name for name, _ in scrape(registry)}


def open_retriever(directory: Path, store: EmbeddedStore | None = None) -> Retriever:
    return Retriever(store or EmbeddedStore(directory), LocalCache(), HashingEmbedder(), directory)


@pytest.fixture
async def retriever(tmp_path: Path) -> AsyncIterator[Retriever]:
    r = open_retriever(tmp_path)
    with anyio.fail_after(10):
        await r.open()
    yield r
    await r.close()


@pytest.fixture(scope="module")
def synthetic() -> ValidationSet:
    return ValidationSet.synthetic(300)


def job_for(
    r: Retriever,
    vset: ValidationSet,
    registry: CollectorRegistry,
    *,
    validation: Switch | None = None,
    probe: Switch | None = None,
    **kwargs,
) -> ValidationJob:
    validation, probe = validation or Switch(), probe or Switch()
    gauges = ValidationGauges(registry, validation_on=validation, probe_on=probe)
    return ValidationJob(r, vset, gauges, validation_on=validation, probe_on=probe, **kwargs)


# --- pure pieces ----------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    """p95 of 1..20 is the 19th value and p50 the 10th; a single value is every percentile."""
    values = [float(v) for v in range(20, 0, -1)]
    assert percentile(values, 0.95) == 19.0
    assert percentile(values, 0.50) == 10.0
    assert percentile([0.3], 0.95) == 0.3
    with pytest.raises(ValueError):
        percentile([], 0.95)


def test_probe_questions_rotate_through_the_set(synthetic: ValidationSet) -> None:
    """Successive offsets pick the next questions, wrapping at the end of the set."""
    qs = synthetic.questions
    assert probe_questions(qs, 3, len(qs) - 1) == [qs[-1], qs[0], qs[1]]
    assert probe_questions((), 5) == []


# --- seeding --------------------------------------------------------------------------------


async def test_synthetic_corpus_is_seeded_once_and_survives_a_reopen(tmp_path: Path, synthetic: ValidationSet) -> None:
    """The first call adds the corpus to the reserved namespace; later calls and a restart add nothing."""
    r = open_retriever(tmp_path)
    await r.open()
    assert await synthetic.ensure_seeded(r) == 300
    assert await synthetic.ensure_seeded(r) == 0
    assert r.count(VALIDATION_NAMESPACE) == 300
    await r.close()
    again = open_retriever(tmp_path)
    await again.open()
    try:
        assert again.count(VALIDATION_NAMESPACE) == 300
        assert await synthetic.ensure_seeded(again) == 0
        assert again.count(VALIDATION_NAMESPACE) == 300
    finally:
        await again.close()


async def test_a_drifted_validation_namespace_is_brought_back(retriever: Retriever, synthetic: ValidationSet) -> None:
    """A missing memory, a changed text and a stranger are all repaired by the next seeding."""
    await synthetic.ensure_seeded(retriever)
    first, second = synthetic.memories[0], synthetic.memories[-1]  # an owner (linked to), a note
    await retriever.delete(VALIDATION_NAMESPACE, first["id"])
    await retriever.add(
        [
            Memory(**{**second, "text": "rewritten by an older release"}),
            Memory(id="stranger", namespace=VALIDATION_NAMESPACE, text="not in the set"),
        ]
    )
    assert await synthetic.ensure_seeded(retriever) == 300
    contents = retriever.contents(VALIDATION_NAMESPACE)
    assert len(contents) == 300 and "stranger" not in contents and first["id"] in contents
    assert await synthetic.ensure_seeded(retriever) == 0


@pytest.fixture
async def flaky(
    tmp_path: Path, synthetic: ValidationSet
) -> AsyncIterator[tuple[FlakyStore, Retriever, CollectorRegistry, ValidationJob]]:
    """A retriever over a store that can be made to refuse, with a job and its registry."""
    store = FlakyStore(tmp_path)
    r = open_retriever(tmp_path, store)
    await r.open()
    registry = CollectorRegistry()
    try:
        yield store, r, registry, job_for(r, synthetic, registry)
    finally:
        await r.close()


async def test_store_down_while_seeding_exports_nothing_and_recovers(flaky: tuple) -> None:
    """A store that refuses the seed write leaves the gauges absent, raises nothing, and the next round measures."""
    store, r, registry, job = flaky
    store.down = True
    result = await job.run_once()
    assert (result.validation, result.probe) == (Status.NOT_MEASURED, Status.NOT_MEASURED)
    assert "cannot seed" in (result.reason or "") and "disk unplugged" in result.reason
    assert not names(registry) & {*UNLABELLED, *PROBE, "hybrid_rag_validation_score"}
    assert r.count(VALIDATION_NAMESPACE) == 0

    store.down = False
    assert await job.run_once() == Round(Status.MEASURED, Status.MEASURED)
    assert names(registry) >= {*UNLABELLED, *PROBE}


async def test_graph_store_down_after_seeding_withholds_validation_but_still_probes(flaky: tuple) -> None:
    """With the graph store down hybrid answers come from vectors alone: no quality gauges, latency still measured."""
    store, r, registry, job = flaky
    assert (await job.run_once()).validation is Status.MEASURED
    store.down = True
    assert not await r.check_store()
    result = await job.run_once()
    assert (result.validation, result.probe) == (Status.NOT_MEASURED, Status.MEASURED)
    assert "graph store down" in (result.reason or "")
    assert not names(registry) & set(UNLABELLED)
    assert set(PROBE) <= names(registry)


# --- measuring ------------------------------------------------------------------------------


async def test_hybrid_beats_vector_on_multi_hop_questions(retriever: Retriever, synthetic: ValidationSet) -> None:
    """Answers one or two links away are found through the graph, which vector search alone cannot follow."""
    await synthetic.ensure_seeded(retriever)
    m = await measure(retriever, synthetic.questions)
    assert set(m.scores) == set(PATHS) and m.degraded == 0
    for hops in (1, 2):
        hybrid, vector = m.by_hops["hybrid"][hops], m.by_hops["vector"][hops]
        assert hybrid.top3 >= vector.top3 + 0.5, (hops, hybrid, vector)
        assert hybrid.recall_at_10 >= vector.recall_at_10 + 0.5, (hops, hybrid, vector)
    assert m.by_hops["vector"][0].top3 == 1.0  # the direct question is vector search's home ground
    assert await validate(retriever, synthetic.questions, ("hybrid",)) == {"hybrid": m.scores["hybrid"]}


async def test_synthetic_queries_leave_the_traffic_metrics_alone(
    retriever: Retriever, synthetic: ValidationSet
) -> None:
    """A whole round (validation on three paths plus the probe) adds nothing to hybrid_rag_queries_total."""

    def queries() -> dict[str, float | None]:
        return {p: retriever.metrics.registry.get_sample_value("hybrid_rag_queries_total", {"path": p}) for p in PATHS}

    before = queries()
    assert await job_for(retriever, synthetic, CollectorRegistry()).run_once() == Round(
        Status.MEASURED, Status.MEASURED
    )
    assert queries() == before
    await retriever.retrieve("incident INC-20000", VALIDATION_NAMESPACE, 10, ROUTES["hybrid"])
    assert queries()["hybrid"] == before["hybrid"] + 1  # the counter does move for agents' traffic


# --- gauges ---------------------------------------------------------------------------------


async def test_gauges_appear_when_measured_and_vanish_when_turned_off(
    retriever: Retriever, synthetic: ValidationSet
) -> None:
    """Measured values are exported; a predicate turned off hides them at the next scrape and they stay
    gone, even once turned back on, until a fresh measurement."""
    registry, validation, probe = CollectorRegistry(), Switch(), Switch()
    job = job_for(retriever, synthetic, registry, validation=validation, probe=probe, clock=lambda: 1_700_000_000.0)
    assert names(registry) == set()
    await job.run_once()
    scores = await validate(retriever, synthetic.questions, ("hybrid",))
    samples = scrape(registry)
    assert samples[("hybrid_rag_precision_at_10", ())] == pytest.approx(scores["hybrid"].precision_at_10)
    assert samples[("hybrid_rag_recall_at_10", ())] == pytest.approx(scores["hybrid"].recall_at_10)
    assert samples[("hybrid_rag_top3_accuracy_percent", ())] == pytest.approx(scores["hybrid"].top3 * 100)
    assert 85 <= samples[("hybrid_rag_top3_accuracy_percent", ())] <= 100  # 89.4 measured (issue 13's fusion)
    assert samples[("hybrid_rag_validation_last_run_timestamp_seconds", ())] == 1_700_000_000.0
    labelled = {
        dict(labels)["path"] + "/" + dict(labels)["metric"]
        for name, labels in samples
        if name == "hybrid_rag_validation_score"
    }
    assert labelled == {
        f"{p}/{m}" for p in PATHS for m in ("precision_at_10", "recall_at_10", "top3", "mrr", "ndcg_at_10")
    }
    assert samples[("hybrid_rag_benchmark_p95_latency_seconds", ())] > 0

    validation.on = False
    assert not names(registry) & {*UNLABELLED, "hybrid_rag_validation_score"}  # no round ran: scrape time
    assert set(PROBE) <= names(registry)
    validation.on = True
    assert not names(registry) & set(UNLABELLED)  # not the stale value back

    probe.on = False
    validation.on = False
    assert await job.run_once() == Round(Status.OFF, Status.OFF)
    assert names(registry) == set()
    validation.on = True
    assert await job.run_once() == Round(Status.MEASURED, Status.OFF)
    assert set(UNLABELLED) <= names(registry) and not names(registry) & set(PROBE)


async def test_probe_exports_nearest_rank_p95_and_p50(retriever: Retriever, synthetic: ValidationSet) -> None:
    """Fifty queries taking 1..50 ms give p95 = 48 ms and p50 = 25 ms."""
    registry = CollectorRegistry()
    timer = StepTimer([(k + 1) / 1000 for k in range(50)])
    job = job_for(retriever, synthetic, registry, validation=Switch(False), timer=timer, probe_queries=50)
    assert await job.run_once() == Round(Status.OFF, Status.MEASURED)
    assert timer.calls == 100
    samples = scrape(registry)
    assert samples[("hybrid_rag_benchmark_p95_latency_seconds", ())] == pytest.approx(0.048)
    assert samples[("hybrid_rag_benchmark_p50_latency_seconds", ())] == pytest.approx(0.025)
    assert not names(registry) & set(UNLABELLED)


async def test_probe_with_the_real_clock_exports_a_positive_p95(retriever: Retriever, synthetic: ValidationSet) -> None:
    """Timed for real, the probe's p95 is above zero and at least its p50."""
    registry = CollectorRegistry()
    await job_for(retriever, synthetic, registry, validation=Switch(False)).run_once()
    samples = scrape(registry)
    p50 = samples[("hybrid_rag_benchmark_p50_latency_seconds", ())]
    assert samples[("hybrid_rag_benchmark_p95_latency_seconds", ())] >= p50 > 0


# --- labelled sets --------------------------------------------------------------------------


async def test_labelled_set_file_is_queried_where_its_memories_are(retriever: Retriever, tmp_path: Path) -> None:
    """A JSONL set over memories the caller stored is scored as written, and nothing is seeded."""
    await retriever.add(
        [
            Memory("owner-mei", "team-a", "Mei Tanaka owns billing-api and signs off every change to it."),
            Memory(
                "deploy-q3",
                "team-a",
                "The Deploy agent approved the Q3 deploy of billing-api on Friday.",
                links=("owner-mei",),
            ),
            Memory("standup", "team-a", "The Support agent summarised the standup: search-cache is on track."),
        ]
    )
    path = tmp_path / "labelled.jsonl"
    path.write_text(
        "\n".join(
            json.dumps(q)
            for q in [
                {"query": "Who approved the Q3 deploy?", "relevant": ["deploy-q3"], "namespace": "team-a"},
                {
                    "query": "Who signs off the Q3 deploy?",
                    "relevant": ["owner-mei", "deploy-q3"],
                    "grades": {"owner-mei": 3, "deploy-q3": 1},
                    "namespace": "team-a",
                    "hops": 1,
                },
            ]
        )
        + "\n"
    )
    vset = ValidationSet.labelled(path)
    assert vset.namespaces == ("team-a",) and vset.memories == ()
    registry = CollectorRegistry()
    assert await job_for(retriever, vset, registry, probe=Switch(False)).run_once() == Round(
        Status.MEASURED, Status.OFF
    )
    assert retriever.count("team-a") == 3 and retriever.count(VALIDATION_NAMESPACE) == 0
    scores = await validate(retriever, vset.questions)
    samples = scrape(registry)
    assert samples[("hybrid_rag_recall_at_10", ())] == pytest.approx(scores["hybrid"].recall_at_10) == 1.0
    assert samples[("hybrid_rag_validation_score", (("metric", "mrr"), ("path", "graph")))] == pytest.approx(
        scores["graph"].mrr
    )


async def test_labelled_set_over_an_empty_namespace_is_not_measured(retriever: Retriever, tmp_path: Path) -> None:
    """Questions about memories nobody stored give no gauge, and the reason names the namespace."""
    path = tmp_path / "labelled.jsonl"
    path.write_text(json.dumps({"query": "anything", "relevant": ["m-1"], "namespace": "nobody-home"}) + "\n")
    registry = CollectorRegistry()
    result = await job_for(retriever, ValidationSet.labelled(path), registry).run_once()
    assert result.validation is Status.NOT_MEASURED and "nobody-home" in (result.reason or "")
    assert names(registry) == set()


def test_a_broken_labelled_set_is_refused_with_its_line(tmp_path: Path) -> None:
    """A bad line fails at load, naming the file and line, before any job runs."""
    path = tmp_path / "labelled.jsonl"
    path.write_text('{"query": "ok", "relevant": ["a"]}\n{"query": "", "relevant": ["b"]}\n')
    with pytest.raises(LabelledSetError, match=r"labelled\.jsonl:2: query"):
        ValidationSet.labelled(path)


# --- the loop -------------------------------------------------------------------------------


async def test_run_survives_a_failing_round_and_wakes_on_demand(retriever: Retriever, synthetic: ValidationSet) -> None:
    """A round that raises is logged, not raised; `wake()` runs the next one before the interval is up."""
    failed, measured = anyio.Event(), anyio.Event()
    calls = 0

    def flaky_on() -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            failed.set()
            raise RuntimeError("flag store hiccup")
        return True

    def clock() -> float:
        measured.set()
        return 1_700_000_000.0

    registry = CollectorRegistry()
    gauges = ValidationGauges(registry)
    job = ValidationJob(
        retriever, synthetic, gauges, validation_on=flaky_on, probe_on=lambda: False, interval=3600, clock=clock
    )
    with anyio.fail_after(8):
        async with anyio.create_task_group() as tg:
            tg.start_soon(job.run)
            await failed.wait()
            job.wake()
            await measured.wait()
            tg.cancel_scope.cancel()
    assert set(UNLABELLED) <= names(registry)
