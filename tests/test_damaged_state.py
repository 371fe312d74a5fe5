"""Damaged state files and unusable start-up files: a clear refusal (exit 78, one critical
line naming the file and the remedy), never a new rollout from hour 0, never a traceback,
and nothing on disk changed; on SIGHUP the same files are rejected and the old ones kept.

The real-daemon cases start from one state dir that a real rolloutd rolled out to stage 1
(5%), copied per case; a refused start costs about a second, so cases are grouped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from controller import decide as rules
from controller.plan_load import load_plan
from controller.state_db import SCHEMA, StateDB, state_to_json
from controller.state_file import StateFileError, open_state_file
from tests.support.daemon_harness import Daemon, write_config
from tests.support.plans import ERROR_RATIO, plan_toml, stage
from tests.support.rehearsal import Admin, wait_until

FLAG = "damage_search_enabled"
# 1 plan hour = 1 s: stage 1 falls due a second after the first start, stage 2 never does. One
# built-in guard with silence as a pass, so rounds are clean without traffic.
PLAN = plan_toml(
    name="damage",
    flags=[FLAG],
    guards=[ERROR_RATIO],
    stages=[
        stage("0m", 0),
        stage("1h", 5, ["Builder", "Deploy", "QA"]),
        stage("10000h", 10, ["Builder", "Deploy", "QA"]),
    ],
)
DB = "controller.db"
DEEP_TOML = "[" * 3000 + "]" * 3000
DEEP_JSON = '{"f": ' + "[" * 5000 + "]" * 5000 + "}"
T0 = datetime(2025, 10, 23, 9, tzinfo=UTC)


def set_up(directory: Path) -> Path:
    """A plan (1 plan hour = 1 s; stage 1 at 1h, the next far away) and a config for it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "plan.toml").write_text(PLAN)
    return write_config(directory, plan=str(directory / "plan.toml"), time_scale=3600.0)


def percentage(state: Path) -> float | None:
    return json.loads((state / "flags.json").read_text()).get(FLAG, {}).get("rollout_percentage")


@pytest.fixture(scope="module")
def rolled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory whose state a real rolloutd rolled out to stage 1 (5%) and then stopped."""
    directory = tmp_path_factory.mktemp("rolled")
    daemon = Daemon(set_up(directory)).start()
    try:
        wait_until(lambda: percentage(directory / "state") == 5.0, 60, "stage 1 applied", daemon)
    finally:
        daemon.stop()
    return directory


def copy_of(rolled: Path, tmp_path: Path) -> Path:
    """A fresh copy of the rolled-out state dir and plan, with a config of its own; returns the config."""
    shutil.copytree(rolled / "state", tmp_path / "state")
    return set_up(tmp_path)


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every file under `root` (or `root` itself) and its bytes; flags.lock, rewritten with the pid, aside."""
    if root.is_file():
        return {root.name: root.read_bytes()}
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else "(dir)"
        for p in sorted(root.rglob("*"))
        if p.name != "flags.lock"
    }


def assert_refused(daemon: Daemon, event: str, *fragments: str) -> None:
    """Exit 78 with exactly one critical event, one stderr message holding `fragments`, no traceback, no new rollout."""
    try:
        status = daemon.wait(timeout=30)
    finally:
        daemon.stop()  # one that did not refuse must not outlive the test
    assert status == 78, daemon.output
    critical = [e for e in daemon.events() if e["_priority"] <= 2]
    assert [e["event"] for e in critical] == [event], daemon.output
    said = [line for line in daemon.output.splitlines() if not line.startswith("<")]  # stderr: not a log event
    assert said and said[0].startswith("rolloutd: ") and sum(line.startswith("rolloutd: ") for line in said) == 1
    for fragment in fragments:
        assert fragment in "\n".join(said), said
    assert not any(e["event"] in ("rollout.started", "daemon.crashed") for e in daemon.events())


def sql(statement: str) -> Callable[[Path], None]:
    def damage(state: Path) -> None:
        with closing(sqlite3.connect(state / DB)) as db:
            db.execute(statement)
            db.commit()

    return damage


def truncate_to_half(state: Path) -> None:
    data = (state / DB).read_bytes()
    (state / DB).write_bytes(data[: len(data) // 2])


REMEDY = "restore it from a backup, or move it aside"
DB_DAMAGE = {
    "zero-length": (lambda s: (s / DB).write_bytes(b""), "empty (0 bytes)"),
    "truncated": (truncate_to_half, "SQLite reports it damaged"),
    "garbage": (lambda s: (s / DB).write_bytes(b"\x7fgarbage\x00" * 2048), "is not an SQLite database"),
    "state {}": (sql("UPDATE rollout SET state = '{}'"), "'plan' is missing"),
    "state garbage": (sql("UPDATE rollout SET state = 'not json at all'"), "not JSON"),
}


@pytest.mark.parametrize("case", DB_DAMAGE)
def test_a_damaged_controller_db_stops_start_up_and_is_left_as_it_was(rolled: Path, tmp_path: Path, case: str) -> None:
    """A controller.db that exists but cannot be read is exit 78 naming the file and the remedy, never hour 0."""
    config = copy_of(rolled, tmp_path)
    damage, problem = DB_DAMAGE[case]
    damage(tmp_path / "state")
    before = snapshot(tmp_path / "state")
    assert_refused(Daemon(config).start(wait=False), "state.unusable", str(tmp_path / "state" / DB), problem, REMEDY)
    assert snapshot(tmp_path / "state") == before
    assert percentage(tmp_path / "state") == 5.0


def _flags_dir(directory: Path) -> None:
    (directory / "state" / "flags.json").unlink()
    (directory / "state" / "flags.json").mkdir()


def _state_dir_file(directory: Path) -> None:
    shutil.rmtree(directory / "state")
    (directory / "state").write_text("not a directory\n")


def _append(name: str, text: str) -> Callable[[Path], None]:
    def damage(directory: Path) -> None:
        with (directory / name).open("a") as handle:
            handle.write(text)

    return damage


def _deep_plan(directory: Path) -> None:
    plan = directory / "plan.toml"
    plan.write_text(plan.read_text().replace('guard_interval = "5m"', f"guard_interval = {DEEP_TOML}"))


def _deep_labelled_set(directory: Path) -> None:
    (directory / "set.jsonl").write_text(DEEP_JSON + "\n")
    _append("rolloutd.toml", f'[retrieval]\nlabelled_set = "{directory / "set.jsonl"}"\n')(directory)


START_FAILURES = {
    "flags.json is a directory": (_flags_dir, "flags.invalid", ("flags.json", "is a directory")),
    "state_dir is a file": (_state_dir_file, "state_dir.unusable", ("state_dir", "is a file, not a directory")),
    "deeply nested config": (
        _append("rolloutd.toml", f"[retrieval]\nhops = {DEEP_TOML}\n"),
        "config.invalid",
        ("rolloutd.toml", "nested too deeply"),
    ),
    "deeply nested plan": (_deep_plan, "rollout.cannot_start", ("plan.toml", "nested too deeply")),
    "deeply nested flags.json": (
        lambda d: (d / "state" / "flags.json").write_text(DEEP_JSON),
        "flags.invalid",
        ("flags.json", "nested too deeply"),
    ),
    "prometheus url not a url": (
        _append("rolloutd.toml", '[prometheus]\nurl = "not a url"\n'),
        "config.invalid",
        ("[prometheus] url", "http://127.0.0.1:9090"),
    ),
    "deeply nested labelled set": (
        _deep_labelled_set,
        "retrieval.labelled_set_invalid",
        ("set.jsonl:1", "nested too deeply"),
    ),
    "admin socket's directory is a file": (
        lambda d: (d / "run").write_text("x\n"),
        "listen.failed",
        ("admin socket's directory", "[daemon] admin_socket"),
    ),
}


@pytest.mark.parametrize("case", START_FAILURES)
def test_an_unusable_file_at_start_is_exit_78_with_one_clear_line(rolled: Path, tmp_path: Path, case: str) -> None:
    """A file rolloutd cannot use at start is one critical event and one stderr line naming it, exit 78."""
    config = copy_of(rolled, tmp_path)
    damage, event, fragments = START_FAILURES[case]
    damage(tmp_path)
    before = snapshot(tmp_path / "state")
    assert_refused(Daemon(config).start(wait=False), event, *fragments)
    assert snapshot(tmp_path / "state") == before


def test_sighup_rejects_deeply_nested_files_and_keeps_the_old_ones(rolled: Path, tmp_path: Path) -> None:
    """A reopened state dir resumes at 5%; SIGHUP with deep config, plan and flags.json rejects all three, alive."""
    config = copy_of(rolled, tmp_path)
    daemon = Daemon(config).start()
    try:
        admin = Admin(daemon.socket)
        assert (admin.status()["stage"], admin.status()["percentage"]) == (1, 5.0)
        good_config, good_plan = config.read_text(), (tmp_path / "plan.toml").read_text()
        flags = (tmp_path / "state" / "flags.json").read_bytes()
        _append("rolloutd.toml", f"[retrieval]\nhops = {DEEP_TOML}\n")(tmp_path)
        _deep_plan(tmp_path)
        (tmp_path / "state" / "flags.json").write_text(DEEP_JSON)
        daemon.signal(signal.SIGHUP)
        rejected = ("config.reload_rejected", "plan.reload_rejected", "flags.reload_rejected")
        wait_until(lambda: {e["event"] for e in daemon.events()} >= set(rejected), 30, "three rejections", daemon)
        (tmp_path / "plan.toml").write_text(good_plan)
        (tmp_path / "state" / "flags.json").write_bytes(flags)
        config.write_text(good_config + '[prometheus]\nurl = "localhost:9090"\n')
        daemon.signal(signal.SIGHUP)
        wait_until(
            lambda: sum(e["event"] == "config.reload_rejected" for e in daemon.events()) == 2,
            30,
            "the bad prometheus url rejected",
            daemon,
        )
        assert httpx.get(daemon.base_url + "/readyz", timeout=10).status_code == 200
        assert (admin.status()["stage"], admin.status()["percentage"]) == (1, 5.0)
        assert admin.status()["guard_interval"] == "5m", "the running plan is kept"
        response = httpx.post(
            f"{daemon.base_url}/ofrep/v1/evaluate/flags/{FLAG}",
            timeout=10,
            json={"context": {"targetingKey": "k", "agent": "Builder"}},
        )
        assert response.status_code == 200, "the old flags stay in force"
    finally:
        output = daemon.stop()
    assert daemon.proc is not None and daemon.proc.returncode == 0, output
    events = daemon.events()
    assert not any(e["event"] in ("rollout.started", "daemon.crashed") for e in events)
    problems = [str(e.get("problem") or e.get("problems")) for e in events if e["event"].endswith("reload_rejected")]
    assert sum("nested too deeply" in p for p in problems) == 3 and "[prometheus] url" in problems[-1], problems


# -- StateDB directly ------------------------------------------------------------------------


def started_state_json() -> str:
    plan = load_plan(Path(__file__).resolve().parents[1] / "deploy" / "plans" / "phase5.toml")
    return json.dumps(state_to_json(rules.start(plan, T0)))


def test_a_database_created_the_way_older_rolloutd_did_opens(tmp_path: Path) -> None:
    """A controller.db built in place (tables still only in its WAL, no observations table) opens and loads."""
    live, copy = tmp_path / "live", tmp_path / "copy"
    live.mkdir()
    copy.mkdir()
    legacy_schema = SCHEMA.split("CREATE TABLE IF NOT EXISTS observations")[0]
    with closing(sqlite3.connect(live / DB, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(legacy_schema)
        db.execute(
            "INSERT INTO rollout VALUES (1, 'phase5_hybrid_rag', 'x', ?, ?)", (started_state_json(), T0.isoformat())
        )
        for name in (DB, DB + "-wal"):  # what a SIGKILL leaves: nothing checkpointed yet
            shutil.copy(live / name, copy / name)
    assert (copy / (DB + "-wal")).stat().st_size > 0
    state_db = StateDB(copy)
    try:
        state = state_db.load()
        assert state is not None and state.plan == "phase5_hybrid_rag" and state.started_at == T0
        assert state_db.observations() == [], "the observations table is added"
    finally:
        state_db.close()


def _foreign(state: Path) -> None:
    with closing(sqlite3.connect(state / DB)) as db:
        db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        db.commit()


def _journal_without_state(state: Path) -> None:
    StateDB(state).close()
    sql(
        "INSERT INTO journal (at, action, stage, percentage, reason, decision, status) "
        "VALUES ('2025-10-23T09:00:00+00:00', 'stage_applied', 1, 5, 'r', '{}', 'done')"
    )(state)


def _state_lacking(field: str) -> Callable[[Path], None]:
    def damage(state: Path) -> None:
        StateDB(state).close()
        raw = json.loads(started_state_json())
        del raw[field]
        with closing(sqlite3.connect(state / DB)) as db:
            db.execute("INSERT INTO rollout VALUES (1, 'p', 'd', ?, 'now')", (json.dumps(raw),))
            db.commit()

    return damage


def _intent_garbage(state: Path) -> None:
    _state_lacking("verdicts")(state)  # an optional field: the state itself is fine
    sql(
        "INSERT INTO journal (at, action, stage, percentage, reason, decision, status) "
        "VALUES ('2025-10-23T09:00:00+00:00', 'stage_applied', 1, 5, 'r', '[1, 2]', 'intent')"
    )(state)


def _orphaned_wal(state: Path) -> None:
    (state / (DB + "-wal")).write_bytes(b"\x37\x7f\x06\x82" + b"\x00" * 60)


UNIT_DAMAGE = {
    "SQLite but not ours": (_foreign, "not rolloutd's: no table journal, rollout (tables found: notes)"),
    "journal without a state": (_journal_without_state, "1 journal entries but no rollout state"),
    "state lacking a field": (_state_lacking("phase"), "'phase' is missing"),
    "an intent that is not an object": (_intent_garbage, "journal entry 1 is not a rolloutd record: a JSON list"),
    "a directory": (lambda s: (s / DB).mkdir(), "is not a regular file"),
    "missing beside its WAL": (_orphaned_wal, "is missing, but controller.db-wal (64 bytes)"),
}


@pytest.mark.parametrize("case", UNIT_DAMAGE)
def test_state_db_refuses_a_state_file_it_cannot_trust_and_changes_nothing(tmp_path: Path, case: str) -> None:
    """Every kind of damage found on open or on the first reads is a StateFileError naming it; no byte changes."""
    damage, problem = UNIT_DAMAGE[case]
    damage(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(StateFileError) as caught:
        state_db = StateDB(tmp_path)
        try:
            state_db.load()
            state_db.pending()
        finally:
            state_db.close()
    assert problem in caught.value.problem and str(tmp_path / DB) in str(caught.value)
    assert snapshot(tmp_path) == before


def test_creation_is_all_or_nothing(tmp_path: Path) -> None:
    """A new controller.db appears whole, with its schema, or not at all; stale temp files are swept."""
    (tmp_path / f".{DB}.killed.tmp").write_bytes(b"half a database")
    with pytest.raises(StateFileError, match="cannot create it"):
        open_state_file(tmp_path / DB, "CREATE TABLE IF NOT EXISTS broken (")
    assert sorted(os.listdir(tmp_path)) == [], "no controller.db, no temp file left behind"
    db = open_state_file(tmp_path / DB, SCHEMA)
    db.close()
    with closing(sqlite3.connect(tmp_path / DB)) as check:
        tables = {r[0] for r in check.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"rollout", "journal", "observations"} <= tables
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []
