"""Opening the daemon's sockets ourselves, so their permissions are right from the start.

The admin socket is the control plane: it must be 0660 the instant it exists (not
0666 and chmod-ed later, as uvicorn's `uds=` does), and a stale socket left by a
crashed daemon must not block a restart while a live one must not be stolen.
"""

from __future__ import annotations

import grp
import os
import socket
import stat
from pathlib import Path

from controller.errors import ListenerError


def bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=1024)
    except OSError as exc:
        raise ListenerError(f"cannot listen on {host}:{port}: {exc.strerror}; change [daemon] listen") from None
    sock.setsockopt(
        socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
    )  # inherited by accepted sockets; asyncio skips proto=0 ones
    sock.setblocking(False)
    return sock


def bind_unix(path: Path, group: str | None = None) -> socket.socket:
    """Listen on `path` with mode 0660 (group `group` if given)."""
    try:
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    except OSError as exc:  # a file where the directory should be, or no permission
        raise ListenerError(
            f"cannot create the admin socket's directory {path.parent}: {exc.strerror}; "
            "change [daemon] admin_socket or move what is in the way aside"
        ) from None
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o117)  # the socket is born 0660: no window where others may connect
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise ListenerError(
            f"cannot create the admin socket {path}: {exc.strerror}; change [daemon] admin_socket"
        ) from None
    finally:
        os.umask(old)
    os.chmod(path, 0o660)
    if group:
        _chgrp(path, group)
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _remove_stale(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ListenerError(f"{path} exists and is not a socket; remove it or change [daemon] admin_socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # left by a daemon that died: safe to replace
        return
    finally:
        probe.close()
    raise ListenerError(f"another process is serving {path}; is rolloutd already running?")


def _chgrp(path: Path, group: str) -> None:
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise ListenerError(f"[daemon] admin_socket_group = {group!r}: no such group") from None
    if path.stat().st_gid == gid:
        return  # already ours (the unit's Group=): no chown, which the syscall filter forbids
    try:
        os.chown(path, -1, gid)
    except OSError as exc:
        raise ListenerError(
            f"cannot give {path} to group {group!r}: {exc.strerror}; the daemon must be a member "
            f"of that group, or leave admin_socket_group out"
        ) from None
