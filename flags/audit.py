"""The append-only audit log of flag changes: one JSON object a line.

Each change writes its records *before* the flags file is replaced, each record
carrying the change's id; the changed flags carry the same id in `audit_id`. So a
crash between the two leaves a record whose id the flags file does not have, which
`FlagStore` notices on the next start and closes with an ``aborted`` record. A record
torn by a crash mid-append is cut off the end on open (it was never committed: its
change had not been written yet).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_TAIL_BYTES = 256 * 1024


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records durably (fsync before returning)."""
        data = b"".join(json.dumps(r, sort_keys=True, default=str).encode() + b"\n" for r in records)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            start = os.fstat(fd).st_size
            view = memoryview(data)
            try:
                while view:  # a short write must not leave half a record mid-log
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, start)  # a full disk took part of a record: take it back
                raise
        finally:
            os.close(fd)

    def tail(self, limit: int = 50) -> list[dict[str, Any]]:
        """The last `limit` whole records, oldest first."""
        try:
            with open(self.path, "rb") as src:
                size = src.seek(0, os.SEEK_END)
                src.seek(max(0, size - _TAIL_BYTES))
                chunk = src.read()
        except FileNotFoundError:
            return []
        lines = chunk.split(b"\n")
        if size > _TAIL_BYTES:
            lines = lines[1:]  # the first line of the window may be partial
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records[-limit:]

    def repair_torn_tail(self) -> int:
        """Cut an incomplete last record left by a crash; return the bytes removed."""
        try:
            with open(self.path, "r+b") as log:
                size = log.seek(0, os.SEEK_END)
                if size == 0:
                    return 0
                log.seek(max(0, size - _TAIL_BYTES))
                chunk = log.read()
                if chunk.endswith(b"\n"):
                    return 0
                keep = size - (len(chunk) - (chunk.rfind(b"\n") + 1))
                log.truncate(keep)
                os.fsync(log.fileno())
                return size - keep
        except FileNotFoundError:
            return 0
