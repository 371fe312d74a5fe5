"""A small client for the daemon's admin API over its unix socket.

The socket is found, in order, from `--socket PATH`, from `--config PATH` (its
`[daemon] admin_socket`), from `$ROLLOUTD_SOCKET`, else `/run/rolloutd/admin.sock`;
`SocketLocation.how` remembers which, so "cannot reach" messages say where we looked
and why there.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

DEFAULT_SOCKET = Path("/run/rolloutd/admin.sock")


class Unreachable(Exception):
    """A server rolloutctl talks to did not answer: the daemon on its admin socket (exit 3), or
    Prometheus for `report --prometheus` (connection, timeout, not Prometheus at all)."""


class ApiError(Exception):
    """The daemon answered with an error."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


@dataclass(frozen=True)
class SocketLocation:
    path: Path
    how: str


def locate_socket(socket: Path | None, config: Path | None, env: dict[str, str] | None = None) -> SocketLocation:
    env = dict(os.environ) if env is None else env
    if socket:
        return SocketLocation(socket, "from --socket")
    if config:
        return SocketLocation(Path(read_config_value(config, "admin_socket", str(DEFAULT_SOCKET))), f"from {config}")
    if env.get("ROLLOUTD_SOCKET"):
        return SocketLocation(Path(env["ROLLOUTD_SOCKET"]), "from $ROLLOUTD_SOCKET")
    return SocketLocation(DEFAULT_SOCKET, "the default; set --socket, --config or $ROLLOUTD_SOCKET to change it")


def read_config_value(config: Path, key: str, default: str) -> str:
    """One `[daemon]` setting from a rolloutd config file (rolloutctl needs no more of it)."""
    try:
        data = tomllib.loads(config.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ApiError(0, f"cannot read {config}: {exc}") from None
    value = data.get("daemon", {}).get(key, default)
    return str(value)


class AdminClient:
    def __init__(self, location: SocketLocation, timeout: float = 10.0) -> None:
        self.location = location
        transport = httpx.HTTPTransport(uds=str(location.path))
        self._http = httpx.Client(transport=transport, base_url="http://rolloutd", timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def get(self, path: str) -> Any:
        return self._request("GET", path)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._request("POST", path, json=body)

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except (
            httpx.ConnectError,
            httpx.RemoteProtocolError,
            httpx.ReadError,
            FileNotFoundError,
            ConnectionRefusedError,
            PermissionError,
        ) as exc:
            raise Unreachable(self._unreachable(exc)) from None
        except httpx.TimeoutException:
            raise Unreachable(
                f"rolloutd at {self.location.path} ({self.location.how}) did not answer in time"
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400 or body is None:
            raise ApiError(response.status_code, error_message(response, body))
        return body

    def _unreachable(self, exc: BaseException) -> str:
        cause = str(exc) or type(exc).__name__
        return (
            f"cannot reach rolloutd at {self.location.path} ({self.location.how}): {cause}. "
            f"Is it running? Try `systemctl status rolloutd`."
        )


def error_message(response: httpx.Response, body: Any) -> str:
    """What an error answer says: the daemon's own words (`{"error": ...}`, e.g. "state_dir /x is
    full (ENOSPC) while writing flags.json: free space and retry"), else the bare status with
    where to look, never a bare "Internal Server Error"."""
    if isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"].strip():
        return body["error"]
    text = response.text.strip()
    said = f": {text[:200]}" if text and text != response.reason_phrase else ""
    return (
        f"rolloutd answered {response.status_code} {response.reason_phrase}{said}; its log says why "
        f"(`journalctl -u rolloutd -p err`)"
    )
