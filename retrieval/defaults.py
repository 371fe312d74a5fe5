"""The `[retrieval]` defaults, chosen by measurement (see retrieval/README.md, "Choices").

Imported by the config parser as well as the retriever, so it imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Mapping

DEFAULT_EMBEDDER = "static:wordllama"
# Exact below 20,000 memories a namespace, k-means lists above: on wordllama vectors at 100,000
# it keeps recall@10 0.970 by id (1.000 counting ties) and hybrid p95 3.1 ms, where exact is 9.2
# (`make bench BENCH_ARGS=retrieval`, 2026-12-06).
DEFAULT_INDEX = "ivf"
DEFAULT_RRF_K = 60
# The walk is seeded by the lexical and vector hits, so it already speaks for both, plus the
# links: it weighs more than the two together (3 > 1 + 1), so the walk's top k ranks first and
# the other legs order what it ranks alike and add what it missed below (retrieval/README.md).
DEFAULT_WEIGHTS: Mapping[str, float] = {"vector": 1.0, "lexical": 1.0, "graph": 3.0}
