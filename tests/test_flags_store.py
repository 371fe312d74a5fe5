"""The durable flag store: the file, its backups, its audit log, its lock, and recovery
from corrupt files, hand edits and interrupted changes."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import flags.store
from flags.errors import (
    BackupNotFoundError,
    FlagsError,
    FlagsFileError,
    FlagValidationError,
    StoreLockedError,
    UnknownFlagError,
)
from flags.model import KILL_SWITCH, Flag, ProgressiveConfig, Strategy
from flags.parse import parse_flags_text
from flags.store import FlagStore

T0 = datetime(2025, 10, 23, 9, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[1]


class StepClock:
    """A clock that advances `step` on every reading, starting at T0."""

    def __init__(self, step: timedelta = timedelta(seconds=1)) -> None:
        self.now, self.step = T0, step

    def __call__(self) -> datetime:
        self.now += self.step
        return self.now


def make_flag(**overrides) -> Flag:
    """An enabled 5% percentage flag named vector_search_enabled; override any field."""
    fields = dict(
        name="vector_search_enabled", enabled=True, rollout_strategy=Strategy.PERCENTAGE, rollout_percentage=5.0
    )
    fields.update(overrides)
    return Flag(**fields)


def ramp_flag() -> Flag:
    config = ProgressiveConfig(0.0, 100.0, T0, T0 + timedelta(days=7))
    return Flag(
        name="hybrid_rag_enabled",
        enabled=True,
        rollout_strategy=Strategy.PROGRESSIVE,
        rollout_percentage=0.0,
        progressive_config=config,
    )


def open_store(state_dir: Path, **kwargs) -> FlagStore:
    kwargs.setdefault("clock", StepClock())
    return FlagStore.open(state_dir, **kwargs)


def seeded(state_dir: Path, **kwargs) -> FlagStore:
    """An open store holding the kill switch, a percentage flag and a progressive flag."""
    store = open_store(state_dir, **kwargs)
    store.apply({"vector_search_enabled": make_flag(), "hybrid_rag_enabled": ramp_flag()}, actor="test", reason="seed")
    return store


def on_disk(state_dir: Path) -> dict[str, Flag]:
    path = state_dir / "flags.json"
    return parse_flags_text(path.read_text(), path)


def audit_records(state_dir: Path) -> list[dict]:
    """Every audit record; fails if any line is not a whole JSON record."""
    data = (state_dir / "audit.jsonl").read_bytes()
    assert data == b"" or data.endswith(b"\n")
    return [json.loads(line) for line in data.splitlines()]


def backup_files(state_dir: Path) -> list[Path]:
    return sorted((state_dir / "backups").glob("flags.*.json"))


def without_audit_ids(flags: dict[str, Flag]) -> dict[str, Flag]:
    return {n: replace(f, audit_id=None) for n, f in flags.items()}


def disk_state(state_dir: Path) -> tuple:
    """Everything a write would change: the file's bytes and inode, the audit log, the backups."""
    path = state_dir / "flags.json"
    backups = state_dir / "backups"
    return (
        path.read_bytes(),
        path.stat().st_ino,
        path.stat().st_mtime_ns,
        (state_dir / "audit.jsonl").read_bytes(),
        sorted(p.name for p in backups.iterdir()) if backups.exists() else [],
    )


# -- creation -------------------------------------------------------------------------------


def test_first_open_creates_a_file_holding_only_the_kill_switch_off(tmp_path):
    """Opening a new state_dir creates it and a flags.json with only `emergency_shutdown`, off, audited."""
    state_dir = tmp_path / "state" / "nested"

    with open_store(state_dir) as store:
        flags = on_disk(state_dir)
        assert list(flags) == [KILL_SWITCH]
        assert flags[KILL_SWITCH].enabled is False
        assert store.snapshot.flags == flags and store.snapshot.kill_switch is False
        [record] = audit_records(state_dir)
        assert (record["event"], record["flag"], record["before"]) == ("create", KILL_SWITCH, None)
        assert record["after"]["enabled"] is False
        assert record["id"] == flags[KILL_SWITCH].audit_id
        assert backup_files(state_dir) == []
        assert (state_dir / "flags.json").stat().st_mode & 0o777 == 0o640


def test_reopening_keeps_the_file(tmp_path):
    """A second open reads the existing file rather than creating a new one."""
    with seeded(tmp_path) as store:
        before = disk_state(tmp_path)
        snapshot = store.snapshot

    with open_store(tmp_path) as store:
        assert disk_state(tmp_path) == before
        assert store.snapshot.flags == snapshot.flags and store.snapshot.revision == snapshot.revision


def test_seeds_file_without_kill_switch_opens_as_written(tmp_path):
    """A flags.json written by the seeds' tools opens unchanged, with its extra keys."""
    seed = {"hybrid_rag_enabled": {**ramp_flag().to_dict(), "owner": "retrieval", "notes": ["phase 5.3"]}}
    (tmp_path / "flags.json").write_text(json.dumps(seed, indent=2))

    with open_store(tmp_path) as store:
        assert list(store.snapshot.flags) == ["hybrid_rag_enabled"]
        assert store.get("hybrid_rag_enabled").extra == {"owner": "retrieval", "notes": ["phase 5.3"]}
        assert json.loads((tmp_path / "flags.json").read_text()) == seed


# -- changes ------------------------------------------------------------------------------------


def test_set_writes_the_file(tmp_path):
    """After `set` returns, the file on disk holds the change and equals the store's snapshot."""
    with seeded(tmp_path) as store:
        snapshot = store.set("vector_search_enabled", percentage=10, actor="alice", reason="stage 2")

        assert on_disk(tmp_path) == dict(snapshot.flags) == dict(store.snapshot.flags)
        assert on_disk(tmp_path)["vector_search_enabled"].rollout_percentage == 10.0


def test_set_leaves_a_backup_of_the_previous_file(tmp_path):
    """Every change keeps the previous file, byte for byte, under backups/."""
    with seeded(tmp_path) as store:
        previous = (tmp_path / "flags.json").read_bytes()
        kept = set(backup_files(tmp_path))

        store.set("vector_search_enabled", enabled=False, actor="alice", reason="pause")

        [new_backup] = set(backup_files(tmp_path)) - kept
        assert new_backup.read_bytes() == previous
        info = {b.name: b for b in store.backups()}[new_backup.name]
        assert (info.flags, info.problem, info.size) == (3, None, len(previous))


def test_set_appends_an_audit_record(tmp_path):
    """A change appends one record: time, id, actor, reason, flag, before and after."""
    clock = StepClock()
    with seeded(tmp_path, clock=clock) as store:
        before = store.get("vector_search_enabled")
        count = len(audit_records(tmp_path))

        store.set("vector_search_enabled", percentage=25, actor="alice", reason="stage 3")

        records = audit_records(tmp_path)
        assert len(records) == count + 1
        record, after = records[-1], on_disk(tmp_path)["vector_search_enabled"]
        assert record == {
            "time": clock.now.isoformat(),
            "id": after.audit_id,
            "event": "change",
            "actor": "alice",
            "reason": "stage 3",
            "flag": "vector_search_enabled",
            "before": before.to_dict(),
            "after": after.to_dict(),
        }
        assert record["before"]["rollout_percentage"] == 5.0 and record["after"]["rollout_percentage"] == 25.0


def test_apply_of_several_flags_is_one_change(tmp_path):
    """Changing two flags at once gives one backup and two records sharing the id both flags carry."""
    with seeded(tmp_path) as store:
        backups, records = len(backup_files(tmp_path)), len(audit_records(tmp_path))

        store.apply(
            {"vector_search_enabled": make_flag(enabled=False), "new_flag": Flag(name="new_flag", enabled=True)},
            actor="bob",
            reason="batch",
        )

        new = audit_records(tmp_path)[records:]
        assert [r["flag"] for r in new] == ["vector_search_enabled", "new_flag"]
        assert len({r["id"] for r in new}) == 1 and new[1]["before"] is None
        flags = on_disk(tmp_path)
        assert flags["vector_search_enabled"].audit_id == flags["new_flag"].audit_id == new[0]["id"]
        assert flags["hybrid_rag_enabled"].audit_id != new[0]["id"]
        assert len(backup_files(tmp_path)) == backups + 1


def test_set_on_a_progressive_flag_writes_both_fields(tmp_path):
    """Setting a progressive flag's percentage writes rollout_percentage and current_percentage, as the seeds do."""
    with seeded(tmp_path) as store:
        store.set("hybrid_rag_enabled", percentage=5, actor="controller", reason="stage 1")

        flag = on_disk(tmp_path)["hybrid_rag_enabled"]
        assert flag.rollout_strategy is Strategy.PROGRESSIVE
        assert flag.rollout_percentage == flag.progressive_config.current_percentage == 5.0
        assert flag.percentage_at(T0 + timedelta(days=30)) == 5.0


def test_set_percentage_on_an_all_flag_makes_it_a_percentage_flag(tmp_path):
    """An `all` flag given a percentage becomes a percentage flag at that percentage."""
    with open_store(tmp_path) as store:
        store.apply({"f": Flag(name="f", enabled=True)}, actor="t", reason="add")

        store.set("f", percentage=30, actor="t", reason="limit")

        assert (store.get("f").rollout_strategy, store.get("f").rollout_percentage) == (Strategy.PERCENTAGE, 30.0)


def test_set_keeps_extra_keys(tmp_path):
    """Keys other tools wrote survive a change made through the store."""
    seed = {
        "f": {
            "enabled": True,
            "rollout_strategy": "percentage",
            "rollout_percentage": 5,
            "owner": "x",
            "labels": {"tier": 1},
        }
    }
    (tmp_path / "flags.json").write_text(json.dumps(seed))

    with open_store(tmp_path) as store:
        store.set("f", percentage=10, actor="t", reason="up")

    written = json.loads((tmp_path / "flags.json").read_text())["f"]
    assert (written["owner"], written["labels"], written["rollout_percentage"]) == ("x", {"tier": 1}, 10.0)


def test_unchanged_apply_writes_nothing(tmp_path):
    """Applying flags equal to the current ones (audit ids aside) touches no file."""
    with seeded(tmp_path) as store:
        before, snapshot = disk_state(tmp_path), store.snapshot
        current = store.get("vector_search_enabled")

        assert (
            store.apply({"vector_search_enabled": replace(current, audit_id=None)}, actor="t", reason="x") is snapshot
        )
        assert (
            store.apply({"vector_search_enabled": replace(current, audit_id="other")}, actor="t", reason="x")
            is snapshot
        )
        assert store.set("vector_search_enabled", enabled=True, percentage=5, actor="t", reason="x") is snapshot
        assert store.apply({}, actor="t", reason="x") is snapshot

        assert disk_state(tmp_path) == before


def test_invalid_changes_are_refused_and_write_nothing(tmp_path):
    """A bad percentage, an unknown flag, or a misnamed flag raises and leaves every file as it was."""
    with seeded(tmp_path) as store:
        before = disk_state(tmp_path)

        with pytest.raises(FlagValidationError, match="140 is outside 0-100"):
            store.set("vector_search_enabled", percentage=140, actor="t", reason="x")
        with pytest.raises(UnknownFlagError, match="no flag named 'nope'"):
            store.set("nope", enabled=True, actor="t", reason="x")
        with pytest.raises(FlagValidationError, match="named 'other'"):
            store.apply({"f": Flag(name="other", enabled=True)}, actor="t", reason="x")
        with pytest.raises(FlagsError):
            store.apply({"f": make_flag(name="f", rollout_percentage=140.0)}, actor="t", reason="x")

        assert disk_state(tmp_path) == before


def test_invalid_flag_object_is_a_validation_error(tmp_path):
    """Applying a Flag built with an out-of-range percentage says which field of the change is wrong."""
    with seeded(tmp_path) as store:
        with pytest.raises(FlagValidationError):
            store.apply({"f": make_flag(name="f", rollout_percentage=140.0)}, actor="t", reason="x")


def test_closed_store_refuses_changes(tmp_path):
    """After close() the store no longer owns the state_dir and writes nothing."""
    store = seeded(tmp_path)
    store.close()
    before = disk_state(tmp_path)

    with pytest.raises(FlagsError):
        store.set("vector_search_enabled", percentage=50, actor="t", reason="after close")
    assert disk_state(tmp_path) == before


@pytest.mark.parametrize("keep", [1, 3])
def test_backups_are_bounded_and_the_newest_are_kept(tmp_path, keep):
    """With keep_backups=N only the N most recent previous files remain."""
    with seeded(tmp_path, keep_backups=keep) as store:
        previous = []
        for i in range(8):
            previous.append((tmp_path / "flags.json").read_bytes())
            store.set("vector_search_enabled", percentage=10 + i, actor="t", reason=f"step {i}")

        assert [p.read_bytes() for p in backup_files(tmp_path)] == previous[-keep:]
        assert len(store.backups()) == keep


def test_backups_with_the_same_timestamp_keep_the_newest(tmp_path):
    """When the clock does not advance between changes, pruning still keeps the most recent files."""
    with seeded(tmp_path, keep_backups=3, clock=StepClock(step=timedelta(0))) as store:
        previous = []
        for i in range(5):
            previous.append((tmp_path / "flags.json").read_bytes())
            store.set("vector_search_enabled", percentage=10 + i, actor="t", reason=f"step {i}")

        assert sorted(p.read_bytes() for p in backup_files(tmp_path)) == sorted(previous[-3:])


# -- the lock ---------------------------------------------------------------------------------


def test_second_open_in_the_same_process_is_refused(tmp_path):
    """A second FlagStore on a locked state_dir raises StoreLockedError naming the holder, until the first closes."""
    first = open_store(tmp_path)
    try:
        with pytest.raises(StoreLockedError) as info:
            open_store(tmp_path)
        assert f"pid {os.getpid()}" in str(info.value)
        assert info.value.lock_path == tmp_path / "flags.lock"
    finally:
        first.close()

    with open_store(tmp_path) as again:
        assert KILL_SWITCH in again.snapshot


CHILD_OPEN = """
import sys
from flags.errors import StoreLockedError
from flags.store import FlagStore
try:
    store = FlagStore.open(sys.argv[1])
except StoreLockedError as exc:
    print("locked:", exc)
    sys.exit(3)
print("opened", flush=True)
sys.stdin.read()
"""


def child(state_dir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD_OPEN, str(state_dir)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_open_in_another_process_is_refused(tmp_path):
    """While this process holds the store, another process's open raises StoreLockedError."""
    with open_store(tmp_path):
        proc = child(tmp_path)
        out, err = proc.communicate(timeout=30)

    assert proc.returncode == 3, err
    assert out.startswith("locked:") and f"pid {os.getpid()}" in out


def test_lock_held_by_another_process_is_released_when_it_exits(tmp_path):
    """A store held by another process refuses us, and opens once that process has exited."""
    proc = child(tmp_path)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready and proc.stdout.readline() == "opened\n", proc.stderr.read()

        with pytest.raises(StoreLockedError, match=f"pid {proc.pid}"):
            open_store(tmp_path)
    finally:
        proc.communicate(input="", timeout=30)

    with open_store(tmp_path) as store:
        assert KILL_SWITCH in store.snapshot


# -- corrupt and invalid files ----------------------------------------------------------------------

CORRUPT = {
    "not-json": (b'{\n  "f": {"enabled": true,\n', 3, "not valid JSON"),
    "empty": (b"", None, "empty"),
    "invalid-percentage": (
        b'{\n  "f": {\n    "enabled": true,\n    "rollout_percentage": 140\n  }\n}\n',
        4,
        "140 is outside 0-100",
    ),
    "not-utf8": (b'{"f": {"enabled": true, "description": "\xff\xfe"}}', None, "not UTF-8"),
}


def corrupt(state_dir: Path, case: str) -> bytes:
    """Overwrite a seeded store's flags.json with a corrupt file, as a hand edit or a bad tool would."""
    with seeded(state_dir) as store:
        store.set("vector_search_enabled", percentage=7, actor="t", reason="make a backup")
    data = CORRUPT[case][0]
    (state_dir / "flags.json").write_bytes(data)
    return data


@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_file_is_reported_and_not_overwritten(tmp_path, case):
    """Opening a corrupt or invalid flags.json raises with file, line and problem, and changes nothing on disk."""
    corrupt(tmp_path, case)
    before = disk_state(tmp_path)
    _, line, problem = CORRUPT[case]

    with pytest.raises(FlagsFileError) as info:
        open_store(tmp_path)

    assert (info.value.path, info.value.line) == (tmp_path / "flags.json", line)
    assert problem in info.value.problem and str(tmp_path / "flags.json") in str(info.value)
    assert disk_state(tmp_path) == before
    with open_store(tmp_path, strict=False):  # the failed open released the lock
        pass


@pytest.mark.parametrize("case", list(CORRUPT))
def test_lenient_open_refuses_changes_to_a_corrupt_file(tmp_path, case):
    """With strict=False the store opens, keeps the error, and refuses any change that would overwrite the file."""
    corrupt(tmp_path, case)
    before = disk_state(tmp_path)

    with open_store(tmp_path, strict=False) as store:
        assert isinstance(store.load_error, FlagsFileError)
        assert len(store.snapshot) == 0
        with pytest.raises(FlagsFileError):
            store.apply({"f": Flag(name="f", enabled=False)}, actor="t", reason="x")
        with pytest.raises(FlagsError):
            store.set("vector_search_enabled", enabled=False, actor="t", reason="x")

    assert disk_state(tmp_path) == before


def test_set_on_a_corrupt_file_reports_the_file_error(tmp_path):
    """`set` on a store whose file is invalid explains that the file is invalid."""
    corrupt(tmp_path, "not-json")

    with open_store(tmp_path, strict=False) as store:
        with pytest.raises(FlagsFileError):
            store.set("vector_search_enabled", enabled=False, actor="t", reason="x")


@pytest.mark.parametrize("case", list(CORRUPT))
def test_restore_recovers_from_a_corrupt_file_and_keeps_it(tmp_path, case):
    """open(strict=False) + restore() puts a backup back, keeps the corrupt file as a backup, and audits it."""
    data = corrupt(tmp_path, case)

    with open_store(tmp_path, strict=False) as store:
        good = [b for b in store.backups() if b.problem is None]
        assert len(good) == 2
        restored_from = good[-1].name
        expected = parse_flags_text((tmp_path / "backups" / restored_from).read_text(), restored_from)

        store.restore(restored_from, actor="operator", reason="corrupt file")

        assert store.load_error is None
        assert (
            without_audit_ids(on_disk(tmp_path))
            == without_audit_ids(expected)
            == without_audit_ids(dict(store.snapshot.flags))
        )
        assert [p for p in backup_files(tmp_path) if p.read_bytes() == data]
        assert any(b.problem for b in store.backups())
        records = [r for r in audit_records(tmp_path) if r["event"] == "restore"]
        assert {r["flag"] for r in records} == set(expected)
        assert all(r["actor"] == "operator" and f"(from {restored_from})" in r["reason"] for r in records)
        assert {r["id"] for r in records} == {f.audit_id for f in on_disk(tmp_path).values()}

        store.set("vector_search_enabled", percentage=9, actor="t", reason="back to normal")
    with open_store(tmp_path) as store:
        assert store.get("vector_search_enabled").rollout_percentage == 9.0


def test_restore_removes_flags_the_backup_does_not_have(tmp_path):
    """Restoring an older backup drops flags added since, with an audit record whose `after` is null."""
    with open_store(tmp_path) as store:
        store.apply({"a": Flag(name="a", enabled=True)}, actor="t", reason="add a")
        oldest = store.backups()[0].name  # the file before `a`: only the kill switch
        store.restore(oldest, actor="t", reason="undo")

        assert list(on_disk(tmp_path)) == [KILL_SWITCH]
        [gone] = [r for r in audit_records(tmp_path) if r["flag"] == "a" and r["event"] == "restore"]
        assert gone["after"] is None and gone["before"]["enabled"] is True


@pytest.mark.parametrize("name", ["flags.nope.json", "../flags.json", "../audit.jsonl"])
def test_restore_of_an_unknown_backup_is_refused(tmp_path, name):
    """Only a file in backups/ can be restored."""
    with seeded(tmp_path) as store:
        before = disk_state(tmp_path)
        with pytest.raises(BackupNotFoundError):
            store.restore(name, actor="t", reason="x")
        assert disk_state(tmp_path) == before


# -- hand edits -------------------------------------------------------------------------------------


def hand_edit(state_dir: Path, name: str, **fields) -> None:
    path = state_dir / "flags.json"
    data = json.loads(path.read_text())
    data[name].update(fields)
    path.write_text(json.dumps(data, indent=2))


def test_reload_picks_up_a_hand_edit(tmp_path):
    """After flags.json is edited by hand, reload() serves the edit."""
    with seeded(tmp_path) as store:
        hand_edit(tmp_path, "vector_search_enabled", rollout_percentage=42)

        snapshot = store.reload()

        assert snapshot is store.snapshot
        assert store.get("vector_search_enabled").rollout_percentage == 42.0


def test_bad_hand_edit_raises_on_reload_and_keeps_the_old_flags(tmp_path):
    """A reload of an invalid hand edit raises with file and line, and the previous flags stay in service."""
    with seeded(tmp_path) as store:
        snapshot = store.snapshot
        hand_edit(tmp_path, "vector_search_enabled", rollout_percentage=140)
        edited = (tmp_path / "flags.json").read_bytes()

        with pytest.raises(FlagsFileError) as info:
            store.reload()

        assert info.value.line == edited.decode().splitlines().index('    "rollout_percentage": 140,') + 1
        assert store.snapshot is snapshot
        assert (tmp_path / "flags.json").read_bytes() == edited


def test_a_change_after_a_bad_hand_edit_does_not_overwrite_it(tmp_path):
    """After a reload rejected a hand edit, changes are refused until the file is fixed or restored."""
    with seeded(tmp_path) as store:
        hand_edit(tmp_path, "vector_search_enabled", rollout_percentage=140)
        edited = (tmp_path / "flags.json").read_bytes()
        with pytest.raises(FlagsFileError):
            store.reload()

        with pytest.raises(FlagsFileError):
            store.set("hybrid_rag_enabled", percentage=5, actor="t", reason="x")
        assert (tmp_path / "flags.json").read_bytes() == edited


# -- interrupted changes ---------------------------------------------------------------------------


def crash_leftover(state_dir: Path, flags: list[str], audit_id: str = "20251023T100000000000Z-dead00") -> None:
    """Append the records of a change whose flags file was never written, as a crash would leave them."""
    lines = [
        json.dumps(
            {
                "time": "2025-10-23T10:00:00+00:00",
                "id": audit_id,
                "event": "change",
                "actor": "t",
                "reason": "lost",
                "flag": name,
                "before": None,
                "after": {"enabled": True, "rollout_strategy": "all", "rollout_percentage": 100.0},
            }
        )
        for name in flags
    ]
    with open(state_dir / "audit.jsonl", "a") as log:
        log.write("".join(line + "\n" for line in lines))


@pytest.mark.parametrize("flags", [["vector_search_enabled"], ["vector_search_enabled", "brand_new"]])
def test_change_that_never_reached_the_file_is_marked_aborted(tmp_path, flags):
    """Records whose id no flag carries get one `aborted` record on the next open, and only one."""
    with seeded(tmp_path):
        pass
    crash_leftover(tmp_path, flags)
    file_before = (tmp_path / "flags.json").read_bytes()

    with open_store(tmp_path):
        pass
    with open_store(tmp_path):
        pass

    records = audit_records(tmp_path)
    assert records[-1]["event"] == "aborted" and records[-1]["id"] == "20251023T100000000000Z-dead00"
    assert [r["event"] for r in records[-len(flags) - 1 :]] == ["change"] * len(flags) + ["aborted"]
    assert (tmp_path / "flags.json").read_bytes() == file_before


def test_committed_change_is_not_marked_aborted(tmp_path):
    """Reopening after a completed change adds nothing to the audit log."""
    with seeded(tmp_path) as store:
        store.set("hybrid_rag_enabled", enabled=False, actor="t", reason="x")
    records = audit_records(tmp_path)

    with open_store(tmp_path):
        pass

    assert audit_records(tmp_path) == records


def test_torn_last_audit_line_is_cut_on_open(tmp_path):
    """A half-written last audit record is removed on open; the whole records before it stay."""
    with seeded(tmp_path):
        pass
    whole = (tmp_path / "audit.jsonl").read_bytes()
    with open(tmp_path / "audit.jsonl", "ab") as log:
        log.write(b'{"actor": "t", "after": {"enabled": tr')

    with open_store(tmp_path) as store:
        assert (tmp_path / "audit.jsonl").read_bytes() == whole
        store.set("vector_search_enabled", percentage=6, actor="t", reason="after repair")

    assert audit_records(tmp_path)[-1]["reason"] == "after repair"


def test_torn_tail_is_cut_in_a_log_larger_than_the_tail_window(tmp_path):
    """In an audit log of more than 256 KiB, only the torn last record is cut, and an aborted change is still found."""
    with seeded(tmp_path):
        pass
    crash_leftover(tmp_path, [f"flag_{i}" for i in range(1500)])  # ~330 KiB of whole records
    whole = (tmp_path / "audit.jsonl").read_bytes()
    assert len(whole) > 256 * 1024
    with open(tmp_path / "audit.jsonl", "ab") as log:
        log.write(b'{"id": "20251023T1')

    with open_store(tmp_path):
        pass

    records = audit_records(tmp_path)
    assert (tmp_path / "audit.jsonl").read_bytes().startswith(whole)
    assert len(records) == whole.count(b"\n") + 1 and records[-1]["event"] == "aborted"


def test_failed_write_leaves_no_change_looking_applied(tmp_path, monkeypatch):
    """If the file cannot be written, the change's audit records end up closed as aborted."""

    def disk_full(path, data, mode=0o640):
        raise OSError(28, "No space left on device")

    with seeded(tmp_path) as store:
        with monkeypatch.context() as patch:
            patch.setattr(flags.store, "atomic_write", disk_full)
            with pytest.raises(OSError):
                store.set("vector_search_enabled", percentage=50, actor="t", reason="fails")
        store.set("hybrid_rag_enabled", percentage=5, actor="t", reason="works")
    with open_store(tmp_path):
        pass

    records = audit_records(tmp_path)
    [failed] = [r for r in records if r["reason"] == "fails"]
    assert failed["id"] in {r["id"] for r in records if r["event"] == "aborted"}


def test_stale_temp_files_are_removed_on_open(tmp_path):
    """Temp files a killed writer left beside flags.json are deleted on open; other files are not."""
    with seeded(tmp_path):
        pass
    stale = [tmp_path / ".flags.json.k2j3h4.tmp", tmp_path / ".flags.json.zz.tmp"]
    kept = [tmp_path / "notes.tmp", tmp_path / ".other.json.x.tmp", tmp_path / "flags.json.bak"]
    for path in stale + kept:
        path.write_text("{")

    with open_store(tmp_path):
        pass

    assert [p for p in stale if p.exists()] == []
    assert all(p.exists() for p in kept)


def test_missing_file_with_backups_can_be_restored_offline(tmp_path):
    """A deleted flags.json is not recreated empty, but a non-strict open can restore a backup."""
    with seeded(tmp_path) as store:
        store.set("vector_search_enabled", percentage=42, actor="t", reason="x")
        store.set("vector_search_enabled", percentage=43, actor="t", reason="y")
    (tmp_path / "flags.json").unlink()
    with pytest.raises(FlagsFileError, match="missing"):
        FlagStore.open(tmp_path)
    with FlagStore.open(tmp_path, strict=False) as store:
        assert store.load_error is not None
        newest = store.backups()[-1].name
        store.restore(newest, actor="op", reason="deleted by mistake")
        assert store.get("vector_search_enabled").rollout_percentage == 42
    assert json.loads((tmp_path / "flags.json").read_text())["vector_search_enabled"]["rollout_percentage"] == 42
