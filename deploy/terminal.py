"""What every rolloutctl command prints with, and who it says is acting."""

from __future__ import annotations

import getpass
import json
import socket
from collections.abc import Sequence
from typing import Any


def print_table(header: Sequence[object], rows: Sequence[Sequence[object]], indent: str = "") -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(indent + "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip())


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def actor() -> str:
    """The audit log's actor for a change made from this terminal."""
    return f"{getpass.getuser()}@{socket.gethostname()} via rolloutctl"
