"""The wheel-bundled static model: loads and embeds offline, writes no cache, ignores kind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio
import numpy as np
import pytest

from retrieval.embedder_static import StaticModelEmbedder

pytestmark = pytest.mark.anyio
pytest.importorskip("wordllama")

# Runs in a fresh interpreter so nothing is loaded yet: every socket connect raises, and
# the hub's own offline switches are on in case anything asks it first.
OFFLINE_SCRIPT = """
import socket
def refuse(*args, **kwargs):
    raise OSError("network disabled by the test")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
import anyio
from retrieval.embedder_static import StaticModelEmbedder
vectors = anyio.run(StaticModelEmbedder().embed, ["the canary rolled back"])
print(vectors.shape)
"""


def test_loads_and_embeds_with_the_network_blocked_and_writes_no_cache(tmp_path: Path) -> None:
    """With every connect refused and an empty HOME, the model loads, embeds, and leaves HOME empty."""
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(Path(__file__).parents[1]),
    }
    result = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 256)"
    assert not list(home.rglob("*")), "the model wrote under HOME"


async def test_query_and_passage_embed_alike() -> None:
    """A symmetric model gives the same row for a text as a query and as a passage."""
    embedder = StaticModelEmbedder()
    with anyio.fail_after(30):
        as_passage = await embedder.embed(["canary rollback after a latency breach"])
        as_query = await embedder.embed(["canary rollback after a latency breach"], kind="query")
    np.testing.assert_array_equal(as_passage, as_query)


async def test_related_texts_score_above_unrelated() -> None:
    """A paraphrase with different words outranks an unrelated text (what hashing cannot do)."""
    embedder = StaticModelEmbedder()
    with anyio.fail_after(30):
        query, paraphrase, unrelated = await embedder.embed(
            [
                "the release was reverted because response times got worse",
                "canary rolled back after the p95 latency guard breached",
                "quarterly newsletter about the new coffee machine",
            ]
        )
    assert float(query @ paraphrase) > float(query @ unrelated)
