"""`python -m retrieval.labelled_sets`: HippoRAG's MuSiQue and HotpotQA files as memories and a
labelled set the daemon's validation loads; unique ids under repeated titles; bad input named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from retrieval.labelled_sets import SourceSetError, id_stem, load_set, main, unique_ids
from retrieval.memory import validate_id
from retrieval.quality import load_labelled_set

MUSIQUE_CORPUS = [
    {"title": "Publix", "text": "Publix is a supermarket chain founded by George Jenkins."},
    {"title": "Lakeland", "text": "Lakeland is a city in Polk County, Florida."},
    {"title": "Publix", "text": "Publix has its headquarters in Lakeland, Florida."},
    {"title": "Alû", "text": "Alû is a demon of Akkadian mythology."},
]
MUSIQUE_QUESTIONS = [
    {
        "id": "2hop__1_2",
        "question": "In which county is the headquarters of Publix?",
        "paragraphs": [
            {"idx": 0, "title": "Publix", "paragraph_text": MUSIQUE_CORPUS[2]["text"], "is_supporting": True},
            {"idx": 1, "title": "Lakeland", "paragraph_text": MUSIQUE_CORPUS[1]["text"], "is_supporting": True},
            {"idx": 2, "title": "Alû", "paragraph_text": MUSIQUE_CORPUS[3]["text"], "is_supporting": False},
        ],
        "answer": "Polk County",
    }
]
HOTPOTQA_CORPUS = {
    "Alû": ["Alû is a demon.", " It is mentioned in Akkadian texts."],
    "Lilu (mythology)": ["Lilu is a spirit.", " It appears in Mesopotamian mythology."],
    "Demon Dice": ["Demon Dice is a dice game."],
}
HOTPOTQA_QUESTIONS = [
    {
        "_id": "5a77",
        "question": "If Gallu is a demon Lilu is what?",
        "supporting_facts": [["Alû", 1], ["Lilu (mythology)", 0], ["Alû", 0]],
        "answer": "a spirit",
    }
]


def write(tmp_path: Path, name: str, content: Any) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(content) if not isinstance(content, str) else content)
    return path


def convert(tmp_path: Path, kind: str, questions: Any, corpus: Any, *extra: str) -> int:
    q, c = write(tmp_path, "q.json", questions), write(tmp_path, "c.json", corpus)
    return main([kind, str(q), str(c), "--namespace", "bench", "--out", str(tmp_path / "out"), *extra])


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_musique_gold_is_the_supporting_passage_even_when_its_title_repeats(tmp_path: Path) -> None:
    """A supporting paragraph maps to the corpus passage with its text, not every passage of its title."""
    assert convert(tmp_path, "musique", MUSIQUE_QUESTIONS, MUSIQUE_CORPUS) == 0
    memories = jsonl(tmp_path / "out" / "memories.jsonl")
    assert [m["id"] for m in memories] == ["Publix", "Lakeland", "Publix-2", "Alu"]
    assert memories[2] == {
        "id": "Publix-2",
        "text": "Publix\nPublix has its headquarters in Lakeland, Florida.",
        "namespace": "bench",
        "metadata": {"title": "Publix"},
    }
    [question] = load_labelled_set(tmp_path / "out" / "labelled.jsonl")
    assert question.relevant == ("Publix-2", "Lakeland")
    assert (question.namespace, question.hops) == ("bench", 1)
    assert question.query == "In which county is the headquarters of Publix?"


def test_hotpotqa_joins_sentences_and_counts_a_title_once(tmp_path: Path) -> None:
    """Sentences join as they are; a title named by two supporting facts is one gold passage."""
    assert convert(tmp_path, "hotpotqa", HOTPOTQA_QUESTIONS, HOTPOTQA_CORPUS) == 0
    memories = jsonl(tmp_path / "out" / "memories.jsonl")
    assert memories[0]["text"] == "Alû\nAlû is a demon. It is mentioned in Akkadian texts."
    [question] = load_labelled_set(tmp_path / "out" / "labelled.jsonl")
    assert question.relevant == ("Alu", "Lilu-mythology") and question.hops == 1


def test_load_set_gives_the_bench_titles_and_ids(tmp_path: Path) -> None:
    """The bench's view: gold titles for Recall by title, and a title per memory id."""
    data = load_set("musique", write(tmp_path, "q.json", MUSIQUE_QUESTIONS), write(tmp_path, "c.json", MUSIQUE_CORPUS))
    assert data.questions[0].gold_titles == ("Publix", "Lakeland")
    assert data.title_of()["Publix-2"] == "Publix"


def test_ids_are_unique_valid_and_derived_from_titles() -> None:
    """Repeated titles, titles that fold to one stem, and titles with no ASCII all get valid, distinct ids."""
    titles = ["Ohio River", "Ohio River", "Ohio-River", "東京", "東京", "x" * 300, "Ohio River-2"]
    ids = unique_ids(titles)
    assert ids[:5] == ["Ohio-River", "Ohio-River-2", "Ohio-River-3", "passage", "passage-2"]
    assert len(set(ids)) == len(ids)
    assert ids[6] == "Ohio-River-2-2"
    for i in ids:
        validate_id(i)
    assert id_stem("  (The) Band!  ") == "The-Band"


@pytest.mark.parametrize(
    ("kind", "questions", "corpus", "message"),
    [
        ("musique", MUSIQUE_QUESTIONS, "[{", "c.json: not JSON"),
        ("musique", MUSIQUE_QUESTIONS, [{"title": "Publix"}], "c.json: [0].text: expected a text"),
        ("musique", MUSIQUE_QUESTIONS, {"Publix": "one string"}, 'c.json: "Publix": expected a list of sentences'),
        ("musique", MUSIQUE_QUESTIONS, [{"title": "T", "text": "x" * 40_000}], "c.json: passage 0 ('T'): text"),
        ("musique", {"question": "q"}, MUSIQUE_CORPUS, "q.json: expected a non-empty list of question objects"),
        ("musique", [{"paragraphs": []}], MUSIQUE_CORPUS, "q.json: [0].question: expected the question text"),
        (
            "musique",
            [{"question": "q", "paragraphs": [{"title": "Publix", "is_supporting": "yes"}]}],
            MUSIQUE_CORPUS,
            "q.json: [0].paragraphs[0].is_supporting: expected true or false, got 'yes'",
        ),
        (
            "musique",
            [{"question": "q", "paragraphs": [{"title": "Publix", "is_supporting": False}]}],
            MUSIQUE_CORPUS,
            "q.json: [0]: no supporting passage",
        ),
        (
            "hotpotqa",
            [{"question": "q", "supporting_facts": [["Nowhere", 0]]}],
            HOTPOTQA_CORPUS,
            "q.json: [0]: supporting title 'Nowhere' is not in the corpus",
        ),
        (
            "hotpotqa",
            [{"question": "q", "supporting_facts": ["Alû"]}],
            HOTPOTQA_CORPUS,
            "q.json: [0].supporting_facts[0]: expected [title, sentence_index]",
        ),
    ],
)
def test_malformed_input_is_refused_naming_file_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, questions: Any, corpus: Any, message: str
) -> None:
    """Bad input exits 1 with the file, the entry and the field in the message, and writes nothing."""
    assert convert(tmp_path, kind, questions, corpus) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_reserved_or_invalid_namespace_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The daemon's own validation namespace and a malformed one are refused before anything is written."""
    q, c = write(tmp_path, "q.json", HOTPOTQA_QUESTIONS), write(tmp_path, "c.json", HOTPOTQA_CORPUS)
    for namespace, said in (("rolloutd-validation", "reserved"), ("no spaces", "--namespace")):
        assert main(["hotpotqa", str(q), str(c), "--namespace", namespace, "--out", str(tmp_path / "out")]) == 1
        assert said in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    """An unreadable file raises SourceSetError naming it."""
    with pytest.raises(SourceSetError, match="absent.json: cannot read it"):
        load_set("hotpotqa", tmp_path / "absent.json", write(tmp_path, "c.json", HOTPOTQA_CORPUS))
