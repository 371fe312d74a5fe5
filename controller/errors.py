"""Exceptions raised by the controller (the core and its wings: sources, host).

    ControllerError
     ├── PlanError           (also ValueError) the plan file cannot be used: every problem, each at
     │                       its line — `rolloutctl plan validate FILE`
     ├── ConfigError         (also ValueError) the daemon's TOML config cannot be used: the file,
     │                       the problem, what to write instead
     ├── StateFileError      controller.db exists but cannot be used: the file, the problem, the
     │                       remedy; the file was not changed
     ├── PlanMismatch        the durable state belongs to another rollout, or to a longer plan
     ├── CommandRefused      an operator's command does not apply in the rollout's phase
     ├── PrometheusError     Prometheus gave no usable answer (reports, replay; a guard round turns
     │                       it into an ERROR observation instead)
     ├── RolloutStartError   the rollout cannot start (a bad plan, a mismatched state, no source)
     └── ListenerError       (also RuntimeError) a listener socket cannot be opened

Each class keeps the built-in base its callers caught before the tree existed, and each is
still importable from the module that raises it (`controller.plan_load.PlanError`,
`controller.decide.CommandRefused`, ...). Messages are built in the constructors, so every
raiser says the same thing the same way, and each names what to do about it.

Not here, on purpose: the admin API's `BadRequest` (controller/host/admin_api.py) is an HTTP
answer in waiting — a problem plus a status code, raised and turned into a 4xx inside the
same ASGI app, never seen outside it — like flags/ofrep.py's `_BadRequest`. `rolloutctl`'s
errors (`Unreachable`, `ApiError`) are the client's, in deploy/client.py. The flag store's
`StorageError` (flags/errors.py) crosses into the controller unchanged: a full disk is one
error whichever file it hit.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

MOVE_STATE_ASIDE = "to begin a new rollout, stop rolloutd and move controller.db aside"
DAMAGED = (
    "restore it from a backup, or move it aside (with any -wal and -shm file beside it) "
    "to begin a new rollout of the plan from hour 0"
)


class ControllerError(Exception):
    """Base class of every error the controller raises."""


class _Problem(Protocol):
    """One problem found in a plan (controller.plan_load.Problem)."""

    def render(self, file: Path | str) -> str: ...


class PlanError(ControllerError, ValueError):
    """The plan cannot be used; `problems` lists every reason."""

    def __init__(self, file: Path | str, problems: Sequence[_Problem]) -> None:
        self.file = Path(file)
        self.problems = list(problems)
        lines = "\n".join("  " + p.render(file) for p in problems)
        super().__init__(
            f"{file}: {len(problems)} problem(s) in the plan; run `rolloutctl plan validate {file}`:\n{lines}"
        )


class ConfigError(ControllerError, ValueError):
    """The configuration file cannot be used; `problem` says what to write instead."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class StateFileError(ControllerError):
    """The controller's state file exists but cannot be used; it was not changed."""

    def __init__(self, path: Path | str, problem: str, remedy: str = DAMAGED) -> None:
        self.path = Path(path)
        self.problem = problem
        self.remedy = remedy
        super().__init__(f"{self.path}: {problem}; rolloutd left it as it is — {remedy}")


class PlanMismatch(ControllerError):
    """The durable state belongs to a different rollout than the configured plan, or to a longer one."""

    def __init__(self, problem: str, remedy: str = MOVE_STATE_ASIDE) -> None:
        self.problem = problem
        self.remedy = remedy
        super().__init__(f"{problem}; {remedy}")


class CommandRefused(ControllerError):
    """An operator command that does not apply in the current phase; `problem` says why and what does."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(problem)


class PrometheusError(ControllerError):
    """Prometheus could not give an answer; the message names the endpoint and why."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(problem)


class RolloutStartError(ControllerError):
    """The rollout cannot start; the message says what to fix."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(problem)


class ListenerError(ControllerError, RuntimeError):
    """A listener socket cannot be opened; the message names the setting to change."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(problem)
