"""rolloutctl as operators run it: a real `python -m deploy` process against a real rolloutd."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.daemon_harness import REPO, Daemon, write_config
from tests.support.flagfiles import PHASE5_FLAGS, seed_flags, write_seed_flags

TIMEOUT = 30.0


def ctl(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run rolloutctl (bounded) and return its exit status and output."""
    base = {k: v for k, v in os.environ.items() if k != "ROLLOUTD_SOCKET"}
    return subprocess.run(
        [sys.executable, "-m", "deploy", *map(str, args)],
        cwd=REPO,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def first_json(text: str) -> Any:
    """The JSON value at the start of `text` (what follows it is ignored)."""
    return json.JSONDecoder().raw_decode(text.lstrip())[0]


def without_audit_ids(flags: dict[str, Any]) -> dict[str, Any]:
    return {name: {k: v for k, v in body.items() if k != "audit_id"} for name, body in flags.items()}


def audit_records(daemon_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (daemon_dir / "state" / "audit.jsonl").read_text().splitlines()]


def ofrep(daemon: Daemon, flag: str, context: dict[str, Any]) -> dict[str, Any]:
    return httpx.post(
        f"{daemon.base_url}/ofrep/v1/evaluate/flags/{flag}", json={"context": context}, timeout=5.0
    ).json()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon on the seed flags for the tests that change nothing."""
    directory = tmp_path_factory.mktemp("ctl")
    write_seed_flags(directory)
    daemon = Daemon(write_config(directory)).start()
    yield daemon
    daemon.stop()


@pytest.fixture
def own(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon of this test's own on the seed flags, for tests that change them."""
    write_seed_flags(tmp_path)
    daemon = Daemon(write_config(tmp_path)).start()
    yield daemon
    daemon.stop()


# -- reading ---------------------------------------------------------------------------------


def test_health_exits_0_and_names_the_listen_address(served: Daemon) -> None:
    """`health` on a ready daemon exits 0 and says where it listens and how many flags it serves."""
    done = ctl("--socket", served.socket, "health")
    assert done.returncode == 0, done.stderr
    assert served.base_url.removeprefix("http://") in done.stdout
    assert "ready" in done.stdout and "8 flags" in done.stdout and "kill switch off" in done.stdout


def test_health_json_has_the_daemon_facts(served: Daemon) -> None:
    """`--json health` prints the daemon's answer: listen, state_dir, flags, kill switch."""
    done = ctl("--socket", served.socket, "--json", "health")
    assert done.returncode == 0, done.stderr
    health = json.loads(done.stdout)
    assert health["listen"] == served.base_url.removeprefix("http://")
    assert (health["ready"], health["flags"], health["kill_switch"]) == (True, 8, False)


def test_flags_list_shows_every_flag_with_its_percentage(served: Daemon) -> None:
    """`flags list` has one row per flag with enabled, strategy, percentage and constraints."""
    done = ctl("--socket", served.socket, "flags", "list")
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines()[1:] if line.strip()}
    assert set(rows) == set(seed_flags())
    for name in PHASE5_FLAGS:
        assert rows[name][1:4] == ["on", "progressive", "10%"], rows[name]
        assert "agent IN [Builder, Deploy, QA, Support, Marketing]" in " ".join(rows[name])
    assert rows["memory_compression_enabled"][1:4] == ["on", "all", "100%"]
    assert rows["emergency_shutdown"][1] == "off"
    assert "emergency_shutdown is ON" not in done.stdout


def test_flags_show_prints_the_stored_json(served: Daemon) -> None:
    """`flags show NAME` prints the flag exactly as stored in flags.json and its effective percentage."""
    done = ctl("--socket", served.socket, "flags", "show", "hybrid_rag_enabled")
    assert done.returncode == 0, done.stderr
    assert first_json(done.stdout) == {"hybrid_rag_enabled": seed_flags()["hybrid_rag_enabled"]}
    assert "effective percentage now: 10%" in done.stdout


# -- usage errors and failures ---------------------------------------------------------------


def test_flags_set_without_reason_is_a_usage_error(served: Daemon) -> None:
    """`flags set` without --reason exits 2, names the missing option and changes nothing."""
    before = ctl("--socket", served.socket, "--json", "flags", "list").stdout
    done = ctl("--socket", served.socket, "flags", "set", "hybrid_rag_enabled", "--percentage", "50")
    assert done.returncode == 2
    assert "--reason" in done.stderr
    assert ctl("--socket", served.socket, "--json", "flags", "list").stdout == before


def test_flags_set_with_nothing_to_change_is_a_usage_error(served: Daemon) -> None:
    """`flags set NAME --reason r` with neither --enabled nor --percentage exits 2."""
    done = ctl("--socket", served.socket, "flags", "set", "hybrid_rag_enabled", "--reason", "r")
    assert done.returncode == 2
    assert "--enabled" in done.stderr and "--percentage" in done.stderr


def test_enabled_maybe_is_a_usage_error(served: Daemon) -> None:
    """`--enabled maybe` exits 2 saying it expected true or false."""
    done = ctl("--socket", served.socket, "flags", "set", "hybrid_rag_enabled", "--enabled", "maybe", "--reason", "r")
    assert done.returncode == 2
    assert "expected true or false" in done.stderr and "maybe" in done.stderr


def test_no_command_is_a_usage_error() -> None:
    """rolloutctl without a command, or `flags` without an action, prints usage and exits 2."""
    for args in ((), ("flags",)):
        done = ctl("--socket", "/nonexistent.sock", *args)
        assert done.returncode == 2, args
        assert "usage:" in done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("flags", "set", "no_such_flag", "--enabled", "true", "--reason", "r"),
        ("flags", "show", "no_such_flag"),
    ],
)
def test_unknown_flag_exits_1_with_the_daemons_message(served: Daemon, args: tuple[str, ...]) -> None:
    """An unknown flag exits 1 with the daemon's message, which lists the known flags."""
    done = ctl("--socket", served.socket, *args)
    assert done.returncode == 1
    assert "no flag named 'no_such_flag'" in done.stderr
    assert "hybrid_rag_enabled" in done.stderr
    assert "Traceback" not in done.stderr


def test_percentage_out_of_range_exits_1(served: Daemon) -> None:
    """A percentage above 100 is refused by the daemon: exit 1 naming the field and the limit."""
    done = ctl("--socket", served.socket, "flags", "set", "hybrid_rag_enabled", "--percentage", "150", "--reason", "r")
    assert done.returncode == 1
    assert "rollout_percentage" in done.stderr and "0-100" in done.stderr


def test_unknown_backup_exits_1(served: Daemon) -> None:
    """Restoring a backup that does not exist exits 1 and says how to list them."""
    done = ctl("--socket", served.socket, "flags", "restore", "flags.nope.json", "--reason", "r")
    assert done.returncode == 1
    assert "no backup named 'flags.nope.json'" in done.stderr and "rolloutctl flags restore" in done.stderr


def test_restore_without_reason_is_a_usage_error(served: Daemon) -> None:
    """`flags restore BACKUP` without --reason exits 2."""
    done = ctl("--socket", served.socket, "flags", "restore", "flags.x.json")
    assert done.returncode == 2
    assert "--reason" in done.stderr


# -- finding the socket ----------------------------------------------------------------------


def test_unreachable_socket_from_flag(tmp_path: Path) -> None:
    """With --socket pointing nowhere, exit 3 and name the path and that it came from --socket."""
    sock = tmp_path / "missing.sock"
    done = ctl("--socket", sock, "health")
    assert done.returncode == 3
    assert str(sock) in done.stderr and "from --socket" in done.stderr


def test_unreachable_socket_from_config(tmp_path: Path) -> None:
    """With --config naming a dead socket, exit 3 and name the socket and the config file."""
    config = write_config(tmp_path)
    done = ctl("--config", config, "flags", "list")
    assert done.returncode == 3
    assert str(tmp_path / "run" / "admin.sock") in done.stderr and f"from {config}" in done.stderr


def test_unreachable_socket_from_environment(tmp_path: Path) -> None:
    """With $ROLLOUTD_SOCKET naming a dead socket, exit 3 and say the path came from $ROLLOUTD_SOCKET."""
    sock = tmp_path / "env.sock"
    done = ctl("health", env={"ROLLOUTD_SOCKET": str(sock)})
    assert done.returncode == 3
    assert str(sock) in done.stderr and "from $ROLLOUTD_SOCKET" in done.stderr


def test_stale_socket_file_is_unreachable(tmp_path: Path) -> None:
    """A socket file nobody listens on (left by a killed daemon) is exit 3, not a traceback."""

    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
    done = ctl("--socket", path, "health")
    assert done.returncode == 3
    assert str(path) in done.stderr and "Traceback" not in done.stderr


def test_socket_flag_wins_over_config_and_environment(served: Daemon, tmp_path: Path) -> None:
    """--socket is used even when --config and $ROLLOUTD_SOCKET point elsewhere."""
    done = ctl(
        "--socket",
        served.socket,
        "--config",
        write_config(tmp_path),
        "health",
        env={"ROLLOUTD_SOCKET": str(tmp_path / "other.sock")},
    )
    assert done.returncode == 0, done.stderr


def test_config_is_found_from_its_admin_socket(served: Daemon) -> None:
    """--config CFG reaches the daemon at CFG's admin_socket."""
    done = ctl("--config", served.config, "health")
    assert done.returncode == 0, done.stderr


def test_unreadable_config_is_a_clean_error(tmp_path: Path) -> None:
    """A --config that does not exist exits 1 with a one-line message naming it, not a traceback."""
    missing = tmp_path / "missing.toml"
    done = ctl("--config", missing, "health")
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1
    assert str(missing) in done.stderr


# -- changing flags --------------------------------------------------------------------------


def test_flags_set_writes_the_file_and_the_audit_log(own: Daemon) -> None:
    """`flags set --percentage 25` rewrites flags.json (both seed fields), backs up the old file and audits actor and reason."""
    state = own.config.parent / "state"
    original = (state / "flags.json").read_text()
    done = ctl(
        "--socket", own.socket, "flags", "set", "hybrid_rag_enabled", "--percentage", "25", "--reason", "stage 3 early"
    )
    assert done.returncode == 0, done.stderr
    assert "hybrid_rag_enabled: on, 25%" in done.stdout
    on_disk = json.loads((state / "flags.json").read_text())
    assert on_disk["hybrid_rag_enabled"]["rollout_percentage"] == 25.0
    assert on_disk["hybrid_rag_enabled"]["progressive_config"]["current_percentage"] == 25.0
    assert without_audit_ids(on_disk)["vector_search_enabled"] == seed_flags()["vector_search_enabled"]
    record = audit_records(own.config.parent)[-1]
    assert record["flag"] == "hybrid_rag_enabled" and record["reason"] == "stage 3 early"
    assert record["actor"].endswith("via rolloutctl")
    assert record["before"]["rollout_percentage"] == 10.0 and record["after"]["rollout_percentage"] == 25.0
    assert record["id"] == on_disk["hybrid_rag_enabled"]["audit_id"]
    backups = sorted((state / "backups").glob("flags.*.json"))
    assert [b.read_text() for b in backups] == [original]
    assert ofrep(own, "hybrid_rag_enabled", {"targetingKey": "t", "agent": "QA"})["metadata"]["percentage"] == 25.0
    shown = ctl("--socket", own.socket, "flags", "show", "hybrid_rag_enabled")
    assert shown.returncode == 0, shown.stderr
    assert first_json(shown.stdout)["hybrid_rag_enabled"]["rollout_percentage"] == 25.0
    assert re.search(r"change\s+\S+ via rolloutctl: stage 3 early", shown.stdout), shown.stdout


def test_flags_set_enabled_false_disables(own: Daemon) -> None:
    """`flags set NAME --enabled false` turns the flag off for everyone (reason DISABLED)."""
    done = ctl(
        "--socket", own.socket, "flags", "set", "memory_compression_enabled", "--enabled", "false", "--reason", "r"
    )
    assert done.returncode == 0, done.stderr
    answer = ofrep(own, "memory_compression_enabled", {"targetingKey": "t", "agent": "Builder"})
    assert (answer["value"], answer["reason"]) == (False, "DISABLED")


def test_restore_lists_backups_and_restores_through_the_daemon(own: Daemon) -> None:
    """`flags restore` lists backups; `flags restore BACKUP --reason r` makes flags.json hold the backup's flags."""
    state = own.config.parent / "state"
    for pct in ("25", "50"):
        assert (
            ctl(
                "--socket", own.socket, "flags", "set", "hybrid_rag_enabled", "--percentage", pct, "--reason", "r"
            ).returncode
            == 0
        )
    listed = ctl("--socket", own.socket, "flags", "restore")
    assert listed.returncode == 0, listed.stderr
    backups = sorted((state / "backups").glob("flags.*.json"))
    assert len(backups) == 2
    for backup in backups:
        assert re.search(rf"^{re.escape(backup.name)}\s+\d+\s+8\s+ok$", listed.stdout, re.M), listed.stdout
    oldest = backups[0]
    done = ctl("--socket", own.socket, "flags", "restore", oldest.name, "--reason", "back to 10%")
    assert done.returncode == 0, done.stderr
    assert f"restored {oldest.name}: 8 flags" in done.stdout
    restored = json.loads((state / "flags.json").read_text())
    assert without_audit_ids(restored) == without_audit_ids(json.loads(oldest.read_text()))
    assert restored["hybrid_rag_enabled"]["rollout_percentage"] == 10.0
    assert ofrep(own, "hybrid_rag_enabled", {"targetingKey": "t", "agent": "QA"})["metadata"]["percentage"] == 10.0
    last = audit_records(own.config.parent)[-1]
    assert last["event"] == "restore" and "back to 10%" in last["reason"] and oldest.name in last["reason"]


def test_emergency_stop_turns_the_kill_switch_on(own: Daemon) -> None:
    """`emergency-stop --reason r` exits 0, writes emergency_shutdown on, and every flag evaluates off."""
    done = ctl("--socket", own.socket, "emergency-stop", "--reason", "p95 through the roof")
    assert done.returncode == 0, done.stderr
    assert "emergency_shutdown is ON" in done.stdout
    on_disk = json.loads((own.config.parent / "state" / "flags.json").read_text())
    assert on_disk["emergency_shutdown"]["enabled"] is True
    answer = ofrep(own, "memory_compression_enabled", {"targetingKey": "t", "agent": "Builder"})
    assert (answer["value"], answer["reason"], answer["metadata"].get("disabledBy")) == (
        False,
        "DISABLED",
        "emergency_shutdown",
    )
    listed = ctl("--socket", own.socket, "flags", "list")
    assert "emergency_shutdown is ON" in listed.stdout
    health = ctl("--socket", own.socket, "health")
    assert "kill switch ON" in health.stdout
    record = audit_records(own.config.parent)[-1]
    assert (record["flag"], record["reason"]) == ("emergency_shutdown", "p95 through the roof")


def test_offline_restore_recovers_a_corrupt_flags_file(own: Daemon) -> None:
    """With flags.json corrupt the daemon exits 78 naming file and line; `--config CFG flags restore` lists and restores offline; the daemon starts again."""
    state = own.config.parent / "state"
    flags_path = state / "flags.json"
    assert (
        ctl(
            "--socket", own.socket, "flags", "set", "hybrid_rag_enabled", "--percentage", "25", "--reason", "r"
        ).returncode
        == 0
    )
    own.stop()
    text = flags_path.read_text()
    flags_path.write_text(text[: len(text) // 2])
    broken = Daemon(own.config).start(wait=False)
    assert broken.wait() == 78
    event = next(e for e in broken.events() if e["event"] == "flags.invalid")
    assert event["file"] == str(flags_path)
    assert isinstance(event["line"], int) and 1 <= event["line"] <= text[: len(text) // 2].count("\n") + 1
    assert "rolloutctl flags restore" in event["remedy"]

    listed = ctl("--config", own.config, "flags", "restore")
    assert listed.returncode == 0, listed.stderr
    assert "no daemon answers" in listed.stderr and str(state) in listed.stderr
    assert "current flags file is invalid" in listed.stderr
    (backup,) = sorted((state / "backups").glob("flags.*.json"))
    assert backup.name in listed.stdout

    done = ctl("--config", own.config, "flags", "restore", backup.name, "--reason", "recover from truncation")
    assert done.returncode == 0, done.stderr
    assert without_audit_ids(json.loads(flags_path.read_text())) == seed_flags()
    record = audit_records(own.config.parent)[-1]
    assert record["event"] == "restore" and "recover from truncation" in record["reason"]
    relisted = ctl("--config", own.config, "flags", "restore")
    assert re.search(r"^flags\.\S+\.json\s+\d+\s+-\s+INVALID: ", relisted.stdout, re.M), (
        "the corrupt file itself is kept as a backup, marked not restorable"
    )

    again = Daemon(own.config).start()
    try:
        listed = ctl("--config", own.config, "--json", "flags", "list")
        assert listed.returncode == 0, listed.stderr
        percentages = {f["name"]: f["percentage"] for f in json.loads(listed.stdout)["flags"]}
        assert percentages["hybrid_rag_enabled"] == 10.0 and len(percentages) == 8
    finally:
        again.stop()


def test_percentage_on_the_kill_switch_is_refused(served: Daemon) -> None:
    """The kill switch is all or nothing: a percentage for it is refused with exit 1 and says why."""
    done = ctl("--socket", served.socket, "flags", "set", "emergency_shutdown", "--percentage", "50", "--reason", "x")
    assert done.returncode == 1
    assert "all or nothing" in done.stderr
