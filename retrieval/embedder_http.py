"""Embeddings from an OpenAI-compatible `POST {url}/v1/embeddings` endpoint."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np

from retrieval.embedder import EmbedderError, EmbedKind, check_kind, l2_normalise


class HttpEmbedder:
    """Embeddings from an OpenAI-compatible `/v1/embeddings` endpoint, batched.

    With `dim=None` the first response fixes the dimension; every later response
    must match it. Pass `client` to share a connection pool; it is then not closed here.
    """

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        dim: int | None = None,
        batch_size: int = 64,
        timeout: float = 10,
        *,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if batch_size < 1:
            raise EmbedderError(url, f"batch_size {batch_size} < 1")
        self.url = url.rstrip("/")
        self.model = model
        self.name = f"http:{self.url}#{model}"
        self.batch_size = batch_size
        self._dim = dim
        self._owns_client = client is None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0)), trust_env=False
        )
        self._headers = headers

    @property
    def dim(self) -> int:
        if self._dim is None:
            raise EmbedderError(self.url, "dimension unknown before the first response", "pass dim=")
        return self._dim

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> HttpEmbedder:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def embed(self, texts: Sequence[str], *, kind: EmbedKind = "passage") -> np.ndarray:
        """`kind` is checked, not sent: the OpenAI embeddings API has no query/passage field."""
        check_kind(kind)
        texts = list(texts)
        if not texts:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        parts = [await self._embed_batch(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        return l2_normalise(np.concatenate(parts))

    async def _embed_batch(self, texts: list[str]) -> np.ndarray:
        endpoint = f"{self.url}/v1/embeddings"
        try:
            response = await self._client.post(
                endpoint, json={"model": self.model, "input": texts}, headers=self._headers
            )
        except httpx.HTTPError as exc:
            raise EmbedderError(endpoint, f"request failed: {type(exc).__name__}: {exc}") from exc
        if not response.is_success:
            raise EmbedderError(
                endpoint, f"HTTP {response.status_code}: {response.text[:200]!r}", "check url, model and api key"
            )
        try:
            body = response.json()
        except ValueError as exc:
            raise EmbedderError(endpoint, "response is not JSON") from exc
        return self._parse(endpoint, body, len(texts))

    def _parse(self, endpoint: str, body: Any, expected: int) -> np.ndarray:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or len(data) != expected:
            got = len(data) if isinstance(data, list) else type(data).__name__
            raise EmbedderError(endpoint, f"expected {expected} embeddings in 'data', got {got}")
        try:
            ordered = sorted(data, key=lambda item: item["index"])
            matrix = np.asarray([item["embedding"] for item in ordered], dtype=np.float32)
        except (KeyError, TypeError, ValueError) as exc:
            raise EmbedderError(endpoint, f"malformed 'data' items: {exc}") from exc
        if [item["index"] for item in ordered] != list(range(expected)):
            raise EmbedderError(endpoint, f"'index' values are not 0..{expected - 1}")
        if matrix.ndim != 2:
            raise EmbedderError(endpoint, "embeddings are not equal-length number lists")
        if self._dim is None:
            self._dim = matrix.shape[1]
        elif matrix.shape[1] != self._dim:
            raise EmbedderError(endpoint, f"dim {matrix.shape[1]} != configured {self._dim}", "fix dim= or the model")
        if not np.isfinite(matrix).all():
            raise EmbedderError(endpoint, "embeddings contain NaN or infinity")
        return matrix
