"""Every public and admin endpoint fuzzed against a real daemon, from its own OpenAPI documents.

schemathesis generates requests from `controller/host/openapi_public.py` and
`controller/host/openapi_admin.py`, schema-valid and schema-violating ones, and this suite
sends them to a real `rolloutd` process (the public TCP port; the admin unix socket).
JSON bodies are sent with every non-ASCII character escaped, so lone surrogates arrive
as the `"\\ud800"` escapes a hostile client would send. After every request:

    - the daemon is alive;
    - no 5xx but the 503/507 the operation documents (a 500 is a bug, whatever its cause);
    - the status, content type and body conform to the document; a request that violates
      the document is rejected with a 4xx (schemathesis's own checks);
    - a rejected request changed nothing: flags.json and the audit log are byte-identical
      (the journal too, on the admin socket); and at the end the memory store holds exactly
      the memories the accepted writes put there.

Hypothesis is derandomized, so `make test` runs the same cases every time; explore new
ones with ROLLOUTD_FUZZ_RANDOM=1 (and ROLLOUTD_FUZZ_EXAMPLES=500 for more a operation).
"""

from __future__ import annotations

import copy
import json
import os
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from controller.host.openapi_admin import admin_document
from controller.host.openapi_public import public_document
from tests.support.daemon_harness import Daemon, write_config
from tests.support.flagfiles import PHASE5_FLAGS, write_seed_flags

REPO = Path(__file__).resolve().parent.parent
# A request the document forbids must get a 4xx the API uses for it: 413 for a body or batch
# over a limit, 403 for a reserved namespace, 404/409/422 where the path or links name nothing.
REJECTIONS = schemathesis.Config.from_dict(
    {
        "checks": {"negative_data_rejection": {"expected-statuses": ["400", "403", "404", "409", "413", "422"]}},
        "output": {"sanitization": {"enabled": False}},  # show the targetingKey that failed, not "[Filtered]"
    }
)
PUBLIC = schemathesis.openapi.from_dict(public_document(), config=REJECTIONS)
ADMIN = schemathesis.openapi.from_dict(admin_document(), config=REJECTIONS)
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance, negative_data_rejection]
FUZZ = settings(
    max_examples=int(os.environ.get("ROLLOUTD_FUZZ_EXAMPLES", "150")),
    deadline=None,
    database=None,
    derandomize=os.environ.get("ROLLOUTD_FUZZ_RANDOM") != "1",
    suppress_health_check=list(HealthCheck),
)
RAW_NAN, RAW_INF, RAW_HUGE = "\x00nan\x00", "\x00inf\x00", "\x00huge\x00"  # markers _raw() swaps for literals
RAW_LITERALS = {RAW_NAN: "NaN", RAW_INF: "-Infinity", RAW_HUGE: "1e999"}
DEEP = re.compile(r'"\\u0000deep([0-9]+)\\u0000"')
# Every caller is in every retrieval flag, so fuzzed agents reach the retriever, not a 403.
ALL_ON = {name: {"enabled": True, "rollout_strategy": "all", "rollout_percentage": 100.0} for name in PHASE5_FLAGS}
SEEDED = [
    {"id": "owner", "text": "Dana Okafor owns ledger-sync."},
    {"id": "release", "text": "Release R-4821 of ledger-sync shipped.", "links": ["owner"]},
]


@dataclass
class Target:
    """A running daemon, a client for one of its listeners, and what the accepted requests did."""

    daemon: Daemon
    client: httpx.Client
    state: Path
    memories: set[tuple[str, str]] = field(default_factory=set)

    def watched(self) -> tuple[bytes, int, str]:
        """What no rejected request may change: flags.json, the audit log's length, the journal's tail."""
        audit = self.state / "audit.jsonl"
        journal = ""
        if self.client.base_url.host == "admin":
            journal = self.client.get("/v1/rollout/journal", params={"limit": 1}).text
        return (self.state / "flags.json").read_bytes(), audit.stat().st_size if audit.exists() else 0, journal


@pytest.fixture(scope="module")
def public(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("fuzz-public")
    write_seed_flags(root, ALL_ON)
    daemon = Daemon(write_config(root)).start()
    with httpx.Client(base_url=daemon.base_url, timeout=30) as client:
        target = Target(daemon, client, root / "state")
        response = client.post("/v1/memories:batch", json={"memories": SEEDED})
        assert response.status_code == 201, response.text
        target.memories |= {("default", m["id"]) for m in SEEDED}
        yield target
    output = daemon.stop()
    assert daemon.proc is not None and daemon.proc.returncode == 0, output
    assert "http.unhandled" not in output and "Traceback" not in output, output
    assert _stored_memories(root / "state") == target.memories


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("fuzz-admin")
    daemon = Daemon(write_config(root, plan=str(REPO / "deploy" / "plans" / "phase5.toml"))).start()
    transport = httpx.HTTPTransport(uds=str(daemon.socket))
    with httpx.Client(transport=transport, base_url="http://admin", timeout=30) as client:
        yield Target(daemon, client, root / "state")
    output = daemon.stop()
    assert daemon.proc is not None and daemon.proc.returncode == 0, output
    assert "http.unhandled" not in output and "Traceback" not in output, output


@PUBLIC.parametrize()
@FUZZ
def test_public_endpoint_survives_anything(case: schemathesis.Case, public: Target) -> None:
    """No public request, valid or hostile, kills the daemon, answers 500 or changes what it rejected."""
    documented = case.operation.definition.raw["responses"]
    response = _send(public, _request(case, public.client), documented)
    if response.status_code < 300:  # noted before the checks, which may fail on a stored write
        _note_memories(case, response, public)
    case.validate_response(response, checks=CHECKS)


@ADMIN.parametrize()
@FUZZ
def test_admin_endpoint_survives_anything(case: schemathesis.Case, admin: Target) -> None:
    """No admin request, valid or hostile, kills the daemon, answers 500 or changes what it rejected."""
    _exchange(case, admin)


def _exchange(case: schemathesis.Case, target: Target) -> httpx.Response:
    documented = case.operation.definition.raw["responses"]
    response = _send(target, _request(case, target.client), documented)
    case.validate_response(response, checks=CHECKS)
    return response


def _send(target: Target, request: httpx.Request, documented: dict[str, object]) -> httpx.Response:
    """Send; the daemon must live, answer no undocumented 5xx, and change nothing it rejects."""
    before = target.watched()
    response = target.client.send(request)
    where = f"{request.method} {request.url.path}"
    assert target.daemon.proc is not None and target.daemon.proc.poll() is None, target.daemon.read_output()[-3000:]
    assert response.status_code < 500 or (
        response.status_code in (503, 507) and str(response.status_code) in documented
    ), f"{where} answered {response.status_code}: {response.text[:500]}"
    if response.status_code >= 400:
        assert target.watched() == before, f"a rejected {where} changed the state"
    return response


def _request(case: schemathesis.Case, client: httpx.Client) -> httpx.Request:
    """The case as httpx sends it; a JSON body with non-ASCII escaped (lone surrogates included)."""
    sent = case.as_transport_kwargs(base_url=str(client.base_url))
    headers = {k: v for k, v in sent["headers"].items() if k.lower() not in ("user-agent",)}
    content: bytes | None = None
    if "json" in sent:
        content = json.dumps(sent["json"]).encode()
        headers["Content-Type"] = "application/json"
    elif "data" in sent:
        content = sent["data"] if isinstance(sent["data"], bytes) else str(sent["data"]).encode()
    return client.build_request(case.method, sent["url"], params=sent.get("params"), headers=headers, content=content)


def _note_memories(case: schemathesis.Case, response: httpx.Response, target: Target) -> None:
    path = case.operation.path
    if path == "/v1/memories":
        target.memories.add((case.body.get("namespace", "default"), response.json()["id"]))
    elif path == "/v1/memories:batch":
        spaces = [m.get("namespace", "default") for m in case.body["memories"]]
        target.memories |= set(zip(spaces, response.json()["ids"], strict=False))
    elif path == "/v1/memories/{memory_id}":
        target.memories.discard(((case.query or {}).get("namespace", "default"), case.path_parameters["memory_id"]))


def _stored_memories(state: Path) -> set[tuple[str, str]]:
    with sqlite3.connect(state / "retrieval" / "graph.sqlite3") as db:
        rows = db.execute("SELECT namespace, id FROM memories WHERE namespace != 'rolloutd-validation'").fetchall()
    return {(namespace, id) for namespace, id in rows}


# -- hostile values anywhere in an otherwise valid body -------------------------------------------
# schemathesis draws strings without lone surrogates and JSON of ordinary depth; what crashed
# rolloutd was exactly those. Here a valid body gets one hostile value (or key) at any place.

MEMORY = {
    "id": "h1",
    "text": "Dana owns ledger-sync.",
    "namespace": "default",
    "links": ["owner"],
    "metadata": {"team": "ledger", "n": 1},
}
PUBLIC_BODIES = {
    "/ofrep/v1/evaluate/flags/hybrid_rag_enabled": {"context": {"targetingKey": "t-1", "agent": "QA"}},
    "/ofrep/v1/evaluate/flags": {"context": {"targetingKey": "t-1", "agent": "QA", "tier": 2}},
    "/v1/retrieve": {
        "agent": "QA",
        "query": "who owns ledger-sync",
        "top_k": 3,
        "namespace": "default",
        "targetingKey": "t-1",
        "context": {"team": "a"},
    },
    "/v1/memories": MEMORY,
    "/v1/memories:batch": {"memories": [MEMORY, {"text": "Release R-1 of ledger-sync."}]},
}
ADMIN_BODIES = {
    "/v1/flags/hybrid_rag_enabled": {"percentage": 1, "reason": "fuzz", "actor": "fuzzer"},
    "/v1/flags-restore": {"backup": "flags.x.json", "reason": "fuzz", "actor": "fuzzer"},
    "/v1/rollout/hold": {"reason": "fuzz", "actor": "fuzzer"},
    "/v1/rollout/rollback": {"to": 0, "reason": "fuzz", "actor": "fuzzer"},
    "/v1/rollout/resume": {"reason": "fuzz", "clear_emergency": False},
    "/v1/signals/regression_pass_rate": {"value": 99.5},
    "/v1/emergency-stop": {"reason": "fuzz", "actor": "fuzzer"},
}
SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
HOSTILE = st.one_of(
    st.text(st.one_of(SURROGATES, st.characters()), min_size=1).filter(
        lambda t: any(0xD800 <= ord(c) <= 0xDFFF for c in t)
    ),
    st.integers().filter(lambda n: not -(1 << 63) <= n < (1 << 63)),
    st.integers(min_value=33, max_value=20_000).map(lambda depth: f"\x00deep{depth}\x00"),  # see _raw
    st.sampled_from([RAW_NAN, RAW_INF, RAW_HUGE, "\x00", "x" * 70_000, -0.0, [], {}, None, True, 1.5e308]),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=8,
    ),
)


@st.composite
def hostile_bodies(draw: st.DrawFn, bodies: dict[str, object]) -> tuple[str, object]:
    """(path, body): a valid body with one value replaced, or one key added, somewhere."""
    path = draw(st.sampled_from(sorted(bodies)))
    body = copy.deepcopy(bodies[path])
    spots = list(_containers(body))
    container = draw(st.sampled_from(spots))
    keys = list(range(len(container))) if isinstance(container, list) else list(container)
    value = draw(HOSTILE)
    if isinstance(container, dict) and (not keys or draw(st.booleans())):
        key = draw(st.one_of(st.sampled_from(["\ud800", "a\x00b", "$where", "a.b", ""]), st.text(max_size=8)))
        container[key] = value
    elif keys:
        container[draw(st.sampled_from(keys))] = value
    return path, body


def _containers(value: object) -> Iterator[dict[str, object] | list[object]]:
    if isinstance(value, (dict, list)):
        yield value
        for item in value.values() if isinstance(value, dict) else value:
            yield from _containers(item)


def _raw(body: object) -> bytes:
    """JSON with non-ASCII escaped (so lone surrogates go as escapes) and the raw literals in place:
    NaN, -Infinity, 1e999, and arrays nested N deep (drawn as markers: Hypothesis's own printer
    recurses, so a deep value never exists as a Python object here)."""
    text = json.dumps(body, allow_nan=True)
    for marker, literal in RAW_LITERALS.items():
        text = text.replace(json.dumps(marker), literal)
    return DEEP.sub(lambda m: "[" * int(m.group(1)) + "]" * int(m.group(1)), text).encode()


@given(case=hostile_bodies(PUBLIC_BODIES))
@FUZZ
def test_public_bodies_with_a_hostile_value_are_refused_or_served(public: Target, case: tuple[str, object]) -> None:
    """A lone surrogate, a huge integer, deep nesting or a non-JSON literal anywhere: a 4xx, never a crash."""
    path, body = case
    documented = PUBLIC.raw_schema["paths"][path.replace("hybrid_rag_enabled", "{key}")]["post"]["responses"]
    request = public.client.build_request(
        "POST", path, content=_raw(body), headers={"content-type": "application/json"}
    )
    response = _send(public, request, documented)
    if response.status_code == 201 and isinstance(body, dict):
        answer = response.json()
        memories = body.get("memories", [body])
        spaces = [m.get("namespace", "default") if isinstance(m, dict) else "default" for m in memories]
        public.memories |= set(zip(spaces, answer.get("ids", [answer.get("id")]), strict=False))


@given(case=hostile_bodies(ADMIN_BODIES))
@FUZZ
def test_admin_bodies_with_a_hostile_value_are_refused_or_served(admin: Target, case: tuple[str, object]) -> None:
    """The same on the admin socket: flags, restores, rollout commands, signals, the emergency stop."""
    path, body = case
    template = {
        "/v1/flags/hybrid_rag_enabled": "/v1/flags/{name}",
        "/v1/rollout/hold": "/v1/rollout/{command}",
        "/v1/rollout/rollback": "/v1/rollout/{command}",
        "/v1/rollout/resume": "/v1/rollout/{command}",
        "/v1/signals/regression_pass_rate": "/v1/signals/{name}",
    }.get(path, path)
    documented = ADMIN.raw_schema["paths"][template]["post"]["responses"]
    request = admin.client.build_request("POST", path, content=_raw(body), headers={"content-type": "application/json"})
    _send(admin, request, documented)
