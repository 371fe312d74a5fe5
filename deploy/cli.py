"""rolloutctl: the operator's command line, over the daemon's admin socket.

    rolloutctl [--socket PATH | --config PATH] [--json] COMMAND
        health
        status | watch | hold | resume | approve | promote | rollback | report [--html FILE]   (deploy/rollout_cmds.py)
        flags list
        flags show NAME
        flags set NAME [--enabled true|false] [--percentage P] --reason "..."
        flags restore [BACKUP --reason "..."] [--state-dir DIR]
        emergency-stop --reason "..."
        plan validate FILE [--prometheus URL] [--json]

Exit status: 0 success, 1 failure, 2 usage error, 3 the daemon cannot be reached.

`plan validate` needs no daemon and never looks for or opens the admin socket: an
operator checks a plan before installing it, or where rolloutd does not run. It is an
offline command, so it imports the controller's public plan API
(`controller.plan_load.load_plan`, `check_promql`) instead of asking the daemon, and
accepts exactly what the daemon will load. It reports every problem as FILE:LINE, and
calls a plan valid only after its PromQL has been parsed (by promtool on PATH, else by
the Prometheus at `--prometheus URL`); with neither it says so and exits 1.

`flags restore` also works without a daemon: when the
flags file is corrupt the daemon refuses to start, so with `--state-dir` (or a
`--config` naming one) rolloutctl lists and restores backups itself, through the
flags store's public API and its lock (so it cannot race a running daemon).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deploy import rollout_cmds
from deploy.client import AdminClient, ApiError, Unreachable, locate_socket, read_config_value
from deploy.terminal import actor, print_json, print_table

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "offline", None):  # no daemon involved: no socket is looked for or opened
        return args.offline(args)
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
    rollout_cmds.register(sub)
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
    plan = sub.add_parser("plan", help="check a plan file (no daemon needed)").add_subparsers(metavar="ACTION")
    validate = plan.add_parser("validate", help="load a plan, report every problem with its line, parse its PromQL")
    validate.add_argument("file", type=Path, metavar="FILE")
    validate.add_argument(
        "--prometheus", metavar="URL", help="parse the queries on this Prometheus when promtool is not on PATH"
    )
    # SUPPRESS: a default here would overwrite a `--json` given before the command.
    validate.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the result as JSON")
    validate.set_defaults(offline=cmd_plan_validate)
    return p


def cmd_health(client: AdminClient, args: argparse.Namespace) -> int:
    health = client.get("/v1/health")
    if args.json:
        print_json(health)
    else:
        state = "ready" if health["ready"] else "NOT READY: " + "; ".join(health["problems"].values())
        kill = "ON" if health["kill_switch"] else "off"
        print(
            f"rolloutd pid {health['pid']}: {state}; {health['flags']} flags; kill switch {kill}; "
            f"listening on {health['listen']}; state in {health['state_dir']}"
        )
    return EXIT_OK if health["ready"] else EXIT_FAILED


def cmd_flags_list(client: AdminClient, args: argparse.Namespace) -> int:
    answer = client.get("/v1/flags")
    if args.json:
        print_json(answer)
        return EXIT_OK
    rows = [
        (
            f["name"],
            "on" if f["enabled"] else "off",
            f["strategy"],
            f"{f['percentage']:g}%",
            " AND ".join(f["constraints"]) or "-",
        )
        for f in answer["flags"]
    ]
    print_table(("FLAG", "ENABLED", "STRATEGY", "PERCENT", "CONSTRAINTS"), rows)
    if answer["kill_switch"]:
        print("\nemergency_shutdown is ON: every other flag evaluates to off.")
    return EXIT_OK


def cmd_flags_show(client: AdminClient, args: argparse.Namespace) -> int:
    answer = client.get(f"/v1/flags/{args.name}")
    if args.json:
        print_json(answer)
        return EXIT_OK
    print(json.dumps({answer["name"]: answer["stored"]}, indent=2))
    print(f"\neffective percentage now: {answer['percentage']:g}%")
    for record in answer["audit"]:
        print(
            f"  {record['time']}  {record.get('event', 'change'):8} {record.get('actor', '?')}: {record.get('reason', '')}"
        )
    return EXIT_OK


def cmd_flags_set(client: AdminClient, args: argparse.Namespace) -> int:
    if args.enabled is None and args.percentage is None:
        print("rolloutctl: flags set needs --enabled and/or --percentage", file=sys.stderr)
        return EXIT_USAGE
    body: dict[str, Any] = {"reason": args.reason, "actor": actor()}
    if args.enabled is not None:
        body["enabled"] = args.enabled
    if args.percentage is not None:
        body["percentage"] = args.percentage
    answer = client.post(f"/v1/flags/{args.name}", body)
    if args.json:
        print_json(answer)
    else:
        print(
            f"{answer['name']}: {'on' if answer['enabled'] else 'off'}, {answer['percentage']:g}% ({answer['strategy']})"
        )
    return EXIT_OK


def cmd_emergency_stop(client: AdminClient, args: argparse.Namespace) -> int:
    answer = client.post("/v1/emergency-stop", {"reason": args.reason, "actor": actor()})
    print(
        "emergency_shutdown is ON: every other flag now evaluates to off."
        if answer["kill_switch"]
        else "kill switch NOT on"
    )
    if answer.get("durable") is False:  # in force in memory; rolloutd writes it as soon as the disk allows
        print(
            f"rolloutctl: not yet on disk: {answer.get('problem') or 'the write is pending'}; rolloutd keeps it in "
            f"force and writes it as soon as the disk allows (a restart meanwhile finds it in emergency.state)",
            file=sys.stderr,
        )
    return EXIT_OK if answer["kill_switch"] else EXIT_FAILED


def cmd_flags_restore(client: AdminClient, args: argparse.Namespace) -> int:
    if args.backup and not args.reason:
        print('rolloutctl: restoring needs --reason "..." (it goes into the audit log)', file=sys.stderr)
        return EXIT_USAGE
    try:
        return _restore_via(client.get, client.post, args)
    except Unreachable:
        state_dir = args.state_dir or (Path(read_config_value(args.config, "state_dir", "")) if args.config else None)
        if not state_dir:
            raise
        print(f"rolloutctl: no daemon answers; working on {state_dir} directly", file=sys.stderr)
        return _restore_offline(state_dir, args)


def _restore_via(
    get: Callable[[str], Any], post: Callable[[str, dict[str, Any]], Any], args: argparse.Namespace
) -> int:
    if not args.backup:
        _print_backups(get("/v1/flags-backups"), args.json)
        return EXIT_OK
    answer = post("/v1/flags-restore", {"backup": args.backup, "reason": args.reason, "actor": actor()})
    print(f"restored {answer['restored']}: {answer['flags']} flags, revision {answer['revision']}")
    return EXIT_OK


def _restore_offline(state_dir: Path, args: argparse.Namespace) -> int:
    from flags.errors import FlagsError  # noqa: PLC0415  (only the offline restore opens a store)
    from flags.store import FlagStore  # noqa: PLC0415  (only the offline restore opens a store)

    try:
        with FlagStore.open(state_dir, strict=False) as store:
            if not args.backup:
                items = [
                    {"name": b.name, "size": b.size, "flags": b.flags, "problem": b.problem} for b in store.backups()
                ]
                _print_backups({"directory": str(store.backup_dir), "backups": items}, args.json)
                if store.load_error:
                    print(f"\ncurrent flags file is invalid: {store.load_error}", file=sys.stderr)
                return EXIT_OK
            snap = store.restore(args.backup, actor=actor(), reason=args.reason)
    except FlagsError as exc:
        print(f"rolloutctl: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"restored {args.backup}: {len(snap)} flags, revision {snap.revision}")
    return EXIT_OK


def _print_backups(answer: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(answer)
        return
    rows = [
        (
            b["name"],
            str(b["size"]),
            str(b["flags"]) if b["flags"] is not None else "-",
            "ok" if not b["problem"] else "INVALID: " + b["problem"].split(" — ")[0],
        )
        for b in answer["backups"]
    ]
    print(f"backups in {answer['directory']} (oldest first):")
    print_table(("BACKUP", "BYTES", "FLAGS", "RESTORABLE"), rows)
    print('\nrestore one with: rolloutctl flags restore BACKUP --reason "..."')


def cmd_plan_validate(args: argparse.Namespace) -> int:
    """Load FILE as the daemon would, then parse its PromQL; valid only if both pass."""
    # Imported here, not at the top: the daemon commands never need the controller.
    from controller.errors import PlanError  # noqa: PLC0415  (see above)
    from controller.plan_load import check_promql, load_plan  # noqa: PLC0415  (see above)

    file = str(args.file)
    try:
        plan = load_plan(args.file)
    except PlanError as exc:
        return _plan_verdict(file, args.json, exc.problems, None)
    promtool = shutil.which("promtool")
    try:
        problems = check_promql(
            plan,
            promtool=promtool,
            prometheus_url=args.prometheus,
            plan_text=args.file.read_text(),
            use_promtool=promtool is not None,
        )
    except (RuntimeError, OSError) as exc:
        message = f"{exc}; {file} was NOT validated (its queries are unchecked)"
        if args.json:
            print_json({"valid": False, "problems": [], "error": message, "plan": _plan_summary(plan)})
        else:
            print(f"rolloutctl: {message}", file=sys.stderr)
        return EXIT_FAILED
    checked = (
        "no PromQL to check"
        if not any(g.query for g in plan.guards)
        else f"PromQL parsed by {'promtool' if promtool else 'Prometheus at ' + args.prometheus}"
    )
    return _plan_verdict(file, args.json, problems, _plan_summary(plan), checked)


def _plan_verdict(
    file: str, as_json: bool, problems: list[Any], summary: dict[str, Any] | None, checked: str = ""
) -> int:
    problems = sorted(problems, key=lambda p: p.line or 0)
    if as_json:
        print_json(
            {
                "valid": not problems,
                "problems": [
                    {"where": p.where, "line": p.line, "message": p.message, "text": p.render(file)} for p in problems
                ],
                "plan": summary,
            }
        )
    elif problems:
        for problem in problems:
            print(problem.render(file))
        print(f"{file}: {len(problems)} problem(s); the plan is NOT valid")
    else:
        _print_plan(file, summary or {}, checked)
    return EXIT_FAILED if problems else EXIT_OK


def _plan_summary(plan: Any) -> dict[str, Any]:
    """The plan as JSON-ready data; offsets in hours, as the plan file counts them."""
    from controller.plan import format_duration  # noqa: PLC0415  (plan commands only)

    def at(delta: Any) -> dict[str, Any]:
        hours = delta.total_seconds() / 3600
        return {"at": f"{hours:g}h" if hours == int(hours) else format_duration(delta), "at_hours": hours}

    return {
        "name": plan.name,
        "digest": plan.digest,
        "flags": list(plan.flags),
        "stages": [
            {**at(s.at), "percentage": s.percentage, "agents": list(s.agents), "name": s.name} for s in plan.stages
        ],
        "checkpoints": [
            {**at(c.at), "name": c.name, "requires_approval": c.requires_approval, "criteria": list(c.criteria)}
            for c in plan.checkpoints
        ],
        "guard_interval": format_duration(plan.guard_interval),
        "failure_limit": plan.failure_limit,
        "failure_response": str(plan.failure_response),
        "guards": [
            {
                "name": g.name,
                "direction": str(g.direction),
                "thresholds": {str(sev): value for sev, value in sorted(g.thresholds.items())},
                "responses": {str(sev): str(r) for sev, r in sorted(g.responses.items())},
                "window": format_duration(g.window),
                "sustain": format_duration(g.sustain),
                "checks_to_sustain": g.checks_to_sustain(plan.guard_interval),
                "no_data": str(g.no_data),
                "query": g.resolved_query(),
                "builtin": g.builtin,
                "unit": g.unit,
            }
            for g in plan.guards
        ],
    }


def _print_plan(file: str, plan: dict[str, Any], checked: str) -> None:
    print(f"{file}: plan {plan['name']} is valid ({checked})")
    print(f"flags: {', '.join(plan['flags'])}")
    print("stages:")
    print_table(
        ("AT", "PERCENT", "AGENTS"),
        [(s["at"], f"{s['percentage']:g}%", ", ".join(s["agents"]) or "-") for s in plan["stages"]],
        indent="  ",
    )
    print("checkpoints:")
    print_table(
        ("AT", "APPROVAL", "NAME"),
        [(c["at"], "required" if c["requires_approval"] else "-", c["name"]) for c in plan["checkpoints"]],
        indent="  ",
    )
    print(
        f"guards, checked every {plan['guard_interval']} ({plan['failure_limit']} failed checks in a row: "
        f"{plan['failure_response']}):"
    )
    rows = [
        (
            g["name"],
            g["direction"],
            *(_threshold(g, sev) for sev in ("warning", "critical", "emergency")),
            _sustain(g),
            g["no_data"],
        )
        for g in plan["guards"]
    ]
    print_table(("GUARD", "DIRECTION", "WARNING", "CRITICAL", "EMERGENCY", "SUSTAIN", "NO DATA"), rows, indent="  ")


def _sustain(guard: dict[str, Any]) -> str:
    checks = guard["checks_to_sustain"]
    return f"{guard['sustain'] if guard['sustain'] != '0s' else 'none'} ({checks} check{'s' if checks != 1 else ''})"


def _threshold(guard: dict[str, Any], severity: str) -> str:
    value = guard["thresholds"].get(severity)
    return "-" if value is None else f"{value:g}"


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "on", "yes", "1"):
        return True
    if lowered in ("false", "off", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


if __name__ == "__main__":
    raise SystemExit(main())
