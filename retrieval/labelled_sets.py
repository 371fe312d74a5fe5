"""Public multi-hop question sets (HippoRAG's MuSiQue and HotpotQA files) as rolloutd input.

    python -m retrieval.labelled_sets {musique|hotpotqa} QUESTIONS.json CORPUS.json --namespace NS --out DIR

writes DIR/memories.jsonl (one memory a line, ready for `POST /v1/memories:batch` in chunks
of at most 1,000) and DIR/labelled.jsonl (the labelled-set format of `retrieval.quality`),
so `[retrieval] labelled_set = "DIR/labelled.jsonl"` scores the daemon on real questions.

Input (HippoRAG's `data/`):

    musique   questions: [{"question", "paragraphs": [{"title", "paragraph_text", "is_supporting"}]}]
    hotpotqa  questions: [{"question", "supporting_facts": [[title, sentence_index], ...]}]
    corpus    [{"title", "text"}] (MuSiQue) or {title: [sentences]} (HotpotQA; joined as they are)

A passage's memory text is "title\\n" + text; its id is derived from the title (ASCII-folded,
other characters as "-") and made unique with a "-2", "-3", ... suffix in corpus order, because
MuSiQue repeats titles across passages. Gold: the supporting passages. In MuSiQue a supporting
paragraph is matched to its corpus passage by title and text (every passage of that title when
the text differs); in HotpotQA a title is a passage. `hops` = supporting passages - 1.

The benchmark (`tests/bench/bench_multihop.py`) loads the files through `load_set` too, so there
is one parser. Errors:

    SourceSetError (ValueError)   an input file that cannot be used: names the file, the
                                  entry and the field
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flags.atomic import atomic_write
from retrieval.memory import InvalidMemory, validate_namespace, validate_text
from retrieval.validation import VALIDATION_NAMESPACE

MAX_ID_STEM = 120  # ids are at most 128 characters; room for a "-NNN" suffix


class SourceSetError(ValueError):
    """An input file of a multi-hop set that cannot be used."""

    def __init__(self, path: Path | str, where: str, problem: str) -> None:
        self.path, self.where, self.problem = Path(path), where, problem
        super().__init__(f"{path}: {where}: {problem}" if where else f"{path}: {problem}")


@dataclass(frozen=True)
class Passage:
    id: str
    title: str
    text: str

    @property
    def memory_text(self) -> str:
        return f"{self.title}\n{self.text}"

    def memory(self, namespace: str) -> dict[str, Any]:
        """The memory object `POST /v1/memories:batch` takes for this passage."""
        return {"id": self.id, "text": self.memory_text, "namespace": namespace, "metadata": {"title": self.title}}


@dataclass(frozen=True)
class GoldQuestion:
    query: str
    gold_titles: tuple[str, ...]  # what Recall@k counts (the metric)
    gold_ids: tuple[str, ...]  # the supporting passages' memory ids (the labelled set's `relevant`)
    hops: int


@dataclass(frozen=True)
class MultihopSet:
    kind: str
    passages: tuple[Passage, ...]
    questions: tuple[GoldQuestion, ...]

    def title_of(self) -> dict[str, str]:
        return {p.id: p.title for p in self.passages}


# -- ids ------------------------------------------------------------------------------------------


def id_stem(title: str) -> str:
    """A title as the start of a memory id: ASCII-folded, runs of other characters as "-"."""
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    stem = re.sub(r"[^A-Za-z0-9._:@-]+", "-", ascii_title).strip("-._:@")[:MAX_ID_STEM].rstrip("-._:@")
    return stem or "passage"


def unique_ids(titles: Iterable[str]) -> list[str]:
    """One id a title, in order; a stem already taken gets the first free "-N" suffix."""
    taken: set[str] = set()
    ids = []
    for title in titles:
        stem = candidate = id_stem(title)
        n = 1
        while candidate in taken:
            n += 1
            candidate = f"{stem}-{n}"
        taken.add(candidate)
        ids.append(candidate)
    return ids


# -- reading --------------------------------------------------------------------------------------


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceSetError(path, "", f"cannot read it: {exc}") from None
    except ValueError as exc:
        raise SourceSetError(path, "", f"not JSON: {exc}") from None


def _field(path: Path, where: str, raw: Any, key: str, kind: type, what: str) -> Any:
    if not isinstance(raw, dict):
        raise SourceSetError(path, where, f"expected an object, got {type(raw).__name__}")
    value = raw.get(key)
    if not isinstance(value, kind) or (isinstance(value, str) and not value.strip()) or value == []:
        raise SourceSetError(path, f"{where}.{key}", f"expected {what}, got {json.dumps(value)[:60]}")
    return value


def load_corpus(path: Path) -> list[tuple[str, str]]:
    """(title, text) pairs, in file order, of `[{"title", "text"}]` or `{title: [sentences]}`."""
    raw = read_json(path)
    if isinstance(raw, dict):
        pairs = []
        for title, sentences in raw.items():
            if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
                raise SourceSetError(path, json.dumps(title), "expected a list of sentences (strings)")
            pairs.append((title, "".join(sentences)))
    elif isinstance(raw, list):
        pairs = [
            (_field(path, f"[{n}]", p, "title", str, "a title"), _field(path, f"[{n}]", p, "text", str, "a text"))
            for n, p in enumerate(raw)
        ]
    else:
        raise SourceSetError(path, "", 'expected [{"title", "text"}, ...] or {title: [sentences]}')
    if not pairs:
        raise SourceSetError(path, "", "no passages")
    for n, (title, text) in enumerate(pairs):
        try:
            validate_text(f"{title}\n{text}")
        except InvalidMemory as exc:
            raise SourceSetError(path, f"passage {n} ({title[:40]!r})", f"text {exc.problem}") from None
    return pairs


def _question_list(path: Path) -> list[Any]:
    raw = read_json(path)
    if not isinstance(raw, list) or not raw:
        raise SourceSetError(path, "", "expected a non-empty list of question objects")
    return raw


def _musique_gold(path: Path, n: int, raw: Any) -> list[tuple[str, str | None]]:
    gold = []
    for j, p in enumerate(_field(path, f"[{n}]", raw, "paragraphs", list, "a non-empty list of paragraphs")):
        where = f"[{n}].paragraphs[{j}]"
        supporting = p.get("is_supporting") if isinstance(p, dict) else None
        if not isinstance(supporting, bool):
            raise SourceSetError(path, f"{where}.is_supporting", f"expected true or false, got {supporting!r}")
        if supporting:
            gold.append((_field(path, where, p, "title", str, "a title"), p.get("paragraph_text")))
    return gold


def _hotpotqa_gold(path: Path, n: int, raw: Any) -> list[tuple[str, str | None]]:
    facts = _field(path, f"[{n}]", raw, "supporting_facts", list, "a non-empty list of [title, sentence_index]")
    for j, fact in enumerate(facts):
        if not (isinstance(fact, list) and len(fact) == 2 and isinstance(fact[0], str) and fact[0]):
            raise SourceSetError(
                path, f"[{n}].supporting_facts[{j}]", f"expected [title, sentence_index], got {fact!r}"
            )
    return [(title, None) for title in dict.fromkeys(fact[0] for fact in facts)]


GOLD: Mapping[str, Callable[[Path, int, Any], list[tuple[str, str | None]]]] = {
    "musique": _musique_gold,
    "hotpotqa": _hotpotqa_gold,
}


def load_set(kind: str, questions_path: Path, corpus_path: Path) -> MultihopSet:
    """Parse a set's two files; every supporting title must name a corpus passage."""
    if kind not in GOLD:
        raise ValueError(f"unknown set kind {kind!r}; known: {', '.join(GOLD)}")
    pairs = load_corpus(corpus_path)
    passages = tuple(Passage(i, t, x) for i, (t, x) in zip(unique_ids(t for t, _ in pairs), pairs, strict=True))
    by_title: dict[str, list[Passage]] = {}
    for p in passages:
        by_title.setdefault(p.title, []).append(p)
    questions = []
    for n, raw in enumerate(_question_list(questions_path)):
        query = _field(questions_path, f"[{n}]", raw, "question", str, "the question text")
        gold = list(dict.fromkeys(GOLD[kind](questions_path, n, raw)))
        if not gold:
            raise SourceSetError(questions_path, f"[{n}]", "no supporting passage")
        missing = [title for title, _ in gold if title not in by_title]
        if missing:
            raise SourceSetError(
                questions_path, f"[{n}]", f"supporting title {missing[0]!r} is not in the corpus {corpus_path}"
            )
        ids = [i for title, text in gold for i in _gold_ids(by_title[title], text)]
        titles = tuple(dict.fromkeys(title for title, _ in gold))
        questions.append(GoldQuestion(query.strip(), titles, tuple(dict.fromkeys(ids)), len(gold) - 1))
    return MultihopSet(kind, passages, tuple(questions))


def _gold_ids(candidates: Sequence[Passage], text: str | None) -> list[str]:
    exact = [p.id for p in candidates if text is not None and p.text == text]
    return exact or [p.id for p in candidates]


# -- writing --------------------------------------------------------------------------------------


def labelled_rows(data: MultihopSet, namespace: str) -> list[dict[str, Any]]:
    """The set's questions in the labelled-set format `retrieval.quality.parse_question` reads."""
    return [
        {"query": q.query, "relevant": list(q.gold_ids), "namespace": namespace, "hops": q.hops} for q in data.questions
    ]


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    body = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    atomic_write(path, body.encode("utf-8"), mode=0o644)


def convert(kind: str, questions: Path, corpus: Path, namespace: str, out: Path) -> MultihopSet:
    """Write out/memories.jsonl and out/labelled.jsonl (each atomically); return the parsed set."""
    try:
        validate_namespace(namespace)
    except InvalidMemory as exc:
        raise ValueError(f"--namespace: {exc.problem}") from None
    if namespace == VALIDATION_NAMESPACE:
        raise ValueError(f"--namespace: {namespace!r} is reserved for the daemon's own validation corpus")
    data = load_set(kind, questions, corpus)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "memories.jsonl", (p.memory(namespace) for p in data.passages))
    write_jsonl(out / "labelled.jsonl", labelled_rows(data, namespace))
    return data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m retrieval.labelled_sets", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("kind", choices=sorted(GOLD))
    parser.add_argument("questions", type=Path, help="the questions file (e.g. musique_train.json)")
    parser.add_argument("corpus", type=Path, help="the corpus file (e.g. musique_train_corpus.json)")
    parser.add_argument("--namespace", required=True, help="the namespace the memories are written to")
    parser.add_argument("--out", required=True, type=Path, help="the directory to write the two files into")
    args = parser.parse_args(argv)
    try:
        data = convert(args.kind, args.questions, args.corpus, args.namespace, args.out)
    except (SourceSetError, ValueError, OSError) as exc:
        print(f"labelled_sets: {exc}", file=sys.stderr)
        return 1
    print(
        f"{len(data.passages):,} memories -> {args.out / 'memories.jsonl'} (POST /v1/memories:batch, <= 1,000 a request)\n"
        f"{len(data.questions):,} questions -> {args.out / 'labelled.jsonl'} "
        f'([retrieval] labelled_set = "{(args.out / "labelled.jsonl").resolve()}")'
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
