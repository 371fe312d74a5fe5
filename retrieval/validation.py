"""Ground-truth validation and the latency probe: the daemon's two periodic retrieval jobs.

Every `interval` (and on `wake()`), `ValidationJob.run_once()` does what its predicates allow:

    validation_on()  ground_truth_validation_enabled is live
       ├─ ensure the validation set is in the store (the synthetic corpus is seeded once)
       ├─ ask every question along each path (quiet), score the answers (`quality`)
       └─ export the means; hybrid's also as the guard's unlabelled gauges
    probe_on()       performance_benchmarks_enabled is live
       └─ time N questions along the hybrid route (quiet), export p50 and p95

Synthetic queries run with `quiet=True`: they must not move the traffic metrics the
rollout's guards read. What a round could not measure it does not export: a gauge
that is absent reads as "no data" to the guard, while a stale or made-up value reads
as a verdict. So the gauges are cleared when a round fails (graph store down, corpus
not seeded, retriever loading) and hidden at scrape time while their predicate is off.

Validation is not measured while the graph store is down: the hybrid route then
answers from vectors alone, and the score would describe the outage (already visible
as `hybrid_rag_graph_store_up 0`), not the ranking. The probe still runs then: a
degraded answer's latency is what agents get.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import anyio
import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from retrieval.corpus import generate
from retrieval.gating import GRAPH, HYBRID, VECTOR, Route, choose_route
from retrieval.graph_store import StoreUnavailable
from retrieval.index_files import fingerprint
from retrieval.memory import Memory
from retrieval.quality import K, Question, Scores, load_labelled_set, mean, score
from retrieval.retriever import NotReady, RetrievalFailed, Retriever

log = structlog.get_logger("rolloutd.retrieval")

VALIDATION_NAMESPACE = "rolloutd-validation"  # reserved: the synthetic corpus lives here
PATHS = ("hybrid", "vector", "graph", "lexical")
ROUTES: Mapping[str, Route] = {  # cache off: a cached answer measures the cache
    "hybrid": choose_route({VECTOR: True, GRAPH: True, HYBRID: True}),
    "vector": choose_route({VECTOR: True}),
    "graph": choose_route({GRAPH: True}),
    "lexical": choose_route({VECTOR: True, GRAPH: True, HYBRID: True}),  # narrowed by LEGS_OF
}
LEGS_OF: Mapping[str, list[str]] = {"lexical": ["lexical"]}  # the lexical leg has no path of its own
METRICS = ("precision_at_10", "recall_at_10", "top3", "mrr", "ndcg_at_10")
Predicate = Callable[[], bool]


class Status(StrEnum):
    MEASURED = "measured"
    OFF = "off"  # its predicate said no: nothing ran, nothing exported
    NOT_MEASURED = "not_measured"  # on, but the round could not measure (the reason says why)


@dataclass(frozen=True)
class Round:
    """What one `run_once()` did, for the loop's log and for tests."""

    validation: Status
    probe: Status
    reason: str | None = None


# --- the validation set -------------------------------------------------------------------


@dataclass(frozen=True)
class ValidationSet:
    """The questions to ask, and the memories to seed first (synthetic set only)."""

    questions: tuple[Question, ...]
    source: str  # "synthetic" or the labelled set's path
    memories: tuple[Mapping[str, Any], ...] = ()  # seeded into an empty namespace; () = query only

    @classmethod
    def synthetic(cls, memories: int = 300, *, seed: int = 7, namespace: str = VALIDATION_NAMESPACE) -> ValidationSet:
        corpus = generate(memories, seed=seed, namespace=namespace)
        return cls(tuple(corpus.questions), "synthetic", tuple(corpus.memories))

    @classmethod
    def labelled(cls, path: Path | str) -> ValidationSet:
        """A labelled-set file; raises `LabelledSetError` naming the file, line and field."""
        return cls(tuple(load_labelled_set(path)), str(path))

    @property
    def namespaces(self) -> tuple[str, ...]:
        return tuple(sorted({q.namespace for q in self.questions}))

    async def ensure_seeded(self, retriever: Retriever) -> int:
        """Make each seeded namespace hold exactly the set's memories; return how many were written.

        Nothing is written when the namespace already matches (same ids, same texts), so a
        restart does not rewrite the corpus; a namespace that drifted (an upgrade changed
        the generator, a memory went missing) is brought back: the set is written again
        and memories that are not in it are deleted. Raises `StoreUnavailable` (or
        `NotReady`) from the retriever.
        """
        written = 0
        for namespace in sorted({m["namespace"] for m in self.memories}):
            wanted = [Memory(**m) for m in self.memories if m["namespace"] == namespace]
            expected = {m.id: fingerprint(m.text) for m in wanted}
            stored = retriever.contents(namespace)
            if stored == expected:
                continue
            await retriever.add(wanted)
            for stale in sorted(set(stored) - set(expected)):
                await retriever.delete(namespace, stale)
            written += len(wanted)
            log.info(
                "validation.seeded",
                namespace=namespace,
                memories=len(wanted),
                removed=len(set(stored) - set(expected)),
                was=len(stored),
            )
        return written


# --- measuring ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    scores: Mapping[str, Scores]  # path -> mean over every question
    by_hops: Mapping[str, Mapping[int, Scores]]  # path -> hops -> mean
    degraded: int  # answers that left a source out


async def measure(retriever: Retriever, questions: Sequence[Question], paths: Sequence[str] = PATHS) -> Measurement:
    """Ask every question along every path (quietly) and score the answers."""
    scores: dict[str, Scores] = {}
    by_hops: dict[str, dict[int, Scores]] = {}
    degraded = 0
    for path in paths:
        per_hops: dict[int, list[Scores]] = defaultdict(list)
        for q in questions:
            answer = await retriever.retrieve(q.query, q.namespace, K, ROUTES[path], legs=LEGS_OF.get(path), quiet=True)
            degraded += answer.degraded
            per_hops[q.hops].append(score(q, [r.id for r in answer.results]))
        scores[path] = mean(s for group in per_hops.values() for s in group)
        by_hops[path] = {hops: mean(group) for hops, group in sorted(per_hops.items())}
    return Measurement(scores, by_hops, degraded)


async def validate(
    retriever: Retriever, questions: Sequence[Question], paths: Sequence[str] = PATHS
) -> dict[str, Scores]:
    """The mean scores per path (see `measure` for the split by hops)."""
    return dict((await measure(retriever, questions, paths)).scores)


@dataclass(frozen=True)
class Latency:
    p50: float  # seconds
    p95: float
    queries: int
    degraded: int


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile (`q` in 0..1): a value that was observed, never interpolated."""
    if not values:
        raise ValueError("no values to take a percentile of")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def probe_questions(questions: Sequence[Question], n: int, offset: int = 0) -> list[Question]:
    """`n` questions from `offset` on, wrapping around, so successive rounds rotate through the set."""
    if not questions:
        return []
    return [questions[(offset + i) % len(questions)] for i in range(n)]


async def probe(
    retriever: Retriever, questions: Sequence[Question], timer: Callable[[], float] = time.perf_counter
) -> Latency:
    """Time each question along the hybrid route, one at a time, wall clock."""
    if not questions:
        raise ValueError("the probe needs at least one question")
    took, degraded = [], 0
    for q in questions:
        started = timer()
        answer = await retriever.retrieve(q.query, q.namespace, K, ROUTES["hybrid"], quiet=True)
        took.append(timer() - started)
        degraded += answer.degraded
    return Latency(percentile(took, 0.50), percentile(took, 0.95), len(took), degraded)


# --- the gauges ---------------------------------------------------------------------------


class ValidationGauges(Collector):
    """The job's results as gauges, shown only while measured and while their predicate holds.

    The predicates are read at scrape time, so a gauge disappears the moment its flag
    is turned off rather than at the job's next round; turned off, the values are also
    dropped, so turning the flag back on shows nothing until a fresh measurement.
    """

    def __init__(
        self, registry: CollectorRegistry, *, validation_on: Predicate | None = None, probe_on: Predicate | None = None
    ) -> None:
        self._validation_on = validation_on or (lambda: True)
        self._probe_on = probe_on or (lambda: True)
        self._scores: tuple[Mapping[str, Scores], float] | None = None
        self._latency: Latency | None = None
        registry.register(self)

    def publish_scores(self, scores: Mapping[str, Scores], at: float) -> None:
        self._scores = (dict(scores), at)

    def clear_scores(self) -> None:
        self._scores = None

    def publish_latency(self, latency: Latency) -> None:
        self._latency = latency

    def clear_latency(self) -> None:
        self._latency = None

    def describe(self) -> Iterator[Metric]:
        yield from self._score_families({}, None)
        yield from self._latency_families(None)

    def collect(self) -> Iterator[Metric]:
        if not self._validation_on():
            self._scores = None
        if not self._probe_on():
            self._latency = None
        scores, latency = self._scores, self._latency  # one read: the job may publish meanwhile
        if scores is not None:
            yield from self._score_families(*scores)
        if latency is not None:
            yield from self._latency_families(latency)

    @staticmethod
    def _score_families(scores: Mapping[str, Scores], at: float | None) -> Iterator[Metric]:
        hybrid = scores.get("hybrid")
        for name, doc, field, scale in (
            (
                "hybrid_rag_top3_accuracy_percent",
                "Ground-truth questions with a right answer in the hybrid top 3 (0-100).",
                "top3",
                100.0,
            ),
            (
                "hybrid_rag_precision_at_10",
                "Hybrid Precision@10 over the ground-truth set (0-1).",
                "precision_at_10",
                1.0,
            ),
            ("hybrid_rag_recall_at_10", "Hybrid Recall@10 over the ground-truth set (0-1).", "recall_at_10", 1.0),
        ):
            family = GaugeMetricFamily(name, doc)
            if hybrid is not None:
                family.add_metric([], getattr(hybrid, field) * scale)
            yield family
        family = GaugeMetricFamily(
            "hybrid_rag_validation_score", "Mean ground-truth score by path and metric.", labels=["path", "metric"]
        )
        for path, s in sorted(scores.items()):
            for metric, value in s.to_dict().items():
                family.add_metric([path, metric], value)
        yield family
        last = GaugeMetricFamily(
            "hybrid_rag_validation_last_run_timestamp_seconds",
            "When the last ground-truth validation was measured (Unix time).",
        )
        if at is not None:
            last.add_metric([], at)
        yield last

    @staticmethod
    def _latency_families(latency: Latency | None) -> Iterator[Metric]:
        for name, q in (("p50", 0.50), ("p95", 0.95)):
            family = GaugeMetricFamily(
                f"hybrid_rag_benchmark_{name}_latency_seconds",
                f"Synthetic probe: {q:.0%} of hybrid retrievals answered within (seconds).",
            )
            if latency is not None:
                family.add_metric([], latency.p50 if name == "p50" else latency.p95)
            yield family


# --- the job ------------------------------------------------------------------------------


class ValidationJob:
    """Validation and the probe, every `interval` seconds while their predicates hold."""

    def __init__(
        self,
        retriever: Retriever,
        validation_set: ValidationSet,
        gauges: ValidationGauges,
        *,
        validation_on: Predicate,
        probe_on: Predicate,
        interval: float = 300.0,
        probe_queries: int = 50,
        paths: Sequence[str] = PATHS,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.retriever, self.set, self.gauges = retriever, validation_set, gauges
        self.validation_on, self.probe_on = validation_on, probe_on
        self.interval, self.probe_queries, self.paths = interval, probe_queries, tuple(paths)
        self._clock, self._timer = clock, timer
        self._probe_offset = 0
        self._wakeup: anyio.Event | None = None

    def wake(self) -> None:
        """Run the next round now (say, when a flag was just turned on) instead of at the interval."""
        if self._wakeup is not None:
            self._wakeup.set()

    async def run(self) -> None:
        """Rounds until cancelled; a round that fails unexpectedly is logged, never raised."""
        while True:
            self._wakeup = anyio.Event()
            try:
                await self.run_once()
            except Exception as exc:  # noqa: BLE001  (a quality job must not take the daemon down)
                self.gauges.clear_scores()
                self.gauges.clear_latency()
                log.error("validation.failed", error=repr(exc), effect=f"retried in {self.interval:g}s")
            with anyio.move_on_after(self.interval):
                await self._wakeup.wait()

    async def run_once(self) -> Round:
        """One round: whatever is on is measured and exported, or cleared with a reason."""
        want_validation, want_probe = self.validation_on(), self.probe_on()
        if not want_validation:
            self.gauges.clear_scores()
        if not want_probe:
            self.gauges.clear_latency()
        if not (want_validation or want_probe):
            return Round(Status.OFF, Status.OFF)
        problem = await self._prepare()
        if problem is not None:
            return self._not_measured(want_validation, want_probe, problem)
        validation = await self._validate() if want_validation else (Status.OFF, None)
        latency = await self._probe() if want_probe else (Status.OFF, None)
        return Round(validation[0], latency[0], validation[1] or latency[1])

    async def _prepare(self) -> str | None:
        """Why the set cannot be queried now, or None."""
        r = self.retriever
        if not r.ready:
            return f"retriever not ready: {r.problem}"
        try:
            await self.set.ensure_seeded(r)
        except (StoreUnavailable, NotReady) as exc:
            return f"cannot seed the validation corpus: {exc}"
        empty = [ns for ns in self.set.namespaces if r.count(ns) == 0]
        if empty:
            return (
                f"namespace(s) {', '.join(empty)} hold no memories; store the memories the labelled set "
                f"{self.set.source} points at"
            )
        return None

    def _not_measured(self, validation: bool, probe: bool, reason: str) -> Round:
        self.gauges.clear_scores()
        self.gauges.clear_latency()
        log.warning(
            "validation.not_measured",
            reason=reason,
            validation=validation,
            probe=probe,
            effect=f"no gauge values; retried in {self.interval:g}s",
        )
        return Round(_off_or(validation), _off_or(probe), reason)

    async def _validate(self) -> tuple[Status, str | None]:
        if self.retriever.store_problem is not None:
            reason = f"graph store down ({self.retriever.store_problem}): hybrid would be measured as vector"
        else:
            try:
                m = await measure(self.retriever, self.set.questions, self.paths)
            except (RetrievalFailed, NotReady) as exc:
                reason = f"a validation query failed: {exc}"
            else:
                self.gauges.publish_scores(m.scores, self._clock())
                hybrid = m.scores.get("hybrid")
                log.info(
                    "validation.measured",
                    source=self.set.source,
                    questions=len(self.set.questions),
                    degraded=m.degraded,
                    **_rounded(hybrid.to_dict() if hybrid else {}),
                    top3_by_hops={h: round(s.top3, 4) for h, s in m.by_hops.get("hybrid", {}).items()},
                    paths={p: _rounded(s.to_dict()) for p, s in m.scores.items()},
                )
                return Status.MEASURED, None
        self.gauges.clear_scores()
        log.warning("validation.not_measured", reason=reason, effect=f"no gauge values; retried in {self.interval:g}s")
        return Status.NOT_MEASURED, reason

    async def _probe(self) -> tuple[Status, str | None]:
        questions = probe_questions(self.set.questions, self.probe_queries, self._probe_offset)
        self._probe_offset = (self._probe_offset + self.probe_queries) % max(1, len(self.set.questions))
        try:
            latency = await probe(self.retriever, questions, self._timer)
        except (RetrievalFailed, NotReady, ValueError) as exc:
            self.gauges.clear_latency()
            log.warning("probe.not_measured", reason=str(exc), effect=f"no gauge values; retried in {self.interval:g}s")
            return Status.NOT_MEASURED, f"the probe failed: {exc}"
        self.gauges.publish_latency(latency)
        log.info(
            "probe.measured",
            p95=round(latency.p95, 6),
            p50=round(latency.p50, 6),
            queries=latency.queries,
            degraded=latency.degraded,
        )
        return Status.MEASURED, None


def _rounded(values: Mapping[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in values.items()}


def _off_or(on: bool) -> Status:
    """What a round that could not measure reports for a measurement: not measured if it was on."""
    return Status.NOT_MEASURED if on else Status.OFF
