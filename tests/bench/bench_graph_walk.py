"""The text-derived graph (`retrieval.derived_graph`): multi-hop recall and speed.

Multi-hop recall: the MuSiQue and HotpotQA samples HippoRAG ships (read from
`ROLLOUTD_MULTIHOP_DIR`, default `../shared/data/multihop` beside the repository; never
copied in), each passage put as "title\\ntext". For every question, Recall@2/5/10 by title
(the share of its gold titles among the top k passages) of
    walk      the walk seeded from the query's phrases alone
    bm25      bm25s, k1 1.2, b 0.75, lowercase \\w+ tokens
    walk+bm25 the walk seeded from the query's phrases and BM25's top 5 (`mix_seeds`:
              0.05 of the seed mass on the hits, by score)
    rrf       Reciprocal Rank Fusion (k 60) of bm25 and walk+bm25
Speed: 100,000 synthetic memories, each titled with its own two-word name and mentioning
Zipf-chosen topic phrases and other memories' names (~500,000 mention edges): put()
throughput, rebuild time, RSS, and walk latency from a query's phrases and 5 hit seeds.

Run: `python -m tests.bench.bench_graph_walk` (prints the figures; `run_graph_walk()`
returns them).
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import random
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from retrieval.derived_graph import DerivedGraph
from retrieval.memory import memory_vid
from retrieval.ppr import mix_seeds
from tests.bench import REPO, heading, latency_summary_ms, line

SEED = 20261206
KS = (2, 5, 10)
RRF_K = 60
BM25_SEEDS = 5
DEPTH = 100  # ranks kept from each leg before fusing


def data_dir() -> Path:
    return Path(os.environ.get("ROLLOUTD_MULTIHOP_DIR", REPO.parent / "shared" / "data" / "multihop"))


def load_set(directory: Path, name: str) -> tuple[list[tuple[str, str]], list[tuple[str, set[str]]]]:
    """Passages (title, text) and questions (text, gold titles) of one set."""
    corpus_raw = json.loads((directory / f"{name}_train_corpus.json").read_text())
    questions_raw = json.loads((directory / f"{name}_train.json").read_text())
    if name == "musique":
        corpus = [(p["title"], p["text"]) for p in corpus_raw]
        questions = [
            (q["question"], {p["title"] for p in q["paragraphs"] if p["is_supporting"]}) for q in questions_raw
        ]
    else:
        corpus = [(t, "".join(sentences)) for t, sentences in corpus_raw.items()]
        questions = [(q["question"], {t for t, _ in q["supporting_facts"]}) for q in questions_raw]
    return corpus, questions


def _tokens(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def recall(ranked_titles: Sequence[str], gold: set[str], k: int) -> float:
    return len(gold & set(ranked_titles[:k])) / len(gold)


def rrf(rankings: Sequence[Sequence[int]], k: int = RRF_K) -> list[int]:
    score: dict[int, float] = {}
    for ranking in rankings:
        for rank, key in enumerate(ranking, 1):
            score[key] = score.get(key, 0.0) + 1 / (k + rank)
    return sorted(score, key=lambda key: (-score[key], key))


def evaluate_set(name: str, directory: Path, graph_factory: Any = DerivedGraph) -> dict[str, Any]:
    """Recall@k of the four methods on one set, and the graph's size."""
    import bm25s  # noqa: PLC0415 -- a benchmark-only dependency

    corpus, questions = load_set(directory, name)
    graph = graph_factory()
    keys = [memory_vid(name, str(i)) for i in range(len(corpus))]
    title_of = {key: title for key, (title, _) in zip(keys, corpus, strict=True)}
    started = time.perf_counter()
    for key, (title, text) in zip(keys, corpus, strict=True):
        graph.put(name, key, f"{title}\n{text}")
    build_s = time.perf_counter() - started
    retriever = bm25s.BM25(k1=1.2, b=0.75)
    retriever.index([_tokens(f"{t}\n{x}") for t, x in corpus], show_progress=False)
    sums: dict[str, dict[int, float]] = {m: dict.fromkeys(KS, 0.0) for m in ("walk", "bm25", "walk+bm25", "rrf")}
    no_seed = 0
    for question, gold in questions:
        docs, scores = retriever.retrieve([_tokens(question)], k=DEPTH, show_progress=False)
        bm25 = [keys[int(d)] for d in docs[0]]
        phrase_seeds = graph.query_phrases(name, question)
        no_seed += not phrase_seeds
        walk = [k for k, _ in graph.walk(name, phrase_seeds, DEPTH)]
        hits = {bm25[i]: float(scores[0][i]) for i in range(BM25_SEEDS) if scores[0][i] > 0}
        combined = graph.walk(name, mix_seeds(phrase_seeds, hits), DEPTH)
        both = [k for k, _ in combined]
        rankings = {"walk": walk, "bm25": bm25, "walk+bm25": both, "rrf": rrf([bm25, both])}
        for method, ranking in rankings.items():
            titles = [title_of[k] for k in ranking]
            for k in KS:
                sums[method][k] += recall(titles, gold, k)
    n = len(questions)
    stats = graph.stats()
    return {
        "questions": n,
        "passages": len(corpus),
        "questions_without_phrase_seeds": no_seed,
        "build_s": round(build_s, 3),
        "graph": stats,
        "recall": {m: {f"R@{k}": round(v / n, 4) for k, v in by_k.items()} for m, by_k in sums.items()},
    }


# -- speed -------------------------------------------------------------------------------

_SYLLABLES = "ka lo mi ra te su vo ne pi da ru ge fa zo bi lu ke sa ho ni".split()


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))).capitalize()


def synthetic(n: int, seed: int = SEED) -> list[tuple[int, str]]:
    """n memories "Name\\ntext": 3 Zipf-chosen topic phrases, 2 Zipf-chosen names, a term, filler."""
    rng = random.Random(seed)
    memory_names = [f"{_word(rng)} {_word(rng)}" for _ in range(n)]
    topics = [f"{_word(rng)} {_word(rng)}" for _ in range(max(1, n // 2))]
    topic_cum = list(itertools.accumulate(1 / (r + 1) for r in range(len(topics))))
    name_cum = list(itertools.accumulate(1 / (r + 1) ** 0.8 for r in range(n)))
    filler = "the change was reviewed and shipped after a short delay with retries in place".split()
    out = []
    for i in range(n):
        mentioned = rng.choices(topics, cum_weights=topic_cum, k=3) + rng.choices(
            memory_names, cum_weights=name_cum, k=2
        )
        words = [" ".join(rng.sample(filler, 5)) + f" {m}," for m in mentioned]
        out.append(
            (memory_vid("bench", str(i)), f"{memory_names[i]}\n{' '.join(words)} see INC-{rng.randrange(10**6)}.")
        )
    return out


def vm_rss_kib() -> int:
    for row in Path("/proc/self/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1])
    return 0


def _walks(graph: DerivedGraph, queries: Sequence[tuple[str, dict[int, float]]]) -> dict[str, Any]:
    """Latency of the walk alone, and of seeding from the query's text plus the walk."""
    walk, seeded = [], []
    for query, hits in queries:
        t0 = time.perf_counter()
        seeds = mix_seeds(graph.query_phrases("bench", query), hits)
        t1 = time.perf_counter()
        graph.walk("bench", seeds, 10)
        t2 = time.perf_counter()
        walk.append(t2 - t1)
        seeded.append(t2 - t0)
    return {"walk": latency_summary_ms(walk), "seed_and_walk": latency_summary_ms(seeded)}


def speed(n: int = 100_000, queries: int = 2_000) -> dict[str, Any]:
    """put() throughput, rebuild, RSS and walk latency at n synthetic memories."""
    texts = synthetic(n)
    rss_before = vm_rss_kib()
    graph = DerivedGraph()
    started = time.perf_counter()
    for key, text in texts:
        graph.put("bench", key, text)
    build_s = time.perf_counter() - started
    rss_after = vm_rss_kib()
    rng = random.Random(SEED + 1)
    replaced = rng.sample(texts, min(5_000, n // 2))
    started = time.perf_counter()
    for key, text in replaced:
        graph.put("bench", key, text + " Extra Phrase")
    replace_s = time.perf_counter() - started
    queries_seeds = []
    for _ in range(queries):
        _, text = rng.choice(texts)
        hits = {k: 1.0 for k, _ in rng.sample(texts, 5)}
        queries_seeds.append((text.split("\n")[1][:120], hits))
    timed = {"walk": _walks(graph, queries_seeds)}
    gc.freeze()  # what a daemon can do once its graph is rebuilt: the collector stops rescanning it
    timed["walk_gc_frozen"] = _walks(graph, queries_seeds)
    gc.unfreeze()
    work = [graph.push("bench", mix_seeds(graph.query_phrases("bench", q), hits)) for q, hits in queries_seeds]
    return {
        "memories": n,
        "graph": graph.stats(),
        "put_per_s": round(n / build_s),
        "replace_per_s": round(len(replaced) / replace_s),
        "rebuild_s": round(build_s, 2),
        "rss_mib": round((rss_after - rss_before) / 1024, 1),
        **timed,
        "edge_ops_max": max(w.edge_ops for w in work),
        "edge_ops_bound": round(1 / (graph.alpha * graph.epsilon)),
        "capped_walks": sum(w.capped for w in work),
    }


def run_graph_walk() -> dict[str, Any]:
    heading("graph walk: text-derived phrase graph, personalized PageRank by forward push")
    figures: dict[str, Any] = {}
    directory = data_dir()
    if not (directory / "musique_train_corpus.json").is_file():
        line("multi-hop", f"skipped: no data at {directory} (set ROLLOUTD_MULTIHOP_DIR)")
    else:
        for name in ("musique", "hotpotqa"):
            result = figures[name] = evaluate_set(name, directory)
            line(f"{name}", f"{result['passages']} passages, {result['questions']} questions, graph {result['graph']}")
            for method, by_k in result["recall"].items():
                line(f"  {method}", "  ".join(f"{k} {v:.3f}" for k, v in by_k.items()))
    figures["speed"] = s = speed()
    line("synthetic", f"{s['memories']} memories, graph {s['graph']}")
    line(
        "put",
        f"{s['put_per_s']}/s (rebuild {s['rebuild_s']} s), replace {s['replace_per_s']}/s, RSS +{s['rss_mib']} MiB",
    )
    for label, key in (("walk", "walk"), ("walk, gc.freeze() after build", "walk_gc_frozen")):
        for part, w in s[key].items():
            verdict = (
                ""
                if part != "walk"
                else ("(target p95 <= 2 ms: met)" if w["p95_ms"] <= 2 else "(target p95 <= 2 ms: MISSED)")
            )
            line(f"{label}: {part}", f"p50 {w['p50_ms']} ms  p95 {w['p95_ms']} ms  p99 {w['p99_ms']} ms {verdict}")
    line(
        "push work",
        f"max {s['edge_ops_max']} edge ops a walk, bound 1/(alpha*eps) = {s['edge_ops_bound']}, capped {s['capped_walks']}",
    )
    return figures


if __name__ == "__main__":
    run_graph_walk()
