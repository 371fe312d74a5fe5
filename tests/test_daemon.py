"""The rolloutd process as systemd and operators meet it: start-up, sd_notify, signals, drain."""

from __future__ import annotations

import json
import signal
import socket
import stat
import time
from pathlib import Path

import httpx
import pytest

from tests.support.daemon_harness import Daemon, write_config


class NotifyListener:
    """A real NOTIFY_SOCKET: a unix datagram socket collecting what the daemon sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []

    def wait_for(self, key: str, value: str | None = None, timeout: float = 15.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in self.messages:
                if key in msg and (value is None or msg[key] == value):
                    self.messages.remove(msg)
                    return msg
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            self.messages.append(dict(line.split("=", 1) for line in data.splitlines() if "=" in line))
        raise AssertionError(f"no {key}={value or '*'} within {timeout}s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path):
    listener = NotifyListener(tmp_path / "notify.sock")
    yield listener
    listener.close()


@pytest.fixture
def daemon(tmp_path: Path):
    d = Daemon(write_config(tmp_path))
    yield d
    d.stop()


def test_ready_status_watchdog_and_stopping_reach_notify_socket(tmp_path: Path, notify: NotifyListener) -> None:
    """READY=1 with STATUS and MAINPID once serving, WATCHDOG=1 at half WATCHDOG_USEC, STOPPING=1 on SIGTERM.

    Serving means flags: OFREP answers the moment READY=1 is sent. The retriever loads in the
    background (its embedding model, its indexes), so /readyz turns 200 when it has, not before."""
    d = Daemon(write_config(tmp_path), env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"})
    d.start(wait=False)
    ready = notify.wait_for("READY", "1")
    assert ready["MAINPID"] == str(d.proc.pid)
    assert "serving 1 flags" in ready["STATUS"]
    ofrep = httpx.post(d.base_url + "/ofrep/v1/evaluate/flags", json={"context": {"targetingKey": "a"}})
    assert ofrep.status_code == 200, "READY=1 must mean serving flags"
    d.wait_ready(timeout=20.0)  # and the retriever follows
    start = time.monotonic()
    for _ in range(4):
        notify.wait_for("WATCHDOG", "1", timeout=2.0)
    elapsed = time.monotonic() - start
    assert elapsed < 2.0, f"4 pings at a 0.2 s period took {elapsed:.2f}s"
    d.signal(signal.SIGTERM)
    assert notify.wait_for("STOPPING", "1")["STATUS"].startswith("draining")
    assert d.wait() == 0


def test_sighup_sends_reloading_then_ready(tmp_path: Path, notify: NotifyListener) -> None:
    """A reload is announced as RELOADING=1 and ends with a new READY=1."""
    d = Daemon(write_config(tmp_path), env={"NOTIFY_SOCKET": str(notify.path)}).start()
    try:
        notify.wait_for("READY", "1")
        d.signal(signal.SIGHUP)
        notify.wait_for("RELOADING", "1")
        notify.wait_for("READY", "1")
    finally:
        d.stop()


def test_logs_are_json_lines_with_syslog_priority_prefix(daemon: Daemon) -> None:
    """Every line the daemon prints is `<N>` followed by one JSON object."""
    daemon.start()
    output = daemon.stop()
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines, "the daemon logged nothing"
    for line in lines:
        assert line[0] == "<" and line[2] == ">" and line[1].isdigit(), line
        json.loads(line[3:])
    events = {e["event"]: e for e in daemon.events()}
    assert events["daemon.ready"]["_priority"] == 5  # notice


def test_admin_socket_is_mode_0660(daemon: Daemon) -> None:
    """The control socket is never world-accessible."""
    daemon.start()
    mode = stat.S_IMODE(daemon.socket.stat().st_mode)
    assert mode == 0o660, oct(mode)


def test_sigterm_drains_an_in_flight_request_then_exits_0(daemon: Daemon) -> None:
    """A request in progress at SIGTERM completes; new connections are refused; exit status 0."""
    daemon.start()
    host, port = daemon.base_url.removeprefix("http://").split(":")
    body = json.dumps({"context": {"targetingKey": "t-1"}}).encode()
    conn = socket.create_connection((host, int(port)), timeout=10)
    head = (
        f"POST /ofrep/v1/evaluate/flags HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    conn.sendall(head + body[:5])  # the request is now in flight
    time.sleep(0.3)
    daemon.signal(signal.SIGTERM)
    _wait_refused(host, int(port))
    conn.sendall(body[5:])
    response = _read_response(conn)
    assert response.startswith(b"HTTP/1.1 200"), response[:200]
    assert b'"flags"' in response
    assert daemon.wait() == 0


def test_drain_is_bounded_when_a_client_never_finishes(tmp_path: Path) -> None:
    """A client that never completes its request cannot hold the daemon past drain_seconds."""
    d = Daemon(write_config(tmp_path, drain_seconds=1.0)).start()
    host, port = d.base_url.removeprefix("http://").split(":")
    conn = socket.create_connection((host, int(port)), timeout=10)
    conn.sendall(b"POST /ofrep/v1/evaluate/flags HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    time.sleep(0.3)
    started = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait(timeout=15) == 0
    took = time.monotonic() - started
    conn.close()
    assert took < 5.0, f"stopping took {took:.1f}s with drain_seconds=1"
    assert any(e["event"] == "daemon.stopped" for e in d.events())


def test_refuses_to_start_on_corrupt_flags_file_and_leaves_it_untouched(tmp_path: Path) -> None:
    """A corrupt flags.json stops start-up with status 78, naming file and line; the bytes stay as they were."""
    state = tmp_path / "state"
    state.mkdir()
    bad = b'{\n  "hybrid_rag_enabled": {\n    "enabled": true,\n    "rollout_percentage": 10.0,,\n  }\n}\n'
    (state / "flags.json").write_bytes(bad)
    d = Daemon(write_config(tmp_path)).start(wait=False)
    assert d.wait() == 78
    event = next(e for e in d.events() if e["event"] == "flags.invalid")
    assert event["file"] == str(state / "flags.json")
    assert event["line"] == 4
    assert event["_priority"] == 2
    assert (state / "flags.json").read_bytes() == bad


def test_refuses_to_start_on_invalid_config(tmp_path: Path) -> None:
    """An unknown config key is a start-up error naming the key and a likely fix, status 78."""
    config = write_config(tmp_path)
    config.write_text(config.read_text() + 'stat_dir = "/tmp/x"\n')
    d = Daemon(config).start(wait=False)
    assert d.wait() == 78
    event = next(e for e in d.events() if e["event"] == "config.invalid")
    assert "stat_dir" in event["problem"] and "state_dir" in event["problem"]


def test_second_daemon_on_same_state_dir_is_refused(tmp_path: Path, daemon: Daemon) -> None:
    """Two daemons never share a state_dir: the second exits 78 naming the lock holder."""
    daemon.start()
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = Daemon(write_config(other_dir, state_dir=str(tmp_path / "state"))).start(wait=False)
    assert other.wait() == 78
    event = next(e for e in other.events() if e["event"] == "flags.locked")
    assert f"pid {daemon.proc.pid}" in event["error"]


def test_sighup_reloads_a_hand_edit_and_rejects_a_bad_one(daemon: Daemon) -> None:
    """SIGHUP picks up a valid edit of flags.json; an invalid edit is rejected and the old flags kept."""
    daemon.start()
    flags_path = daemon.config.parent / "state" / "flags.json"
    flags = json.loads(flags_path.read_text())
    flags["new_flag"] = {"enabled": True, "rollout_strategy": "all", "rollout_percentage": 100.0}
    flags_path.write_text(json.dumps(flags, indent=2))
    daemon.signal(signal.SIGHUP)
    _wait_until(lambda: _eval(daemon, "new_flag").status_code == 200)
    flags_path.write_text(flags_path.read_text().replace('"enabled": true', '"enabled": "yes"', 1))
    daemon.signal(signal.SIGHUP)
    time.sleep(0.5)
    assert _eval(daemon, "new_flag").json()["value"] is True, "the old flags must stay in force"
    daemon.stop()
    rejected = [e for e in daemon.events() if e["event"] == "flags.reload_rejected"]
    assert rejected and rejected[0]["line"] is not None and rejected[0]["_priority"] == 3


def test_sighup_with_a_broken_config_keeps_the_running_one(daemon: Daemon) -> None:
    """A config that no longer parses is rejected on SIGHUP; the daemon keeps serving."""
    daemon.start()
    daemon.config.write_text(daemon.config.read_text() + "this is not toml\n")
    daemon.signal(signal.SIGHUP)
    time.sleep(0.5)
    assert httpx.get(daemon.base_url + "/readyz").status_code == 200
    daemon.stop()
    assert any(e["event"] == "config.reload_rejected" for e in daemon.events())


def test_sigusr1_turns_the_kill_switch_on_durably(daemon: Daemon) -> None:
    """SIGUSR1 writes emergency_shutdown on to flags.json, audited, and every flag evaluates off."""
    daemon.start()
    daemon.signal(signal.SIGUSR1)
    flags_path = daemon.config.parent / "state" / "flags.json"
    _wait_until(lambda: json.loads(flags_path.read_text())["emergency_shutdown"]["enabled"] is True)
    audit = (daemon.config.parent / "state" / "audit.jsonl").read_text().splitlines()
    assert json.loads(audit[-1])["actor"] == "signal:SIGUSR1"
    assert _eval(daemon, "emergency_shutdown").json()["value"] is True


def test_listen_port_in_use_is_a_clear_start_up_error(tmp_path: Path) -> None:
    """A busy listen address stops start-up with status 78 and says which setting to change."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        d = Daemon(write_config(tmp_path, port=port)).start(wait=False)
        assert d.wait() == 78
    event = next(e for e in d.events() if e["event"] == "listen.failed")
    assert "[daemon] listen" in event["error"]


def _eval(daemon: Daemon, key: str) -> httpx.Response:
    return httpx.post(f"{daemon.base_url}/ofrep/v1/evaluate/flags/{key}", json={"context": {"targetingKey": "k"}})


def _wait_until(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s")


def _wait_refused(host: str, port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
        except ConnectionRefusedError:
            return
        time.sleep(0.02)
    raise AssertionError("the daemon kept accepting connections after SIGTERM")


def _read_response(conn: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
        if b"\r\n\r\n" in data:
            head, _, body = data.partition(b"\r\n\r\n")
            length = [int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")]
            if length and len(body) >= length[0]:
                return data
