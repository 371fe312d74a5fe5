"""Embedders: the hashing default, the OpenAI-compatible HTTP client, and the config spec."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio
import numpy as np
import pytest

from retrieval.backends import build_embedder
from retrieval.embedder import Embedder, EmbedderError
from retrieval.embedder_hashing import HashingEmbedder, hash_embed
from retrieval.embedder_http import HttpEmbedder
from retrieval.embedder_static import StaticModelEmbedder

pytestmark = pytest.mark.anyio

TEXTS = [
    "The deploy agent rolled back the canary after the p95 latency guard breached",
    "Redis cache hit ratio dropped to 40% during the QA stage",
    "Quarterly marketing newsletter about the new coffee machine",
]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b)


# --- hashing ----------------------------------------------------------------------


async def test_rows_are_unit_length_float32() -> None:
    """Every non-empty text embeds to a float32 row of length 1."""
    vectors = await HashingEmbedder().embed(TEXTS)
    assert vectors.dtype == np.float32 and vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


async def test_empty_and_whitespace_texts_give_zero_rows() -> None:
    """Texts without a word embed to all-zero rows, and an empty batch to shape (0, dim)."""
    embedder = HashingEmbedder(dim=64)
    vectors = await embedder.embed(["", "   \n\t", "!!! ---"])
    assert vectors.shape == (3, 64) and not vectors.any()
    assert (await embedder.embed([])).shape == (0, 64)


async def test_batch_equals_singles() -> None:
    """A text's vector does not depend on the batch it is embedded in."""
    embedder = HashingEmbedder()
    batch = await embedder.embed(TEXTS)
    singles = np.vstack([await embedder.embed([text]) for text in TEXTS])
    np.testing.assert_array_equal(batch, singles)


async def test_large_batch_runs_in_a_worker_thread_with_same_result() -> None:
    """A batch past the inline limit goes through a worker thread and gives the inline result."""
    texts = [f"{TEXTS[i % 3]} number {i}" for i in range(200)]
    vectors = await HashingEmbedder().embed(texts)
    np.testing.assert_array_equal(vectors, hash_embed(texts, 384))


def test_same_vector_in_another_process() -> None:
    """The hashing embedder gives bit-identical vectors in a fresh interpreter (no salted hash())."""
    code = (
        "import sys, numpy as np; from retrieval.embedder_hashing import hash_embed; "
        f"sys.stdout.write(hash_embed({TEXTS!r}, 384).tobytes().hex())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
        cwd=Path(__file__).parents[1],
    ).stdout
    assert bytes.fromhex(out) == hash_embed(TEXTS, 384).tobytes()


async def test_near_duplicates_and_shared_rare_words_score_higher() -> None:
    """A reworded near-duplicate, then a text sharing a rare word, outrank an unrelated text."""
    query, near_dup, shared_word, unrelated = await HashingEmbedder().embed(
        [
            "the canary for agent builder-7 was rolled back by the latency guard",
            "canary for agent builder-7 rolled back by latency guard",
            "builder-7 finished its nightly compaction",
            "quarterly newsletter about the new coffee machine in the office",
        ]
    )
    assert cosine(query, near_dup) > cosine(query, shared_word) > cosine(query, unrelated)
    assert cosine(query, near_dup) > 0.8


async def test_character_trigrams_link_word_variants() -> None:
    """Inflected forms ("rollback"/"rollbacks") are closer than an unrelated word."""
    a, b, c = await HashingEmbedder().embed(["rollbacks", "rollback", "newsletter"])
    assert cosine(a, b) > 0.3 > 0.1 > cosine(a, c)


def test_dimension_out_of_range_is_refused() -> None:
    """A hashing dimension below 8 is a clear error naming the dimension."""
    with pytest.raises(EmbedderError, match="dim 4"):
        HashingEmbedder(4)


# --- build_embedder ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "kind", "dim"),
    [("hashing", HashingEmbedder, 384), ("hashing:512", HashingEmbedder, 512)],
)
def test_build_hashing(spec: str, kind: type, dim: int) -> None:
    """Hashing specs build a hashing embedder of the given dimension."""
    embedder = build_embedder(spec)
    assert isinstance(embedder, kind) and isinstance(embedder, Embedder) and embedder.dim == dim


async def test_build_http() -> None:
    """An http spec splits URL and model at '#'."""
    embedder = build_embedder("http:http://127.0.0.1:9/#bge")
    assert isinstance(embedder, HttpEmbedder) and embedder.model == "bge"
    assert embedder.url == "http://127.0.0.1:9"
    await embedder.aclose()


def test_build_static() -> None:
    """A static spec builds the wheel-bundled model lazily (no import until first use)."""
    assert build_embedder("static:wordllama").dim == 256


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("bert", "unknown embedder kind 'bert'"),
        ("hashing:big", "dim 'big' is not a positive integer"),
        ("http:127.0.0.1#m", "expected http:URL#MODEL"),
        ("http:http://x", "expected http:URL#MODEL"),
        ("static:glove", "unknown static model"),
    ],
)
def test_build_rejects_bad_specs(spec: str, message: str) -> None:
    """Malformed specs raise EmbedderError saying what is wrong."""
    with pytest.raises(EmbedderError, match=message):
        build_embedder(spec)


async def test_static_model_reports_missing_package_or_embeds() -> None:
    """Without wordllama installed the static embedder says how to install it; with it, it embeds."""
    embedder = StaticModelEmbedder()
    if importlib.util.find_spec("wordllama") is None:
        with pytest.raises(EmbedderError, match="pip install"):
            await embedder.embed(["x"])
        return
    vectors = await embedder.embed(TEXTS)
    assert vectors.shape == (3, 256)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


# --- HTTP -------------------------------------------------------------------------


class _EmbeddingsHandler(BaseHTTPRequestHandler):
    """/v1/embeddings computed with the hashing embedder; the model name picks a misbehaviour."""

    def do_POST(self) -> None:  # noqa: N802  (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)  # type: ignore[attr-defined]
        model, texts = body["model"], body["input"]
        if model == "broken":
            return self._reply(500, {"error": "model crashed"})
        if model == "slow":
            time.sleep(1.0)
        dim = 16 if model == "wrong-dim" else 32
        vectors = hash_embed(texts, dim) * 3.0  # unnormalised: the client must normalise
        data = [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]
        if model == "short":
            data = data[:-1]
        self._reply(200, {"object": "list", "model": model, "data": data[::-1]})  # reversed: order by index

    def _reply(self, status: int, payload: dict) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def embeddings_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EmbeddingsHandler)
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _url(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


async def test_http_embeds_in_batches_in_order(embeddings_server: ThreadingHTTPServer) -> None:
    """Texts are sent in batch_size chunks and come back normalised, ordered by 'index'."""
    texts = [f"memory {i} about {TEXTS[i % 3]}" for i in range(10)]
    async with HttpEmbedder(_url(embeddings_server), "hash32", batch_size=4) as embedder:
        with anyio.fail_after(10):
            vectors = await embedder.embed(texts)
        assert embedder.dim == 32
    assert [len(r["input"]) for r in embeddings_server.requests] == [4, 4, 2]  # type: ignore[attr-defined]
    np.testing.assert_allclose(vectors, hash_embed(texts, 32), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("model", "dim", "message"),
    [
        ("broken", None, "HTTP 500"),
        ("wrong-dim", 32, "dim 16 != configured 32"),
        ("short", None, "expected 3 embeddings in 'data', got 2"),
    ],
)
async def test_http_errors_name_url_and_problem(
    embeddings_server: ThreadingHTTPServer, model: str, dim: int | None, message: str
) -> None:
    """Non-2xx, wrong dimension and wrong count raise EmbedderError naming the endpoint."""
    async with HttpEmbedder(_url(embeddings_server), model, dim=dim) as embedder:
        with anyio.fail_after(10), pytest.raises(EmbedderError, match=message) as caught:
            await embedder.embed(TEXTS)
    assert f"{_url(embeddings_server)}/v1/embeddings" in str(caught.value)


async def test_http_timeout_is_an_embedder_error(embeddings_server: ThreadingHTTPServer) -> None:
    """A server slower than the timeout gives an EmbedderError, not a raw httpx exception."""
    async with HttpEmbedder(_url(embeddings_server), "slow", timeout=0.2) as embedder:
        with anyio.fail_after(10), pytest.raises(EmbedderError, match="ReadTimeout"):
            await embedder.embed(["x"])


async def test_http_unreachable_is_an_embedder_error() -> None:
    """A closed port gives an EmbedderError naming the URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EmbeddingsHandler)
    url = _url(server)
    server.server_close()
    async with HttpEmbedder(url, "m", timeout=2) as embedder:
        with anyio.fail_after(10), pytest.raises(EmbedderError, match="ConnectError") as caught:
            await embedder.embed(["x"])
    assert url in str(caught.value)
