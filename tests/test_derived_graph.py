"""The text-derived phrase graph and its walk: names links, replace/remove, isolation, ranking."""

from __future__ import annotations

import random

import pytest

from retrieval import ppr
from retrieval.derived_graph import MAX_PHRASES, DerivedGraph, names, phrases
from retrieval.memory import memory_vid

NS = "default"

BAND = "Green Day\nGreen Day is an American rock band formed in 1987."
ALBUM = "Dookie\nDookie is the third studio album by the band Green Day, released in 1994."


def key(id: str, namespace: str = NS) -> int:
    return memory_vid(namespace, id)


def graph_of(texts: dict[str, str], namespace: str = NS, **kwargs: float) -> DerivedGraph:
    graph = DerivedGraph(**kwargs)  # type: ignore[arg-type]
    for id, text in texts.items():
        graph.put(namespace, key(id, namespace), text)
    return graph


def linked(graph: DerivedGraph, id: str, namespace: str = NS) -> set[tuple[int, str]]:
    return {(other, kind) for other, kind, _ in graph.links(namespace, key(id, namespace))}


def test_phrases_are_capitalised_runs_their_spans_terms_and_quoted_titles() -> None:
    """Extraction keeps names with particles, sub-spans, joined terms and quotes, casefolded."""
    found = phrases('The Journal of Psychotherapy Integration cites INC-1307 and "american idiot", by Jan Solovej.')
    assert {"journal of psychotherapy integration", "psychotherapy integration", "inc-1307", "american idiot"} <= found
    assert {"jan solovej", "solovej"} <= found
    assert "the" not in found and "and" not in found
    assert names("Lilu (mythology)\ntext") == {"lilu (mythology)".replace("(", "").replace(")", ""), "lilu"}


@pytest.mark.parametrize("order", [["album", "band"], ["band", "album"]])
def test_a_memory_naming_another_title_gets_a_names_link_in_either_write_order(order: list[str]) -> None:
    """The album mentions "Green Day", the band's title: linked whichever was written first."""
    graph = graph_of({id: {"album": ALBUM, "band": BAND}[id] for id in order})
    assert (key("band"), "names") in linked(graph, "album")
    assert (key("album"), "named_by") in linked(graph, "band")
    assert (key("album"), "names") not in linked(graph, "band")  # the band never mentions "Dookie"


def test_replacing_a_text_drops_the_links_of_the_old_text() -> None:
    """A memory rewritten without the name loses the link; its new mention links instead."""
    graph = graph_of({"album": ALBUM, "band": BAND, "city": "Berkeley\nBerkeley is a city in California."})
    graph.put(NS, key("album"), "Dookie\nDookie was recorded in Berkeley.")
    assert linked(graph, "album") == {(key("city"), "names")}
    assert (key("album"), "named_by") not in linked(graph, "band")


def test_removing_a_memory_drops_it_and_its_links_everywhere() -> None:
    """After remove, no link and no walk returns the key, and the counts shrink."""
    graph = graph_of({"album": ALBUM, "band": BAND})
    before = graph.stats()
    graph.remove(NS, key("band"))
    assert linked(graph, "album") == set() and graph.links(NS, key("band")) == []
    seeds = graph.query_phrases(NS, "Which band recorded Dookie? Green Day?") | {key("band"): 1.0}
    assert key("band") not in {k for k, _ in graph.walk(NS, seeds, 10)}
    after = graph.stats()
    assert after["memories"] == before["memories"] - 1 and after["name_edges"] < before["name_edges"]
    graph.remove(NS, key("band"))  # twice is harmless
    graph.remove("nowhere", key("band"))


def test_namespaces_never_mix() -> None:
    """The same texts in another namespace neither link nor seed nor walk across."""
    graph = graph_of({"album": ALBUM}, namespace="a")
    graph.put("b", key("band", "b"), BAND)
    assert linked(graph, "album", "a") == set()
    assert graph.query_phrases("b", "Dookie") == {}
    seeds = graph.query_phrases("a", "Green Day's Dookie") | {key("album", "a"): 1.0}
    assert all(k != key("band", "b") for k, _ in graph.walk("a", seeds, 10))
    assert graph.walk("c", seeds, 10) == []


def test_a_phrase_mentioned_by_more_than_max_df_memories_never_links_or_seeds() -> None:
    """Common phrases are dropped for good: no names link, no seed."""
    texts = {f"m{i}": f"Note {i}\nThe change went through Acme Corp review {i}." for i in range(5)}
    graph = graph_of(texts | {"acme": "Acme Corp\nAcme Corp makes everything."}, max_df=3)
    assert all(kind != "names" or other != key("acme") for other, kind in linked(graph, "m0"))
    assert linked(graph, "acme") == set()
    assert graph.stats()["common_phrases"] >= 1
    assert graph.query_phrases(NS, "who runs Acme Corp?") == {}


CHAIN = {
    "incident": "Incident INC-1307\nIncident INC-1307 was traced to release R-4821.",
    "release": "Release R-4821\nRelease R-4821 of Ledger Sync shipped with batch retries.",
    "owner": "Ledger Sync\nDana Okafor owns Ledger Sync and signs off every change to it.",
} | {
    f"noise{i}": f"Incident INC-20{i}\nIncident INC-20{i} was traced to release R-9{i} of Billing Api{i}."
    for i in range(20)
}


def test_the_walk_ranks_a_two_hop_target_above_unrelated_memories() -> None:
    """From INC-1307 the walk reaches the release and then the owner, before any noise."""
    graph = graph_of(CHAIN)
    seeds = graph.query_phrases(NS, "Who signs off the system behind incident INC-1307?")
    ranked = [k for k, _ in graph.walk(NS, seeds, 10)]
    assert ranked[:3] == [key("incident"), key("release"), key("owner")]
    assert all(k > 0 for k in ranked)


def test_the_walk_is_deterministic_whatever_the_write_order() -> None:
    """The same memories written in another order give the same ranking and scores."""
    items = list(CHAIN.items())
    forward = graph_of(dict(items))
    shuffled = graph_of(dict(random.Random(7).sample(items, len(items))))
    query = "Which incident was traced to a release of Billing Api3 or Ledger Sync?"
    a = forward.walk(NS, forward.query_phrases(NS, query), 15)
    b = shuffled.walk(NS, shuffled.query_phrases(NS, query), 15)
    assert a == b and len(a) == 15
    assert a == forward.walk(NS, forward.query_phrases(NS, query), 15)


def test_explicit_edges_are_followed_when_given() -> None:
    """Two memories sharing no phrase are joined only through the caller's explicit links."""
    graph = graph_of({"a": "Alpha Ridge\nNothing shared here.", "b": "Bravo Cove\nOther words entirely."})
    seeds = {key("a"): 1.0}
    assert [k for k, _ in graph.walk(NS, seeds, 10)] == [key("a")]
    for explicit in ({key("a"): [key("b"), key("ghost")]}, lambda k: [key("b")] if k == key("a") else []):
        assert {k for k, _ in graph.walk(NS, seeds, 10, explicit=explicit)} == {key("a"), key("b")}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n",
        ":",
        "🙂" * 8000,
        "東京タワー\n東京タワーは電波塔です。",
        "Ü" * 32768,
        ("Word " * 6553)[:32768],
        "A-" * 16000,
        '"' * 999,
    ],
)
def test_hostile_text_never_raises(text: str) -> None:
    """Empty, emoji, non-Latin and 32 KiB texts are indexed, queried, walked and removed."""
    graph = graph_of({"x": text, "band": BAND})
    seeds = graph.query_phrases(NS, text[:2000]) | {key("x"): 1.0}
    assert all(k in {key("x"), key("band")} for k, _ in graph.walk(NS, seeds, 5))
    graph.links(NS, key("x"))
    graph.remove(NS, key("x"))
    assert graph.links(NS, key("x")) == []


def test_push_work_is_bounded_by_one_over_alpha_epsilon() -> None:
    """On a large dense graph the edge operations stay under 1/(alpha*epsilon)."""
    n = 3000
    edges = {v: ([(v * 7 + i) % n + 1 for i in range(1, 40)], [1 / 39] * 39) for v in range(1, n + 1)}
    walk = ppr.push({1: 1.0}, edges.__getitem__, alpha=0.15, epsilon=2e-4, max_edge_ops=10**9)
    assert 1_000 < walk.edge_ops <= 1 / (0.15 * 2e-4) and not walk.capped
    assert 0.15 < sum(walk.scores.values()) <= 1.0 + 1e-9
    capped = ppr.push({1: 1.0}, edges.__getitem__, alpha=0.15, epsilon=2e-4, max_edge_ops=500)
    assert capped.capped and capped.edge_ops < 500 + 40


def test_mix_seeds_gives_hits_their_share_and_falls_back_to_either_side() -> None:
    """hit_share of the mass goes to the hits, the rest to phrases; one empty side gets none."""
    mixed = ppr.mix_seeds({-1: 3.0, -2: 1.0}, {5: 1.0, 6: 1.0}, hit_share=0.2)
    assert mixed == pytest.approx({-1: 0.6, -2: 0.2, 5: 0.1, 6: 0.1})
    assert ppr.mix_seeds({}, {5: 2.0}) == {5: 1.0}
    assert ppr.mix_seeds({-1: 2.0}, {}) == {-1: 1.0}


def test_one_huge_text_adds_at_most_max_phrases() -> None:
    """A 32 KiB text of distinct names is capped at MAX_PHRASES phrase nodes."""
    rng = random.Random(3)
    text = " ".join("".join(rng.choice("abcdefghij") for _ in range(6)).capitalize() for _ in range(4700))[:32768]
    graph = graph_of({"x": text})
    assert graph.stats()["mention_edges"] == MAX_PHRASES
