"""The demo's synthetic agent fleet and its regression suite, both talking to the real daemon.

Fleet: eight agents (the seeds' cohorts), each with a pool of sessions (`targetingKey`),
in a process of its own (`run_fleet`), as agents are. Like an OpenFeature SDK with a
file provider, it evaluates the daemon's `flags.json` in process to know which sessions
have a retrieval path, and only those call `POST /v1/retrieve` over HTTP — so traffic
on the new path grows with the rollout and stops when it is rolled back. Its tally is
written to a JSON file every quarter second for the demo's view. Each session in the
rollout asks about 2.5 questions per wall second, the total capped at `rate` (a laptop's
two cores serve the daemon and the fleet at once). Questions are drawn from the corpus
with a Zipf-like popularity, so popular ones repeat and the cache earns its hits; a
share of them are asked for the first time (a session's own task), and miss.

Suite: the stand-in for the seeds' Genesis regression suite. Every `interval` wall
seconds it asks a few labelled questions through the retriever (quietly: it must not
move the traffic guards) and pushes the pass rate over its last 60 answers to
`POST /v1/signals/regression_pass_rate` on the admin socket, as a CI runner would.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from multiprocessing.synchronize import Event as ProcessEvent
from pathlib import Path

import anyio
import httpx

from flags.clock import utcnow
from flags.errors import FlagsError
from flags.evaluate import FlagSet
from flags.parse import parse_flags_text
from retrieval.gating import ALL_ON, route_for
from retrieval.quality import Question
from retrieval.retriever import NotReady, RetrievalFailed, Retriever

# (agent, sessions): the seeds' agents; busier agents have more sessions.
FLEET = (
    ("Builder", 600),
    ("Deploy", 300),
    ("QA", 400),
    ("Support", 500),
    ("Marketing", 200),
    ("Analyst", 250),
    ("Legal", 100),
    ("Thon", 150),
)
PER_SESSION_RATE = 2.5  # queries per wall second from each session in the rollout
FRESH_SHARE = 0.05  # questions asked for the first time (about a session's own task): cache misses
TICK = 0.02  # wall seconds between request batches
REFRESH = 0.25  # wall seconds between re-reading which sessions are in the rollout
TALLY_EVERY = 0.25  # wall seconds between writes of the tally file


@dataclass
class Tally:
    """What the fleet saw, for the demo's summary."""

    sent: int = 0
    answered: int = 0
    failed: int = 0  # 5xx: the retriever failed (an injected fault shows here)
    refused: int = 0  # 403/503: not rolled out to this caller, or an emergency
    hits: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    by_agent: dict[str, int] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> Tally:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return cls()


class FlagsFile:
    """The daemon's flags.json as a FlagSet, re-read when it changes (the last good one is
    kept while a write is in flight: the daemon replaces the file atomically anyway)."""

    def __init__(self, path: Path) -> None:
        self._path, self._seen, self._flags = path, -1, FlagSet({})

    def __call__(self) -> FlagSet:
        try:
            stamp = self._path.stat().st_mtime_ns
            if stamp != self._seen:
                self._flags = FlagSet(parse_flags_text(self._path.read_text(), self._path))
                self._seen = stamp
        except (OSError, FlagsError):
            pass
        return self._flags


def _write(path: Path, tally: Tally) -> None:
    """Replace the tally file (a view, not state: no fsync)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(tally)))
    os.replace(tmp, path)


def start_fleet(
    base_url: str, flags: Path, questions: Sequence[str], rate: float, tally: Path
) -> tuple[multiprocessing.process.BaseProcess, ProcessEvent]:
    """The fleet in a process of its own; returns it and the event that stops it."""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    process = context.Process(
        target=run_fleet,
        args=(base_url, str(flags), list(questions), rate, str(tally), stop),
        name="rolloutd-demo-fleet",
        daemon=True,
    )
    process.start()
    return process, stop


def run_fleet(base_url: str, flags: str, questions: list[str], rate: float, tally: str, stop: ProcessEvent) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the demo stops the fleet
    fleet = Fleet(base_url, FlagsFile(Path(flags)), utcnow, questions, rate=rate)
    anyio.run(fleet.run_until, stop, Path(tally), backend="asyncio")


def zipf_weights(n: int, s: float = 1.2) -> list[float]:
    return [1 / (rank + 1) ** s for rank in range(n)]


def in_rollout(snapshot: FlagSet, now: datetime) -> list[tuple[str, str]]:
    """Every (agent, session) whose flags give it a retrieval path now."""
    out = []
    for agent, sessions in FLEET:
        for n in range(sessions):
            key = f"{agent.lower()}-{n}"
            if route_for(snapshot, {"agent": agent, "targetingKey": key}, now).path is not None:
                out.append((agent, key))
    return out


class Fleet:
    def __init__(
        self,
        base_url: str,
        snapshot: Callable[[], FlagSet],
        clock: Callable[[], datetime],
        questions: Sequence[str],
        *,
        rate: float,
        seed: int = 4,
    ) -> None:
        self._url, self._snapshot, self._clock = base_url, snapshot, clock
        self._questions = list(questions)
        self._weights = zipf_weights(len(self._questions))
        self.rate = rate
        self.tally = Tally()
        self._rng = random.Random(seed)
        self._sessions: list[tuple[str, str]] = []

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with (
            httpx.AsyncClient(base_url=self._url, timeout=10.0, limits=limits, trust_env=False) as client,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(self._refresh)
            owed = 0.0
            while True:
                owed += min(self.rate, PER_SESSION_RATE * len(self._sessions)) * TICK
                for _ in range(int(owed)):
                    agent, key = self._rng.choice(self._sessions)
                    question = self._rng.choices(self._questions, self._weights)[0]
                    if self._rng.random() < FRESH_SHARE:
                        question = f"{question} ({key}, task {self.tally.sent})"
                    tg.start_soon(self._ask, client, agent, key, question)
                owed -= int(owed)
                await anyio.sleep(TICK)

    async def run_until(self, stop: ProcessEvent, tally: Path) -> None:
        """Run, writing the tally every TALLY_EVERY seconds, until `stop` (a process Event) is set."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.run)
            while not stop.is_set():
                _write(tally, self.tally)
                await anyio.sleep(TALLY_EVERY)
            _write(tally, self.tally)
            tg.cancel_scope.cancel()

    async def _refresh(self) -> None:
        while True:
            self._sessions = in_rollout(self._snapshot(), self._clock())
            await anyio.sleep(REFRESH)

    async def _ask(self, client: httpx.AsyncClient, agent: str, key: str, question: str) -> None:
        t = self.tally
        t.sent += 1
        t.by_agent[agent] = t.by_agent.get(agent, 0) + 1
        try:
            response = await client.post(
                "/v1/retrieve", json={"agent": agent, "targetingKey": key, "query": question, "top_k": 10}
            )
        except httpx.HTTPError:
            t.failed += 1
            return
        if response.status_code == 200:
            body = response.json()
            t.answered += 1
            t.hits += body["cache"] == "hit"
            t.latencies_ms.append(body["latency_ms"])
        elif response.status_code in (403, 503):
            t.refused += 1
        else:
            t.failed += 1


class RegressionSuite:
    """Labelled questions through the retriever; the rolling pass rate pushed to the daemon."""

    def __init__(
        self,
        retriever: Retriever,
        questions: Sequence[Question],
        push: Callable[[float], Awaitable[object]],
        *,
        interval: float,
        per_run: int = 4,
        memory: int = 60,
    ) -> None:
        self._retriever, self._questions, self._push = retriever, list(questions), push
        self.interval, self._per_run = interval, per_run
        self.results: deque[bool] = deque(maxlen=memory)
        self._next = 0

    async def run_once(self) -> float | None:
        for _ in range(self._per_run):
            question = self._questions[self._next % len(self._questions)]
            self._next += 1
            self.results.append(await self._passes(question))
        if not self.results:
            return None
        rate = 100.0 * sum(self.results) / len(self.results)
        await self._push(rate)
        return rate

    async def _passes(self, question: Question) -> bool:
        try:
            answer = await self._retriever.retrieve(question.query, question.namespace, 10, ALL_ON, quiet=True)
        except (RetrievalFailed, NotReady):
            return False
        return bool(set(question.relevant) & {r.id for r in answer.results})

    async def run(self) -> None:
        while True:
            await self.run_once()
            await anyio.sleep(self.interval)
