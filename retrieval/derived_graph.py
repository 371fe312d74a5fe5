"""A graph derived from the memories' text, and a weighted walk over it (no LLM).

Agents rarely link their memories by hand, so the graph the walk needs is read out of the
text, as HippoRAG does with its phrase-passage graph but without the LLM's extraction:

    memory A ──mentions──▶ phrase "green day" ──names──▶ memory B (titled "Green Day")

- *Phrases* (`phrases()`): runs of Capitalised words, lowercase particles allowed inside
  ("Journal of Psychotherapy Integration"), and every sub-span of up to `MAX_SPAN` words
  of such a run; terms with a digit or a joiner (`INC-1307`, `ledger-sync`); quoted
  titles. NFKC-normalised and casefolded; function words trimmed from the ends; the
  first `MAX_PHRASES` of a text (a 32 KiB text of names would add ~20,000).
- *Names* (`names()`): a memory's title -- its first line when the text has several, else
  the words before a short leading `Title:` -- casefolded, with and without a trailing
  "(disambiguation)". A phrase that is a memory's name leads to that memory.
- A phrase mentioned (or a name held) by more than `max_df` memories of a namespace is
  common: it stops being a node for good (like `retrieval.entities`), so it neither links
  nor seeds. "For good" means a long-lived graph can keep a phrase common that a rebuild,
  after many removals, would bring back; the texts decide again on every start.

The "names" link A→B is therefore not stored: it is the path through the shared phrase
node, so a memory titled "Green Day" written *after* the memories mentioning "green day"
is linked to them at once, and replacing or removing a memory only edits its own postings.
Phrase nodes are negative integers hashed from (namespace, phrase); memory nodes are the
positive `memory_vid` keys, so the two never meet and no phrase table is kept.

The walk and its transition rule are in `retrieval.ppr` (personalized PageRank by local
forward push; `PhraseGraph` is the structure kept here). Everything is in-process state
derived from the texts, rebuilt by `put`ting every memory on start (100,000 memories in
about 8 s on the benchmark machine: `python -m tests.bench.bench_graph_walk`).
"""

from __future__ import annotations

import re
import unicodedata
from array import array
from collections.abc import Mapping

import mmh3

from retrieval import ppr
from retrieval.ppr import Explicit, PhraseGraph

DEFAULT_MAX_DF = 64
MAX_SPAN = 4  # words in a sub-span of a capitalised run; whole runs are kept up to MAX_RUN
MAX_RUN = 8
MAX_TITLE_CHARS = 200
MAX_PHRASES = 1024  # a memory's first ones; bounds what one 32 KiB text adds and a memory node's degree

_TOKEN = re.compile(r"\w+(?:[-./'’]\w+)*")
_SPACED_HYPHEN = re.compile(r"(?<=\w) - (?=\w)")
_QUOTED = re.compile(r"\"([^\"\n]{2,80})\"|“([^”\n]{2,80})”|``([^'\n]{2,80})''")
_PARENTHETICAL = re.compile(r"\s*\([^()]*\)\s*$")
_PARTICLES = frozenset("of the de du da del della di van von der den la le y".split())
_STOP = _PARTICLES | frozenset(
    "a an and or but in on at for to by with from as is was are were be it its he she they his her their "
    "this that these those if when while after before during since also however i we you who what which "
    "where how why there then not no".split()
)
_MASK = (1 << 63) - 1


def phrases(text: str) -> set[str]:
    """The phrase candidates of `text`, casefolded (see the module docstring)."""
    text = _SPACED_HYPHEN.sub("-", unicodedata.normalize("NFKC", text))
    found: dict[str, None] = {}  # ordered, so a capped text keeps its first phrases
    run: list[str] = []
    end = 0
    for match in _TOKEN.finditer(text):
        token, gap = match.group(), text[end : match.start()]
        end = match.end()
        if run and gap.strip():  # punctuation between two words ends a run
            _spans(run, found)
            run = []
        if token.endswith(("'s", "’s")):
            token = token[:-2]
        if token[:1].isupper() or not token.isalpha():
            run.append(token.casefold())
        elif run and token in _PARTICLES:
            run.append(token)
        elif run:
            _spans(run, found)
            run = []
    _spans(run, found)
    for match in _QUOTED.finditer(text):
        quoted = _normalise(next(g for g in match.groups() if g))
        if len(quoted.split()) <= MAX_RUN:
            found[quoted] = None
    return set(list(p for p in found if len(p) >= 2)[:MAX_PHRASES])


def _spans(run: list[str], found: dict[str, None]) -> None:
    """Add the run (trimmed of function words) and its sub-spans of up to MAX_SPAN words."""
    lo, hi = 0, len(run)
    while lo < hi and run[lo] in _STOP:
        lo += 1
    while hi > lo and run[hi - 1] in _STOP:
        hi -= 1
    if hi - lo <= MAX_RUN:
        found[" ".join(run[lo:hi])] = None
    for i in range(lo, hi):
        if run[i] in _STOP:
            continue
        for j in range(i + 1, min(hi, i + MAX_SPAN) + 1):
            if run[j - 1] not in _STOP:
                found[" ".join(run[i:j])] = None


def _normalise(phrase: str) -> str:
    words = [t.casefold() for t in _TOKEN.findall(_SPACED_HYPHEN.sub("-", unicodedata.normalize("NFKC", phrase)))]
    words = [w[:-2] if w.endswith(("'s", "’s")) else w for w in words]
    lo = 0
    while lo < len(words) - 1 and words[lo] in _STOP:
        lo += 1
    return " ".join(words[lo:])


def title(text: str) -> str:
    """The memory's title: its first line when it has several, else a short `Title:` prefix."""
    head, newline, _ = text.partition("\n")
    if not newline:
        head, colon, _ = text.partition(":")
        if not colon or len(head.split()) > 6:
            return ""
    return head.strip()[:MAX_TITLE_CHARS]


def names(text: str) -> set[str]:
    """The names a memory is known by: its title, with and without a trailing (qualifier)."""
    head = title(text)
    found = {_normalise(head), _normalise(_PARENTHETICAL.sub("", head))}
    return {n for n in found if len(n) >= 2 and len(n.split()) <= MAX_RUN}


def phrase_node(namespace: str, phrase: str) -> int:
    """The phrase's node: a negative int64 hashed from namespace and phrase."""
    return -((mmh3.hash64(f"{namespace}\0{phrase}", 0, True)[0] & _MASK) or 1)


class DerivedGraph:
    """namespace → the phrase-memory graph of its texts, updated one memory at a time."""

    def __init__(
        self, max_df: int = DEFAULT_MAX_DF, alpha: float = ppr.DEFAULT_ALPHA, epsilon: float = ppr.DEFAULT_EPSILON
    ) -> None:
        self.max_df, self.alpha, self.epsilon = max_df, alpha, epsilon
        self._spaces: dict[str, PhraseGraph] = {}

    def put(self, namespace: str, key: int, text: str) -> None:
        """Index a memory's text, replacing what it said before."""
        space = self._spaces.setdefault(namespace, PhraseGraph())
        self._forget(space, key)
        mentioned = array("q", sorted({phrase_node(namespace, p) for p in phrases(text)}))
        named = array("q", sorted({phrase_node(namespace, n) for n in names(text)}))
        for postings, nodes in ((space.mentions, mentioned), (space.named, named)):
            for node in nodes:
                if node in space.common:
                    continue
                holders = postings.setdefault(node, set())
                holders.add(key)
                if len(holders) > self.max_df:  # common: a node no more, on either side
                    space.mentions.pop(node, None)
                    space.named.pop(node, None)
                    space.common.add(node)
        space.phrases[key] = mentioned
        space.names[key] = named

    def remove(self, namespace: str, key: int) -> None:
        """Forget a memory and every edge to or from it."""
        space = self._spaces.get(namespace)
        if space is not None:
            self._forget(space, key)

    def _forget(self, space: PhraseGraph, key: int) -> None:
        for postings, nodes in ((space.mentions, space.phrases.pop(key, ())), (space.named, space.names.pop(key, ()))):
            for node in nodes:
                holders = postings.get(node)
                if holders is not None:
                    holders.discard(key)
                    if not holders:
                        del postings[node]

    def query_phrases(self, namespace: str, query: str) -> dict[int, float]:
        """Seeds for a query: the graph's phrase nodes it mentions, weighted by idf.

        Besides the query's phrase candidates, any run of up to MAX_RUN of its words that
        is a memory's name counts (a query says "the demon algorithm" in lowercase).
        """
        space = self._spaces.get(namespace)
        if space is None:
            return {}
        words = _normalise(query).split()
        runs = {" ".join(words[i:j]) for i in range(len(words)) for j in range(i + 1, min(len(words), i + MAX_RUN) + 1)}
        mentioned = phrases(query)
        seeds: dict[int, float] = {}
        for phrase in mentioned | runs:
            node = phrase_node(namespace, phrase)
            if node in space.common:
                continue
            if node in space.named or (node in space.mentions and phrase in mentioned):
                seeds[node] = space.idf(node)
        return seeds

    def walk(
        self, namespace: str, seeds: Mapping[int, float], limit: int, explicit: Explicit | None = None
    ) -> list[tuple[int, float]]:
        """Memories ranked by personalized PageRank from `seeds` (phrase or memory nodes).

        `explicit` gives a memory's links held elsewhere (the caller's adjacency), so one
        walk follows both; keys not in this graph are skipped. Ties go to the smaller key.
        """
        space = self._spaces.get(namespace)
        if space is None or limit <= 0:
            return []
        scores = self.push(namespace, seeds, explicit).scores
        return ppr.ranked(scores, limit, lambda n: n in space.phrases)

    def push(self, namespace: str, seeds: Mapping[int, float], explicit: Explicit | None = None) -> ppr.Walk:
        """The raw walk behind `walk`: every node's score (phrases too) and the work it took."""
        space = self._spaces.get(namespace)
        if space is None:
            return ppr.Walk({}, 0, 0, False)
        known = {n: w for n, w in seeds.items() if space.is_node(n)}
        return ppr.push(known, space.neighbours(explicit), self.alpha, self.epsilon, degree=space.degree)

    def links(self, namespace: str, key: int) -> list[tuple[int, str, float]]:
        """A memory's derived links, for tests and inspection: (other key, type, weight).

        "names": this memory mentions the other's name; "named_by": the reverse; weight
        is the idf of the name. Strongest first, then by key.
        """
        space = self._spaces.get(namespace)
        if space is None or key not in space.phrases:
            return []
        found: dict[tuple[int, str], float] = {}
        for kind, nodes, postings in (
            ("names", space.phrases[key], space.named),
            ("named_by", space.names[key], space.mentions),
        ):
            for node in nodes:
                if node in space.common:
                    continue
                for other in postings.get(node, ()):
                    if other != key:
                        found[(other, kind)] = max(found.get((other, kind), 0.0), space.idf(node))
        return sorted(((o, k, w) for (o, k), w in found.items()), key=lambda okw: (-okw[2], okw[0], okw[1]))

    def stats(self) -> dict[str, int]:
        """Sizes over every namespace: memories, phrase nodes, and edges of each kind."""
        spaces = self._spaces.values()
        return {
            "memories": sum(len(s.phrases) for s in spaces),
            "phrase_nodes": sum(len((s.mentions.keys() | s.named.keys()) - s.common) for s in spaces),
            "common_phrases": sum(len(s.common) for s in spaces),
            "mention_edges": sum(len(h) for s in spaces for h in s.mentions.values()),
            "name_edges": sum(len(h) for s in spaces for n, h in s.named.items() if n not in s.common),
        }
