"""A synthetic agent-memory corpus whose multi-hop answers are reachable only through links.

The corpus is made of *chains* of three linked memories, plus unlinked filler notes:

    owner     "Dana Okafor owns ledger-sync and signs off every change to it."
    release   "Release R-4821 of ledger-sync shipped on 2025-10-21 with batch retries."  → owner
    incident  "Incident INC-1307 was traced to release R-4821; the QA agent paused it."  → release

and three kinds of question per chain:

    0 hops  "What happened in incident INC-1307?"            → the incident
    1 hop   "Which release caused incident INC-1307?"         → the release
    2 hops  "Who signs off changes to the system behind incident INC-1307?" → the owner

A question names only the incident, so the words that identify the release and the owner
appear nowhere in it: lexical or vector similarity finds the incident, and only the
links lead from there to the answer. Every owner memory uses the same sentence shape, so
vector search alone cannot tell which owner is meant — the graph's value is measurable.
Deterministic for a given seed; no randomness from outside.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from retrieval.quality import Question

AGENTS = ("Builder", "Deploy", "QA", "Support", "Marketing", "Analyst", "Legal", "Thon")
_FIRST = ("Dana", "Ravi", "Mei", "Tomas", "Aisha", "Lars", "Noor", "Kenji", "Ines", "Omar", "Zofia", "Yusuf")
_LAST = ("Okafor", "Lindqvist", "Tanaka", "Moreau", "Haddad", "Kowalski", "Silva", "Nguyen", "Brandt", "Rossi")
_PARTS = (
    "ledger",
    "search",
    "billing",
    "router",
    "vault",
    "gateway",
    "catalog",
    "ingest",
    "profile",
    "notify",
    "render",
    "audit",
    "quota",
    "session",
    "export",
    "metrics",
)
_KINDS = ("sync", "api", "worker", "cache", "indexer", "bridge", "scheduler", "proxy")
_FEATURES = (
    "batch retries",
    "a new schema",
    "rate limiting",
    "streaming pages",
    "cold-start tuning",
    "a bigger pool",
    "stricter timeouts",
    "async writes",
    "tenant sharding",
    "lazy loading",
)
_FILLER = (
    "{agent} agent summarised the standup: {a} and {b} are on track.",
    "{agent} agent noted a flaky test in {a}; rerun passed.",
    "{agent} agent drafted release notes mentioning {a} and {b}.",
    "{agent} agent answered a customer question about {a} limits.",
    "{agent} agent reviewed the dashboard for {a}; nothing unusual.",
)


@dataclass(frozen=True)
class Corpus:
    memories: list[dict[str, Any]] = field(default_factory=list)  # {"id", "namespace", "text", "links", "metadata"}
    questions: list[Question] = field(default_factory=list)


def generate(memories: int = 1000, *, seed: int = 7, namespace: str = "default", filler_share: float = 0.4) -> Corpus:
    """About `memories` memories (chains of 3 plus filler) and 3 questions per chain."""
    if memories < 3:
        raise ValueError("a corpus needs at least 3 memories (one chain)")
    rng = random.Random(seed)
    chains = max(1, int(memories * (1 - filler_share)) // 3)
    services = _names(rng, chains)
    out: list[dict[str, Any]] = []
    questions: list[Question] = []
    for n, service in enumerate(services):
        person = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
        release, incident = f"R-{10000 + n}", f"INC-{20000 + n}"
        agent = rng.choice(AGENTS)
        owner_id, release_id, incident_id = f"owner-{n}", f"release-{n}", f"incident-{n}"
        out.append(
            _memory(owner_id, namespace, f"{person} owns {service} and signs off every change to it.", [], kind="owner")
        )
        out.append(
            _memory(
                release_id,
                namespace,
                f"Release {release} of {service} shipped on 2025-10-{1 + n % 28:02d} with {rng.choice(_FEATURES)}.",
                [owner_id],
                kind="release",
            )
        )
        out.append(
            _memory(
                incident_id,
                namespace,
                f"Incident {incident} was traced to release {release}; the {agent} agent paused it.",
                [release_id],
                kind="incident",
                agent=agent,
            )
        )
        questions += [
            Question(f"What happened in incident {incident}?", (incident_id,), namespace=namespace, hops=0),
            Question(f"Which release caused incident {incident}?", (release_id,), namespace=namespace, hops=1),
            Question(
                f"Who signs off changes to the system behind incident {incident}?",
                (owner_id,),
                namespace=namespace,
                hops=2,
            ),
        ]
    for n in range(max(0, memories - len(out))):
        text = rng.choice(_FILLER).format(agent=rng.choice(AGENTS), a=rng.choice(services), b=rng.choice(services))
        out.append(_memory(f"note-{n}", namespace, text, [], kind="note"))
    return Corpus(out, questions)


def _names(rng: random.Random, count: int) -> list[str]:
    """`count` distinct service names: part-kind, then part-kind-N once the pairs run out."""
    pairs = [f"{p}-{k}" for p in _PARTS for k in _KINDS]
    rng.shuffle(pairs)
    return [pairs[i % len(pairs)] + (f"-{i // len(pairs)}" if i >= len(pairs) else "") for i in range(count)]


def _memory(memory_id: str, namespace: str, text: str, links: list[str], **metadata: Any) -> dict[str, Any]:
    return {"id": memory_id, "namespace": namespace, "text": text, "links": links, "metadata": metadata}
