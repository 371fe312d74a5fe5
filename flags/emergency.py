"""The emergency file, `state_dir/emergency.state`: a kill switch that needs no new disk blocks.

Every change of flags.json needs free blocks: a new file replaces it, a record is appended
to audit.jsonl, a backup is linked. On a full disk (ENOSPC) none of them can record an
emergency. This file can: it is created once, when the store opens, at a fixed SIZE, with
real bytes (not a sparse hole), and fsynced; from then on engaging or clearing the kill
switch rewrites those bytes in place (pwrite + fdatasync), which ext4, xfs and tmpfs do in
the blocks the file already has. (A copy-on-write filesystem — btrfs, ZFS — allocates even
for an in-place write; there the file is no better than flags.json, and no worse.)

The kill switch is on when flags.json says so OR this file says so. An emergency writes
this file first, then flags.json; turning the kill switch off clears this file first, so
a crash between the two leaves the kill switch on either way.

The record is one line — MAGIC, the CRC-32 of the JSON that follows, the JSON {engaged,
actor, reason, at} — padded with spaces to SIZE, newline-terminated, so `cat` shows it.
Reading it:

    whole, checksum right       what it says
    anything else               ENGAGED, with `problem` saying why: a record torn by a crash
                                mid-write may have been an emergency under way, so the safe
                                reading of a damaged record is "on". Clearing the emergency
                                rewrites the file.

A missing file says nothing (flags.json decides); the store creates it.
"""

from __future__ import annotations

import errno
import json
import os
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import structlog

from flags.atomic import atomic_write
from flags.errors import StorageError

log = structlog.get_logger("rolloutd.flags")

FILE = "emergency.state"
SIZE = 4096  # one page, one block of every common filesystem
MAGIC = b"rolloutd-emergency/1 "
_PAYLOAD_MAX = SIZE - len(MAGIC) - 8 - 1 - 1 - 1  # crc, space, newline after the JSON, last newline


@dataclass(frozen=True, slots=True)
class Marker:
    engaged: bool
    actor: str = ""
    reason: str = ""
    at: str = ""
    problem: str | None = None  # set when a damaged record is read as engaged


def encode(marker: Marker) -> bytes:
    """The SIZE bytes of `marker`; a long reason is cut to fit."""
    fields = {k: v for k, v in asdict(marker).items() if k != "problem"}
    while True:
        payload = json.dumps(fields, sort_keys=True).encode()  # ASCII: \\u escapes even for lone surrogates
        if len(payload) <= _PAYLOAD_MAX:
            break
        fields["reason"] = fields["reason"][: len(fields["reason"]) // 2]
        fields["actor"] = fields["actor"][:100]
    line = MAGIC + f"{zlib.crc32(payload):08x} ".encode() + payload + b"\n"
    return line + b" " * (SIZE - len(line) - 1) + b"\n"


def decode(data: bytes) -> Marker:
    """The marker `data` holds; a damaged record reads as engaged (see the module docstring)."""
    problem = _damage(data)
    if problem:
        return Marker(engaged=True, problem=problem)
    payload = data[len(MAGIC) + 9 : data.index(b"\n")]
    raw = json.loads(payload)
    return Marker(
        bool(raw.get("engaged")), str(raw.get("actor", "")), str(raw.get("reason", "")), str(raw.get("at", ""))
    )


def _damage(data: bytes) -> str | None:
    if len(data) != SIZE:
        return f"it is {len(data)} bytes, not {SIZE}"
    if not data.startswith(MAGIC):
        return "it does not start with the emergency record's header"
    end = data.find(b"\n")
    crc, payload = data[len(MAGIC) : len(MAGIC) + 8], data[len(MAGIC) + 9 : end]
    try:
        if int(crc, 16) != zlib.crc32(payload):
            return "its checksum does not match (a write torn by a crash)"
        if not isinstance(json.loads(payload), dict):
            return "its record is not a JSON object"
    except ValueError:
        return "its checksum or record cannot be read (a write torn by a crash)"
    if data[end + 1 : -1].strip(b" ") or not data.endswith(b"\n"):
        return "bytes after the record are not padding (a write torn by a crash)"
    return None


class EmergencyFile:
    """The open emergency file; `write` rewrites it in place (raises OSError like any write)."""

    def __init__(self, path: Path, fd: int, marker: Marker) -> None:
        self.path, self._fd, self.marker = path, fd, marker

    @classmethod
    def open(cls, state_dir: Path) -> EmergencyFile:
        """Open (creating it, preallocated and fsynced, when missing) and read the file."""
        path = Path(state_dir) / FILE
        if not path.exists():
            atomic_write(path, encode(Marker(engaged=False)))  # born whole: temp file, fsync, rename
        fd = os.open(path, os.O_RDWR)
        try:
            marker = decode(os.pread(fd, SIZE + 1, 0))
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, marker)

    def write(self, marker: Marker) -> None:
        """Rewrite the record in place and make it durable."""
        data = encode(marker)
        written = os.pwrite(self._fd, data, 0)
        if written != len(data):
            raise OSError(errno.EIO, f"short write to {self.path}: {written} of {len(data)} bytes")
        if os.fstat(self._fd).st_size != SIZE:
            os.ftruncate(self._fd, SIZE)  # a damaged, longer file: cut it back to the record
        os.fdatasync(self._fd)
        self.marker = marker

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class EmergencySwitch:
    """emergency.state as the flag store uses it. The file may be missing (a disk full at the
    very first start): then it says nothing, and `ensure_open` creates it when it can."""

    def __init__(self, state_dir: Path, clock: Callable[[], datetime]) -> None:
        self.state_dir, self._clock = Path(state_dir), clock
        self.file: EmergencyFile | None = None

    @property
    def path(self) -> Path:
        return self.state_dir / FILE

    @property
    def engaged(self) -> bool:
        return self.file is not None and self.file.marker.engaged

    def open(self) -> Marker | None:
        """Open (creating) the file and return what it says; None, logged at crit, when it cannot be created."""
        try:
            self.ensure_open()
        except StorageError as exc:
            log.critical(
                "emergency.file_unavailable",
                error=str(exc),
                retry="in the background",
                consequence="until it exists, an emergency on a full disk lives in memory only",
            )
            return None
        assert self.file is not None
        if self.file.marker.problem:
            log.critical(
                "emergency.file_damaged",
                file=str(self.path),
                problem=self.file.marker.problem,
                reading="engaged: the kill switch is on",
                remedy="clear the emergency (`rolloutctl resume --clear-emergency`, or `rolloutctl flags "
                "set emergency_shutdown --enabled false`), which rewrites the file",
            )
        return self.file.marker

    def ensure_open(self) -> None:
        if self.file is None:
            try:
                self.file = EmergencyFile.open(self.state_dir)
            except OSError as exc:
                raise StorageError(self.state_dir, f"creating {FILE}", exc) from exc

    def engage(self, actor: str, reason: str) -> None:
        """Say "on", in place; a failure is logged at crit, not raised: flags.json is still to be tried."""
        if self.file is None or (self.file.marker.engaged and not self.file.marker.problem):
            return
        try:
            self.file.write(Marker(True, actor, reason, self._clock().isoformat()))
        except OSError as exc:
            log.critical(
                "emergency.file_not_written",
                error=str(StorageError(self.state_dir, f"writing {FILE}", exc)),
                kill_switch="on, in memory; flags.json is tried next",
            )

    def clear(self, actor: str, reason: str) -> Marker | None:
        """Say "off" (before flags.json does, so a crash between them leaves the kill switch on);
        the marker it replaced, to `put_back` should flags.json fail; None when already off."""
        if not self.engaged:
            return None
        assert self.file is not None
        was = self.file.marker
        try:
            self.file.write(Marker(False, actor, reason, self._clock().isoformat()))
        except OSError as exc:
            raise StorageError(self.state_dir, f"clearing {FILE} (the kill switch stays on)", exc) from exc
        return was

    def put_back(self, marker: Marker) -> None:
        """Undo `clear` after flags.json could not be written (best effort)."""
        if self.file is None:
            return
        try:
            self.file.write(marker)
        except OSError as exc:
            log.critical(
                "emergency.file_not_restored",
                file=str(self.path),
                error=str(exc),
                note="it says the kill switch is off; flags.json still has it on, which wins",
            )

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
