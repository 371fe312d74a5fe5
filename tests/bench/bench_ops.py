"""Operations benchmarks: a real daemon's start-up, and SIGUSR1 to flags durably off.

Startup (`python -m tests.bench startup`)
    The real daemon (`python -m controller.host.daemon --config PATH`, tests/support/daemon_harness.py)
    with NOTIFY_SOCKET set to an AF_UNIX datagram socket this process binds, as systemd's.
    One trial: Popen → the datagram holding READY=1 (flags, rollout and listeners up), and
    Popen → the first 200 from GET /readyz, polled every 5 ms from READY=1 on (the retriever
    opens in the background after READY=1; /readyz says when it serves). Then SIGTERM, and
    SIGTERM → exit is timed too. Two cases, interleaved trial by trial with the baselines
    so that all four see the same load: an empty state_dir (a fresh one each trial), and a
    state_dir holding 100,000 memories (`retrieval.corpus.generate`, as bench_retrieval
    builds its corpora) loaded once through `POST /v1/memories:batch`, 1,000 a request,
    into a daemon that SIGTERM then stopped, so that it saved its vector index. Every
    restart of it must log `retrieval.opened` with all 100,000 memories and 0 re-embedded
    (the saved index was used), or the run fails. VmRSS/VmHWM are read once /readyz is 200.
    Baselines: `python -c pass` and `python -c "import controller.host.daemon"` (the import
    cost), wall time from Popen to exit. One untimed warm-up round first (page cache).
    `python -X importtime` of the daemon names what the import spends its time on.

Emergency (`python -m tests.bench emergency`)
    The real daemon with a small plan: phase5's six flags, stage 0 at hour 0 (25 % of
    Builder/Deploy/QA), the next at 10,000 h, one guard every 5 minutes against a fake but
    real HTTP server answering every Prometheus instant query with one healthy sample (so
    the rollout runs and no evaluation interferes). One trial: SIGUSR1, then flags.json
    read and parsed every 1 ms until every plan flag is off and `emergency_shutdown` on
    (the time it is durable: the store fsyncs before the rename); from then on the admin
    API's GET /v1/rollout/journal every 1 ms until it holds the `emergency` decision (the
    journal is written after the flags, so its figure is an upper bound by about one
    request). Then `rolloutctl resume --clear-emergency` and `rolloutctl promote` (the real
    CLI) bring the flags back to 25 %, checked on disk. Before each trial, the baseline:
    one `flags.atomic.atomic_write` of a flags.json-sized file in the same directory.
    A torn read of flags.json, a rollout not in `emergency` after the signal, or flags not
    back after the re-arm fails the run. The status must say `emergency` too; how often its
    first read, just after the journal showed the emergency, still said `running` is
    counted (`status_lagged_journal`: the state is set when the loop resumes after the
    worker thread's commit). Target: p95 < 100 ms.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from controller.plan_load import load_plan
from flags.atomic import atomic_write
from flags.model import KILL_SWITCH
from flags.store import FlagStore
from retrieval.corpus import generate
from tests.bench import REPO, BenchFailure, filesystem_type, heading, latency_summary_ms, line, table, verdict
from tests.bench.bench_controller import LOW_COHORT, PHASE5, _daemon_config, _memory_kib, check_durable
from tests.bench.bench_flags import disk_scratch_dir
from tests.support.daemon_harness import Daemon

STARTUP_TRIALS = int(os.environ.get("BENCH_STARTUP_TRIALS", "10"))
STARTUP_MEMORIES = int(os.environ.get("BENCH_STARTUP_MEMORIES", "100000"))
LOAD_BATCH = 1000
START_TIMEOUT = 120.0
READYZ_POLL = 0.005
IMPORT_TOP = 8

EMERGENCY_TRIALS = int(os.environ.get("BENCH_EMERGENCY_TRIALS", "100"))
EMERGENCY_WARMUP = 3
EMERGENCY_TARGET_MS = 100.0
EMERGENCY_PERCENTAGE = 25.0
POLL = 0.001
SETTLE = 0.05  # after a re-arm, before the next signal: let the daemon's loop go idle
TRIAL_TIMEOUT = 10.0


# -- shared plumbing --------------------------------------------------------------------------


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "notify.sock"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))

    def close(self) -> None:
        self._sock.close()
        self.path.unlink(missing_ok=True)

    def drain(self) -> None:
        """Drop what an earlier daemon sent (STOPPING=1, STATUS=...)."""
        self._sock.setblocking(False)
        try:
            while True:
                self._sock.recv(65536)
        except BlockingIOError:
            pass
        finally:
            self._sock.setblocking(True)

    def wait_for(self, field: str, deadline: float, daemon: Daemon) -> float:
        """The moment (perf_counter) a datagram holding `field` arrived."""
        while (remaining := deadline - time.perf_counter()) > 0:
            self._sock.settimeout(min(remaining, 0.5))
            try:
                datagram = self._sock.recv(65536)
            except TimeoutError:
                _check_alive(daemon)
                continue
            arrived = time.perf_counter()
            if field in datagram.decode().split("\n"):
                return arrived
        raise BenchFailure(f"no {field} on NOTIFY_SOCKET within {START_TIMEOUT:g} s:\n{daemon.stop()[-2000:]}")


def _check_alive(daemon: Daemon) -> None:
    if daemon.proc is not None and daemon.proc.poll() is not None:
        raise BenchFailure(f"rolloutd exited with {daemon.proc.returncode}:\n{daemon.read_output()[-2000:]}")


def _stop(daemon: Daemon, timeout: float = START_TIMEOUT) -> float:
    """SIGTERM → exit, in seconds; a non-zero exit fails the run."""
    start = time.perf_counter()
    output = daemon.stop(timeout)
    took = time.perf_counter() - start
    if daemon.proc is not None and daemon.proc.returncode != 0:
        raise BenchFailure(f"rolloutd exited with {daemon.proc.returncode} on SIGTERM:\n{output[-2000:]}")
    return took


def _event(daemon: Daemon, name: str) -> dict[str, Any]:
    found = [e for e in daemon.events() if e.get("event") == name]
    if not found:
        raise BenchFailure(f"rolloutd logged no {name}:\n{daemon.read_output()[-2000:]}")
    return found[-1]


# -- startup ----------------------------------------------------------------------------------


@dataclass
class StartTrials:
    ready: list[float] = field(default_factory=list)  # Popen → READY=1
    readyz: list[float] = field(default_factory=list)  # Popen → /readyz 200
    stop: list[float] = field(default_factory=list)  # SIGTERM → exit 0
    opened: list[float] = field(default_factory=list)  # the daemon's own retrieval.opened seconds
    rss_kib: list[int] = field(default_factory=list)
    hwm_kib: list[int] = field(default_factory=list)

    def record(self, ready: float, readyz: float, stop: float, opened: float, rss: int, hwm: int) -> None:
        for series, value in zip(
            (self.ready, self.readyz, self.stop, self.opened, self.rss_kib, self.hwm_kib),
            (ready, readyz, stop, opened, rss, hwm),
            strict=False,
        ):
            series.append(value)


def _poll_readyz(daemon: Daemon, deadline: float) -> float:
    with httpx.Client(base_url=daemon.base_url, timeout=1.0) as client:
        while time.perf_counter() < deadline:
            try:
                if client.get("/readyz").status_code == 200:
                    return time.perf_counter()
            except httpx.HTTPError:
                pass
            _check_alive(daemon)
            time.sleep(READYZ_POLL)
    raise BenchFailure(f"/readyz not 200 within {START_TIMEOUT:g} s:\n{daemon.stop()[-2000:]}")


def timed_start(config: Path, notify: NotifySocket, trials: StartTrials | None, memories: int) -> None:
    """Start, time READY=1 and /readyz, read memory, stop; check the retriever's load."""
    notify.drain()
    daemon = Daemon(config, env={"NOTIFY_SOCKET": str(notify.path)})
    start = time.perf_counter()
    daemon.start(wait=False)
    try:
        ready = notify.wait_for("READY=1", start + START_TIMEOUT, daemon) - start
        readyz = _poll_readyz(daemon, start + START_TIMEOUT) - start
        assert daemon.proc is not None
        rss, hwm = _memory_kib(daemon.proc.pid), _memory_kib(daemon.proc.pid, "VmHWM")
    finally:
        stop = _stop(daemon)
    opened = _event(daemon, "retrieval.opened")
    if opened.get("memories") != memories or opened.get("embedded") != 0:
        raise BenchFailure(
            f"the retriever opened {opened.get('memories')} memories, {opened.get('embedded')} "
            f"re-embedded; expected {memories:,}, 0 (a saved index that is current)"
        )
    if trials is not None:
        trials.record(ready, readyz, stop, float(opened.get("seconds", 0.0)), rss, hwm)


def _timed_python(code: str) -> tuple[float, float]:
    """Popen → `code` done (a byte on stdout, as READY=1 is a datagram), and Popen → exit. The
    exit comes much later after importing the daemon: tearing numpy, faiss and their threads down."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", f"{code}\nimport os\nos.write(1, b'.')"], cwd=REPO, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    with proc.stdout:
        proc.stdout.read(1)
    done = time.perf_counter() - start
    if proc.wait(60):
        raise BenchFailure(f"python -c {code!r} exited {proc.returncode}")
    return done, time.perf_counter() - start


def build_full(directory: Path, memories: int) -> dict[str, Any]:
    """A state dir holding `memories` memories and a saved vector index, loaded through the API."""
    corpus = generate(memories, seed=7)
    daemon = Daemon(_daemon_config(directory)).start(timeout=START_TIMEOUT)
    try:
        start = time.perf_counter()
        with httpx.Client(base_url=daemon.base_url, timeout=300.0) as client:
            for first in range(0, len(corpus.memories), LOAD_BATCH):
                answer = client.post(
                    "/v1/memories:batch", json={"memories": corpus.memories[first : first + LOAD_BATCH]}
                )
                if answer.status_code != 201:
                    raise BenchFailure(f"POST /v1/memories:batch answered {answer.status_code}: {answer.text[:300]}")
        load = time.perf_counter() - start
    finally:
        stop = _stop(daemon)
    index = sorted((directory / "state").rglob("*.rvix"))
    if not index:
        raise BenchFailure(f"no saved vector index (*.rvix) under {directory / 'state'} after SIGTERM")
    on_disk = sum(p.stat().st_size for p in (directory / "state").rglob("*") if p.is_file())
    return {
        "memories": len(corpus.memories),
        "load_seconds": round(load, 2),
        "memories_per_second": round(len(corpus.memories) / load),
        "stop_with_save_seconds": round(stop, 2),
        "index_files": {p.name: p.stat().st_size for p in index},
        "state_dir_bytes": on_disk,
    }


def import_profile() -> dict[str, list[tuple[str, float]]]:
    """`python -X importtime` of the daemon: its direct imports and the packages (first-import
    cumulative ms) that cost most."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import controller.host.daemon"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    direct, packages = [], []
    for row in out.splitlines():
        parts = row.split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name, ms = parts[2].rstrip(), int(parts[1]) / 1000
        depth = (len(name) - len(name.lstrip()) - 1) // 2
        if depth == 1:
            direct.append((name.strip(), ms))
        if "." not in name.strip():
            packages.append((name.strip(), ms))
    top = lambda rows: sorted(rows, key=lambda r: -r[1])[:IMPORT_TOP]  # noqa: E731
    return {"direct_imports_ms": top(direct), "packages_ms": top(packages)}


def run_startup() -> dict[str, Any]:
    heading(f"startup: Popen → READY=1 and → /readyz 200, empty vs {STARTUP_MEMORIES:,} memories")
    workdir = disk_scratch_dir()
    notify = NotifySocket(workdir)
    cases = {"empty": StartTrials(), "full": StartTrials()}
    baselines: dict[str, list[float]] = {
        name + end: [] for name in ("python_pass", "import_daemon") for end in ("", "_exit")
    }
    try:
        built = build_full(workdir / "full", STARTUP_MEMORIES)
        full_config = workdir / "full" / "rolloutd.toml"
        for trial in range(-1, STARTUP_TRIALS):  # -1: the untimed warm-up round
            timed = trial >= 0
            for name, code in (("python_pass", "pass"), ("import_daemon", "import controller.host.daemon")):
                done, exited = _timed_python(code)
                if timed:
                    baselines[name].append(done)
                    baselines[name + "_exit"].append(exited)
            empty = workdir / f"empty-{trial + 1}"
            timed_start(_daemon_config(empty), notify, cases["empty"] if timed else None, 0)
            shutil.rmtree(empty, ignore_errors=True)
            timed_start(full_config, notify, cases["full"] if timed else None, STARTUP_MEMORIES)
        fs_type = filesystem_type(workdir)
    finally:
        notify.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return _startup_figures(cases, baselines, built, import_profile(), fs_type)


def _startup_figures(
    cases: dict[str, StartTrials],
    baselines: dict[str, list[float]],
    built: dict[str, Any],
    imports: dict[str, Any],
    fs_type: str,
) -> dict[str, Any]:
    base = {name: latency_summary_ms(values) for name, values in baselines.items()}
    figures: dict[str, Any] = {
        "trials": STARTUP_TRIALS,
        "memories": STARTUP_MEMORIES,
        "build": built,
        "baselines": base,
        "imports": imports,
        "file_system": fs_type,
    }
    for name, t in cases.items():
        figures[name] = {
            "ready": latency_summary_ms(t.ready),
            "readyz": latency_summary_ms(t.readyz),
            "stop": latency_summary_ms(t.stop),
            "retrieval_opened": latency_summary_ms(t.opened),
            "rss_kib_max": max(t.rss_kib),
            "rss_kib_min": min(t.rss_kib),
            "vmhwm_kib_max": max(t.hwm_kib),
        }
    imp = base["import_daemon"]["p50_ms"]
    figures["ratios_p50"] = {
        f"{case}_{what}_to_import": round(figures[case][what]["p50_ms"] / imp, 2)
        for case in cases
        for what in ("ready", "readyz")
    }
    figures["ratios_p50"]["import_to_python_pass"] = round(imp / base["python_pass"]["p50_ms"], 2)
    figures["ratios_p50"]["full_readyz_to_empty_readyz"] = round(
        figures["full"]["readyz"]["p50_ms"] / figures["empty"]["readyz"]["p50_ms"], 2
    )
    _print_startup(figures)
    return figures


def _print_startup(f: dict[str, Any]) -> None:
    b = f["build"]
    line("state dir file system", f["file_system"])
    line(
        "100k state",
        f"{b['memories']:,} memories loaded via HTTP in {b['load_seconds']:.1f} s "
        f"({b['memories_per_second']:,}/s); SIGTERM with index save {b['stop_with_save_seconds']:.2f} s; "
        f"{b['state_dir_bytes'] / 2**20:.0f} MiB on disk",
    )
    rows = []
    for case, label in (("empty", "empty state_dir (fresh each trial)"), ("full", f"{f['memories']:,} memories")):
        c = f[case]
        rows += [
            (
                f"{c['ready']['p50_ms']:.0f}",
                f"{c['ready']['p95_ms']:.0f}",
                f"{c['readyz']['p50_ms']:.0f}",
                f"{c['readyz']['p95_ms']:.0f}",
                f"{c['stop']['p50_ms']:.0f}",
                f"{c['rss_kib_max'] / 1024:.0f}",
                f"{c['vmhwm_kib_max'] / 1024:.0f}",
                label,
            )
        ]
    for name, label in (
        ("import_daemon", "baseline: Popen → `import controller.host.daemon` done"),
        ("import_daemon_exit", "baseline: the same, Popen → exit"),
        ("python_pass", "baseline: Popen → `python -c pass` done"),
    ):
        s = f["baselines"][name]
        rows.append((f"{s['p50_ms']:.0f}", f"{s['p95_ms']:.0f}", "", "", "", "", "", label))
    table(
        ("READY p50", "p95", "readyz p50", "p95", "stop p50", "RSS MiB", "peak MiB", f"ms, {f['trials']} trials"), rows
    )
    line(
        "retriever open (its own log)",
        f"empty {f['empty']['retrieval_opened']['p50_ms']:.0f} ms, "
        f"{f['memories']:,}: {f['full']['retrieval_opened']['p50_ms']:.0f} ms (p50)",
    )
    line("ratios (p50)", ", ".join(f"{k} {v:g}x" for k, v in f["ratios_p50"].items()))
    line("top imports (cumulative ms)", ", ".join(f"{n} {ms:.0f}" for n, ms in f["imports"]["direct_imports_ms"]))
    line("top packages (first import, ms)", ", ".join(f"{n} {ms:.0f}" for n, ms in f["imports"]["packages_ms"]))


# -- emergency --------------------------------------------------------------------------------


class _HealthyPrometheus(BaseHTTPRequestHandler):
    """Every instant query: one series, value 0 (healthy for an `above` guard)."""

    def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
        self.server.queries += 1  # type: ignore[attr-defined]
        body = json.dumps(
            {
                "status": "success",
                "data": {"resultType": "vector", "result": [{"metric": {}, "value": [time.time(), "0"]}]},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class FakePrometheus:
    """A real HTTP server on loopback in a thread of this process."""

    def __init__(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _HealthyPrometheus)
        self._server.queries = 0  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def queries(self) -> int:
        return self._server.queries  # type: ignore[attr-defined]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def emergency_plan_toml() -> str:
    flags = list(load_plan(PHASE5).flags)
    return f"""[plan]
name = "bench_emergency"
flags = {json.dumps(flags)}
guard_interval = "5m"
failure_limit = 5
failure_response = "rollback_zero"

[[stages]]
at = 0
percentage = {EMERGENCY_PERCENTAGE}
agents = {json.dumps(list(LOW_COHORT))}

[[stages]]
at = "10000h"
percentage = 50
agents = {json.dumps(list(LOW_COHORT))}

[[guards]]
name = "error_rate"
query = "bench_error_ratio"
direction = "above"
warning = 0.001
critical = 0.005
emergency = 0.01
window = "5m"
no_data = "pass"
"""


@dataclass
class EmergencyTrials:
    flags_off: list[float] = field(default_factory=list)  # SIGUSR1 → flags.json shows all off, kill switch on
    journal: list[float] = field(default_factory=list)  # SIGUSR1 → the journal API shows the emergency
    baseline: list[float] = field(default_factory=list)  # one atomic_write of a flags.json-sized file
    polls: list[int] = field(default_factory=list)  # flags.json reads until it showed the emergency


class EmergencyRig:
    """A daemon running the plan at stage 0, and the clients that signal, watch and re-arm it."""

    def __init__(self, workdir: Path, prometheus: FakePrometheus) -> None:
        plan_path = workdir / "plan.toml"
        plan_path.write_text(emergency_plan_toml())
        self.plan = load_plan(plan_path)
        self.daemon = Daemon(_daemon_config(workdir / "daemon", plan=plan_path, prometheus=prometheus.url))
        self.state_dir = workdir / "daemon" / "state"
        self.flags_path = self.state_dir / FlagStore.FILE
        self.admin: httpx.Client | None = None
        self.torn_reads = 0
        self.status_lagged = 0  # trials whose first status read still showed the old phase

    def start(self) -> None:
        self.daemon.start(timeout=START_TIMEOUT)
        self.admin = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.daemon.socket)), base_url="http://rolloutd", timeout=5.0
        )
        deadline = time.monotonic() + TRIAL_TIMEOUT
        while not self._at_stage_zero():
            if time.monotonic() > deadline:
                raise BenchFailure(f"the rollout did not apply stage 0 within {TRIAL_TIMEOUT:g} s: {self.status()}")
            time.sleep(0.05)

    def close(self) -> None:
        if self.admin is not None:
            self.admin.close()
        self.daemon.stop()

    def get(self, path: str) -> Any:
        assert self.admin is not None
        answer = self.admin.get(path)
        if answer.status_code != 200:
            raise BenchFailure(f"GET {path} answered {answer.status_code}: {answer.text[:300]}")
        return answer.json()

    def status(self) -> dict[str, Any]:
        return self.get("/v1/rollout")

    def _at_stage_zero(self) -> bool:
        s = self.status()
        return s["phase"] == "running" and s["stage"] == 0

    def last_seq(self) -> int:
        decisions = self.get("/v1/rollout/journal?limit=1")["decisions"]
        return decisions[-1]["seq"] if decisions else 0

    def flags_off(self) -> bool:
        try:
            flags = json.loads(self.flags_path.read_bytes())
        except ValueError:  # a reader must never see half a file: the write is a rename
            self.torn_reads += 1
            return False
        return all(not flags.get(name, {}).get("enabled", True) for name in self.plan.flags) and bool(
            flags.get(KILL_SWITCH, {}).get("enabled")
        )

    def journaled(self, since: int) -> bool:
        decisions = self.get(f"/v1/rollout/journal?since={since}")["decisions"]
        return any(d["action"] == "emergency" and d["status"] == "done" for d in decisions)

    def expect_emergency(self) -> None:
        """The status must say emergency too. It can lag the journal by a moment: the journal row
        is committed in a worker thread, the in-memory state is set when the loop resumes."""
        if self.status()["phase"] == "emergency":
            return
        self.status_lagged += 1
        _until(lambda: self.status()["phase"] == "emergency", time.perf_counter(), "phase emergency in the status")

    def rolloutctl(self, *argv: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "deploy", "--socket", str(self.daemon.socket), *argv],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode:
            raise BenchFailure(f"rolloutctl {' '.join(argv)} exited {done.returncode}: {done.stderr or done.stdout}")

    def rearm(self) -> None:
        """Clear the emergency and bring stage 0 back, with the real CLI; check it on disk."""
        self.rolloutctl("resume", "--clear-emergency", "--reason", "emergency benchmark: clear")
        self.rolloutctl("promote", "--reason", "emergency benchmark: stage 0 again")
        check_durable(self.state_dir, self.plan, EMERGENCY_PERCENTAGE, LOW_COHORT)
        if json.loads(self.flags_path.read_bytes()).get(KILL_SWITCH, {}).get("enabled"):
            raise BenchFailure("after resume --clear-emergency and promote, emergency_shutdown is still on")


def _until(check: Any, start: float, what: str) -> tuple[float, int]:
    """Seconds from `start` until `check()` is true, polled every POLL; and how many polls."""
    polls = 0
    while True:
        polls += 1
        if check():
            return time.perf_counter() - start, polls
        if time.perf_counter() - start > TRIAL_TIMEOUT:
            raise BenchFailure(f"{what} not seen within {TRIAL_TIMEOUT:g} s of SIGUSR1")
        time.sleep(POLL)


def emergency_trial(rig: EmergencyRig, trials: EmergencyTrials, probe: Path, payload: bytes) -> None:
    start = time.perf_counter()
    atomic_write(probe, payload)
    trials.baseline.append(time.perf_counter() - start)
    since = rig.last_seq()
    time.sleep(SETTLE)
    assert rig.daemon.proc is not None
    start = time.perf_counter()
    os.kill(rig.daemon.proc.pid, signal.SIGUSR1)
    flags_off, polls = _until(rig.flags_off, start, "every plan flag off and emergency_shutdown on in flags.json")
    journal, _ = _until(lambda: rig.journaled(since), start, "the emergency in the journal")
    trials.flags_off.append(flags_off)
    trials.journal.append(journal)
    trials.polls.append(polls)
    rig.expect_emergency()
    rig.rearm()


def run_emergency() -> dict[str, Any]:
    heading("emergency: SIGUSR1 → every plan flag off and emergency_shutdown on, durably")
    workdir = disk_scratch_dir()
    prometheus = FakePrometheus()
    rig = EmergencyRig(workdir, prometheus)
    trials = EmergencyTrials()
    try:
        rig.start()
        payload = b"x" * len(rig.flags_path.read_bytes())
        probe = rig.state_dir / "baseline-probe.json"
        for _ in range(EMERGENCY_WARMUP):
            emergency_trial(rig, EmergencyTrials(), probe, payload)
        for _ in range(EMERGENCY_TRIALS):
            emergency_trial(rig, trials, probe, payload)
        fs_type, backups = filesystem_type(workdir), len(list((rig.state_dir / "backups").glob("flags.*.json")))
    finally:
        rig.close()
        prometheus.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if rig.torn_reads:
        raise BenchFailure(f"{rig.torn_reads} read(s) of flags.json found a partial file")
    line(
        "status behind the journal",
        f"{rig.status_lagged} of {EMERGENCY_TRIALS + EMERGENCY_WARMUP} trials "
        "(first GET /v1/rollout after the journal showed the emergency still said running)",
    )
    figures = _emergency_figures(trials, len(payload), fs_type, prometheus.queries, backups)
    return {**figures, "status_lagged_journal": rig.status_lagged}


def _emergency_figures(trials: EmergencyTrials, size: int, fs_type: str, queries: int, backups: int) -> dict[str, Any]:
    off, journal = latency_summary_ms(trials.flags_off), latency_summary_ms(trials.journal)
    base = latency_summary_ms(trials.baseline)
    met = off["p95_ms"] < EMERGENCY_TARGET_MS
    ratios = {"p50": round(off["p50_ms"] / base["p50_ms"], 2), "p95": round(off["p95_ms"] / base["p95_ms"], 2)}
    line(
        "state dir",
        f"file system {fs_type}; flags.json {size:,} bytes; {len(trials.flags_off)} trials "
        f"(+{EMERGENCY_WARMUP} warm-up), re-armed with rolloutctl between them",
    )
    table(
        ("p50", "p95", "p99", "max", "ms"),
        [
            (f"{s['p50_ms']:.1f}", f"{s['p95_ms']:.1f}", f"{s['p99_ms']:.1f}", f"{s['max_ms']:.1f}", label)
            for s, label in (
                (off, "SIGUSR1 → flags.json: all off, kill switch on"),
                (journal, "SIGUSR1 → emergency in GET /v1/rollout/journal"),
                (base, "baseline: one atomic_write of that size"),
            )
        ],
    )
    line("ratio to baseline", f"p50 {ratios['p50']:g}x, p95 {ratios['p95']:g}x")
    line("target", verdict(met, f"p95 < {EMERGENCY_TARGET_MS:g} ms"))
    line("fake Prometheus queries", f"{queries} (guard rounds during the run)")
    return {
        "trials": len(trials.flags_off),
        "warmup": EMERGENCY_WARMUP,
        "flags_off": off,
        "journal": journal,
        "baseline_atomic_write": base,
        "ratio_to_baseline": ratios,
        "flags_json_bytes": size,
        "file_system": fs_type,
        "target_ms": EMERGENCY_TARGET_MS,
        "target_met": met,
        "polls_to_flags_off_max": max(trials.polls),
        "prometheus_queries": queries,
        "backups_files": backups,
    }
