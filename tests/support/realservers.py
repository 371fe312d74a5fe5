"""Real servers for the test suite: redis-server, Prometheus and the MongoDB-wire server.

Each server is a `ManagedServer`: one child process on a free loopback port, its output
in a log file, a readiness probe, and `stop()`/`start()` that keep the same port and data
directory, so a test can take a backend away and bring it back (degraded mode).

Scopes give speed without state leaking between tests:

- `redis_server`, `mongo_server` (function-scoped fixtures over one process per session,
  started on first use and kept in `config.stash`): every test receives the server
  *running and empty* -- restarted first if an earlier test left it stopped, then
  flushed. A test may stop()/start() it freely; it must not change server configuration.
- `prometheus_server` (function-scoped): a launcher; the test calls `.start(targets=...)`
  and gets its own Prometheus with its own scrape config, stopped at teardown.
  Prometheus 2.42 is ready in ~0.1 s but hands static targets to its scraper only on the
  first 5 s discovery tick, so the first sample arrives ~5-6 s after start. Start it
  early (targets need not be up yet), and once per test.

Every wait has a deadline. On timeout or early exit the test fails with the command line
and the tail of the server's log. A missing binary fails rather than skips: `make test`
installs all three, so a skip would only hide a broken setup.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, Self

import anyio
import httpx
import pymongo
import pymongo.errors
import pytest
import redis

HOST = "127.0.0.1"
READY_TIMEOUT = 30.0  # a cold start on a loaded CI machine; locally all three take < 1 s
STOP_GRACE = 10.0  # secantusd may drain connections for up to 5 s before closing storage
POLL_INTERVAL = 0.05
QUERY_TIMEOUT = 20.0  # the first scrape comes after Prometheus's 5 s discovery tick (or two)
REPO_ROOT = Path(__file__).resolve().parents[2]
SECANTUSD = REPO_ROOT / ".tools" / "secantus" / "bin" / "secantusd-py"
SYSTEM_DATABASES = {"admin", "config", "local"}


def free_port() -> int:
    """Return a loopback port the kernel just reported free (a race is possible, but rare)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def require_binary(path: str, hint: str = "") -> str:
    """Resolve an executable, or fail the test saying how to install it."""
    found = shutil.which(path)
    if found is None:
        pytest.fail(f"{path} not found; run `make test`, which installs it{hint}", pytrace=False)
    return found


class ManagedServer:
    """One server process on a fixed loopback port; stop()/start() keep port and data."""

    name = "server"

    def __init__(self, argv: list[str], port: int, workdir: Path) -> None:
        self.argv = argv
        self.port = port
        self.workdir = workdir
        self.log_path = workdir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def is_ready(self) -> bool:
        """Whether the server answers requests yet; each subclass asks its own protocol."""
        raise NotImplementedError

    def start(self) -> Self:
        """Start the process and return once it answers, or fail the test."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running on port {self.port}")
        # Append, so the tail after a restart still shows why the last run ended.
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while not self.is_ready():
            if not self.running:
                self.fail(f"exited with status {self._proc.returncode} before it was ready")
            if time.monotonic() > deadline:
                self.stop()
                self.fail(f"did not become ready within {READY_TIMEOUT:.0f}s")
            time.sleep(POLL_INTERVAL)

    def stop(self) -> None:
        """SIGTERM the process, and SIGKILL it if it has not exited after STOP_GRACE."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        if not self._wait_exit(proc, time.monotonic() + STOP_GRACE):
            proc.kill()
            proc.wait()

    def _wait_exit(self, proc: subprocess.Popen[bytes], deadline: float) -> bool:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
        return True

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log written)"
        return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"

    def fail(self, what: str) -> NoReturn:
        """Fail the test with what went wrong, the exact command and the log tail."""
        pytest.fail(
            f"{self.name} on port {self.port} {what}\n"
            f"command: {shlex.join(self.argv)}\n"
            f"log tail ({self.log_path}):\n{self.log_tail()}",
            pytrace=False,
        )


class RedisServer(ManagedServer):
    """redis-server without persistence: a restart comes back empty, as a cache should."""

    name = "redis-server"

    def __init__(self, workdir: Path) -> None:
        port = free_port()
        argv = [
            require_binary("redis-server"),
            "--port",
            str(port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ]
        super().__init__(argv, port, workdir)
        self.url = f"redis://{HOST}:{port}/0"

    def _client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def is_ready(self) -> bool:
        with contextlib.closing(self._client()) as client:
            try:
                return bool(client.ping())
            except redis.RedisError:  # refused while starting, or LOADING
                return False

    def reset(self) -> None:
        """Delete every key in every database."""
        with contextlib.closing(self._client()) as client:
            client.flushall()


class MongoServer(ManagedServer):
    """secantusd (MongoDB wire protocol) on a real data directory, so data survives restarts."""

    name = "secantusd"

    def __init__(self, workdir: Path) -> None:
        port = free_port()
        binary = os.environ.get("ROLLOUTD_SECANTUSD", str(SECANTUSD))
        # An explicit (empty) config stops secantusd auto-discovering ./secantusd.toml,
        # ~/.secantus/ or /etc/secantus/ and picking up a developer's settings.
        config = workdir / "secantusd.toml"
        config.write_text("# empty on purpose: flags on the command line are the whole config\n")
        argv = [
            require_binary(binary, " (or set ROLLOUTD_SECANTUSD to secantusd-py)"),
            "--config",
            str(config),
            "--host",
            HOST,
            "--port",
            str(port),
            "--storage-path",
            str(workdir / "data"),
            "--log-level",
            "INFO",
        ]
        super().__init__(argv, port, workdir)
        self.uri = f"mongodb://{HOST}:{port}/"

    def _client(self) -> pymongo.MongoClient[dict[str, Any]]:
        return pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=500, connectTimeoutMS=500)

    def is_ready(self) -> bool:
        with contextlib.closing(self._client()) as client:
            try:
                client.admin.command("ping")
            except pymongo.errors.PyMongoError:
                return False
        return True

    def reset(self) -> None:
        """Drop every database the tests may have created."""
        with contextlib.closing(self._client()) as client:
            for name in set(client.list_database_names()) - SYSTEM_DATABASES:
                client.drop_database(name)

    def _wait_exit(self, proc: subprocess.Popen[bytes], deadline: float) -> bool:
        # secantusd's SIGTERM handler closes the listening socket, which does not wake its
        # thread blocked in accept(), so it sits out a 2 s join. A connection wakes it; we
        # retry because the first one may arrive before the handler has run.
        # (SIGKILL is no shortcut: it loses writes not yet flushed to the WiredTiger log.)
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                socket.create_connection((HOST, self.port), timeout=0.2).close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=POLL_INTERVAL)
                return True
        return False


class PrometheusServer(ManagedServer):
    """Prometheus scraping the targets a test gives it, with optional rule files."""

    name = "prometheus"

    def __init__(self, workdir: Path, *, storage: Path | None = None, retention: str | None = None) -> None:
        """`storage` may hold backfilled blocks (tests/support/history.py); `retention` overrides
        the 15 d default, which counts back from the newest block."""
        port = free_port()
        self.config_path = workdir / "prometheus.yml"
        argv = [
            require_binary("prometheus"),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={storage or workdir / 'tsdb'}",
            f"--web.listen-address={HOST}:{port}",
            "--web.enable-lifecycle",  # lets a test POST /-/reload or /-/quit
            "--log.level=warn",  # info logs a dozen start-up lines per test
        ]
        if retention is not None:
            argv.append(f"--storage.tsdb.retention.time={retention}")
        super().__init__(argv, port, workdir)
        self.url = f"http://{HOST}:{port}"

    def start(
        self,
        targets: Iterable[str] | None = None,
        *,
        scrape_interval: str = "1s",
        rule_files: Iterable[str | Path] = (),
        job: str = "rolloutd",
    ) -> Self:
        """Write prometheus.yml (unless `targets` is None: reuse the last one) and start."""
        if targets is not None:
            config = render_config(list(targets), scrape_interval, list(rule_files), job)
            self.config_path.write_text(config)
        elif not self.config_path.exists():
            raise ValueError("the first start() needs targets")
        return super().start()

    def _get(self, path: str, **params: str) -> httpx.Response:
        # trust_env=False: a developer's HTTP_PROXY must not intercept loopback requests.
        return httpx.get(f"{self.url}{path}", params=params, timeout=5, trust_env=False)

    def is_ready(self) -> bool:
        try:
            return self._get("/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    def query(self, promql: str, *, at: datetime | None = None) -> list[dict[str, Any]]:
        """Run an instant query (now, or at the aware `at`) and return its result list
        (empty when nothing matches)."""
        params = {"query": promql}
        if at is not None:
            if at.tzinfo is None:
                raise ValueError(f"query time {at} has no timezone; pass an aware datetime")
            params["time"] = f"{at.timestamp():.3f}"
        return query_result(promql, self._get("/api/v1/query", **params))

    def wait_for_query(self, promql: str, timeout: float = QUERY_TIMEOUT) -> list[dict[str, Any]]:
        """Return the query's result once it is non-empty; fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not (result := self.query(promql)):
            if time.monotonic() > deadline:
                self._fail_query(promql, timeout)
            time.sleep(POLL_INTERVAL * 4)
        return result

    async def wait_for_query_async(self, promql: str, timeout: float = QUERY_TIMEOUT) -> list[dict[str, Any]]:
        """As `wait_for_query`, without blocking the event loop an in-process exporter runs on."""
        async with httpx.AsyncClient(base_url=self.url, timeout=5, trust_env=False) as client:
            with anyio.move_on_after(timeout):
                while True:
                    response = await client.get("/api/v1/query", params={"query": promql})
                    if result := query_result(promql, response):
                        return result
                    await anyio.sleep(POLL_INTERVAL * 4)
        self._fail_query(promql, timeout)

    def target_health(self) -> list[str]:
        """One line per scrape target: its URL, health and last scrape error."""
        targets = self._get("/api/v1/targets").json()["data"]
        return [f"{t['scrapeUrl']}: {t['health']} {t['lastError']!r}" for t in targets["activeTargets"]]

    def _fail_query(self, promql: str, timeout: float) -> NoReturn:
        # The usual cause is a target Prometheus cannot scrape; show what it saw.
        health = "\n".join(self.target_health()) or "(none yet: targets appear ~5 s after start)"
        self.fail(f"returned nothing for {promql!r} within {timeout:.0f}s\ntargets:\n{health}")


def render_config(targets: list[str], interval: str, rule_files: list[str | Path], job: str) -> str:
    """Build prometheus.yml; JSON is valid YAML, so no YAML library is needed."""
    config = {
        # Rules evaluate as often as targets are scraped, so alert tests need not wait 1 min.
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(Path(path).resolve()) for path in rule_files],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}],
    }
    return json.dumps(config, indent=2)


def query_result(promql: str, response: httpx.Response) -> list[dict[str, Any]]:
    """The `data.result` of a Prometheus API reply; a rejected query fails the test."""
    body = response.json()
    if body.get("status") != "success":
        pytest.fail(f"Prometheus rejected {promql!r}: {body.get('error')}", pytrace=False)
    return body["data"]["result"]


_REDIS = pytest.StashKey[RedisServer]()
_MONGO = pytest.StashKey[MongoServer]()


def _shared(request: pytest.FixtureRequest, key: pytest.StashKey, factory: type) -> Any:
    """The session's one instance of a server: running and reset for this test."""
    # conftest imports only the public fixtures, so a session-scoped helper fixture here
    # would not be found; the config stash and add_cleanup give the same lifetime.
    stash = request.config.stash
    if key not in stash:
        tmp_path_factory = request.getfixturevalue("tmp_path_factory")
        stash[key] = factory(tmp_path_factory.mktemp(factory.name))
        request.config.add_cleanup(stash[key].stop)
    server = stash[key]
    if not server.running:  # an earlier test stopped it (or it died): bring it back
        server.start()
    server.reset()
    return server


@pytest.fixture
def redis_server(request: pytest.FixtureRequest) -> RedisServer:
    """A running, empty redis-server (`.url`, `.port`, `.stop()`, `.start()`)."""
    return _shared(request, _REDIS, RedisServer)


@pytest.fixture
def mongo_server(request: pytest.FixtureRequest) -> MongoServer:
    """A running, empty MongoDB-wire server (`.uri`, `.port`, `.stop()`, `.start()`)."""
    return _shared(request, _MONGO, MongoServer)


@pytest.fixture
def prometheus_server(tmp_path: Path) -> Iterator[PrometheusServer]:
    """A Prometheus to `.start(targets=[...])`; it is stopped when the test ends."""
    server = PrometheusServer(tmp_path)
    try:
        yield server
    finally:
        server.stop()
