"""Which retrieval path an agent gets, decided by the flags being rolled out.

For each request the four Phase 5 retrieval flags are evaluated for the caller's
context (`targetingKey` + `agent`), and this pure function turns the answers into a
route:

    hybrid_rag_enabled  vector_search_enabled  graph_database_enabled   path
    on                  on                     on                       hybrid (vector + lexical + graph, fused)
    any                 on                     off, or hybrid off       vector
    any                 off                    on                       graph
    any                 off                    off                      none (403: not rolled out)

    redis_cache_enabled on → results are cached (Redis, or in process without Redis)

Hybrid needs all three because it is the fusion of the other two (with the lexical
leg, which has no flag of its own: it is part of the hybrid feature): an agent whose
graph flag is off must not reach the graph through the hybrid flag. An agent with
none of them on is outside the rollout: the retriever is the feature being rolled
out, so it answers 403 rather than serving a path the flags did not grant. The plan
rolls these flags with one shared bucket group, so at any percentage the same agents
have all of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from flags.evaluate import FlagSet

HYBRID = "hybrid_rag_enabled"
VECTOR = "vector_search_enabled"
GRAPH = "graph_database_enabled"
CACHE = "redis_cache_enabled"
GATING_FLAGS = (HYBRID, VECTOR, GRAPH, CACHE)

Path = Literal["hybrid", "vector", "graph"]


@dataclass(frozen=True)
class Route:
    path: Path | None  # None: no retrieval flag is on for this caller
    cache: bool
    flags: Mapping[str, bool]  # what each gating flag said, for the response and logs

    @property
    def sources(self) -> tuple[str, ...]:
        """The legs this route grants, in the order they are reported."""
        return {"hybrid": ("vector", "lexical", "graph"), "vector": ("vector",), "graph": ("graph",), None: ()}[
            self.path
        ]

    def refused(self, legs: Sequence[str]) -> list[str]:
        """Those of `legs` this route does not grant (a caller may narrow its legs, never widen them)."""
        return [leg for leg in legs if leg not in self.sources]


def choose_route(on: Mapping[str, bool]) -> Route:
    """The route for a caller whose gating flags evaluated to `on` (missing = off)."""
    vector, graph, hybrid = on.get(VECTOR, False), on.get(GRAPH, False), on.get(HYBRID, False)
    if vector and graph and hybrid:
        path: Path | None = "hybrid"
    elif vector:
        path = "vector"
    elif graph:
        path = "graph"
    else:
        path = None
    return Route(path, bool(on.get(CACHE, False)), {name: bool(on.get(name, False)) for name in GATING_FLAGS})


def route_for(flags: FlagSet, context: Mapping[str, Any], now: datetime) -> Route:
    """Evaluate the gating flags for `context` and choose the route."""
    return choose_route({name: flags.evaluate(name, context, now).value for name in GATING_FLAGS})


ALL_ON = choose_route(dict.fromkeys(GATING_FLAGS, True))
