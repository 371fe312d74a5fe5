"""Entry points into the graph: memories by the rare terms they mention.

The graph source of a query starts from the memories that name the same specific
things as the query -- an incident number, a release, a service, a person -- and walks
their links. Those are the query's *rare entity-like* terms: a term is a run of word
characters joined by `-`, `.` or `/` (`INC-20007`, `ledger-sync`, `v1.2`) that is
capitalised or holds a digit, a joiner or an underscore (plain lowercase words -- "signs", "off" --
never seed a walk), compared casefolded; a term found in more than `max_df` memories
of a namespace is common, its postings are dropped for good, and it never seeds a walk
either (it would pick arbitrary memories).

Seeding then costs a few small set lookups, independent of the collection's size, and
does not need the query's embedding, so the graph source runs concurrently with the
vector search instead of after it. Seeds are scored by Σ log(1 + N / df) over the terms
they share with the query, ties broken by key so the order is deterministic.

Kept in process and rebuilt from the system of record on start, like the adjacency.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import defaultdict

from retrieval.memory import memory_vid

_TERM = re.compile(r"\w+(?:[-./]\w+)*")
DEFAULT_MAX_DF = 64


def terms(text: str) -> set[str]:
    """The distinct entity-like terms of `text`, casefolded (see the module docstring)."""
    # Entity-like: capitalised, or not purely letters (a digit, a joiner, an underscore).
    return {
        term.casefold()
        for term in _TERM.findall(unicodedata.normalize("NFKC", text))
        if term[0].isupper() or not term.isalpha()
    }


class EntityIndex:
    """namespace → rare term → memory keys (`memory_vid`)."""

    def __init__(self, max_df: int = DEFAULT_MAX_DF) -> None:
        self.max_df = max_df
        self._postings: dict[str, dict[str, set[int]]] = defaultdict(dict)
        self._common: dict[str, set[str]] = defaultdict(set)
        self._sizes: dict[str, int] = defaultdict(int)

    def put(self, namespace: str, id: str, text: str, old_text: str | None = None) -> None:
        """Index one memory's text; `old_text` is what it said before, if it was indexed.

        The caller keeps the texts (the retriever's mirror), so no per-memory term list
        is held here: removal recomputes the terms from the old text.
        """
        if old_text is not None:
            self.remove(namespace, id, old_text)
        key = memory_vid(namespace, id)
        postings, common = self._postings[namespace], self._common[namespace]
        for term in terms(text):
            if term in common:
                continue
            holders = postings.setdefault(term, set())
            holders.add(key)
            if len(holders) > self.max_df:
                del postings[term]
                common.add(term)
        self._sizes[namespace] += 1

    def remove(self, namespace: str, id: str, text: str) -> None:
        """Forget a memory that was indexed with `text`."""
        key = memory_vid(namespace, id)
        postings = self._postings[namespace]
        for term in terms(text):
            holders = postings.get(term)
            if holders is not None:
                holders.discard(key)
                if not holders:
                    del postings[term]
        self._sizes[namespace] -= 1

    def seeds(self, namespace: str, query: str, limit: int) -> list[int]:
        """Keys of up to `limit` memories sharing the most specific terms with `query`."""
        postings = self._postings.get(namespace)
        if not postings:
            return []
        n = max(1, self._sizes[namespace])
        score: dict[int, float] = defaultdict(float)
        for term in terms(query):
            holders = postings.get(term)
            if holders:
                weight = math.log1p(n / len(holders))
                for key in holders:
                    score[key] += weight
        return sorted(score, key=lambda k: (-score[k], k))[:limit]
