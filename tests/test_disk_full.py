"""The emergency wins over a full disk (issue 11, item 5).

The store and the controller are tested with ENOSPC injected at the file layer (`FullDisk`:
`os.write` to any file under state_dir fails, and so does `os.pwrite` past a file's end,
as on a real full disk, while a rewrite in place succeeds) and SQLite's "database or disk
is full" injected by `FullDB`. The daemon is tested end to end on a real, small tmpfs as
its state_dir, filled up by a file of zeros (skipped where tmpfs cannot be mounted).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from controller.decide import Decision, Phase, RolloutState
from controller.state_db import StateDB
from deploy.client import error_message
from flags import emergency
from flags.emergency import Marker
from flags.errors import StorageError
from flags.model import KILL_SWITCH, Flag, Strategy
from flags.store import FlagStore
from tests.support.daemon_harness import Daemon, write_config
from tests.support.plans import ERROR_RATIO, plan_toml, stage
from tests.support.rehearsal import Admin, rolloutctl, wait_until
from tests.support.service_rig import PHASE5, Rig, actions, read_flags, rigs  # noqa: F401  (rigs: a fixture)

IN_COHORT = {"targetingKey": "task-7", "agent": "Builder"}
WAIT = 30.0


class FullDisk:
    """ENOSPC for every write under `root` that needs a new block, while `full` is set."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root, self.full = root.resolve(), False
        real_write, real_pwrite = os.write, os.pwrite

        def write(fd: int, data: Any) -> int:
            self._refuse(fd)
            return real_write(fd, data)

        def pwrite(fd: int, data: Any, offset: int) -> int:
            if offset + len(data) > os.fstat(fd).st_size:
                self._refuse(fd)
            return real_pwrite(fd, data, offset)

        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "pwrite", pwrite)

    def _refuse(self, fd: int) -> None:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return
        if self.full and target.startswith(f"{self.root}/"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FullDB(StateDB):
    """A StateDB whose writes fail as SQLite's do on a full disk, while `disk.full` is set."""

    def __init__(self, state_dir: Path, disk: FullDisk) -> None:
        super().__init__(state_dir)
        self.disk = disk

    def _refuse(self) -> None:
        if self.disk.full:
            raise sqlite3.OperationalError("database or disk is full")

    def record(self, state: RolloutState, decisions: tuple[Decision, ...], now: datetime) -> list[int]:
        self._refuse()
        return super().record(state, decisions, now)

    def complete(self, ids: list[int]) -> None:
        self._refuse()
        super().complete(ids)


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FullDisk:
    return FullDisk(tmp_path, monkeypatch)


def until(check: Callable[[], bool], timeout: float = WAIT) -> None:
    """Wait (bounded) for `check()`; the store's retry runs in a thread of its own."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not true within {timeout}s"
        time.sleep(0.01)


def plan_flags_off(store: FlagStore) -> bool:
    return all(not store.snapshot.evaluate(name, IN_COHORT, datetime.now().astimezone()).value for name in PHASE5.flags)


def rolled_out(name: str) -> Flag:
    return Flag(name=name, enabled=True, rollout_strategy=Strategy.PERCENTAGE, rollout_percentage=100.0)


def seeded(state_dir: Path) -> FlagStore:
    store = FlagStore.open(state_dir)
    store.apply({n: rolled_out(n) for n in PHASE5.flags}, actor="test", reason="seed")
    return store


def marker_on_disk(state_dir: Path) -> Marker:
    return emergency.decode((state_dir / emergency.FILE).read_bytes())


def files(state_dir: Path) -> tuple[bytes, bytes, list[str]]:
    """flags.json, audit.jsonl and the backups: everything a flag change writes."""
    backups = sorted(p.name for p in (state_dir / "backups").glob("*")) if (state_dir / "backups").exists() else []
    return (state_dir / "flags.json").read_bytes(), (state_dir / "audit.jsonl").read_bytes(), backups


# -- the emergency file --------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["short", "x" * 20_000, "lone \ud800 surrogate " * 500])
def test_a_marker_is_one_fixed_size_record_whatever_its_reason(reason: str) -> None:
    """Any reason (long, or with a lone surrogate) encodes to exactly SIZE bytes that decode back, engaged."""
    data = emergency.encode(Marker(True, "alice", reason, "2025-10-23T09:00:00+00:00"))
    assert len(data) == emergency.SIZE
    back = emergency.decode(data)
    assert (back.engaged, back.actor, back.problem) == (True, "alice", None)
    assert reason.startswith(back.reason) and back.reason


@pytest.mark.parametrize("damage", ["torn", "truncated", "foreign", "empty"])
def test_a_damaged_emergency_file_reads_as_engaged(tmp_path: Path, damage: str) -> None:
    """A torn, truncated, foreign or empty emergency.state turns the kill switch on at open (into
    flags.json too, and the file is rewritten whole); clearing the kill switch then reads off on reopen."""
    with FlagStore.open(tmp_path):
        pass
    path = tmp_path / emergency.FILE
    off, on = emergency.encode(Marker(False)), emergency.encode(Marker(True, "bob", "r" * 800))
    path.write_bytes(
        {
            "torn": on[:512] + off[512:],
            "truncated": off[:1000],  # torn: the crash hit mid-write
            "foreign": b"#" * emergency.SIZE,
            "empty": b"",
        }[damage]
    )
    assert emergency.decode(path.read_bytes()).problem

    with FlagStore.open(tmp_path) as store:
        assert store.snapshot.kill_switch is True and read_flags(tmp_path)[KILL_SWITCH]["enabled"] is True
        assert marker_on_disk(tmp_path).engaged is True and marker_on_disk(tmp_path).problem is None
        store.set(KILL_SWITCH, enabled=False, actor="op", reason="the file was damaged by hand")
        assert store.snapshot.kill_switch is False
    assert marker_on_disk(tmp_path).engaged is False
    with FlagStore.open(tmp_path) as store:
        assert store.snapshot.kill_switch is False


# -- the flag store on a full disk ---------------------------------------------------------------


def test_kill_is_served_at_once_without_touching_the_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """kill() turns the kill switch and the given flags off in what is served before any disk I/O."""
    with seeded(tmp_path) as store:
        with monkeypatch.context() as patch:
            for name in ("write", "pwrite", "fsync", "fdatasync", "open", "replace", "link"):
                patch.setattr(os, name, lambda *a, _n=name, **k: pytest.fail(f"kill() called os.{_n}"))
            store.kill({n: Flag(name=n, enabled=False) for n in PHASE5.flags})
        assert store.snapshot.kill_switch is True and plan_flags_off(store)
        assert store.durable is False
        assert store.persist_kill(actor="test", reason="no disk trouble") is True
        assert store.durable is True and read_flags(tmp_path)[KILL_SWITCH]["enabled"] is True


def test_an_emergency_on_a_full_disk_is_in_force_then_written_when_space_returns(
    tmp_path: Path, disk: FullDisk
) -> None:
    """With ENOSPC on every new block: the kill switch is served on, emergency.state (rewritten in place)
    says so, flags.json and the audit log are untouched and whole; once space returns the retry writes
    flags.json and audits the change under the emergency's actor."""
    with seeded(tmp_path) as store:
        before = files(tmp_path)
        disk.full = True
        store.kill({n: Flag(name=n, enabled=False) for n in PHASE5.flags})
        assert store.persist_kill(actor="signal:SIGUSR1", reason="emergency shutdown") is False

        assert store.snapshot.kill_switch is True and plan_flags_off(store)
        assert isinstance(store.held_error, StorageError) and store.held_error.errno == errno.ENOSPC
        assert f"state_dir {tmp_path} is full (ENOSPC) while writing flags.json" in str(store.held_error)
        assert marker_on_disk(tmp_path).engaged is True and marker_on_disk(tmp_path).actor == "signal:SIGUSR1"
        assert files(tmp_path) == before, "a refused write must leave no temp file, record or backup behind"

        disk.full = False
        store.retry_now()
        until(lambda: store.durable)
        on_disk = read_flags(tmp_path)
        assert on_disk[KILL_SWITCH]["enabled"] is True and not any(on_disk[n]["enabled"] for n in PHASE5.flags)
        last = json.loads((tmp_path / "audit.jsonl").read_bytes().splitlines()[-1])
        assert last["actor"] == "signal:SIGUSR1" and last["event"] == "change"
        assert store.held_error is None


def test_a_restart_on_a_full_disk_keeps_the_kill_switch_flags_json_never_saw(tmp_path: Path, disk: FullDisk) -> None:
    """An emergency only emergency.state holds survives a restart while the disk is still full (the
    store opens, the kill switch is on) and reaches flags.json once the disk takes it."""
    with seeded(tmp_path) as store:
        disk.full = True
        store.kill()
        store.persist_kill(actor="alice", reason="paged")
    assert read_flags(tmp_path)[KILL_SWITCH]["enabled"] is False

    with FlagStore.open(tmp_path) as store:
        assert store.snapshot.kill_switch is True and store.durable is False
        assert read_flags(tmp_path)[KILL_SWITCH]["enabled"] is False
        disk.full = False
        store.retry_now()
        until(lambda: store.durable)
    assert read_flags(tmp_path)[KILL_SWITCH]["enabled"] is True


def test_a_flag_change_on_a_full_disk_changes_nothing_and_names_the_cause(tmp_path: Path, disk: FullDisk) -> None:
    """`flags set` on a full disk raises StorageError naming state_dir, ENOSPC and the remedy; the
    files and the served flags are as they were, and the same change works once space returns."""
    with seeded(tmp_path) as store:
        before, served = files(tmp_path), store.snapshot.revision
        disk.full = True
        with pytest.raises(StorageError, match=r"is full \(ENOSPC\) while writing flags.json: free space and retry"):
            store.set("hybrid_rag_enabled", percentage=50, actor="op", reason="more")
        assert files(tmp_path) == before and store.snapshot.revision == served
        disk.full = False
        store.set("hybrid_rag_enabled", percentage=50, actor="op", reason="more")
    assert read_flags(tmp_path)["hybrid_rag_enabled"]["rollout_percentage"] == 50


def test_clearing_the_kill_switch_on_a_full_disk_leaves_it_on_everywhere(tmp_path: Path, disk: FullDisk) -> None:
    """Turning the kill switch off clears emergency.state first; when flags.json then refuses the write,
    emergency.state is put back, so memory, flags.json and the file all still say on."""
    with seeded(tmp_path) as store:
        store.kill()
        store.persist_kill(actor="alice", reason="paged")
        disk.full = True
        with pytest.raises(StorageError):
            store.set(KILL_SWITCH, enabled=False, actor="bob", reason="all clear")
        assert store.snapshot.kill_switch is True
        assert read_flags(tmp_path)[KILL_SWITCH]["enabled"] is True and marker_on_disk(tmp_path).engaged is True


def test_the_emergency_file_cannot_be_created_on_a_full_disk_until_space_returns(
    tmp_path: Path, disk: FullDisk
) -> None:
    """A store first opened with the disk full starts without emergency.state, creates it once space
    returns, and an emergency meanwhile is still in force in memory."""
    with seeded(tmp_path):
        pass
    (tmp_path / emergency.FILE).unlink()
    disk.full = True
    with FlagStore.open(tmp_path) as store:
        assert store.emergency.file is None and not (tmp_path / emergency.FILE).exists()
        store.kill()
        assert store.persist_kill(actor="alice", reason="paged") is False and store.snapshot.kill_switch
        disk.full = False
        store.retry_now()
        until(lambda: store.durable and store.emergency.file is not None)
    assert read_flags(tmp_path)[KILL_SWITCH]["enabled"] is True
    assert marker_on_disk(tmp_path).engaged is True


def test_an_audit_record_a_full_disk_cut_short_is_taken_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An audit append that the disk cuts short mid-record (a short write, then ENOSPC) leaves the log
    exactly as it was, so the next record does not land glued to half of this one."""
    with seeded(tmp_path) as store:
        before = (tmp_path / "audit.jsonl").read_bytes()
        real_write, wrote = os.write, []

        def short_then_full(fd: int, data: Any) -> int:
            if wrote:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            wrote.append(fd)
            return real_write(fd, bytes(data)[:10])

        with monkeypatch.context() as patch:
            patch.setattr(os, "write", short_then_full)
            with pytest.raises(StorageError, match="is full"):
                store.set("hybrid_rag_enabled", percentage=50, actor="op", reason="more")
        assert (tmp_path / "audit.jsonl").read_bytes() == before
        store.set("hybrid_rag_enabled", percentage=50, actor="op", reason="more")
    assert json.loads((tmp_path / "audit.jsonl").read_bytes().splitlines()[-1])["reason"] == "more"


def test_rolloutctl_says_what_an_error_answer_means() -> None:
    """A JSON error is shown in the daemon's own words; a bare 500 names the status and where to look,
    never just "Internal Server Error"."""

    full = httpx.Response(507, json={"error": "state_dir /x is full (ENOSPC) while writing flags.json: free space"})
    assert error_message(full, full.json()) == "state_dir /x is full (ENOSPC) while writing flags.json: free space"
    bare = httpx.Response(500, text="Internal Server Error")
    assert error_message(bare, None) == (
        "rolloutd answered 500 Internal Server Error; its log says why (`journalctl -u rolloutd -p err`)"
    )


# -- the controller on a full disk ---------------------------------------------------------------


async def wait_for(check: Callable[[], bool]) -> None:
    """Wait (bounded) for `check()`, letting the event loop run."""
    with anyio.fail_after(WAIT):
        while not check():
            await anyio.sleep(0.01)


@pytest.mark.anyio
async def test_emergency_stop_on_a_full_disk_is_an_emergency_at_once_and_journaled_when_space_returns(
    rigs: Callable[..., Rig], tmp_path: Path, disk: FullDisk
) -> None:
    """With flags.json and SQLite both refusing: emergency_stop() answers, the phase is EMERGENCY and
    every plan flag is served off at once; when space returns the next round journals the emergency,
    flags.json gets the kill switch, a restart finds the rollout in EMERGENCY, and clearing it clears
    emergency.state too."""
    state_dir = tmp_path / "state"
    rig = rigs(state_dir, db=lambda d: FullDB(d, disk))
    await rig.controller.open()
    await rig.at(0, 4)
    assert rig.controller.state.percentage > 0
    disk.full = True

    assert actions(await rig.controller.emergency_stop("alice", "p99 is on fire")) == ["emergency"]
    assert rig.controller.state.phase is Phase.EMERGENCY and rig.controller.status()["emergency"] is True
    assert plan_flags_off(rig.store) and rig.store.snapshot.kill_switch
    assert rig.controller.journal_error is not None and "is full (ENOSPC)" in str(rig.controller.journal_error)
    assert actions(rig.journal())[-1] != "emergency" and rig.db.load().phase is Phase.RUNNING
    with pytest.raises(StorageError):
        await rig.at(5)  # a round while the disk is full: nothing written, the emergency still in force
    assert rig.controller.state.phase is Phase.EMERGENCY

    disk.full = False
    rig.store.retry_now()
    await wait_for(lambda: rig.store.durable)
    await rig.at(6)
    assert actions(rig.journal())[-1] == "emergency" and rig.journal()[-1]["status"] == "done"
    assert rig.db.load().phase is Phase.EMERGENCY and rig.controller.journal_error is None
    flags = read_flags(state_dir)
    assert flags[KILL_SWITCH]["enabled"] is True and not any(flags[n]["enabled"] for n in PHASE5.flags)
    rig.close()
    again = rigs(state_dir)
    assert await again.controller.open() == [] and again.controller.state.phase is Phase.EMERGENCY
    await again.controller.command("resume", reason="disk cleaned up", clear_emergency=True)
    assert marker_on_disk(state_dir).engaged is False and read_flags(state_dir)[KILL_SWITCH]["enabled"] is False


@pytest.mark.anyio
async def test_a_restart_on_a_full_disk_honours_an_emergency_neither_file_recorded(
    rigs: Callable[..., Rig], tmp_path: Path, disk: FullDisk
) -> None:
    """An emergency that reached only emergency.state (flags.json and SQLite full) survives a restart
    while the disk is still full: the controller opens in EMERGENCY with every plan flag served off, and
    journals it once space returns — the rollout never comes back `running`."""
    state_dir = tmp_path / "state"
    rig = rigs(state_dir, db=lambda d: FullDB(d, disk))
    await rig.controller.open()
    await rig.at(0, 4)
    disk.full = True
    await rig.controller.emergency_stop("signal:SIGUSR1", "emergency shutdown requested with SIGUSR1")
    rig.close()

    again = rigs(state_dir, db=lambda d: FullDB(d, disk))
    opened = await again.controller.open()
    assert actions(opened) == ["emergency"] and "found on at start" in opened[0].reason
    assert again.controller.state.phase is Phase.EMERGENCY and plan_flags_off(again.store)
    disk.full = False
    again.store.retry_now()
    await wait_for(lambda: again.store.durable)
    await again.at(6)
    assert again.db.load().phase is Phase.EMERGENCY and actions(again.journal())[-1] == "emergency"
    assert read_flags(state_dir)[KILL_SWITCH]["enabled"] is True


@pytest.mark.anyio
async def test_a_rollout_command_refused_by_a_full_disk_leaves_nothing_behind(
    rigs: Callable[..., Rig], tmp_path: Path, disk: FullDisk
) -> None:
    """A rollback whose intent SQLite took but whose flags.json write was refused is withdrawn: the
    error names the full disk, the stored state and the journal are as before, no intent is pending."""
    rig = rigs(tmp_path / "state")
    await rig.controller.open()
    await rig.at(0, 4)
    state, journal = rig.db.load(), rig.journal()
    disk.full = True  # the flags' files only: SQLite (its WAL already allocated) still takes writes

    with pytest.raises(StorageError, match=r"is full \(ENOSPC\) while writing flags.json"):
        await rig.controller.command("rollback", reason="too hot", actor="bob", to_stage=0)
    assert rig.db.load() == state and rig.journal() == journal and rig.db.pending() == []
    assert rig.controller.state == state


# -- the daemon on a real full filesystem --------------------------------------------------------

FLAG = "disk_ranker"
PLAN = plan_toml(
    name="disk_full",
    flags=[FLAG],
    guards=[ERROR_RATIO],
    stages=[stage("0m", 100, ["Builder"]), stage("10000h", 100, ["Builder", "QA"])],
)
TMPFS_BYTES = 64 << 20


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 64 MiB tmpfs at tmp_path/state (root and a mount namespace that allows it, else skipped)."""
    state = tmp_path / "state"
    state.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES},mode=0750", "tmpfs", str(state)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); the injected-ENOSPC tests cover the logic")
    try:
        yield state
    finally:
        subprocess.run(["umount", "-l", str(state)], capture_output=True, timeout=30)


def fill(directory: Path) -> Path:
    """Fill the filesystem of `directory` to the last page; return the file that does it."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as out:
        for chunk in (1 << 20, 4096):
            try:
                while True:
                    out.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return filler


def evaluate(daemon: Daemon) -> bool:
    response = httpx.post(f"{daemon.base_url}/ofrep/v1/evaluate/flags/{FLAG}", json={"context": IN_COHORT}, timeout=5)
    return response.json().get("value") is True  # a flag not created yet answers FLAG_NOT_FOUND


def retrieve_status(daemon: Daemon) -> int:
    body = {"agent": "Builder", "query": "who owns ledger-sync?", "top_k": 3}
    return httpx.post(f"{daemon.base_url}/v1/retrieve", json=body, timeout=5).status_code


def on_disk_kill_switch(state: Path) -> bool:
    return json.loads((state / "flags.json").read_text())[KILL_SWITCH]["enabled"]


@pytest.mark.slow
def test_the_emergency_wins_over_a_full_tmpfs(tmp_path: Path, small_fs: Path) -> None:
    """On a real full filesystem: `flags set` fails naming the full disk; `emergency-stop` and SIGUSR1
    take effect at once (OFREP off, retrieval 503) and the daemon lives; a restart while still full
    keeps the emergency; once space returns flags.json gets the kill switch and the journal the
    emergency; a clean restart still finds the rollout in EMERGENCY, and a start on a disk that filled up
    meanwhile exits 78 saying the disk is full."""
    (tmp_path / "plan.toml").write_text(PLAN)
    config = write_config(tmp_path, plan=str(tmp_path / "plan.toml"), time_scale=60.0)
    daemon = Daemon(config).start(wait=False)
    admin = Admin(daemon.socket)
    try:
        wait_until(lambda: evaluate(daemon), WAIT, "stage 0 on for Builder", daemon)
        filler = fill(small_fs)

        refused = rolloutctl(daemon.socket, "flags", "set", FLAG, "--percentage", "50", "--reason", "more")
        assert refused.returncode == 1, refused
        assert f"state_dir {small_fs} is full (ENOSPC)" in refused.stderr and "free space and retry" in refused.stderr

        stopped = rolloutctl(daemon.socket, "emergency-stop", "--reason", "disk test")
        assert stopped.returncode == 0 and "emergency_shutdown is ON" in stopped.stdout, stopped
        assert "not yet on disk" in stopped.stderr and "is full (ENOSPC)" in stopped.stderr
        assert not evaluate(daemon) and retrieve_status(daemon) == 503
        assert admin.status()["phase"] == "emergency" and not on_disk_kill_switch(small_fs)

        daemon.signal(signal.SIGUSR1)
        wait_until(
            lambda: sum(e["event"] == "rollout.emergency" for e in daemon.events()) == 2,
            WAIT,
            "the second emergency logged",
            daemon,
        )
        assert daemon.proc is not None and daemon.proc.poll() is None and admin.status()["phase"] == "emergency"

        daemon.proc.kill()  # a crash, and systemd's restart, while the disk is still full
        daemon.wait()
        daemon = Daemon(config).start(wait=False)
        wait_until(
            lambda: httpx.get(daemon.base_url + "/healthz", timeout=2).status_code == 200,
            WAIT,
            "the restarted daemon answering",
            daemon,
        )
        assert not evaluate(daemon) and retrieve_status(daemon) == 503
        assert admin.status()["phase"] == "emergency"

        filler.unlink()  # space returns
        wait_until(lambda: on_disk_kill_switch(small_fs), WAIT, "flags.json with the kill switch on", daemon)
        wait_until(
            lambda: any(d["action"] == "emergency" for d in admin.journal()), WAIT, "the emergency journaled", daemon
        )
        flags = json.loads((small_fs / "flags.json").read_text())
        assert flags[FLAG]["enabled"] is False
    finally:
        output = daemon.stop()
    assert daemon.proc is not None and daemon.proc.returncode == 0, output

    again = Daemon(config).start(wait=False)
    try:
        wait_until(lambda: admin.status()["phase"] == "emergency", WAIT, "EMERGENCY after a clean restart", again)
        assert not evaluate(again) and retrieve_status(again) == 503
    finally:
        again.stop()

    fill(small_fs)  # full while stopped: SQLite cannot even open controller.db (no room for its -shm)
    refused = Daemon(config).start(wait=False)
    try:
        assert refused.wait(WAIT) == 78
    finally:
        refused.stop()
    assert "state_dir is full" in refused.output and "do not move it aside" in refused.output


def test_a_first_start_on_a_full_disk_exits_78_saying_so(tmp_path: Path, small_fs: Path) -> None:
    """A state_dir on a filesystem already full before the first start: exit 78 and one message naming
    the full disk and the remedy, not a traceback and exit 1."""
    (tmp_path / "plan.toml").write_text(PLAN)
    config = write_config(tmp_path, plan=str(tmp_path / "plan.toml"), time_scale=60.0)
    fill(small_fs)
    daemon = Daemon(config).start(wait=False)
    try:
        assert daemon.wait(WAIT) == 78
    finally:
        daemon.stop()
    assert f"state_dir {small_fs} is full (ENOSPC)" in daemon.output and "free space and retry" in daemon.output
    assert "Traceback" not in daemon.output
