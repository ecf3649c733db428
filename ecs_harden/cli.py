"""The command line: parse, dispatch, and turn errors into the exit codes of the contract."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ecs_harden import __version__, logs
from ecs_harden import facts as facts_mod
from ecs_harden import policy as policy_mod
from ecs_harden.errors import (
    EXIT_DRIFT,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    HardenError,
    PolicyError,
    UsageError,
)
from ecs_harden.lock import ReconcileLock
from ecs_harden.report import DRIFT, ERROR, STALE, Report, render_text

if TYPE_CHECKING:
    from ecs_harden.reconcile import Outcome
# ecs_harden.reconcile (every component) is imported where a command needs it: `gate`,
# the ECS agent's ExecStartPre, must not pay for it.


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--policy", metavar="PATH", default=default,
                        help=f"policy file (default: ${policy_mod.ENV_VAR}, else {policy_mod.DEFAULT_PATH})")
    parser.add_argument("--log-format", choices=("json", "console"), default=default,
                        help="log format on stderr (default: console on a TTY, else json)")
    parser.add_argument("--log-level", choices=logs.LEVELS, default=argparse.SUPPRESS if suppress else "info",
                        type=str.lower, help="log level (default: info)")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecs-harden",
        description="Keep an ECS container instance hardened: containers cannot reach IMDS, "
        "and /etc/ecs/ecs.config holds the desired agent flags.",
    )
    parser.add_argument("--version", action="version", version=f"ecs-harden {__version__}")
    _global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        _global_options(p, suppress=True)
        return p

    def fmt(p: argparse.ArgumentParser) -> None:
        p.add_argument("--format", choices=("text", "json"), default="text")

    fmt(command("facts", "what was detected about this host"))
    p = command("check", "report drift; change nothing")
    p.add_argument("--format", choices=("text", "json", "ssm-compliance"), default="text",
                   help="ssm-compliance: the input of `aws ssm put-compliance-items` (type "
                        "Custom:ecs_harden, one item per check and `daemon`) but for --resource-id")
    p.add_argument("--fresh", action="store_true",
                   help="probe IMDS now, even when the running daemon probed it recently")
    p = command("apply", "converge once, report what changed")
    fmt(p)
    p.add_argument("--dry-run", action="store_true", help="say what would change; change nothing")
    p = command("run", "the daemon (foreground; systemd Type=notify)")
    p.add_argument("--interval", type=_seconds, metavar="SECONDS",
                   help="seconds between polls and heartbeats (overrides the policy)")
    p.add_argument("--once", action="store_true", help="reconcile once, write the status file, exit")
    fmt(command("status", "the daemon's last report (status file)"))
    p = command("validate", "check a policy file and print the policy it makes; no probe, no scan, "
                "no side effects; exit 0 when valid, 2 when not")
    fmt(p)
    p.add_argument("file", nargs="?", metavar="FILE",
                   help="the policy to check ('-' for standard input; default: the policy the "
                        "daemon reads, with its ownership checks)")
    command("gate", "the ECS agent's ExecStartPre: exit 3 only while the IMDS block is not in force "
            "or an ecs.config flag is wrong under mode: enforce; no probe, no scan, no write")
    p = command("prepare", "create the directories and files the sandboxed unit writes "
                "(the unit's ExecStartPre=+)")
    p.add_argument("--drop-in", action="store_true",
                   help="create nothing; print the unit drop-in that makes this policy's paths "
                        "writable (ReadWritePaths=; ReadWriteDirectories= on amzn2)")
    p = command("install", "install the boot restore package, ecs-harden.service and its drop-ins; "
                "enable the unit")
    fmt(p)
    p.add_argument("--dry-run", action="store_true", help="say what would change; change nothing")
    p.add_argument("--now", action="store_true",
                   help="start the unit too (restart it when a unit file or the version changed)")
    p.add_argument("--restart", action="store_true", help="with --now: restart the unit whenever it runs")
    p.add_argument("--no-enable", dest="enable", action="store_false",
                   help="install the files, do not enable the unit")
    p.add_argument("--no-restore-package", dest="restore", action="store_false",
                   help="do not install the boot restore package")
    p = command("setup", "set a host up in one go, as the user-data and the role do: the policy "
                "(--policy-from), install, apply, the unit started, check; one FAILED line and "
                "the failed step's exit code on failure")
    p.add_argument("--policy-from", metavar="FILE",
                   help="write this policy (validated; '-' for standard input) where the daemon "
                        "reads it, only when it differs")
    p.add_argument("--format", choices=["text", "json"], default="text",
                   help="json: the steps' lines on stderr, one object on stdout at the end (what "
                        "changed, compliant or not), as the Ansible role reads it")
    p.add_argument("--dry-run", action="store_true",
                   help="change nothing: say what would be written and installed, then check")
    p.add_argument("--no-enable", dest="enable", action="store_false",
                   help="install the unit without enabling or starting it")
    p = command("remove", "take the managed rules out of the live ruleset and the persisted files")
    p.add_argument("--yes", action="store_true", help="really remove (required)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "gate":  # one line on stdout, no log: before anything else is set up
        from ecs_harden.gate import main as gate

        return gate(args.policy)
    logs.configure(args.log_format, args.log_level)
    log = logs.get("ecs_harden.cli")
    try:
        return _dispatch(args)
    except HardenError as exc:  # one line: JSON for a JSON log, else the text
        if args.log_format == "json":
            log.error("command.failed", command=args.command, error=str(exc), exit_code=exc.exit_code)
        else:
            print(f"ecs-harden: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except Exception as exc:  # never a traceback for an operator: say what failed, exit 1
        if args.log_format == "json":
            log.error("command.crashed", command=args.command, error=f"{type(exc).__name__}: {exc}")
        else:
            print(f"ecs-harden: internal error in {args.command}: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
        log.debug("command.traceback", exc_info=True)
        return EXIT_FAILURE


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "facts":
        return _facts(args)
    if args.command == "status":
        return _status(args)
    if args.command == "validate":
        return _validate(args)
    if args.command == "setup":
        return _setup(args)
    policy = policy_mod.load(args.policy)
    if args.command in ("check", "apply"):
        return _reconcile(args, policy)
    if args.command == "remove":
        return _remove(args, policy)
    if args.command == "prepare":
        return _prepare(args, policy)
    if args.command == "install":
        return _install(args, policy)
    if args.command == "run":
        from ecs_harden.daemon.loop import Daemon

        return Daemon(policy, args.policy, interval=args.interval).run(once=args.once)
    print(f"ecs-harden: unknown command {args.command}", file=sys.stderr)
    return EXIT_USAGE


def _validate(args: argparse.Namespace) -> int:
    """The policy a file makes, or the first thing wrong in it (PolicyError: exit 2). A FILE
    named here is a copy being staged (a template, a user-data heredoc): its contents are
    checked, and how the daemon would refuse it where it is is said, not an error."""
    from ecs_harden.policy.published import render

    warning: str | None = None
    if args.file is None:
        path, explicit = policy_mod.resolve_path(args.policy)
        data = policy_mod.read_trusted(path, explicit=explicit)
        policy = policy_mod.Policy() if data is None else policy_mod.parse(data, source=path)
    elif args.file == "-":
        path = "<stdin>"
        policy = policy_mod.parse(sys.stdin.buffer.read(), source=path)
    else:
        path = args.file
        try:
            data = policy_mod.read_trusted(path)
        except policy_mod.UntrustedPolicy as exc:
            warning = f"in place, the daemon would refuse it: {exc}"
            data = policy_mod.read_plain(path)
        policy = policy_mod.parse(data or b"", source=path)
    if args.format == "json":
        print(json.dumps({"file": path, "valid": True, "warning": warning,
                          "policy": policy_mod.to_json(policy)}, indent=2))
    else:
        print(f"{path}: valid")
        if warning:
            print(f"warning: {warning}")
        print(render(policy), end="")
    return EXIT_OK


def _facts(args: argparse.Namespace) -> int:
    found = facts_mod.gather()
    data = found.to_json()
    if args.format == "json":
        print(json.dumps(data, indent=2))
        return EXIT_OK
    for key in ("flavor", "init", "iptables"):
        print(f"{key:10} {data[key]}")
    print(f"{'os':10} {data['os']['id']} {data['os']['version_id']}")
    for key in ("docker", "ecs_agent"):
        p = data[key]
        state = f"running (pid {p['pid']}, started {p['started']})" if p["running"] else "not running"
        print(f"{key:10} {state}")
    return EXIT_OK


def _reconcile(args: argparse.Namespace, policy: policy_mod.Policy) -> int:
    from ecs_harden.assembly import build
    from ecs_harden.reconcile import Reconciler

    found = facts_mod.gather()
    fresh = args.command != "check" or bool(getattr(args, "fresh", False))
    reconciler = Reconciler(policy, found.platform(), build(policy, found, fresh=fresh),
                            announce=False)
    repair = args.command == "apply"
    dry_run = bool(getattr(args, "dry_run", False))
    if repair and not dry_run:
        with ReconcileLock():  # read, plan and commit while no other ecs-harden can
            outcome = reconciler.run(repair=True)
    else:
        outcome = reconciler.run(repair=False, dry_run=dry_run)
    if args.format == "ssm-compliance":
        print(json.dumps(ssm_document(outcome.report, policy), indent=2))
    else:
        _print(args.format, outcome, dry_run=dry_run, applied=repair and not dry_run)
    return exit_code(outcome)


def ssm_document(report: Report, policy: policy_mod.Policy) -> dict[str, object]:
    """The report as SSM Compliance items, with the daemon's: is its unit active, and is
    its status fresh (no older than 3 intervals, as `status` judges)."""
    from ecs_harden import install, proc, ssmcompliance
    from ecs_harden.statusfile import HEARTBEATS, heartbeat_limit, read_status

    try:
        done = proc.run(["systemctl", "is-active", install.UNIT], check=False, timeout=30)
        active = done.stdout.strip() or f"unknown (systemctl exited {done.returncode})"
    except proc.CommandError:
        active = "unknown (systemctl did not answer)"
    age: float | None
    data: dict[str, Any] = {}
    try:
        data, age = read_status(policy.report.status_file)
        limit = heartbeat_limit(data, policy.interval)
    except (OSError, ValueError):
        age, limit = None, HEARTBEATS * policy.interval
    # the daemon's record of attempts, when it is one (never a reason to call the status stale)
    daemon_data = data.get("daemon")
    record = daemon_data.get("attempts") if isinstance(daemon_data, dict) else None
    last_hour = record.get("last_hour") if isinstance(record, dict) else None
    attempts = max(0, last_hour) if isinstance(last_hour, int) else None
    daemon = ssmcompliance.daemon_item(active, age, limit, attempts)
    return ssmcompliance.document(report, daemon)


def _remove(args: argparse.Namespace, policy: policy_mod.Policy) -> int:
    if not args.yes:
        raise UsageError("remove takes the IMDS block away; say --yes to do it")
    from ecs_harden.daemon.stop import stop_daemon

    for line in stop_daemon(policy.report.status_file):
        print(line)
    found = facts_mod.gather()
    with ReconcileLock():
        removed = _remove_locked(policy, found)
    for line in removed:
        print(f"removed: {line}")
    if not removed:
        print("nothing to remove")
    return EXIT_OK


def _install(args: argparse.Namespace, policy: policy_mod.Policy) -> int:
    from ecs_harden import install

    result = install.install(policy, restore=args.restore, enable=args.enable, now=args.now,
                             restart=args.restart, dry_run=args.dry_run)
    if args.format == "json":
        print(json.dumps({**result.to_json(), "dry_run": args.dry_run}, indent=2))
    else:
        for line in install.render(result):
            print(line)
    return EXIT_OK


def _setup(args: argparse.Namespace) -> int:
    """Every failure is one FAILED line on stdout (the user-data's log has it in order)."""
    from ecs_harden.setup import Options, setup

    globals_ = [f"--log-level={args.log_level}"]
    if args.log_format:
        globals_.append(f"--log-format={args.log_format}")
    if args.policy:
        globals_.append(f"--policy={args.policy}")
    try:
        opts = Options(json=args.format == "json", dry_run=args.dry_run, enable=args.enable)
        if opts.json:
            return setup(args.policy, args.policy_from, globals_=globals_, opts=opts,
                         say=lambda line: print(f"ecs-harden: {line}", file=sys.stderr, flush=True))
        return setup(args.policy, args.policy_from, globals_=globals_, opts=opts)
    except HardenError as exc:
        print(f"ecs-harden: FAILED: {exc}", flush=True)
        return exc.exit_code


def _prepare(args: argparse.Namespace, policy: policy_mod.Policy) -> int:
    from ecs_harden import flavors, unitpaths

    flavor = flavors.detect().name
    if args.drop_in:
        print(unitpaths.drop_in(policy, flavor), end="")
        return EXIT_OK
    for path in unitpaths.prepare(policy, flavor):
        logs.get("ecs_harden.prepare").info("path.created", path=path)
        print(f"created: {path}")
    return EXIT_OK


def _remove_locked(policy: policy_mod.Policy, found: facts_mod.Facts) -> list[str]:
    """Each component takes away what it put on the host, in the assembly's order reversed."""
    from ecs_harden.assembly import build

    log = logs.get("ecs_harden.remove")
    removed: list[str] = []
    for component in reversed(build(policy, found)):
        for line in component.remove():
            removed.append(line)
            log.warning("removed", component=component.name, what=line)
    return removed


def _status(args: argparse.Namespace) -> int:
    from ecs_harden.statusfile import HEARTBEATS, aged_findings, heartbeat_limit, read_status

    # The daemon matters most when the policy on disk is broken: show it anyway.
    invalid: str | None = None
    try:
        policy = policy_mod.load(args.policy)
    except PolicyError as exc:
        invalid = str(exc)
        policy = dataclasses.replace(policy_mod.Policy(), report=policy_mod.ReportPolicy(
            status_file=policy_mod.salvage_status_file(args.policy)))
    path = policy.report.status_file
    if invalid:
        print(f"ecs-harden: the policy file does not load: {invalid}", file=sys.stderr)
    try:
        data, age = read_status(path)
    except FileNotFoundError:
        print(f"ecs-harden: no status file at {path}: the daemon is not running", file=sys.stderr)
        return EXIT_FAILURE
    except (OSError, ValueError) as exc:
        print(f"ecs-harden: cannot read {path}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    daemon = data.get("daemon") or {}
    interval = float(daemon.get("interval") or policy.interval)
    stale = age > heartbeat_limit(data, policy.interval)
    aged = aged_findings(data, float(daemon.get("resync") or policy.resync), interval)
    daemon_policy = daemon.get("policy") or {}
    running = daemon_policy.get("source", "unknown")
    findings = [f for f in data.get("findings", []) if isinstance(f, dict)]
    statuses = {f.get("status") for f in findings}
    if args.format == "json":
        extra = {"age_seconds": round(age, 3), "stale": stale,
                 "policy_file": {"valid": invalid is None, "error": invalid}}
        if aged:
            extra["compliant"] = False
        print(json.dumps({**data, "findings": findings, **extra}, indent=2))
    else:
        for f in findings:
            print(f"{str(f.get('status', '?')).upper():6} {f.get('check', '?'):50} {f.get('detail', '')}")
        state = "compliant" if data.get("compliant") and not aged else "NOT compliant"
        print(f"\n{data.get('host')}: {state}; daemon pid {daemon.get('pid')} since {daemon.get('started')}, "
              f"{daemon.get('reconciles')} reconciles, {daemon.get('repairs')} repairs; "
              f"status written {age:.1f}s ago")
        from ecs_harden.attempts.component import status_lines

        for line in status_lines(daemon.get("attempts")):
            print(line)
        reload_error = daemon_policy.get("reload_error")
        if reload_error:
            print(f"policy: the daemon's last reload failed ({reload_error}); "
                  f"it runs its previous policy, from {running}")
        if invalid:
            print(f"policy: the file on disk is INVALID ({invalid}); the daemon runs the policy "
                  f"it loaded from {running}")
    if stale:
        print(f"ecs-harden: {path} is {age:.0f}s old (more than {HEARTBEATS} x {interval:g}s): "
              "the daemon is not running", file=sys.stderr)
        return EXIT_FAILURE
    last_error = daemon.get("last_error")
    if last_error:
        print(f"ecs-harden: the daemon's last reconcile failed: {last_error}", file=sys.stderr)
        return EXIT_DRIFT
    if statuses & {DRIFT, ERROR}:
        return EXIT_DRIFT
    if STALE in statuses:
        names = ", ".join(str(f.get("check")) for f in findings if f.get("status") == STALE)
        print(f"ecs-harden: not looked at since the last change or resync: {names}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK if data.get("compliant") else EXIT_DRIFT


def exit_code(outcome: Outcome) -> int:
    if outcome.errors:
        return EXIT_FAILURE
    return EXIT_OK if outcome.report.compliant else EXIT_DRIFT


def _print(fmt: str, outcome: Outcome, *, dry_run: bool, applied: bool) -> None:
    if fmt == "json":
        print(json.dumps(outcome.to_json({"dry_run": dry_run} if dry_run else None), indent=2))
        return
    print(render_text(outcome.report, dry_run=dry_run))
    if dry_run:
        for change in outcome.changes:
            print(f"would: {change}")
        if not outcome.changes:
            print("would: nothing to change")
    elif applied:
        for change in outcome.changes:
            print(f"changed: {change}")
        if not outcome.changes:
            print("nothing changed")
    for error in outcome.errors:
        print(f"error: {error}")
