"""Kill a writer mid-change, hundreds of times: the store must always reopen whole.

Each round forks a child from the test process (no interpreter start-up, no new imports)
that opens the store and changes flags as fast as it can. The parent waits until the
child has begun its first change, lets it run a random 0-40 ms, SIGKILLs it, and checks
what a restarted daemon would find. The child reports where in a change it is through
a byte of shared memory, so the test can say how many kills landed mid-write.
"""

from __future__ import annotations

import json
import mmap
import os
import random
import select
import signal
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flags.model import Flag, ProgressiveConfig, Strategy
from flags.parse import parse_flags_text
from flags.store import FlagStore

ROUNDS = 200
MAX_RUN = 0.040
NAMES = ("hybrid_rag_enabled", "vector_search_enabled", "graph_database_enabled")
T0 = datetime(2025, 10, 23, 9, tzinfo=UTC)

# Where the child is, written to shared memory byte 0 before each step.
IDLE, PREPARING, AUDITING, BACKING_UP, REPLACING, PRUNING, PUBLISHING = range(7)
PHASES = (
    "idle",
    "preparing",
    "appending audit",
    "linking backup",
    "replacing file",
    "pruning backups",
    "publishing snapshot",
)
IN_WRITE = {AUDITING, BACKING_UP, REPLACING, PRUNING}


def initial_flags() -> dict[str, Flag]:
    config = ProgressiveConfig(0.0, 100.0, T0, T0 + timedelta(days=7), 0.0)
    return {
        "hybrid_rag_enabled": Flag(
            name="hybrid_rag_enabled",
            enabled=True,
            rollout_strategy=Strategy.PROGRESSIVE,
            rollout_percentage=0.0,
            progressive_config=config,
        ),
        "vector_search_enabled": Flag(
            name="vector_search_enabled", enabled=True, rollout_strategy=Strategy.PERCENTAGE, rollout_percentage=5.0
        ),
        "graph_database_enabled": Flag(name="graph_database_enabled", enabled=False, extra={"owner": "graph"}),
    }


def instrument(store: FlagStore, phase: mmap.mmap) -> None:
    """Wrap the store's write steps (on this instance, in the child only) to record the phase."""

    def step(entry: int, leave: int, method):
        def wrapped(*args, **kwargs):
            phase[0] = entry
            result = method(*args, **kwargs)
            phase[0] = leave
            return result

        return wrapped

    store.audit.append = step(AUDITING, BACKING_UP, store.audit.append)
    store._backup_current = step(BACKING_UP, REPLACING, store._backup_current)
    store._prune_backups = step(PRUNING, PUBLISHING, store._prune_backups)


def writer(state_dir: Path, started_fd: int, phase: mmap.mmap, seed: int) -> None:
    """The child's whole life: change flags until killed. Never returns into pytest."""
    try:
        store = FlagStore.open(state_dir, keep_backups=5)
        instrument(store, phase)
        rng = random.Random(seed)
        os.write(started_fd, b"!")
        i = 0
        while True:
            name = NAMES[i % len(NAMES)]
            flag = store.get(name)
            phase[0] = PREPARING
            if rng.random() < 0.5:
                store.set(name, enabled=not flag.enabled, actor="crash-test", reason=f"toggle {i}")
            else:
                pct = (flag.rollout_percentage + rng.choice((0.5, 1, 5, 12.25))) % 100
                store.set(name, percentage=pct, actor="crash-test", reason=f"percentage {i}")
            phase[0] = IDLE
            i += 1
    except BaseException as exc:  # noqa: BLE001 - report anything to the parent, then leave
        os.write(started_fd, f"E{type(exc).__name__}: {exc}".encode()[:500])
    finally:
        os._exit(1)


def kill_one_writer(state_dir: Path, phase: mmap.mmap, rng: random.Random) -> int:
    """Fork a writer, kill it 0-40 ms into its work; return the phase it was killed in."""
    child_seed, delay = rng.getrandbits(32), rng.uniform(0, MAX_RUN)
    read_fd, write_fd = os.pipe()
    phase[0] = IDLE
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        writer(state_dir, write_fd, phase, child_seed)
    os.close(write_fd)
    status = None
    try:
        ready, _, _ = select.select([read_fd], [], [], 10)
        assert ready, "the writer did not start within 10 s"
        signal_byte = os.read(read_fd, 500)
        assert signal_byte == b"!", f"the writer failed before writing: {signal_byte.decode(errors='replace')}"
        time.sleep(delay)  # the deliberate, random point of death
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        killed_in = phase[0]
        late = os.read(read_fd, 500) if select.select([read_fd], [], [], 0)[0] else b""
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (status, late)
        return killed_in
    finally:
        os.close(read_fd)
        if status is None:  # a failed check above: do not leave the writer running
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


class AuditReader:
    """Reads the audit log incrementally, checking every record is whole JSON."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0
        self.ids: set[str] = set()
        self.records = 0
        self.last_change: dict | None = None
        self.aborted: set[str] = set()

    def read_new(self) -> None:
        with open(self.path, "rb") as log:
            log.seek(self.offset)
            data = log.read()
        assert data == b"" or data.endswith(b"\n"), f"torn audit tail after open: {data[-200:]!r}"
        for line in data.splitlines():
            record = json.loads(line)
            self.ids.add(record["id"])
            self.records += 1
            if record["event"] == "aborted":
                self.aborted.add(record["id"])
            else:
                self.last_change = record
        self.offset += len(data)


def check_state(state_dir: Path, audit: AuditReader) -> None:
    """What a restarted daemon needs: a whole, valid file, an openable store, a consistent audit log."""
    path = state_dir / "flags.json"
    assert path.exists() and path.stat().st_size > 0
    flags = parse_flags_text(path.read_text(), path)
    assert set(flags) >= set(NAMES)

    with FlagStore.open(state_dir, keep_backups=5) as store:
        assert store.snapshot.flags == flags
        audit.read_new()
        for flag in flags.values():
            assert flag.audit_id in audit.ids, f"{flag.name} carries audit_id {flag.audit_id} not in the log"
        last = audit.last_change
        assert last["id"] in {f.audit_id for f in flags.values()} or last["id"] in audit.aborted, (
            f"the last change {last['id']} is neither in flags.json nor closed as aborted"
        )
    assert not list(state_dir.glob(".flags.json.*.tmp"))
    for backup in (state_dir / "backups").glob("flags.*.json"):
        parse_flags_text(backup.read_text(), backup)


@pytest.mark.slow
def test_sigkill_at_random_points_never_corrupts_the_store(tmp_path):
    """After 200 SIGKILLs at random points of a busy writer, flags.json, the lock, backups and audit log are always sound."""
    seed = int(os.environ.get("CRASH_SEED", "0")) or random.randrange(1, 2**31)
    rng = random.Random(seed)
    state_dir = tmp_path / "state"
    with FlagStore.open(state_dir) as store:
        store.apply(initial_flags(), actor="crash-test", reason="initial flags")
    audit = AuditReader(state_dir / "audit.jsonl")
    phase = mmap.mmap(-1, 1)  # anonymous and MAP_SHARED: the child's writes are visible here
    killed_in: Counter[int] = Counter()
    started = time.perf_counter()

    for round_ in range(ROUNDS):
        killed_in[kill_one_writer(state_dir, phase, rng)] += 1
        try:
            check_state(state_dir, audit)
        except Exception as exc:  # say which round and seed, whatever broke
            raise AssertionError(f"round {round_} (CRASH_SEED={seed}): {type(exc).__name__}: {exc}") from exc

    elapsed = time.perf_counter() - started
    mid_write = sum(killed_in[p] for p in IN_WRITE)
    print(
        f"\n{ROUNDS} kills in {elapsed:.1f}s (CRASH_SEED={seed}); {audit.records} audit records, "
        f"{len(audit.aborted)} aborted changes; kills mid-write {mid_write}, outside a write {ROUNDS - mid_write}: "
        + ", ".join(f"{PHASES[p]} {n}" for p, n in sorted(killed_in.items()))
    )
    assert audit.records > ROUNDS // 4, "the writer made too few changes to be worth killing"
    assert mid_write > 0, "no kill landed inside a write"
