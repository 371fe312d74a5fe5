"""rolloutctl's rollout commands: status, watch, hold, resume, approve, promote, rollback, report.

    rolloutctl status [--json]
    rolloutctl watch [--interval SECONDS] [--once] [--no-color]     (deploy/watch.py)
    rolloutctl hold --reason "..."
    rolloutctl resume [--reason "..."] [--clear-emergency]
    rolloutctl approve [--reason "..."]
    rolloutctl promote [--reason "..."]
    rolloutctl rollback --to N|0 --reason "..."      (N: a stage index; -1: before the first stage)
    rolloutctl report [NAME] [--json]
    rolloutctl report --html FILE [--prometheus URL]  (deploy/report_page.py)

A command the rollout's phase does not allow (approve with nothing waiting, resume
during an emergency without --clear-emergency, ...) exits 1 with the daemon's reason.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller.views.journal_text import said
from deploy.client import AdminClient
from deploy.report_page import write_page
from deploy.terminal import actor, print_json, print_table
from deploy.watch import watch

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def register(sub: Any) -> None:
    status = sub.add_parser("status", help="the rollout: phase, stage, next transition, every guard")
    _json_flag(status)
    status.set_defaults(run=cmd_status)
    watch = sub.add_parser("watch", help="a live view: the plan's timeline, every guard, the last decisions")
    watch.add_argument("--interval", type=_seconds, default=1.0, metavar="SECONDS", help="refresh every SECONDS (1)")
    watch.add_argument("--once", action="store_true", help="print one frame and exit")
    watch.add_argument("--no-color", action="store_true", help="no colours (also when $NO_COLOR is set)")
    watch.set_defaults(run=cmd_watch)
    hold = sub.add_parser("hold", help="stop advancing until `resume`")
    hold.add_argument("--reason", required=True)
    hold.set_defaults(run=command("hold"))
    resume = sub.add_parser("resume", help="advance again after a hold or a rollback")
    resume.add_argument("--reason", default="")
    resume.add_argument(
        "--clear-emergency",
        action="store_true",
        help="leave the emergency shutdown (flags stay at 0%% until the rollout advances)",
    )
    resume.set_defaults(run=command("resume"))
    approve = sub.add_parser("approve", help="approve the checkpoint that waits for it")
    approve.add_argument("--reason", default="")
    approve.set_defaults(run=command("approve"))
    promote = sub.add_parser("promote", help="apply the next stage now")
    promote.add_argument("--reason", default="")
    promote.set_defaults(run=command("promote"))
    rollback = sub.add_parser("rollback", help="roll back to a stage (0: the first stage; -1: no stage)")
    rollback.add_argument("--to", type=int, required=True, metavar="N")
    rollback.add_argument("--reason", required=True)
    rollback.set_defaults(run=command("rollback"))
    report = sub.add_parser("report", help="list checkpoint reports, show one, or write the whole rollout as HTML")
    report.add_argument("name", nargs="?")
    report.add_argument(
        "--html",
        type=Path,
        metavar="FILE",
        help="write one self-contained HTML page: timeline, guard charts, reports, decisions",
    )
    report.add_argument(
        "--prometheus", metavar="URL", help="with --html: also chart the seeds' metrics from this Prometheus"
    )
    _json_flag(report)
    report.set_defaults(run=cmd_report)


def _json_flag(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a default here would overwrite a `--json` given before the command.
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the JSON answer")


def cmd_status(client: AdminClient, args: argparse.Namespace) -> int:
    status = client.get("/v1/rollout")
    if args.json:
        print_json(status)
    else:
        print_status(status)
    return EXIT_OK


def cmd_watch(client: AdminClient, args: argparse.Namespace) -> int:
    return watch(client, interval=args.interval, once=args.once, color=not args.no_color)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"expected seconds between 0.1 and 3600, got {text!r}")
    return value


def command(name: str) -> Any:
    def run(client: AdminClient, args: argparse.Namespace) -> int:
        body: dict[str, Any] = {"reason": args.reason, "actor": actor()}
        if name == "rollback":
            body["to"] = args.to
        if name == "resume":
            body["clear_emergency"] = args.clear_emergency
        answer = client.post(f"/v1/rollout/{name}", body)
        if args.json:
            print_json(answer)
            return EXIT_OK
        for d in answer["decisions"]:
            print(f"{d['action']}: {said(d)} (stage {d['stage']}, {d['percentage']:g}%)")
        if not answer["decisions"]:
            print("nothing changed")
        s = answer["status"]
        print(f"rollout {s['rollout']} is {s['phase']} at {s['percentage']:g}%")
        return EXIT_OK

    return run


def cmd_report(client: AdminClient, args: argparse.Namespace) -> int:
    if args.html or args.prometheus:
        if args.name or not args.html:
            print(
                "rolloutctl: report --html FILE renders every report (no NAME); --prometheus needs --html",
                file=sys.stderr,
            )
            return EXIT_USAGE
        try:
            print(write_page(client, args.html, args.prometheus))
        except OSError as exc:
            print(f"rolloutctl: cannot write {args.html}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_FAILED
        return EXIT_OK
    if not args.name:
        names = client.get("/v1/reports")["reports"]
        if args.json:
            print_json(names)
        elif not names:
            print("no checkpoint reports yet")
        else:
            print("\n".join(names))
        return EXIT_OK
    report = client.get(f"/v1/reports/{args.name}")
    if args.json:
        print_json(report)
        return EXIT_OK
    print(f"{report['checkpoint']}: {report['recommendation']} ({report['recommendation_reason']})")
    print(
        f"  at {report['checkpoint_time']} ({report['hours_elapsed']}h after {report['deployment_start']}), "
        f"{report['current_rollout_percentage']:g}% of {', '.join(report['agents_affected']) or 'no agents'}"
    )
    print(
        f"  rollbacks {report['rollback_count']}, manual interventions {report['manual_interventions']}; "
        f"next: {report['next_milestone']}"
    )
    rows = [
        (c["criterion"], _value(c["observed"]), c["threshold"], c["verdict"], c.get("note") or "")
        for c in report["criteria"]
    ]
    print_table(("CRITERION", "OBSERVED", "THRESHOLD", "VERDICT", "NOTE"), rows, "  ")
    print("  metrics:")
    for key, value in report["metrics"].items():
        why = report.get("unmeasured", {}).get(key)
        print(f"    {key}: {_value(value)}" + (f"  ({why})" if value is None and why else ""))
    for issue in report["issues_detected"]:
        print(f"  issue: {issue}")
    return EXIT_OK


def print_status(s: dict[str, Any]) -> None:
    stage = f"stage {s['stage']}: {s['stage_name']}" if s["stage"] >= 0 else "no stage applied"
    print(f"rollout {s['rollout']}: {s['phase'].upper()} at {s['percentage']:g}% ({stage})")
    if s["hold_reason"]:
        print(f"  why: {s['hold_reason']}")
    print(f"  agents: {', '.join(s['agents']) or '(none)'}")
    scale = f", time_scale {s['time_scale']:g}" if s["time_scale"] != 1 else ""
    print(
        f"  plan time: +{s['plan_hours_elapsed']:.2f}h since {s['started_at']}{scale}; "
        f"guards every {s['guard_interval']}"
    )
    if s["next_transition"]:
        due = " (due: waits for a clean guard evaluation)" if s["next_transition_due"] else ""
        print(f"  next: {s['next_transition']} at {s['next_transition_at']}{_until(s['next_transition_at'])}{due}")
    print(
        f"  kill switch: {'ON' if s['kill_switch'] else 'off'}; rollbacks {s['rollbacks']}, "
        f"manual interventions {s['manual_interventions']}"
    )
    rows = []
    for g in s["guards"]:
        sign = ">" if g["direction"] == "above" else "<"
        verdict = g["verdict"] + (f" ({g['severity']})" if g["severity"] else "")
        rows.append(
            (
                g["name"],
                verdict,
                _value(g["value"]),
                f"{sign} {g['threshold']:g}",
                str(g["consecutive_breaches"]),
                str(g["consecutive_failures"]),
            )
        )
    print_table(("GUARD", "VERDICT", "VALUE", "THRESHOLD", "BREACHES", "FAILURES"), rows, "  ")
    for cp in s["checkpoints"]:
        mark = "done" if cp["done"] else "pending"
        if cp["requires_approval"]:
            mark += ", approved" if cp["approved"] else ", needs approval"
        print(f"  checkpoint {cp['name']} at {cp['plan_at']}: {mark}")


def _until(iso: str) -> str:
    moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    seconds = (moment - datetime.now(UTC)).total_seconds()
    if seconds <= 0:
        return ""
    hours, rest = divmod(int(seconds), 3600)
    return f" (in {hours}h{rest // 60:02d}m)" if hours else f" (in {rest // 60}m{rest % 60:02d}s)"


def _value(value: Any) -> str:
    return "-" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)
