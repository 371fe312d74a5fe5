"""Ground-truth metrics and the labelled-set format."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from retrieval.quality import LabelledSetError, Question, load_labelled_set, mean, parse_question, score


def test_metrics_of_one_answer() -> None:
    q = Question("q", ("a", "b", "c"))
    s = score(q, ["x", "a", "y", "b", "a"])  # "a" repeated counts once
    assert s.precision_at_10 == pytest.approx(2 / 3)  # capped: 2 of the 3 that could be there
    assert s.recall_at_10 == pytest.approx(2 / 3)
    assert s.top3 == 1.0 and s.mrr == pytest.approx(1 / 2)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert s.ndcg_at_10 == pytest.approx(dcg / idcg)


def test_nothing_relevant_retrieved_scores_zero_and_grades_weigh_ndcg() -> None:
    assert score(Question("q", ("a",)), ["x", "y"]).to_dict() == {
        "precision_at_10": 0.0,
        "recall_at_10": 0.0,
        "top3": 0.0,
        "mrr": 0.0,
        "ndcg_at_10": 0.0,
    }
    graded = Question("q", ("a", "b"), {"a": 3, "b": 1})
    assert score(graded, ["a", "b"]).ndcg_at_10 == pytest.approx(1.0)
    assert score(graded, ["b", "a"]).ndcg_at_10 < 1.0


def test_mean_averages_and_refuses_nothing() -> None:
    q = Question("q", ("a",))
    m = mean([score(q, ["a"]), score(q, ["x"])])
    assert (m.top3, m.mrr, m.recall_at_10) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="empty"):
        mean([])


def test_labelled_set_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "set.jsonl"
    path.write_text(
        '{"query": "who approved?", "relevant": ["m1", "m2"], "grades": {"m1": 2}, "hops": 2}\n\n'
        '{"query": "x", "relevant": ["m3"], "namespace": "ops"}\n'
    )
    first, second = load_labelled_set(path)
    assert (first.query, first.relevant, first.grade("m1"), first.grade("m2"), first.hops) == (
        "who approved?",
        ("m1", "m2"),
        2,
        1,
        2,
    )
    assert second.namespace == "ops" and second.grade("zz") == 0


@pytest.mark.parametrize(
    "line, message",
    [
        ("not json", "not JSON"),
        ("[1]", "expected a JSON object"),
        ('{"query": "", "relevant": ["a"]}', "query must be"),
        ('{"query": "q", "relevant": []}', "relevant must be"),
        ('{"query": "q", "relevant": ["a"], "grades": {"a": -1}}', "grades must"),
        ('{"query": "q", "relevant": ["a"], "hops": true}', "hops must"),
        ('{"query": "q", "relevant": ["a"], "relevent": ["b"]}', r"unknown field\(s\) relevent"),
    ],
)
def test_bad_lines_name_the_line_and_field(line: str, message: str) -> None:
    with pytest.raises(LabelledSetError, match=message) as info:
        parse_question(line, "set.jsonl:7")
    assert str(info.value).startswith("set.jsonl:7: ")


def test_an_empty_or_missing_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(LabelledSetError, match="no questions"):
        load_labelled_set(tmp_path / "empty.jsonl")
    with pytest.raises(LabelledSetError, match="cannot read"):
        load_labelled_set(tmp_path / "missing.jsonl")


def test_precision_is_capped_by_the_number_of_answers() -> None:
    one = Question("q", ("a",))
    assert score(one, ["a"] + [f"x{i}" for i in range(9)]).precision_at_10 == 1.0
    many = Question("q", tuple(f"r{i}" for i in range(20)))
    assert score(many, [f"r{i}" for i in range(7)] + ["x", "y", "z"]).precision_at_10 == pytest.approx(0.7)
