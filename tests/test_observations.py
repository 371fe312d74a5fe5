"""The guard history: every round's observations kept durably (controller/state_db.py),
bounded, written in the round's own transaction, and served on the admin API
(GET /v1/rollout/observations; GET /v1/rollout/journal?before= to page back).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from controller import decide as rules
from controller.guards import Observation, Outcome
from controller.host.admin_api import build_admin_app
from controller.host.public_http import Readiness
from controller.host.rollout_api import rollout_routes
from controller.plan import Severity
from controller.state_db import StateDB
from tests.support.service_rig import PHASE5, T0, Rig, rigs  # noqa: F401  (rigs is a fixture)

pytestmark = pytest.mark.anyio


def observation(
    guard: str,
    minute: int,
    value: float | None = 0.1,
    outcome: Outcome = Outcome.PASS,
    severity: Severity | None = None,
    detail: str = "",
) -> Observation:
    return Observation(guard, outcome, T0 + timedelta(minutes=minute), value=value, severity=severity, detail=detail)


def test_staged_observations_are_written_by_the_next_record_and_read_back_in_order(tmp_path: Path) -> None:
    """stage_observations writes nothing by itself; the next record() writes them with the state,
    and observations() returns them oldest first, by guard, after a seq, up to a limit."""
    db = StateDB(tmp_path)
    state = rules.start(PHASE5, T0)
    db.stage_observations([observation("p95", 0), observation("errors", 0, None, Outcome.ERROR, detail="refused")])
    assert db.observations() == []
    db.record(state, (), T0)
    db.stage_observations([observation("p95", 5, 0.35, Outcome.BREACH, Severity.CRITICAL, "p95 0.35 > critical 0.3")])
    db.record(state, (), T0)
    rows = db.observations()
    assert [(r["guard"], r["outcome"], r["value"], r["severity"]) for r in rows] == [
        ("p95", "pass", 0.1, None),
        ("errors", "error", None, None),
        ("p95", "breach", 0.35, "critical"),
    ]
    assert rows[0]["at"] == "2025-10-23T09:00:00Z" and rows[0]["detail"] is None
    assert rows[1]["detail"] == "refused" and rows[2]["detail"] == "p95 0.35 > critical 0.3"
    assert [r["seq"] for r in db.observations(guard="p95")] == [rows[0]["seq"], rows[2]["seq"]]
    assert db.observations(since_seq=rows[0]["seq"], limit=1) == [rows[1]]
    db.record(state, (), T0)
    assert len(db.observations()) == 3, "a record with nothing staged writes no observation twice"
    db.close()


def test_the_history_keeps_only_the_newest_rows(tmp_path: Path) -> None:
    """Past keep_observations rows the oldest go, in the same transaction, and seqs keep growing."""
    db = StateDB(tmp_path, keep_observations=10)
    for minute in range(0, 60, 5):
        db.record_observations([observation("a", minute), observation("b", minute)])
    rows = db.observations(limit=100)
    assert len(rows) == 10
    assert [r["seq"] for r in rows] == list(range(15, 25))
    assert rows[0]["at"] == "2025-10-23T09:35:00Z"
    db.close()
    reopened = StateDB(tmp_path, keep_observations=10)
    reopened.record_observations([observation("a", 60)])
    assert [r["seq"] for r in reopened.observations(limit=100)][-1] == 25
    assert len(reopened.observations(limit=100)) == 10
    reopened.close()


async def test_every_guard_round_is_recorded_with_its_plan_time(rigs) -> None:  # noqa: F811
    """Controller.evaluate records each guard's observation of each round, breaches with their severity."""
    rig: Rig = rigs()
    await rig.controller.open()
    await rig.at(0, 4)
    rig.source.guards["p95_latency"] = 0.35
    await rig.at(4 + 5 / 60)
    rows = rig.controller.observations(limit=1000)
    names = [g.name for g in PHASE5.guards]
    assert len(rows) == 3 * len(names)
    assert [r["guard"] for r in rows] == names * 3
    assert {r["at"] for r in rows[-len(names) :]} == {"2025-10-23T13:05:00Z"}
    p95 = [r for r in rows if r["guard"] == "p95_latency"]
    assert [(r["outcome"], r["severity"]) for r in p95] == [("pass", None), ("pass", None), ("breach", "critical")]
    assert p95[-1]["value"] == 0.35


class Admin:
    def __init__(self, rig: Rig) -> None:
        app = build_admin_app(
            rig.store, rig.clock, Readiness(), {"listen": "test"}, extra_routes=rollout_routes(rig.controller)
        )
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://rolloutd"
        )


@pytest.fixture
async def admin(rigs) -> AsyncIterator[Admin]:  # noqa: F811
    """The admin app over a phase5 rollout after three guard rounds."""
    rig = rigs()
    await rig.controller.open()
    await rig.at(0, 4, 4 + 5 / 60)
    await rig.controller.command("hold", reason="look", actor="alice")
    admin = Admin(rig)
    async with admin.http:
        yield admin


async def test_the_observations_route_pages_forward_and_filters_by_guard(admin: Admin) -> None:
    """GET /v1/rollout/observations: oldest first; ?since=SEQ&limit=N pages on; ?guard=NAME filters."""
    everything = (await admin.http.get("/v1/rollout/observations")).json()["observations"]
    assert len(everything) == 3 * len(PHASE5.guards)
    page = await admin.http.get("/v1/rollout/observations", params={"since": everything[1]["seq"], "limit": 2})
    assert page.json()["observations"] == everything[2:4]
    one = (await admin.http.get("/v1/rollout/observations", params={"guard": "error_rate"})).json()["observations"]
    assert [r["guard"] for r in one] == ["error_rate"] * 3
    gone = (await admin.http.get("/v1/rollout/observations", params={"guard": "no_such_guard"})).json()
    assert gone == {"observations": []}


@pytest.mark.parametrize(
    "query, starts",
    [
        ("limit=x", "limit must be an integer"),
        ("since=-1", "since must be an integer"),
        ("limit=0", "limit must be 1 to 10000"),
        ("limit=10001", "limit must be 1 to 10000"),
        ("guard=", "guard must name a guard"),
    ],
)
async def test_a_bad_observations_query_is_400(admin: Admin, query: str, starts: str) -> None:
    """A malformed since, limit or guard is a 400 naming it."""
    answer = await admin.http.get(f"/v1/rollout/observations?{query}")
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"].startswith(starts), answer.json()


async def test_the_journal_pages_back_to_its_first_decision(admin: Admin) -> None:
    """GET /v1/rollout/journal?before=SEQ&limit=N: the newest N before SEQ, oldest first."""
    everything = (await admin.http.get("/v1/rollout/journal")).json()["decisions"]
    assert [d["action"] for d in everything] == ["stage_applied", "stage_applied", "hold"]
    newest = (await admin.http.get("/v1/rollout/journal", params={"limit": 1})).json()["decisions"]
    older = (await admin.http.get("/v1/rollout/journal", params={"limit": 1, "before": newest[0]["seq"]})).json()
    oldest = (await admin.http.get("/v1/rollout/journal", params={"limit": 5, "before": everything[1]["seq"]})).json()
    assert (newest, older["decisions"], oldest["decisions"]) == (everything[2:], everything[1:2], everything[:1])
    bad = await admin.http.get("/v1/rollout/journal?before=x")
    assert bad.status_code == 400 and bad.json()["error"].startswith("before must be an integer")
