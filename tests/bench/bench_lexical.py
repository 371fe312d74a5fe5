"""Benchmark of the lexical leg's candidate engines: tantivy (`retrieval.lexical_index`),
SQLite FTS5 and bm25s, on speed and on answer quality (`python -m tests.bench lexical`).

Speed, per size in BENCH_LEXICAL_SIZES (default "100000"; "100000,1000000" adds the
1M run, about 8 minutes on two cores): a synthetic corpus of ~40-word texts drawn from
a 50,000-word vocabulary with Zipfian (s = 1) word frequencies, and
BENCH_LEXICAL_QUERIES (200) queries of 8-12 words from the same distribution.
- write: tantivy and FTS5 take the corpus in `upsert`s of 1,000, each visible and
  durable when it returns (a tantivy commit + reader reload; an FTS5 transaction in WAL
  mode, synchronous=FULL). bm25s is not incremental: it is built once in bulk (the
  "build" column) and its write figure is one upsert of 1,000 into the full index,
  i.e. a rebuild and save of everything.
- then, in a fresh process per engine: open time, RSS added by open + queries (per
  100k memories), `fingerprints()` time, and query latency (k = 10) over the queries,
  one at a time, for at most 30 s an engine; disk is the directory's size.
Quality: Recall@5 on the public MuSiQue and HotpotQA samples (README.md of
ROLLOUTD_MULTIHOP_DIR, default ../shared/data/multihop beside the repo; read in place,
never copied; skipped with a message when absent), each passage indexed as
"title\\ntext", recall counted by title, per engine and tokenisation, against plain
BM25 from bm25s (Lucene idf, k1 1.2, b 0.75, English stop list, Snowball stemmer).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import bm25s
import numpy as np
import tantivy

from retrieval.index_files import fingerprint
from retrieval.lexical_index import LexicalIndex
from tests.bench import REPO, BenchFailure, heading, latency_summary_ms, line, table

VOCABULARY = 50_000
QUERY_BUDGET_S = 30.0
BATCH = 1000
_SNOWBALL: Any = tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.raw()).filter(tantivy.Filter.stemmer("english")).build()


def _stem(words: list[str]) -> list[str]:
    """Snowball English, as bm25s wants a stemmer (it stems each distinct word once): tantivy's, not PyStemmer."""
    return [(_SNOWBALL.analyze(w) or [w])[0] for w in words]


class Engine(Protocol):
    def upsert(self, items: Sequence[tuple[int, str, int]]) -> None: ...
    def search(self, query: str, k: int) -> list[tuple[int, float]]: ...
    def fingerprints(self) -> dict[int, int]: ...
    def close(self) -> None: ...


class Fts5Index:
    """FTS5 with the same contract: rowid = key, a side table of fingerprints, bm25() ranking."""

    def __init__(self, directory: Path, stemming: bool = True) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(directory / "fts.sqlite3", check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        tokenizer = "porter unicode61 remove_diacritics 2" if stemming else "unicode61 remove_diacritics 2"
        self.db.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS docs USING fts5(text, tokenize='{tokenizer}')")
        self.db.execute("CREATE TABLE IF NOT EXISTS fps(key INTEGER PRIMARY KEY, fp INTEGER NOT NULL)")

    def upsert(self, items: Sequence[tuple[int, str, int]]) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("DELETE FROM docs WHERE rowid = ?", [(k,) for k, _, _ in items])
            self.db.executemany("INSERT INTO docs(rowid, text) VALUES (?, ?)", [(k, t) for k, t, _ in items])
            self.db.executemany("INSERT OR REPLACE INTO fps VALUES (?, ?)", [(k, f) for k, _, f in items])

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        words = dict.fromkeys(re.findall(r"\w+", query.lower()))
        if not words:
            return []
        match = " OR ".join(f'"{w}"' for w in words)  # quoted: FTS5 syntax inside is only text
        sql = "SELECT rowid, -bm25(docs) FROM docs WHERE docs MATCH ? ORDER BY bm25(docs) LIMIT ?"
        return [(int(key), float(score)) for key, score in self.db.execute(sql, (match, k))]

    def fingerprints(self) -> dict[int, int]:
        return dict(self.db.execute("SELECT key, fp FROM fps").fetchall())

    def close(self) -> None:
        self.db.close()


class Bm25sIndex:
    """bm25s (k1 1.2, b 0.75, Lucene idf): every upsert re-tokenises, re-indexes and saves all."""

    def __init__(self, directory: Path, stemming: bool = True, stopwords: str | None = "en") -> None:
        self.directory, self.stemmer, self.stopwords = directory, _stem if stemming else None, stopwords
        self.texts: dict[int, str] = {}
        self.fps: dict[int, int] = {}
        self.keys = np.zeros(0, dtype=np.int64)
        self.model: Any = None
        if (directory / "keys.npy").exists():
            self.model = bm25s.BM25.load(str(directory), show_progress=False)
            self.keys = np.load(directory / "keys.npy")
            self.fps = dict(zip(self.keys.tolist(), np.load(directory / "fps.npy").tolist(), strict=True))

    def _tokens(self, texts: list[str]) -> Any:
        return bm25s.tokenize(
            texts, stopwords=self.stopwords, stemmer=self.stemmer, return_ids=False, show_progress=False
        )

    def upsert(self, items: Sequence[tuple[int, str, int]]) -> None:
        for key, text, fp in items:
            self.texts[key], self.fps[key] = text, fp
        self.keys = np.fromiter(self.texts, dtype=np.int64, count=len(self.texts))
        self.model = bm25s.BM25(k1=1.2, b=0.75)
        self.model.index(self._tokens(list(self.texts.values())), show_progress=False)
        self.model.save(str(self.directory), show_progress=False)
        np.save(self.directory / "keys.npy", self.keys)
        np.save(self.directory / "fps.npy", np.fromiter(self.fps.values(), dtype=np.int64, count=len(self.fps)))

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        tokens = [t for t in self._tokens([query])[0] if t in self.model.vocab_dict]
        if not tokens:
            return []
        docs, scores = self.model.retrieve([tokens], k=min(k, len(self.keys)), show_progress=False, n_threads=1)
        return [(int(self.keys[d]), float(s)) for d, s in zip(docs[0], scores[0], strict=True) if s > 0]

    def fingerprints(self) -> dict[int, int]:
        return dict(self.fps)

    def close(self) -> None:
        self.model = None


ENGINES: dict[str, Callable[[Path], Engine]] = {
    "tantivy": LexicalIndex.open,
    "fts5": Fts5Index,
    "bm25s": Bm25sIndex,
}


def synthetic(n: int, seed: int, words: tuple[int, int]) -> list[str]:
    """`n` texts of `words` (min, max) words each, word ranks drawn with p ∝ 1/rank."""
    rng = np.random.default_rng(seed)
    vocab = _vocabulary()
    cdf = np.cumsum(1.0 / np.arange(1, VOCABULARY + 1))
    lengths = rng.integers(words[0], words[1] + 1, size=n)
    ranks = np.searchsorted(cdf, rng.random(int(lengths.sum())) * cdf[-1])
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    drawn = [vocab[r] for r in ranks.tolist()]
    return [" ".join(drawn[bounds[i] : bounds[i + 1]]) for i in range(n)]


def _vocabulary() -> list[str]:
    rng = np.random.default_rng(7)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    seen: dict[str, None] = {}
    while len(seen) < VOCABULARY:
        seen.setdefault("".join(rng.choice(letters, size=int(rng.integers(3, 11)))))
    return list(seen)


def build(name: str, directory: Path, texts: list[str]) -> dict[str, float]:
    """Index `texts` (keys 1..n); the write rate as described in the module docstring."""
    items = [(i + 1, t, fingerprint(t)) for i, t in enumerate(texts)]
    engine = ENGINES[name](directory)
    start = time.perf_counter()
    for lo in range(0, len(items), BATCH if name != "bm25s" else len(items)):
        engine.upsert(items[lo : lo + BATCH] if name != "bm25s" else items)
    built = time.perf_counter() - start
    write = len(items) / built
    if name == "bm25s":
        start = time.perf_counter()
        engine.upsert([(k, t + " changed", f) for k, t, f in items[:BATCH]])
        write = BATCH / (time.perf_counter() - start)
    engine.close()
    return {"build_s": round(built, 1), "write_per_s": round(write, 1)}


def probe(name: str, directory: Path, queries: list[str]) -> dict[str, Any]:
    """In a fresh process: open time, RSS, fingerprints() time, query latency."""
    before = _rss_mb()
    start = time.perf_counter()
    engine = ENGINES[name](directory)
    opened = time.perf_counter() - start
    start = time.perf_counter()
    count = len(engine.fingerprints())
    fingerprints_s = time.perf_counter() - start
    engine.search(queries[0], 10)  # warm-up
    latencies: list[float] = []
    deadline = time.perf_counter() + QUERY_BUDGET_S
    for query in queries:
        start = time.perf_counter()
        engine.search(query, 10)
        latencies.append(time.perf_counter() - start)
        if start > deadline:
            break
    return {
        "docs": count,
        "open_s": round(opened, 3),
        "fingerprints_s": round(fingerprints_s, 3),
        "rss_mb": round(_rss_mb() - before, 1),
        "query": latency_summary_ms(latencies),
    }


def _rss_mb() -> float:
    for row in Path("/proc/self/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1]) / 1024
    return 0.0


def _probe_in_subprocess(name: str, directory: Path, queries_file: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "tests.bench.bench_lexical", "probe", name, str(directory), str(queries_file)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False, timeout=600)
    if done.returncode:
        raise BenchFailure(f"probe of {name} exited {done.returncode}: {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _disk_mb(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) / 1e6


def run_speed(sizes: list[int]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    queries = synthetic(int(os.environ.get("BENCH_LEXICAL_QUERIES", "200")), seed=2, words=(8, 12))
    with tempfile.TemporaryDirectory(prefix="bench-lexical-") as tmp:
        queries_file = Path(tmp) / "queries.json"
        queries_file.write_text(json.dumps(queries))
        for n in sizes:
            heading(f"lexical speed at {n:,} memories")
            texts = synthetic(n, seed=1, words=(30, 50))
            rows, per_size = [], {}
            for name in ENGINES:
                directory = Path(tmp) / f"{name}-{n}"
                result = build(name, directory, texts)
                result |= _probe_in_subprocess(name, directory, queries_file)
                result["disk_mb"] = round(_disk_mb(directory), 1)
                shutil.rmtree(directory)
                per_size[name] = result
                rows.append(_row(result, n, name))
            table(_HEADERS, rows)
            _ratios(per_size)
            figures[str(n)] = per_size
            del texts
    return figures


_HEADERS = ["write/s", "build s", "open s", "fps() s", "p50 ms", "p95 ms", "RSS MB/100k", "disk MB/100k", "engine"]


def _row(r: dict[str, Any], n: int, name: str) -> list[object]:
    per = 100_000 / n
    q = r["query"]
    return [
        f"{r['write_per_s']:,.0f}",
        r["build_s"],
        r["open_s"],
        r["fingerprints_s"],
        q["p50_ms"],
        q["p95_ms"],
        round(r["rss_mb"] * per, 1),
        round(r["disk_mb"] * per, 1),
        f"{name} ({q['samples']} queries)",
    ]


def _ratios(per_size: dict[str, Any]) -> None:
    base = per_size["tantivy"]
    for name in ("fts5", "bm25s"):
        other = per_size[name]
        p95 = other["query"]["p95_ms"] / max(base["query"]["p95_ms"], 1e-6)
        line(f"{name} / tantivy", f"query p95 x{p95:.1f}, write x{other['write_per_s'] / base['write_per_s']:.2f}")


def multihop_dir() -> Path:
    return Path(os.environ.get("ROLLOUTD_MULTIHOP_DIR", REPO.parent / "shared" / "data" / "multihop"))


QUALITY_VARIANTS: dict[str, Callable[[Path], Engine]] = {
    "tantivy, stop list + stem + fold (the engine)": LexicalIndex.open,
    "tantivy, fold only": lambda d: LexicalIndex.open(d, english=False),
    "fts5, porter": Fts5Index,
    "fts5, unicode61": lambda d: Fts5Index(d, stemming=False),
    "bm25s, stop list + stem (reference)": Bm25sIndex,
    "bm25s, no stop list, no stem": lambda d: Bm25sIndex(d, stemming=False, stopwords=None),
}


def load_multihop(root: Path) -> dict[str, tuple[list[str], list[str], list[tuple[str, set[str]]]]]:
    """Per set: passage titles, passage texts ("title\\ntext"), (question, gold titles)."""
    musique = json.loads((root / "musique_train_corpus.json").read_text())
    m_questions = json.loads((root / "musique_train.json").read_text())
    hotpot = json.loads((root / "hotpotqa_train_corpus.json").read_text())
    h_questions = json.loads((root / "hotpotqa_train.json").read_text())
    return {
        "MuSiQue": (
            [p["title"] for p in musique],
            [f"{p['title']}\n{p['text']}" for p in musique],
            [(q["question"], {p["title"] for p in q["paragraphs"] if p["is_supporting"]}) for q in m_questions],
        ),
        "HotpotQA": (
            list(hotpot),
            [f"{title}\n{''.join(sentences)}" for title, sentences in hotpot.items()],
            [(q["question"], {title for title, _ in q["supporting_facts"]}) for q in h_questions],
        ),
    }


def recall_at(engine: Engine, titles: list[str], questions: list[tuple[str, set[str]]], k: int) -> float:
    total = 0.0
    for question, gold in questions:
        found = {titles[key - 1] for key, _ in engine.search(question, k)}
        total += len(found & gold) / len(gold)
    return total / len(questions)


def run_quality() -> dict[str, Any]:
    heading("lexical quality: Recall@5 on public multi-hop sets")
    root = multihop_dir()
    if not (root / "musique_train.json").exists():
        line("skipped", f"no multi-hop data at {root} (set ROLLOUTD_MULTIHOP_DIR)")
        return {"skipped": f"no data at {root}"}
    sets = load_multihop(root)
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-lexical-q-") as tmp:
        for variant, factory in QUALITY_VARIANTS.items():
            figures[variant] = {}
            for set_name, (titles, texts, questions) in sets.items():
                engine = factory(Path(tmp) / f"{len(figures)}-{set_name}")
                engine.upsert([(i + 1, t, fingerprint(t)) for i, t in enumerate(texts)])
                figures[variant][set_name] = round(recall_at(engine, titles, questions, 5), 3)
                engine.close()
    table(["MuSiQue R@5", "HotpotQA R@5", "engine, tokenisation"], [[*f.values(), v] for v, f in figures.items()])
    return figures


def run_lexical() -> dict[str, Any]:
    sizes = [int(s) for s in os.environ.get("BENCH_LEXICAL_SIZES", "100000").split(",") if s.strip()]
    return {"quality": run_quality(), "speed": run_speed(sizes)}


if __name__ == "__main__":
    if sys.argv[1:2] == ["probe"]:
        name, directory, queries_file = sys.argv[2:5]
        print(json.dumps(probe(name, Path(directory), json.loads(Path(queries_file).read_text()))))
    else:
        print(json.dumps(run_lexical(), indent=2))
