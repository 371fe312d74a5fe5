"""Run a real `rolloutd` process for a test: its own config, state_dir, port and socket.

The daemon is started as a subprocess exactly as systemd would start it (`python -m
controller.host.daemon --config PATH`), so signals, sockets and exit codes are the real ones.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(directory: Path, port: int | None = None, **daemon: object) -> Path:
    settings = {
        "state_dir": str(directory / "state"),
        "listen": f"127.0.0.1:{port or free_port()}",
        "admin_socket": str(directory / "run" / "admin.sock"),
        "drain_seconds": 5.0,
        **daemon,
    }
    lines = ["[daemon]"] + [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    path = directory / "rolloutd.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Daemon:
    config: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        for line in self.config.read_text().splitlines():
            if line.startswith("listen"):
                return "http://" + json.loads(line.split("=", 1)[1].strip())
        raise AssertionError("no listen in config")

    @property
    def socket(self) -> Path:
        for line in self.config.read_text().splitlines():
            if line.startswith("admin_socket "):
                return Path(json.loads(line.split("=", 1)[1].strip()))
        raise AssertionError("no admin_socket in config")

    def start(self, wait: bool = True, timeout: float = 20.0) -> Daemon:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller.main", "--config", str(self.config)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # Drain the pipe all the time: a daemon rehearsing at a high time_scale logs fast,
        # and a full pipe would block its event loop in the middle of a test.
        self._reader = threading.Thread(target=self._drain, args=(self.proc,), daemon=True)
        self._reader.start()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc and self.proc.poll() is not None:
                raise AssertionError(f"rolloutd exited with {self.proc.returncode}:\n{self.read_output()}")
            try:
                if httpx.get(self.base_url + "/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"rolloutd not ready after {timeout}s:\n{self.stop()}")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        finally:
            self.read_output()

    def stop(self, timeout: float = 20.0) -> str:
        """SIGTERM, wait (bounded), and return everything it printed."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.read_output()

    def _drain(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def read_output(self) -> str:
        """Everything printed so far (all of it, once the process has exited)."""
        if self.proc and self.proc.poll() is not None and self._reader is not None:
            self._reader.join(timeout=5)
        return self.output

    def events(self) -> list[dict[str, object]]:
        """The JSON log events printed so far."""
        out = []
        for line in self.read_output().splitlines():
            if line.startswith("<") and ">" in line:
                prio, _, body = line[1:].partition(">")
                try:
                    event = json.loads(body)
                except ValueError:
                    continue
                event["_priority"] = int(prio)
                out.append(event)
        return out
