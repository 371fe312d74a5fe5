"""`rolloutd`: the entry point and its subcommands.

    rolloutd --config PATH          the daemon (controller/host/daemon.py)
    rolloutd demo [...]             the seeds' plan on embedded defaults (controller/demo/run.py)
    rolloutd replay --config ...    a plan against Prometheus history (controller/host/replay.py)

Only the chosen subcommand is imported: the daemon does not load the demo, nor the demo
the replay. `python -m controller.main` is the same as `rolloutd`.
"""

from __future__ import annotations

import sys

import anyio


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["demo"]:
        from controller.demo.run import demo  # noqa: PLC0415  (imported only for this subcommand)

        return demo(argv[1:])
    if argv[:1] == ["replay"]:
        from controller.host.replay import replay  # noqa: PLC0415  (imported only for this subcommand)

        return anyio.run(replay, argv[1:], backend="asyncio")
    from controller.host.daemon import run  # noqa: PLC0415  (imported only for this subcommand)

    return run(argv)


if __name__ == "__main__":
    raise SystemExit(main())
