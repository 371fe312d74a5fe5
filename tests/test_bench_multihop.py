"""The multi-hop benchmark's pure parts on a tiny inline set shaped like HippoRAG's files: loading,
gold by title, Recall@k, the in-process BM25 and dense baselines, the targets, `legs` refusal."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import httpx
import pytest

from retrieval.embedder_hashing import HashingEmbedder
from retrieval.labelled_sets import GoldQuestion, MultihopSet, load_set
from tests.bench import BenchFailure
from tests.bench.bench_multihop import (
    bm25_rankings,
    data_dir,
    dense_rankings,
    legs_refused,
    overlap,
    recall_at,
    recalls,
    set_files,
    targets,
)

CORPUS = [
    {"title": "Publix", "text": "Publix is a supermarket chain founded by George Jenkins."},
    {"title": "Lakeland", "text": "Lakeland is a city in Polk County, Florida."},
    {"title": "Publix", "text": "Publix has its headquarters in Lakeland, Florida."},
    {"title": "Volcano", "text": "A volcano is a rupture in the crust of a planet."},
    {"title": "Tea", "text": "Tea is an aromatic beverage prepared by pouring hot water over leaves."},
]
QUESTIONS = [
    {
        "question": "Which county holds the headquarters of Publix?",
        "paragraphs": [
            {"title": "Publix", "paragraph_text": CORPUS[2]["text"], "is_supporting": True},
            {"title": "Lakeland", "paragraph_text": CORPUS[1]["text"], "is_supporting": True},
            {"title": "Tea", "paragraph_text": CORPUS[4]["text"], "is_supporting": False},
        ],
    },
    {
        "question": "What is a volcano a rupture in?",
        "paragraphs": [{"title": "Volcano", "paragraph_text": CORPUS[3]["text"], "is_supporting": True}],
    },
]


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MultihopSet:
    monkeypatch.setenv("ROLLOUTD_MULTIHOP_DIR", str(tmp_path))
    questions, corpus = set_files(data_dir(), "musique")
    questions.write_text(json.dumps(QUESTIONS))
    corpus.write_text(json.dumps(CORPUS))
    return load_set("musique", questions, corpus)


def test_the_data_folder_comes_from_the_environment_or_beside_the_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    """ROLLOUTD_MULTIHOP_DIR wins; without it, ../shared/data/multihop from the repository root."""
    monkeypatch.delenv("ROLLOUTD_MULTIHOP_DIR", raising=False)
    assert data_dir().parts[-3:] == ("shared", "data", "multihop")
    monkeypatch.setenv("ROLLOUTD_MULTIHOP_DIR", "/elsewhere")
    assert data_dir() == Path("/elsewhere")
    assert set_files(Path("/d"), "hotpotqa") == (Path("/d/hotpotqa_train.json"), Path("/d/hotpotqa_train_corpus.json"))


def test_recall_counts_gold_titles_among_the_top_k_titles() -> None:
    """A title retrieved twice counts once; a gold title past k does not count."""
    assert recall_at(["A", "B"], ["A", "A", "C", "B"], 2) == 0.5
    assert recall_at(["A", "B"], ["A", "A", "C", "B"], 5) == 1.0
    assert recall_at(["A", "B", "C"], ["X"], 10) == 0.0


def test_recalls_average_over_questions_and_refuse_a_mismatch() -> None:
    """Mean R@2/5/10 over questions; a ranking count unlike the question count is a bench failure."""
    qs = [GoldQuestion("q1", ("A", "B"), ("a", "b"), 1), GoldQuestion("q2", ("C",), ("c",), 0)]
    rankings = [["A", "X", "Y", "B"], ["X", "X", "X", "X", "X", "C"]]
    assert recalls(qs, rankings) == {"r@2": 0.25, "r@5": 0.5, "r@10": 1.0}
    with pytest.raises(BenchFailure, match="1 rankings for 2 questions"):
        recalls(qs, rankings[:1])


def test_the_tiny_set_loads_with_gold_by_title(tiny: MultihopSet) -> None:
    """Repeated titles get their own ids, and gold stays by title for the bench."""
    assert [p.id for p in tiny.passages] == ["Publix", "Lakeland", "Publix-2", "Volcano", "Tea"]
    assert [q.gold_titles for q in tiny.questions] == [("Publix", "Lakeland"), ("Volcano",)]


def test_bm25_and_dense_baselines_rank_the_obvious_passage_first(tiny: MultihopSet) -> None:
    """Both in-process baselines find the one passage the single-hop question names."""
    bm25 = bm25_rankings(tiny, tiny.questions)
    assert bm25[1][0] == "Volcano" and len(bm25[0]) == len(tiny.passages)

    async def dense() -> list[list[str]]:
        return await dense_rankings(HashingEmbedder(), tiny, tiny.questions)

    ranked = anyio.run(dense)
    assert ranked[1][0] == "Volcano" and overlap(ranked, ranked) == pytest.approx(len(tiny.passages) / 10)


def test_targets_for_the_default_embedder_say_met_missed_or_not_measured() -> None:
    """Hybrid R@5 against the set's floor, above each measured leg, and R@2 against BM25 + 0.10."""
    paths = {
        "vector": {"r@2": 0.5, "r@5": 0.6, "r@10": 0.7},
        "lexical": None,
        "graph": {"r@2": 0.5, "r@5": 0.7, "r@10": 0.8},
        "hybrid": {"r@2": 0.55, "r@5": 0.7, "r@10": 0.9},
    }
    said = {t["target"]: t["met"] for t in targets("musique", "static:wordllama", paths, {"r@2": 0.41})}
    assert said == {
        "hybrid R@5 >= 0.65": True,
        "hybrid R@5 > vector leg's": True,
        "hybrid R@5 > lexical leg's": None,
        "hybrid R@5 > graph leg's": False,
        "hybrid R@2 >= BM25's + 0.10 (0.510)": True,
    }
    heavier = targets("hotpotqa", "e5:small", paths, {"r@2": 0.41})
    assert [(t["target"], t["met"]) for t in heavier] == [("hybrid R@5 >= 0.93", False)]
    assert targets("musique", "hashing", paths, {"r@2": 0.41}) == []


def test_a_400_naming_legs_means_the_field_is_not_there_yet() -> None:
    """Only a 400 whose field is `legs` counts as a refusal; other errors are errors."""
    assert legs_refused(httpx.Response(400, json={"error": "unknown field 'legs'", "field": "legs"}))
    assert not legs_refused(httpx.Response(400, json={"error": "top_k", "field": "top_k"}))
    assert not legs_refused(httpx.Response(403, json={"error": "not rolled out", "field": "legs"}))
    assert not legs_refused(httpx.Response(400, text="not json"))
