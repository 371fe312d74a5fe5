"""The daemon's TOML configuration (DESIGN.md "Config"), read and checked in one place.

Every problem is reported with the file and, where TOML gives one, the line, plus
what to write instead. Sections and keys that rolloutd does not know are errors: a
misspelt `mongodb_url` must not silently mean "no MongoDB".
"""

from __future__ import annotations

import difflib
import os
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.errors import ConfigError
from flags.parse import deeper_than, unreadable
from retrieval.defaults import DEFAULT_EMBEDDER, DEFAULT_INDEX, DEFAULT_RRF_K, DEFAULT_WEIGHTS
from retrieval.embedder import EmbedderError, check_spec

DEFAULTS: dict[str, dict[str, Any]] = {
    "daemon": {
        "state_dir": "/var/lib/rolloutd",
        "listen": "127.0.0.1:8787",
        "admin_socket": "/run/rolloutd/admin.sock",
        "admin_socket_group": None,
        "plan": None,
        "time_scale": 1.0,
        "drain_seconds": 10.0,
    },
    "prometheus": {"url": None, "timeout_seconds": 10.0},
    "notifications": {"webhook_urls": [], "alertmanager_url": None},
    "retrieval": {
        "mongodb_uri": None,
        "redis_url": None,
        "embedder": DEFAULT_EMBEDDER,
        "index": DEFAULT_INDEX,
        "rrf_k": DEFAULT_RRF_K,
        "vector_weight": DEFAULT_WEIGHTS["vector"],
        "lexical_weight": DEFAULT_WEIGHTS["lexical"],
        "graph_weight": DEFAULT_WEIGHTS["graph"],
        "hops": 2,
        "vector_timeout_ms": 500,
        "lexical_timeout_ms": 500,
        "graph_timeout_ms": 500,
        "cache_ttl_seconds": 300,
        "labelled_set": None,
        "validation_interval_seconds": 300,
    },
}


MAX_DEPTH = 8  # tables and arrays within one another; a config needs 3
TOO_DEEP = f"nested too deeply: tables and arrays more than {MAX_DEPTH} levels within one another (a config needs 3)"
EXAMPLE_URLS = {
    ("prometheus", "url"): "http://127.0.0.1:9090",
    ("notifications", "alertmanager_url"): "http://127.0.0.1:9093",
    ("notifications", "webhook_urls"): "https://hooks.slack.com/services/...",
}


@dataclass(frozen=True)
class DaemonSection:
    state_dir: Path
    listen_host: str
    listen_port: int
    admin_socket: Path
    admin_socket_group: str | None
    plan: Path | None
    time_scale: float
    drain_seconds: float

    @property
    def listen(self) -> str:
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.listen_port}"


@dataclass(frozen=True)
class RetrievalSection:
    """[retrieval]: where memories live and how the retriever searches them."""

    embedder: str = DEFAULT_EMBEDDER
    index: str = DEFAULT_INDEX
    rrf_k: int = DEFAULT_RRF_K
    vector_weight: float = DEFAULT_WEIGHTS["vector"]
    lexical_weight: float = DEFAULT_WEIGHTS["lexical"]
    graph_weight: float = DEFAULT_WEIGHTS["graph"]
    hops: int = 2  # accepted for old configs; the graph walk (personalized PageRank) has no hop count
    vector_timeout: float = 0.5
    lexical_timeout: float = 0.5
    graph_timeout: float = 0.5
    cache_ttl: float = 300.0
    labelled_set: Path | None = None
    validation_interval: float = 300.0


@dataclass(frozen=True)
class Config:
    source: Path
    daemon: DaemonSection
    prometheus_url: str | None = None
    mongodb_uri: str | None = None
    redis_url: str | None = None
    prometheus_timeout: float = 10.0
    webhook_urls: tuple[str, ...] = ()
    alertmanager_url: str | None = None
    retrieval: RetrievalSection = field(default_factory=RetrievalSection)
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    def restart_needed_for(self, new: Config) -> list[str]:
        """Settings that differ in `new` but only take effect on a restart."""
        fixed = ("state_dir", "listen_host", "listen_port", "admin_socket", "admin_socket_group")
        names = [name for name in fixed if getattr(self.daemon, name) != getattr(new.daemon, name)]
        if (self.prometheus_url, self.prometheus_timeout) != (new.prometheus_url, new.prometheus_timeout):
            names.append("prometheus")  # the guards' client is built once, at start
        if (self.mongodb_uri, self.redis_url, self.retrieval) != (new.mongodb_uri, new.redis_url, new.retrieval):
            names.append("retrieval")
        return names


def load_config(path: Path | str) -> Config:
    """Read and validate the config file at `path`."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            path, "no such file; pass the path of a rolloutd TOML config (see systemd/rolloutd.toml)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, f"cannot read it: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, f"not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses per level of nesting
        raise ConfigError(path, TOO_DEEP) from None
    except ValueError as exc:  # e.g. a number past Python's 4300-digit limit for integers
        raise ConfigError(path, f"not valid TOML: {unreadable(exc)}") from None
    if deeper_than(raw, MAX_DEPTH):
        raise ConfigError(path, TOO_DEEP)
    return config_from_dict(raw, path)


def check_state_dir(config: Config) -> None:
    """Raise ConfigError when [daemon] state_dir cannot hold rolloutd's files (checked at start)."""
    wanted = config.daemon.state_dir
    existing = next(p for p in (wanted, *wanted.absolute().parents) if p.exists() or p == p.parent)
    where = f'[daemon] state_dir = "{wanted}"'
    if not existing.is_dir():
        raise ConfigError(
            config.source,
            f"{where}: {existing} is a file, not a directory; point state_dir at a directory, or move the file aside",
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            config.source,
            f"{where}: {existing} is not writable by this user (uid {os.getuid()}); "
            "give rolloutd's user write access to it (systemd: StateDirectory=)",
        )


def config_from_dict(raw: dict[str, Any], path: Path) -> Config:
    merged = _merge_defaults(raw, path)
    d = merged["daemon"]
    host, port = parse_listen(d["listen"], path)
    daemon = DaemonSection(
        state_dir=Path(_string(d, "state_dir", path)),
        listen_host=host,
        listen_port=port,
        admin_socket=Path(_string(d, "admin_socket", path)),
        admin_socket_group=d["admin_socket_group"],
        plan=Path(d["plan"]) if d["plan"] else None,
        time_scale=_positive(d, "time_scale", path),
        drain_seconds=_positive(d, "drain_seconds", path),
    )
    return Config(
        source=path,
        daemon=daemon,
        prometheus_url=_http_url(merged["prometheus"]["url"], ("prometheus", "url"), path),
        mongodb_uri=merged["retrieval"]["mongodb_uri"],
        redis_url=merged["retrieval"]["redis_url"],
        prometheus_timeout=_positive(merged["prometheus"], "timeout_seconds", path, "prometheus"),
        webhook_urls=_urls(merged["notifications"]["webhook_urls"], path),
        alertmanager_url=_http_url(
            merged["notifications"]["alertmanager_url"], ("notifications", "alertmanager_url"), path
        ),
        retrieval=_retrieval(merged["retrieval"], path),
        raw=raw,
    )


def _retrieval(r: dict[str, Any], path: Path) -> RetrievalSection:

    if not isinstance(r["embedder"], str):
        raise ConfigError(path, f'[retrieval] embedder = {r["embedder"]!r}: expected a string like "hashing"')
    try:
        check_spec(r["embedder"])
    except EmbedderError as exc:
        raise ConfigError(path, f"[retrieval] embedder: {exc}") from None
    if r["index"] not in ("flat", "ivf", "hnsw"):
        raise ConfigError(
            path,
            f'[retrieval] index = {r["index"]!r}: expected "flat" (exact), "ivf" or "hnsw" '
            "(approximate, for large collections)",
        )
    for key in ("rrf_k", "hops"):
        value = r[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= (1000 if key == "rrf_k" else 5):
            bound = "1 to 1000" if key == "rrf_k" else "1 to 5"
            raise ConfigError(path, f"[retrieval] {key} = {value!r}: expected a whole number from {bound}")
    for key in ("vector_weight", "lexical_weight", "graph_weight"):
        value = r[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(path, f"[retrieval] {key} = {value!r}: expected a number >= 0")
    labelled = r["labelled_set"]
    if labelled is not None and (not isinstance(labelled, str) or not labelled.strip()):
        raise ConfigError(
            path, f"[retrieval] labelled_set = {labelled!r}: expected the path of a JSONL file, or leave it out"
        )
    return RetrievalSection(
        embedder=r["embedder"],
        index=r["index"],
        rrf_k=r["rrf_k"],
        vector_weight=float(r["vector_weight"]),
        lexical_weight=float(r["lexical_weight"]),
        graph_weight=float(r["graph_weight"]),
        hops=r["hops"],
        vector_timeout=_positive(r, "vector_timeout_ms", path, "retrieval") / 1000,
        lexical_timeout=_positive(r, "lexical_timeout_ms", path, "retrieval") / 1000,
        graph_timeout=_positive(r, "graph_timeout_ms", path, "retrieval") / 1000,
        cache_ttl=_positive(r, "cache_ttl_seconds", path, "retrieval"),
        labelled_set=Path(labelled) if labelled else None,
        validation_interval=_positive(r, "validation_interval_seconds", path, "retrieval"),
    )


def parse_listen(value: Any, path: Path) -> tuple[str, int]:
    """`host:port` (IPv6 as `[::1]:8787`) → (host, port)."""
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(path, f'[daemon] listen = {value!r}: expected "HOST:PORT", e.g. "127.0.0.1:8787"')
    host, _, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535 or not host:
        raise ConfigError(path, f'[daemon] listen = {value!r}: expected "HOST:PORT" with a port from 0 to 65535')
    return host, int(port_text)


def _merge_defaults(raw: dict[str, Any], path: Path) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for section, body in raw.items():
        if section not in DEFAULTS:
            raise ConfigError(
                path, f"unknown section [{section}]{_suggest(section, DEFAULTS)}; known: {', '.join(DEFAULTS)}"
            )
        if not isinstance(body, dict):
            raise ConfigError(path, f"{section} must be a [{section}] table")
        for key in body:
            if key not in DEFAULTS[section]:
                raise ConfigError(
                    path,
                    f"unknown key {key!r} in [{section}]{_suggest(key, DEFAULTS[section])}; "
                    f"known: {', '.join(DEFAULTS[section])}",
                )
    for section, defaults in DEFAULTS.items():
        merged[section] = {**defaults, **raw.get(section, {})}
    for section, key in (
        ("prometheus", "url"),
        ("notifications", "alertmanager_url"),
        ("retrieval", "mongodb_uri"),
        ("retrieval", "redis_url"),
        ("daemon", "plan"),
        ("daemon", "admin_socket_group"),
    ):
        value = merged[section][key]
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(path, f"[{section}] {key} = {value!r}: expected a non-empty string, or leave it out")
    return merged


def _string(section: dict[str, Any], key: str, path: Path) -> str:
    value = section[key]
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(path, f"[daemon] {key} = {value!r}: expected a non-empty string")
    return value


def _positive(section: dict[str, Any], key: str, path: Path, name: str = "daemon") -> float:
    value = section[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(path, f"[{name}] {key} = {value!r}: expected a number greater than 0")
    return float(value)


def _urls(value: Any, path: Path) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            path,
            f"[notifications] webhook_urls = {value!r}: expected a list of URLs, "
            'e.g. ["https://hooks.slack.com/services/..."]',
        )
    return tuple(url for url in value if _http_url(url, ("notifications", "webhook_urls"), path))


def _http_url(value: str | None, where: tuple[str, str], path: Path) -> str | None:
    """`value` when it is an http(s) URL with a host (and a valid port, if any)."""
    if value is None:
        return None
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018  (parsing the port is the check)
    except ValueError as exc:
        problem: str | None = f"its port: {exc}"
    else:
        problem = (
            "no http:// or https:// scheme"
            if parts.scheme not in ("http", "https")
            else "no host"
            if not parts.hostname
            else "it contains white space"
            if any(c.isspace() for c in value)
            else None
        )
    if problem is not None:
        section, key = where
        raise ConfigError(
            path,
            f"[{section}] {key}: {value!r} is not an http(s) URL rolloutd can use ({problem}); "
            f'write it like "{EXAMPLE_URLS[where]}"',
        )
    return value


def _suggest(word: str, known: Any) -> str:
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
