"""The daemon's TOML config: defaults, validation, and messages that say what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.host.config import ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rolloutd.toml"
    path.write_text(text)
    return path


def test_minimal_config_takes_the_documented_defaults(tmp_path: Path) -> None:
    """An empty [daemon] table means the DESIGN.md defaults and no external services."""
    config = load_config(write(tmp_path, "[daemon]\n"))
    assert config.daemon.state_dir == Path("/var/lib/rolloutd")
    assert (config.daemon.listen_host, config.daemon.listen_port) == ("127.0.0.1", 8787)
    assert config.daemon.admin_socket == Path("/run/rolloutd/admin.sock")
    assert config.daemon.time_scale == 1.0
    assert config.prometheus_url is None and config.mongodb_uri is None and config.redis_url is None


def test_the_shipped_example_config_loads(tmp_path: Path) -> None:
    """systemd/rolloutd.toml, the file operators copy, is a valid config."""
    example = Path(__file__).resolve().parent.parent / "systemd" / "rolloutd.toml"
    config = load_config(example)
    assert config.daemon.listen == "127.0.0.1:8787"


def test_design_md_full_example_loads(tmp_path: Path) -> None:
    """Every key DESIGN.md shows is accepted, with its value."""
    text = """
[daemon]
state_dir = "/srv/rolloutd"
listen = "[::1]:9000"
admin_socket = "/run/rolloutd/admin.sock"
plan = "/etc/rolloutd/plans/phase5.toml"
time_scale = 60
[prometheus]
url = "http://127.0.0.1:9090"
[retrieval]
mongodb_uri = "mongodb://127.0.0.1:27017/rolloutd"
redis_url = "redis://127.0.0.1:6379/0"
"""
    config = load_config(write(tmp_path, text))
    assert (config.daemon.listen_host, config.daemon.listen_port) == ("::1", 9000)
    assert config.daemon.listen == "[::1]:9000"
    assert config.daemon.time_scale == 60.0
    assert config.daemon.plan == Path("/etc/rolloutd/plans/phase5.toml")
    assert config.redis_url == "redis://127.0.0.1:6379/0"


def test_notifications_section(tmp_path: Path) -> None:
    """Webhooks and an Alertmanager are optional; both are read as given."""
    text = (
        "[notifications]\nwebhook_urls = ['https://hooks.example/a', 'http://127.0.0.1:9/b']\n"
        "alertmanager_url = 'http://127.0.0.1:9093'\n[prometheus]\ntimeout_seconds = 2.5\n"
    )
    config = load_config(write(tmp_path, text))
    assert config.webhook_urls == ("https://hooks.example/a", "http://127.0.0.1:9/b")
    assert config.alertmanager_url == "http://127.0.0.1:9093" and config.prometheus_timeout == 2.5
    assert load_config(write(tmp_path, "")).webhook_urls == ()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[daemon]\nstat_dir = 'x'\n", "did you mean 'state_dir'"),
        ("[deamon]\n", "did you mean 'daemon'"),
        ("[daemon]\nlisten = '8787'\n", "HOST:PORT"),
        ("[daemon]\nlisten = '127.0.0.1:99999'\n", "0 to 65535"),
        ("[daemon]\ntime_scale = 0\n", "greater than 0"),
        ("[daemon]\ndrain_seconds = true\n", "greater than 0"),
        ("[prometheus]\nurl = ''\n", "non-empty string"),
        ("[prometheus]\ntimeout_seconds = -1\n", "[prometheus] timeout_seconds"),
        ("[notifications]\nwebhook_urls = 'https://x'\n", "expected a list of URLs"),
        ("[notifications]\nwebhook_urls = ['ftp://x']\n", "not an http(s) URL"),
        ("[notifications]\nwebhook_url = []\n", "did you mean 'webhook_urls'"),
        ("[notifications]\nalertmanager_url = 5\n", "non-empty string"),
        ("[daemon\n", "not valid TOML"),
    ],
)
def test_bad_config_is_rejected_with_what_to_fix(tmp_path: Path, text: str, expected: str) -> None:
    """Each mistake gets a ConfigError naming the file and the fix."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert expected in str(info.value)
    assert str(path) in str(info.value)


def test_missing_file_says_so(tmp_path: Path) -> None:
    """A wrong --config path is reported as such, pointing at the example."""
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.toml")


def test_restart_only_settings_are_reported_on_reload(tmp_path: Path) -> None:
    """Changing listen or state_dir on SIGHUP is flagged as needing a restart; time_scale is not."""
    old = load_config(write(tmp_path, "[daemon]\nlisten = '127.0.0.1:1'\n"))
    new = load_config(write(tmp_path, "[daemon]\nlisten = '127.0.0.1:2'\ntime_scale = 2\n"))
    assert old.restart_needed_for(new) == ["listen_port"]


@pytest.mark.parametrize(
    "url, expected",
    [
        ("not a url", "no http:// or https:// scheme"),
        ("127.0.0.1:9090", "no http:// or https:// scheme"),
        ("localhost:9090", "no http:// or https:// scheme"),
        ("ftp://127.0.0.1:9090", "no http:// or https:// scheme"),
        ("http://", "no host"),
        ("http:///api", "no host"),
        ("http://127.0.0.1:port", "port"),
        ("http://127.0.0.1:99999", "port"),
        ("http://prom etheus:9090", "white space"),
    ],
)
def test_a_prometheus_url_that_cannot_work_is_rejected(tmp_path: Path, url: str, expected: str) -> None:
    """[prometheus] url must be an http(s) URL with a host and a valid port; the message shows a good one."""
    path = write(tmp_path, f"[prometheus]\nurl = {url!r}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "[prometheus] url" in message and expected in message and str(path) in message
    assert "http://127.0.0.1:9090" in message, "the message shows what a good value looks like"


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9090", "https://prometheus.example.com/prometheus", "http://[::1]:9090", "http://prometheus"],
)
def test_a_working_prometheus_url_is_accepted(tmp_path: Path, url: str) -> None:
    """Host names, IPv6 literals, https and a path prefix are all usable Prometheus URLs."""
    assert load_config(write(tmp_path, f"[prometheus]\nurl = {url!r}\n")).prometheus_url == url


@pytest.mark.parametrize(
    "text",
    [
        "[notifications]\nalertmanager_url = 'alertmanager:9093'\n",
        "[notifications]\nwebhook_urls = ['https://']\n",
    ],
)
def test_notification_urls_are_checked_like_the_prometheus_url(tmp_path: Path, text: str) -> None:
    """A webhook or Alertmanager URL without a scheme or a host is rejected at start, not at the first alert."""
    with pytest.raises(ConfigError, match="not an http\\(s\\) URL rolloutd can use"):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize("value", ["[" * 40 + "]" * 40, "[" * 5000 + "]" * 5000, "{a = " * 3000 + "1" + "}" * 3000])
def test_a_deeply_nested_config_is_a_config_error(tmp_path: Path, value: str) -> None:
    """Arrays or inline tables nested past any sensible depth are a ConfigError, not a RecursionError."""
    path = write(tmp_path, f"[daemon]\ntime_scale = {value}\n")
    with pytest.raises(ConfigError, match="nested too deeply") as info:
        load_config(path)
    assert str(path) in str(info.value) and len(str(info.value)) < 400


def test_a_number_too_long_to_read_is_a_config_error(tmp_path: Path) -> None:
    """A 5000-digit number (past Python's integer-string limit) is a ConfigError, not a bare ValueError."""
    with pytest.raises(ConfigError, match="4300 digits"):
        load_config(write(tmp_path, "[daemon]\ntime_scale = " + "1" * 5000 + "\n"))


def test_changing_prometheus_on_reload_is_reported_as_needing_a_restart(tmp_path: Path) -> None:
    """The Prometheus client is built at start, so a new [prometheus] url on SIGHUP asks for a restart."""
    old = load_config(write(tmp_path, "[prometheus]\nurl = 'http://127.0.0.1:9090'\n"))
    new = load_config(write(tmp_path, "[prometheus]\nurl = 'http://127.0.0.1:9091'\n"))
    assert old.restart_needed_for(new) == ["prometheus"]
