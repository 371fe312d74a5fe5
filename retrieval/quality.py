"""Ground-truth retrieval quality: the labelled-set format and the metrics over it.

A labelled set is JSON Lines, one question a line:

    {"query": "who approved the Q3 deploy?", "relevant": ["m-17", "m-42"],
     "grades": {"m-17": 3, "m-42": 1}, "namespace": "default", "hops": 2}

`relevant` lists the memory ids that answer the question; `grades` (optional) gives
graded relevance for nDCG (default 1 for each relevant id); `hops` (optional) says how
many links separate the answer from what the query's words match, so the multi-hop
questions can be scored apart. Metrics, per question and averaged:

    precision@10   relevant in the top 10 / min(10, all relevant)
    recall@10      relevant in the top 10 / all relevant
    top3           1 when any relevant id is in the top 3 (the seeds' "top-3 accuracy")
    mrr            1 / rank of the first relevant id (0 when none is retrieved)
    ndcg@10        DCG@10 / ideal DCG@10 with gains 2^grade - 1

Precision@10 divides by min(10, |relevant|) (the "capped" precision@k, as in R-precision
for short lists), not by 10: with the usual /10, a question with one right answer can never
score above 0.1, so the seeds' target of >= 70% Precision@10 could only be met by questions
with seven or more right answers. Capped, a perfect ranking scores 1.0 whatever the number
of answers; for questions with 10 or more it is the textbook value.

Pure functions; the periodic validation job feeds them the retriever's answers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

K = 10


class LabelledSetError(ValueError):
    """A labelled-set line that cannot be used; the message names the file, line and field."""


@dataclass(frozen=True)
class Question:
    query: str
    relevant: tuple[str, ...]
    grades: Mapping[str, int] = field(default_factory=dict)
    namespace: str = "default"
    hops: int = 0

    def grade(self, memory_id: str) -> int:
        return self.grades.get(memory_id, 1 if memory_id in self.relevant else 0)


@dataclass(frozen=True)
class Scores:
    precision_at_10: float
    recall_at_10: float
    top3: float
    mrr: float
    ndcg_at_10: float

    def to_dict(self) -> dict[str, float]:
        return {
            "precision_at_10": self.precision_at_10,
            "recall_at_10": self.recall_at_10,
            "top3": self.top3,
            "mrr": self.mrr,
            "ndcg_at_10": self.ndcg_at_10,
        }


def score(question: Question, retrieved: Sequence[str]) -> Scores:
    """How well `retrieved` (ids, best first) answers `question`."""
    relevant = set(question.relevant)
    top = list(dict.fromkeys(retrieved))[:K]  # a repeated id counts once
    hits = [i for i in top if i in relevant]
    first = next((rank for rank, i in enumerate(top, start=1) if i in relevant), None)
    dcg = sum((2 ** question.grade(i) - 1) / math.log2(rank + 1) for rank, i in enumerate(top, start=1))
    ideal = sorted((question.grade(i) for i in relevant), reverse=True)[:K]
    idcg = sum((2**g - 1) / math.log2(rank + 1) for rank, g in enumerate(ideal, start=1))
    return Scores(
        precision_at_10=len(hits) / min(K, len(relevant)) if relevant else 0.0,
        recall_at_10=len(hits) / len(relevant) if relevant else 0.0,
        top3=1.0 if any(i in relevant for i in top[:3]) else 0.0,
        mrr=1.0 / first if first else 0.0,
        ndcg_at_10=dcg / idcg if idcg else 0.0,
    )


def mean(scores: Iterable[Scores]) -> Scores:
    items = list(scores)
    if not items:
        raise ValueError("no scores to average: the labelled set is empty")
    n = len(items)
    return Scores(
        *(
            sum(getattr(s, f) for s in items) / n
            for f in ("precision_at_10", "recall_at_10", "top3", "mrr", "ndcg_at_10")
        )
    )


def load_labelled_set(path: Path | str) -> list[Question]:
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelledSetError(f"{path}: cannot read it: {exc}") from None
    questions = [parse_question(line, f"{path}:{number}") for number, line in enumerate(lines, start=1) if line.strip()]
    if not questions:
        raise LabelledSetError(f"{path}: no questions (one JSON object a line)")
    return questions


def parse_question(line: str, where: str = "<line>") -> Question:
    try:
        raw = json.loads(line)
    except ValueError as exc:
        raise LabelledSetError(f"{where}: not JSON: {exc}") from None
    except RecursionError:  # the JSON parser recurses per level of nesting
        raise LabelledSetError(f"{where}: nested too deeply; one flat JSON object a line") from None
    if not isinstance(raw, dict):
        raise LabelledSetError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    unknown = set(raw) - {"query", "relevant", "grades", "namespace", "hops"}
    if unknown:
        raise LabelledSetError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    query, relevant = raw.get("query"), raw.get("relevant")
    if not isinstance(query, str) or not query.strip():
        raise LabelledSetError(f"{where}: query must be a non-empty string")
    if not isinstance(relevant, list) or not relevant or not all(isinstance(i, str) and i for i in relevant):
        raise LabelledSetError(f"{where}: relevant must be a non-empty list of memory ids")
    grades = raw.get("grades", {})
    if not isinstance(grades, dict) or not all(
        isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in grades.values()
    ):
        raise LabelledSetError(f"{where}: grades must map memory ids to whole numbers >= 0")
    namespace, hops = raw.get("namespace", "default"), raw.get("hops", 0)
    if not isinstance(namespace, str) or not namespace:
        raise LabelledSetError(f"{where}: namespace must be a non-empty string")
    if not isinstance(hops, int) or isinstance(hops, bool) or hops < 0:
        raise LabelledSetError(f"{where}: hops must be a whole number >= 0")
    return Question(query.strip(), tuple(dict.fromkeys(relevant)), grades, namespace, hops)
