"""The synthetic corpus: deterministic, links intact, multi-hop answers not findable by their words."""

from __future__ import annotations

import re

from retrieval.corpus import generate


def tokens(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9-]+", text.lower()))


def test_deterministic_and_sized() -> None:
    a, b = generate(999, seed=3), generate(999, seed=3)
    assert a == b and len(a.memories) == 999
    assert generate(999, seed=4).memories != a.memories
    assert len({m["id"] for m in a.memories}) == 999


def test_links_point_at_memories_in_the_corpus() -> None:
    corpus = generate(600)
    ids = {m["id"] for m in corpus.memories}
    assert all(link in ids for m in corpus.memories for link in m["links"])
    assert all(q.relevant[0] in ids for q in corpus.questions)


def test_two_hop_answers_share_no_identifying_word_with_the_question() -> None:
    """The owner memory names the service and the person; the question names only the incident."""
    corpus = generate(600)
    by_id = {m["id"]: m for m in corpus.memories}
    two_hop = [q for q in corpus.questions if q.hops == 2]
    assert len(two_hop) == len(corpus.questions) // 3 > 50
    for q in two_hop:
        answer = by_id[q.relevant[0]]
        identifying = tokens(answer["text"]) - tokens("owns and signs off every change to it")
        assert not identifying & tokens(q.query), (q.query, answer["text"])
        incident = by_id[q.relevant[0].replace("owner", "incident")]
        release = by_id[incident["links"][0]]
        assert release["links"] == [answer["id"]]  # reachable in exactly two hops
