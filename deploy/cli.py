"""rolloutctl: the operator's command line, over the daemon's admin socket.

    rolloutctl [--socket PATH | --config PATH] [--json] COMMAND
        health
        flags list
        flags show NAME
        flags set NAME [--enabled true|false] [--percentage P] --reason "..."
        flags restore [BACKUP --reason "..."] [--state-dir DIR]
        emergency-stop --reason "..."

Exit status: 0 success, 1 failure, 2 usage error, 3 the daemon cannot be reached.

`flags restore` is the one command that also works without a daemon: when the
flags file is corrupt the daemon refuses to start, so with `--state-dir` (or a
`--config` naming one) rolloutctl lists and restores backups itself, through the
flags store's public API and its lock (so it cannot race a running daemon).
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
from pathlib import Path
from typing import Any, Callable

from deploy.client import AdminClient, ApiError, Unreachable, locate_socket, read_config_value

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not getattr(args, "run", None):
        _parser().print_usage(sys.stderr)
        return EXIT_USAGE
    try:
        location = locate_socket(args.socket, args.config)
    except ApiError as exc:
        print(f"rolloutctl: {exc}", file=sys.stderr)
        return EXIT_FAILED
    client = AdminClient(location)
    try:
        return args.run(client, args)
    except Unreachable as exc:
        print(f"rolloutctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ApiError as exc:
        print(f"rolloutctl: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        client.close()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rolloutctl", description="Steer a running rolloutd.")
    p.add_argument("--socket", type=Path, help="the daemon's admin socket")
    p.add_argument("--config", type=Path, help="a rolloutd config file; its admin_socket is used")
    p.add_argument("--json", action="store_true", help="print the daemon's JSON answer")
    sub = p.add_subparsers(metavar="COMMAND")
    sub.add_parser("health", help="is the daemon up and ready?").set_defaults(run=cmd_health)
    stop = sub.add_parser("emergency-stop", help="turn the kill switch on: every flag off")
    stop.add_argument("--reason", required=True)
    stop.set_defaults(run=cmd_emergency_stop)
    flags = sub.add_parser("flags", help="list, show, set or restore flags").add_subparsers(metavar="ACTION")
    flags.add_parser("list", help="every flag and its percentage now").set_defaults(run=cmd_flags_list)
    show = flags.add_parser("show", help="one flag as stored, with its recent audit records")
    show.add_argument("name")
    show.set_defaults(run=cmd_flags_show)
    set_ = flags.add_parser("set", help="change a flag (audited, backed up)")
    set_.add_argument("name")
    set_.add_argument("--enabled", type=_boolean, metavar="true|false")
    set_.add_argument("--percentage", type=float, metavar="P")
    set_.add_argument("--reason", required=True)
    set_.set_defaults(run=cmd_flags_set)
    restore = flags.add_parser("restore", help="list backups, or restore one")
    restore.add_argument("backup", nargs="?")
    restore.add_argument("--reason")
    restore.add_argument("--state-dir", type=Path, help="work on this state_dir directly when no daemon runs")
    restore.set_defaults(run=cmd_flags_restore)
    return p


def cmd_health(client: AdminClient, args: argparse.Namespace) -> int:
    health = client.get("/v1/health")
    if args.json:
        _print_json(health)
    else:
        state = "ready" if health["ready"] else "NOT READY: " + "; ".join(health["problems"].values())
        kill = "ON" if health["kill_switch"] else "off"
        print(f"rolloutd pid {health['pid']}: {state}; {health['flags']} flags; kill switch {kill}; "
              f"listening on {health['listen']}; state in {health['state_dir']}")
    return EXIT_OK if health["ready"] else EXIT_FAILED


def cmd_flags_list(client: AdminClient, args: argparse.Namespace) -> int:
    answer = client.get("/v1/flags")
    if args.json:
        _print_json(answer)
        return EXIT_OK
    rows = [(f["name"], "on" if f["enabled"] else "off", f["strategy"], f"{f['percentage']:g}%",
             " AND ".join(f["constraints"]) or "-") for f in answer["flags"]]
    _print_table(("FLAG", "ENABLED", "STRATEGY", "PERCENT", "CONSTRAINTS"), rows)
    if answer["kill_switch"]:
        print("\nemergency_shutdown is ON: every other flag evaluates to off.")
    return EXIT_OK


def cmd_flags_show(client: AdminClient, args: argparse.Namespace) -> int:
    answer = client.get(f"/v1/flags/{args.name}")
    if args.json:
        _print_json(answer)
        return EXIT_OK
    print(json.dumps({answer["name"]: answer["stored"]}, indent=2))
    print(f"\neffective percentage now: {answer['percentage']:g}%")
    for record in answer["audit"]:
        print(f"  {record['time']}  {record.get('event', 'change'):8} {record.get('actor', '?')}: {record.get('reason', '')}")
    return EXIT_OK


def cmd_flags_set(client: AdminClient, args: argparse.Namespace) -> int:
    if args.enabled is None and args.percentage is None:
        print("rolloutctl: flags set needs --enabled and/or --percentage", file=sys.stderr)
        return EXIT_USAGE
    body: dict[str, Any] = {"reason": args.reason, "actor": _actor()}
    if args.enabled is not None:
        body["enabled"] = args.enabled
    if args.percentage is not None:
        body["percentage"] = args.percentage
    answer = client.post(f"/v1/flags/{args.name}", body)
    if args.json:
        _print_json(answer)
    else:
        print(f"{answer['name']}: {'on' if answer['enabled'] else 'off'}, {answer['percentage']:g}% ({answer['strategy']})")
    return EXIT_OK


def cmd_emergency_stop(client: AdminClient, args: argparse.Namespace) -> int:
    answer = client.post("/v1/emergency-stop", {"reason": args.reason, "actor": _actor()})
    print("emergency_shutdown is ON: every other flag now evaluates to off." if answer["kill_switch"] else "kill switch NOT on")
    return EXIT_OK if answer["kill_switch"] else EXIT_FAILED


def cmd_flags_restore(client: AdminClient, args: argparse.Namespace) -> int:
    if args.backup and not args.reason:
        print("rolloutctl: restoring needs --reason \"...\" (it goes into the audit log)", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _restore_via(client.get, client.post, args)
    except Unreachable:
        state_dir = args.state_dir or (Path(read_config_value(args.config, "state_dir", "")) if args.config else None)
        if not state_dir:
            raise
        print(f"rolloutctl: no daemon answers; working on {state_dir} directly", file=sys.stderr)
        return _restore_offline(state_dir, args)


def _restore_via(get: Callable[[str], Any], post: Callable[[str, dict[str, Any]], Any], args: argparse.Namespace) -> int:
    if not args.backup:
        _print_backups(get("/v1/flags-backups"), args.json)
        return EXIT_OK
    answer = post("/v1/flags-restore", {"backup": args.backup, "reason": args.reason, "actor": _actor()})
    print(f"restored {answer['restored']}: {answer['flags']} flags, revision {answer['revision']}")
    return EXIT_OK


def _restore_offline(state_dir: Path, args: argparse.Namespace) -> int:
    from flags.errors import FlagsError
    from flags.store import FlagStore

    try:
        with FlagStore.open(state_dir, strict=False) as store:
            if not args.backup:
                items = [{"name": b.name, "size": b.size, "flags": b.flags, "problem": b.problem} for b in store.backups()]
                _print_backups({"directory": str(store.backup_dir), "backups": items}, args.json)
                if store.load_error:
                    print(f"\ncurrent flags file is invalid: {store.load_error}", file=sys.stderr)
                return EXIT_OK
            snap = store.restore(args.backup, actor=_actor(), reason=args.reason)
    except FlagsError as exc:
        print(f"rolloutctl: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"restored {args.backup}: {len(snap)} flags, revision {snap.revision}")
    return EXIT_OK


def _print_backups(answer: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(answer)
        return
    rows = [(b["name"], str(b["size"]), str(b["flags"]) if b["flags"] is not None else "-",
             "ok" if not b["problem"] else "INVALID: " + b["problem"].split(" — ")[0]) for b in answer["backups"]]
    print(f"backups in {answer['directory']} (oldest first):")
    _print_table(("BACKUP", "BYTES", "FLAGS", "RESTORABLE"), rows)
    print('\nrestore one with: rolloutctl flags restore BACKUP --reason "..."')


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip())


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "on", "yes", "1"):
        return True
    if lowered in ("false", "off", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _actor() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()} via rolloutctl"


if __name__ == "__main__":
    raise SystemExit(main())
