"""Weighted RRF: dedupe by id, ranks kept per source, weights and k respected, deterministic."""

from __future__ import annotations

import pytest

from retrieval.fusion import fuse


def test_a_memory_found_by_both_sources_is_one_result_with_both_ranks() -> None:
    fused = fuse({"vector": ["a", "b", "c"], "graph": ["c", "d"]})
    assert [f.id for f in fused] == ["c", "a", "b", "d"]  # c: 1/63 + 1/61 beats a: 1/61
    c = fused[0]
    assert c.ranks == {"vector": 3, "graph": 1}
    assert c.score == pytest.approx(1 / 63 + 1 / 61)
    assert fused[3].ranks == {"vector": None, "graph": 2}


def test_same_text_different_ids_stay_apart_and_repeats_count_once() -> None:
    fused = fuse({"vector": ["x", "x", "y"]})
    assert [(f.id, f.ranks["vector"]) for f in fused] == [("x", 1), ("y", 3)]


def test_weights_and_k_change_the_order() -> None:
    lists = {"vector": ["a", "b"], "graph": ["b", "a"]}
    assert [f.id for f in fuse(lists, weights={"vector": 2.0})] == ["a", "b"]
    assert [f.id for f in fuse(lists, weights={"graph": 2.0})] == ["b", "a"]
    small_k = fuse({"vector": ["a", "b"]}, k=1)
    assert small_k[0].score == pytest.approx(1 / 2) and small_k[1].score == pytest.approx(1 / 3)


def test_ties_are_deterministic_and_limit_cuts() -> None:
    fused = fuse({"vector": ["a", "b"], "graph": ["b", "a"]})
    assert [f.id for f in fused] == ["a", "b"]  # equal scores: best rank, then id
    assert [f.id for f in fuse({"vector": list("abcdef")}, limit=3)] == ["a", "b", "c"]


@pytest.mark.parametrize("kwargs, message", [({"k": 0}, "at least 1"), ({"weights": {"vector": -1}}, "negative")])
def test_bad_parameters_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fuse({"vector": ["a"]}, **kwargs)
