"""The shipped systemd files: a unit systemd accepts silently, sandboxed, keeping the daemon's contract.

Only offline tools are used (`systemd-analyze verify`, `systemd-analyze security
--offline=yes`, `systemd-sysusers --root=`), so this runs in a container where systemd
is not PID 1 and never touches the machine's users or services. A missing tool is a
failure, not a skip: `make test` installs Debian's `systemd` package. One sandbox
option is tried for real rather than read: MemoryDenyWriteExecute=, through the
kernel's equivalent (PR_SET_MDWE) around a real daemon.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest

from controller.host.config import load_config
from controller.host.daemon import EX_CONFIG
from tests.support.daemon_harness import write_config
from tests.support.flagfiles import FIRST_COHORTS, PHASE5_FLAGS, write_seed_flags

SYSTEMD_DIR = Path(__file__).resolve().parent.parent / "systemd"
UNIT = SYSTEMD_DIR / "rolloutd.service"
SYSUSERS = SYSTEMD_DIR / "rolloutd.sysusers.conf"
EXAMPLE_CONFIG = SYSTEMD_DIR / "rolloutd.toml"
SHIPPED_BINARY = "/opt/rolloutd/bin/rolloutd"
MAX_EXPOSURE = 2.0
# No colours, no pager, no locale surprises in the text we parse.
ENV = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C.UTF-8"}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH; `make test` installs it (Debian package `systemd`)")
    return path


def _run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=ENV, cwd=cwd, timeout=60)


def _directives(text: str) -> dict[str, dict[str, list[str]]]:
    """Unit file text → section → key → values, in order (keys such as SystemCallFilter= repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"directive outside a section: {raw!r}"
        assert not line.endswith("\\"), f"line continuations are not parsed here: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a KEY=VALUE line: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _one(section: dict[str, list[str]], key: str) -> str:
    values = section.get(key)
    assert values is not None, f"{key}= is missing"
    assert len(values) == 1, f"{key}= is set {len(values)} times: {values}"
    return values[0]


_SPAN_UNITS = {"ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hr": 3600.0}


def _seconds(span: str) -> float:
    """A systemd time span ("30s", "5min", "1min 30s", bare seconds) in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span)
    assert parts and "".join(n + u for n, u in parts) == span.replace(" ", ""), f"unparsed time span {span!r}"
    return sum(float(number) * _SPAN_UNITS[unit or "s"] for number, unit in parts)


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return _directives(UNIT.read_text())


def test_verify_reports_nothing(tmp_path: Path) -> None:
    """`systemd-analyze verify` prints no warning at all for the unit (with only its ExecStart binary swapped)."""
    analyze = _tool("systemd-analyze")
    # verify checks that ExecStart='s program exists, and /opt/rolloutd is an install
    # location, not this checkout; the dev venv's console script (same entry point,
    # made by `make test`'s `pip install -e`) stands in for it. Nothing else is
    # rewritten: every other line is verified as shipped. (verify does not resolve
    # User=; test_sysusers_creates_the_unit_user covers that.)
    stand_in = Path(sys.executable).parent / "rolloutd"
    assert os.access(stand_in, os.X_OK), f"{stand_in} missing; `make test` installs the project into the venv"
    text = UNIT.read_text()
    assert text.count(f"ExecStart={SHIPPED_BINARY} ") == 1, "the ExecStart= rewrite below no longer applies"
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(f"ExecStart={SHIPPED_BINARY} ", f"ExecStart={stand_in} "))

    # verify exits 0 even for unknown keys, so silence is the assertion; first show
    # that this verify does speak up about a broken copy, so silence means something.
    broken = tmp_path / "broken" / UNIT.name
    broken.parent.mkdir()
    broken.write_text(copy.read_text().replace("Type=notify", "Tpye=notify"))
    noisy = _run(analyze, "verify", str(broken), cwd=tmp_path)
    assert "Tpye" in noisy.stdout + noisy.stderr, "verify stayed silent about an unknown key"

    result = _run(analyze, "verify", str(copy), cwd=tmp_path)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_security_exposure_at_most_2(unit: dict[str, dict[str, list[str]]]) -> None:
    """`systemd-analyze security --offline=yes` rates the shipped unit's exposure at 2.0 or lower."""
    result = _run(_tool("systemd-analyze"), "security", "--offline=yes", "--no-pager", str(UNIT))
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for rolloutd\.service: (\d+\.\d+)", output)
    assert match, f"no overall exposure line in:\n{output}"
    exposed = "\n".join(line for line in output.splitlines() if line.startswith("✗"))
    assert float(match.group(1)) <= MAX_EXPOSURE, f"exposure {match.group(1)} > {MAX_EXPOSURE}; exposed:\n{exposed}"


def test_sysusers_creates_the_unit_user(tmp_path: Path, unit: dict[str, dict[str, list[str]]]) -> None:
    """rolloutd.sysusers.conf creates the system user and group that User= and Group= name, with no login shell."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    # --root= writes passwd/group under the temporary root only, never the machine's.
    result = _run(_tool("systemd-sysusers"), f"--root={root}", str(SYSUSERS))
    assert result.returncode == 0, result.stdout + result.stderr
    service = unit["Service"]
    user, group = _one(service, "User"), _one(service, "Group")
    passwd = {f[0]: f for f in (line.split(":") for line in (root / "etc/passwd").read_text().splitlines())}
    groups = {f[0]: f for f in (line.split(":") for line in (root / "etc/group").read_text().splitlines())}
    assert user in passwd, f"sysusers did not create user {user!r}: {sorted(passwd)}"
    assert group in groups, f"sysusers did not create group {group!r}: {sorted(groups)}"
    uid, gid, shell = int(passwd[user][2]), passwd[user][3], passwd[user][6]
    assert (uid < 1000, gid, shell) == (True, groups[group][2], "/usr/sbin/nologin")


def test_unit_keeps_the_lifecycle_contract(unit: dict[str, dict[str, list[str]]]) -> None:
    """The unit starts, notifies, reloads, stops and restarts the daemon the way DESIGN.md and the daemon expect."""
    service, unit_section = unit["Service"], unit["Unit"]
    assert _one(service, "ExecStart") == f"{SHIPPED_BINARY} --config /etc/rolloutd/rolloutd.toml"
    assert (_one(service, "Type"), _one(service, "NotifyAccess")) == ("notify", "main")
    assert _seconds(_one(service, "WatchdogSec")) == 30
    reload_argv = _one(service, "ExecReload").split()
    assert reload_argv == ["/bin/kill", "-HUP", "$MAINPID"]
    drain = load_config(EXAMPLE_CONFIG).daemon.drain_seconds
    stop = _seconds(_one(service, "TimeoutStopSec"))
    assert stop > drain, f"TimeoutStopSec {stop:g}s does not outlast the {drain:g}s drain"
    assert _one(service, "Restart") == "on-failure"
    assert _seconds(_one(service, "RestartSec")) > 0
    assert str(EX_CONFIG) in _one(service, "RestartPreventExitStatus").split()
    assert int(_one(unit_section, "StartLimitBurst")) > 1
    assert _seconds(_one(unit_section, "StartLimitIntervalSec")) > 0
    assert _one(service, "SyslogLevelPrefix") == "yes"
    # A watchdog kill is SIGABRT; with the fault handler the stuck stack reaches the journal
    # (tests/test_watchdog.py shows the daemon's side of it).
    assert "WatchdogSignal" not in service or _one(service, "WatchdogSignal") == "SIGABRT"
    environment = dict(item.split("=", 1) for value in service["Environment"] for item in value.split())
    assert environment.get("PYTHONFAULTHANDLER") == "1"


def test_unit_directories_match_the_example_config(unit: dict[str, dict[str, list[str]]]) -> None:
    """state_dir and the admin socket's directory in rolloutd.toml are the unit's StateDirectory= and RuntimeDirectory=."""
    service = unit["Service"]
    daemon = load_config(EXAMPLE_CONFIG).daemon
    assert daemon.state_dir == Path("/var/lib") / _one(service, "StateDirectory")
    assert daemon.admin_socket.parent == Path("/run") / _one(service, "RuntimeDirectory")
    modes = (_one(service, "StateDirectoryMode"), _one(service, "RuntimeDirectoryMode"), _one(service, "UMask"))
    assert modes == ("0750", "0750", "0027")


def test_example_config_loads_with_every_option_uncommented(tmp_path: Path) -> None:
    """The example config is accepted as shipped and with its optional services uncommented."""
    shipped = load_config(EXAMPLE_CONFIG)
    assert (shipped.prometheus_url, shipped.mongodb_uri, shipped.redis_url) == (None, None, None)
    assert shipped.daemon.drain_seconds == 10
    # Uncomment `#key = value` lines (not prose comments): a misspelt key would be rejected.
    full = re.sub(r"(?m)^#(\w+ = )", r"\1", EXAMPLE_CONFIG.read_text())
    path = tmp_path / "rolloutd.toml"
    path.write_text(full)
    loaded = load_config(path)
    assert loaded.prometheus_url == "http://127.0.0.1:9090"
    assert loaded.mongodb_uri == "mongodb://127.0.0.1:27017/rolloutd"
    assert loaded.redis_url == "redis://127.0.0.1:6379/0"
    assert loaded.daemon.admin_socket_group == "rolloutd"
    assert loaded.webhook_urls == ("https://hooks.slack.com/services/T000/B000/XXXX",)
    assert loaded.alertmanager_url == "http://127.0.0.1:9093" and loaded.prometheus_timeout == 10
    assert tomllib.loads(full).keys() == {"daemon", "prometheus", "notifications", "retrieval"}


def test_sandbox_leaves_the_network_rolloutd_needs(unit: dict[str, dict[str, list[str]]]) -> None:
    """TCP over IPv4 and IPv6 to Prometheus, MongoDB, Redis and webhooks, and AF_UNIX for the admin socket and sd_notify."""
    service = unit["Service"]
    assert set(_one(service, "RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert service.get("PrivateNetwork", ["no"]) == ["no"], "PrivateNetwork= would cut off every backend"
    # An address or port filter would turn a deployment with the backends elsewhere into
    # EPERM on connect(); the unit documents a drop-in instead (see its comments).
    for key in ("IPAddressDeny", "IPAddressAllow", "SocketBindDeny", "SocketBindAllow", "RestrictNetworkInterfaces"):
        assert key not in service, f"{key}= in the shipped unit filters the network rolloutd needs"
    # The ports of the example config's backends are the ones named in the unit's comment.
    text = EXAMPLE_CONFIG.read_text()
    for port in ("9090", "27017", "6379"):
        assert f":{port}" in text, f"the example config no longer names port {port}"
        assert f"({port})" in UNIT.read_text(), f"the unit's network comment does not mention port {port}"


def test_every_path_the_daemon_writes_is_a_directory_the_unit_creates(unit: dict[str, dict[str, list[str]]]) -> None:
    """Under ProtectSystem=strict only State/RuntimeDirectory= are writable: the config writes nowhere else, reads /etc/rolloutd."""
    service = unit["Service"]
    assert _one(service, "ProtectSystem") == "strict"
    assert "ReadWritePaths" not in service, "state belongs under StateDirectory=, not in extra writable paths"
    daemon = load_config(EXAMPLE_CONFIG).daemon
    writable = {Path("/var/lib") / _one(service, "StateDirectory"), Path("/run") / _one(service, "RuntimeDirectory")}
    for path in (daemon.state_dir, daemon.admin_socket):
        assert any(path == w or w in path.parents for w in writable), f"{path} is read-only under the unit"
    # What it reads: the config named by ExecStart= and the plan, both in ConfigurationDirectory=.
    config_dir = Path("/etc") / _one(service, "ConfigurationDirectory")
    config_path = Path(_one(service, "ExecStart").split("--config ", 1)[1])
    assert config_path.parent == config_dir and daemon.plan is not None and config_dir in daemon.plan.parents
    # Logs go to the journal only: a LogsDirectory= would be a writable path nothing uses.
    assert (_one(service, "StandardOutput"), "LogsDirectory" in service) == ("journal", False)


def test_the_daemon_runs_and_serves_retrieval_under_memory_deny_write_execute(tmp_path: Path) -> None:
    """MemoryDenyWriteExecute=yes is safe: the real daemon (numpy, FAISS, uvicorn) starts and retrieves under PR_SET_MDWE."""
    # PR_SET_MDWE (Linux >= 6.3) is the kernel's own form of the seccomp filter systemd
    # installs for MemoryDenyWriteExecute=: no mapping may be, or become, writable and
    # executable. A native library that JITs or needs an executable stack fails here.
    config = write_config(tmp_path)
    write_seed_flags(
        tmp_path,
        {
            name: {
                "enabled": True,
                "rollout_strategy": "all",
                "rollout_percentage": 100.0,
                "constraints": [{"context_name": "agent", "operator": "IN", "values": FIRST_COHORTS}],
            }
            for name in PHASE5_FLAGS
        },
    )
    wrapper = (
        "import ctypes, mmap, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "if libc.prctl(65, 1, 0, 0, 0) != 0:\n"  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
        "    sys.exit(77)\n"
        "try:\n"
        "    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
        "    sys.exit('PR_SET_MDWE is on, yet a writable+executable mapping was allowed')\n"
        "except PermissionError:\n"
        "    pass\n"
        "from controller.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    repo = SYSTEMD_DIR.parent
    proc = subprocess.Popen(
        [sys.executable, "-c", wrapper, "--config", str(config)],
        cwd=repo,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = "http://" + load_config(config).daemon.listen
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        if proc.poll() == 77:
            pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
        assert proc.poll() is None, f"rolloutd died under PR_SET_MDWE:\n{proc.communicate()[0]}"
        memories = [
            {"id": "a", "text": "Dana owns ledger-sync."},
            {"id": "b", "text": "Release R-1 of ledger-sync.", "links": ["a"]},
        ]
        added = httpx.post(url + "/v1/memories:batch", json={"memories": memories}, timeout=10)
        assert added.status_code == 201, added.text
        answer = httpx.post(
            url + "/v1/retrieve", json={"agent": "QA", "query": "who owns ledger-sync", "top_k": 2}, timeout=10
        )
        assert answer.status_code == 200 and {r["id"] for r in answer.json()["results"]} == {"a", "b"}, answer.text
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output
