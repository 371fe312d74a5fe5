"""The rollout's admin routes (controller/host/rollout_api.py) in the real admin app, over ASGI.

The Controller behind them is real (tests/support/service_rig.py: a simulated clock, a real
StateDB and FlagStore); only the transport is in-process. What is proved: the status
fields rolloutctl prints, every bad request a 400 naming its field, every refused
command a 409 with the controller's reason, a daemon without a plan a 409 naming the
setting, and the reports and journal routes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from controller.host.admin_api import build_admin_app
from controller.host.public_http import Readiness
from controller.host.rollout_api import rollout_routes
from controller.service import Controller
from tests.support.service_rig import FIRST_COHORT, PHASE5, Rig, rigs  # noqa: F401  (rigs is a fixture)

pytestmark = pytest.mark.anyio


class Admin:
    """The admin app over an in-process ASGI transport, and how often it said the plan's timing changed."""

    def __init__(self, controller: Controller | None, store: Any, clock: Any) -> None:
        self.changes = 0
        routes = rollout_routes(controller, on_change=self._changed)
        emergency = controller.emergency_stop if controller else None
        app = build_admin_app(store, clock, Readiness(), {"listen": "test"}, emergency=emergency, extra_routes=routes)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # a 500 is an answer, as over the socket
        self.http = httpx.AsyncClient(transport=transport, base_url="http://rolloutd")

    def _changed(self) -> None:
        self.changes += 1

    async def command(self, name: str, **body: Any) -> httpx.Response:
        return await self.http.post(f"/v1/rollout/{name}", json=body)


@pytest.fixture
async def rig(rigs) -> Rig:  # noqa: F811
    """The phase5 rollout at its 4h stage (5% of Builder, Deploy, QA), guards healthy."""
    rig = rigs()
    await rig.controller.open()
    await rig.at(0, 4)
    return rig


@pytest.fixture
async def admin(rig: Rig) -> AsyncIterator[Admin]:
    admin = Admin(rig.controller, rig.store, rig.clock)
    async with admin.http:
        yield admin


# -- status ------------------------------------------------------------------------------------


async def test_status_has_the_fields_rolloutctl_prints(admin: Admin, rig: Rig) -> None:
    """GET /v1/rollout: rollout, phase, stage, percentage, agents, next transition, emergency and every guard."""
    response = await admin.http.get("/v1/rollout")
    assert response.status_code == 200
    status = response.json()
    assert (status["rollout"], status["phase"], status["stage"], status["percentage"]) == (
        PHASE5.name,
        "running",
        1,
        5.0,
    )
    assert status["agents"] == FIRST_COHORT
    assert status["next_transition"] == PHASE5.stages[2].name
    assert status["next_transition_at"] == "2025-10-23T21:00:00Z"
    assert status["emergency"] is False
    guards = {g["name"]: g for g in status["guards"]}
    assert list(guards) == [g.name for g in PHASE5.guards]
    p95 = guards["p95_latency"]
    assert (p95["verdict"], p95["value"], p95["threshold"], p95["consecutive_breaches"]) == ("pass", 0.1, 0.2, 0)


async def test_status_has_the_plans_timeline(admin: Admin, rig: Rig) -> None:
    """GET /v1/rollout: every stage (hour, percentage, cohort, applied or not), checkpoint hours, the plan's last hour."""
    status = (await admin.http.get("/v1/rollout")).json()
    assert [(s["at_hours"], s["percentage"], s["applied"]) for s in status["stages"]] == [
        (0, 0, True),
        (4, 5, True),
        (12, 10, False),
        (49, 15, False),
        (52, 20, False),
        (56, 25, False),
    ]
    assert status["stages"][1]["agents"] == FIRST_COHORT
    assert status["stages"][2]["plan_at"] == "2025-10-23T21:00:00Z"
    assert status["stages"][2]["name"] == PHASE5.stages[2].name == status["next_transition"]
    assert [c["at_hours"] for c in status["checkpoints"]] == [24, 48, 72]
    assert status["plan_hours"] == 72


async def test_status_shows_a_breach_with_its_threshold_and_count(admin: Admin, rig: Rig) -> None:
    """A guard breaching at warning shows its value, the warning threshold and one consecutive breach."""
    rig.source.guards["p95_latency"] = 0.25
    await rig.at(4 + 5 / 60)
    p95 = next(g for g in (await admin.http.get("/v1/rollout")).json()["guards"] if g["name"] == "p95_latency")
    assert (p95["verdict"], p95["severity"], p95["value"], p95["threshold"], p95["consecutive_breaches"]) == (
        "breach",
        "warning",
        0.25,
        0.2,
        1,
    )


# -- commands --------------------------------------------------------------------------------


async def test_hold_then_resume_answer_with_the_decisions_and_the_new_status(admin: Admin) -> None:
    """A successful command returns its decisions and the status after it, and wakes the scheduler."""
    held = await admin.command("hold", reason="dashboards are red", actor="alice")
    assert held.status_code == 200, held.text
    body = held.json()
    assert [d["action"] for d in body["decisions"]] == ["hold"]
    held_decision = body["decisions"][0]
    assert (held_decision["reason"], held_decision["actor"]) == ("dashboards are red", "alice")
    assert held_decision["trigger"] == {"kind": "operator", "detail": "hold"}
    assert body["status"]["phase"] == "holding"
    assert body["status"]["hold_reason"] == "operator: alice: dashboards are red"
    resumed = await admin.command("resume", actor="alice")
    assert resumed.status_code == 200 and resumed.json()["status"]["phase"] == "running"
    assert admin.changes == 2


async def test_rollback_to_a_stage_index(admin: Admin, rig: Rig) -> None:
    """POST rollback {"to": 0} rolls back to the 0% stage."""
    answer = await admin.command("rollback", to=0, reason="bad answers", actor="carol")
    assert answer.status_code == 200, answer.text
    assert (answer.json()["status"]["phase"], answer.json()["status"]["percentage"]) == ("rolled_back", 0.0)
    assert rig.controller.state.stage == 0


async def test_emergency_stop_goes_through_the_controller(admin: Admin) -> None:
    """POST /v1/emergency-stop with a rollout running puts the rollout in EMERGENCY, not only the kill switch on."""
    answer = await admin.http.post("/v1/emergency-stop", json={"reason": "fire", "actor": "dave"})
    assert answer.status_code == 200 and answer.json() == {"kill_switch": True}
    status = (await admin.http.get("/v1/rollout")).json()
    assert (status["phase"], status["emergency"], status["percentage"]) == ("emergency", True, 0.0)


@pytest.mark.parametrize(
    "command, body, names",
    [
        ("rollback", {"reason": "r"}, ['"to"', "None"]),
        ("rollback", {"reason": "r", "to": "1"}, ['"to"', "'1'"]),
        ("rollback", {"reason": "r", "to": True}, ['"to"', "True"]),
        ("rollback", {"reason": "r", "to": 1.0}, ['"to"', "1.0"]),
        ("resume", {"clear_emergency": "yes"}, ["clear_emergency", "'yes'"]),
        ("hold", {}, ["reason"]),
        ("hold", {"reason": "   "}, ["reason"]),
        ("rollback", {"to": 0}, ["reason"]),
    ],
)
async def test_bad_command_bodies_are_400_naming_the_field(
    admin: Admin, rig: Rig, command: str, body: dict[str, Any], names: list[str]
) -> None:
    """A body with a missing or mistyped field is a 400 that names the field and what was sent; nothing changes."""
    before = rig.controller.state
    answer = await admin.command(command, **body)
    assert answer.status_code == 400, answer.text
    for name in names:
        assert name in answer.json()["error"]
    assert rig.controller.state == before


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"{not json", "request body is not JSON"),
        (b"[1, 2]", "request body must be a JSON object"),
    ],
)
async def test_a_body_that_is_not_a_json_object_is_400(admin: Admin, content: bytes, expected: str) -> None:
    """Garbage or a JSON array as the body is a 400 saying so."""
    answer = await admin.http.post("/v1/rollout/hold", content=content)
    assert answer.status_code == 400 and expected in answer.json()["error"]


async def test_an_unknown_command_is_400_listing_the_commands(admin: Admin) -> None:
    """POST /v1/rollout/launch is a 400 listing the commands there are."""
    answer = await admin.command("launch", reason="r")
    assert answer.status_code == 400
    assert answer.json()["error"] == "unknown command 'launch'; commands: hold, resume, approve, promote, rollback"


@pytest.mark.parametrize(
    "command, body, reason",
    [
        ("approve", {}, "no checkpoint is waiting for approval: the rollout is running"),
        ("resume", {}, "nothing to resume: the rollout is running"),
        ("rollback", {"to": 3, "reason": "r"}, "stage 3 is ahead of the applied stage 1; use `promote` to advance"),
        ("rollback", {"to": -2, "reason": "r"}, "no stage -2: stages are 0-5"),
    ],
)
async def test_refused_commands_are_409_with_the_reason(
    admin: Admin, command: str, body: dict[str, Any], reason: str
) -> None:
    """A command the phase does not allow is a 409 carrying the controller's reason, and no change is announced."""
    answer = await admin.command(command, **body)
    assert answer.status_code == 409
    assert answer.json() == {"error": reason}
    assert admin.changes == 0


async def test_resume_during_an_emergency_needs_clear_emergency(admin: Admin) -> None:
    """In an emergency, resume is a 409 naming --clear-emergency; with clear_emergency true it is accepted."""
    await admin.http.post("/v1/emergency-stop", json={"reason": "fire", "actor": "dave"})
    refused = await admin.command("resume")
    assert refused.status_code == 409 and "--clear-emergency" in refused.json()["error"]
    cleared = await admin.command("resume", clear_emergency=True, reason="fixed")
    assert cleared.status_code == 200
    assert [d["action"] for d in cleared.json()["decisions"]] == ["emergency_cleared"]
    assert cleared.json()["status"]["kill_switch"] is False


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("GET", "/v1/rollout", None),
        ("GET", "/v1/rollout/journal", None),
        ("POST", "/v1/rollout/hold", {"reason": "r"}),
        ("POST", "/v1/rollout/promote", {}),
        ("GET", "/v1/reports", None),
        ("GET", "/v1/reports/checkpoint-1", None),
    ],
)
async def test_without_a_plan_every_rollout_route_is_409_naming_the_setting(
    rig: Rig, method: str, path: str, body: dict[str, Any] | None
) -> None:
    """A daemon that runs no rollout answers 409 and says to set [daemon] plan."""
    admin = Admin(None, rig.store, rig.clock)
    async with admin.http:
        answer = await admin.http.request(method, path, json=body)
    assert answer.status_code == 409
    assert "[daemon] plan" in answer.json()["error"]


# -- reports and journal -----------------------------------------------------------------------


async def test_reports_are_listed_and_fetched_by_name_or_stem(admin: Admin, rig: Rig) -> None:
    """After the 24h checkpoint its report is listed, and fetched by file name or by name without .json."""
    assert (await admin.http.get("/v1/reports")).json() == {"reports": []}
    await rig.at(12, 24)
    names = (await admin.http.get("/v1/reports")).json()["reports"]
    assert names == ["checkpoint-1-day-1-checkpoint-24-hours.json"]
    by_name = await admin.http.get(f"/v1/reports/{names[0]}")
    by_stem = await admin.http.get("/v1/reports/checkpoint-1-day-1-checkpoint-24-hours")
    assert by_name.status_code == by_stem.status_code == 200
    assert by_name.json() == by_stem.json()
    assert (by_name.json()["checkpoint"], by_name.json()["recommendation"]) == (PHASE5.checkpoints[0].name, "GO")
    assert (await admin.http.get("/v1/rollout")).json()["reports"] == names


async def test_an_unknown_report_is_404_saying_how_to_list_them(admin: Admin) -> None:
    """GET /v1/reports/NAME for no such report is a 404 naming it and `rolloutctl report`."""
    answer = await admin.http.get("/v1/reports/checkpoint-9-nothing")
    assert answer.status_code == 404
    assert answer.json()["error"] == "no report 'checkpoint-9-nothing'; `rolloutctl report` lists them"


async def test_journal_lists_decisions_oldest_first_and_since_a_sequence(admin: Admin, rig: Rig) -> None:
    """The journal holds every decision in order; ?since=SEQ returns only the later ones."""
    await admin.command("hold", reason="look first", actor="alice")
    everything = (await admin.http.get("/v1/rollout/journal")).json()["decisions"]
    assert [(d["action"], d["stage"]) for d in everything] == [("stage_applied", 0), ("stage_applied", 1), ("hold", 1)]
    assert [d["seq"] for d in everything] == sorted(d["seq"] for d in everything)
    assert all(d["status"] == "done" for d in everything)
    later = (await admin.http.get("/v1/rollout/journal", params={"since": everything[0]["seq"]})).json()["decisions"]
    assert later == everything[1:]
    limited = (await admin.http.get("/v1/rollout/journal", params={"limit": 1})).json()["decisions"]
    assert len(limited) == 1


@pytest.mark.parametrize(
    "query, field",
    [
        ("limit=x", "limit"),
        ("since=1.5", "since"),
        ("limit=", "limit"),
        ("limit=--5", "limit"),
        ("since=%C2%B2", "since"),  # "²": str.isdigit() is true, int() refuses it
        ("limit=99999999999999999999", "limit"),  # past SQLite's 64-bit INTEGER
    ],
)
async def test_a_journal_query_that_is_not_an_integer_is_400(admin: Admin, query: str, field: str) -> None:
    """?limit=x (or a fractional since) is a 400 naming the parameter and the value."""
    answer = await admin.http.get(f"/v1/rollout/journal?{query}")
    assert answer.status_code == 400
    assert answer.json()["error"].startswith(f"{field} must be an integer, got ")
