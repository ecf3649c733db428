"""`ecs-harden setup`: what a host needs once the package is on it, in one command, for
every way a fleet installs it (the user-data, the role, a run by hand): the policy
staged and written, the boot restore and the unit installed, the block applied, the
unit (re)started, then a check. Its lines say what it did; a failure is one
`ecs-harden: FAILED: ...` line and the exit code of the step that failed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from ecs_harden import install, proc
from ecs_harden import policy as policy_mod
from ecs_harden.atomic import read_bytes, write_atomic
from ecs_harden.errors import EXIT_DRIFT, EXIT_OK, EXIT_USAGE, HardenError, PolicyError
from ecs_harden.policy.trusted import read_plain

Say = Callable[[str], None]


def _say(line: str) -> None:
    print(f"ecs-harden: {line}", flush=True)


class SetupFailed(HardenError):
    """A step failed: its message is the FAILED line, its code the step's exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = code


def stage_policy(source: str, target: str, say: Say = _say, *,
                 dry_run: bool = False) -> tuple[bool, policy_mod.Policy]:
    """The policy from source ('-': standard input) at target (0600, root's), written only
    when it differs and only when valid; (whether it differs, the policy given)."""
    data = sys.stdin.buffer.read() if source == "-" else read_plain(source)
    where = "<stdin>" if source == "-" else source
    try:
        given = policy_mod.parse(data, source=where)
    except PolicyError as exc:
        raise SetupFailed(f"the policy given is invalid: {exc}; nothing was changed", EXIT_USAGE) from None
    if read_bytes(target) == data:
        say(f"unchanged: {target}")
        return False, given
    if dry_run:
        say(f"would write {target}")
        return True, given
    os.makedirs(os.path.dirname(target) or ".", mode=0o755, exist_ok=True)
    write_atomic(target, data, mode=0o600)
    if os.geteuid() == 0:  # an existing file kept its owner: the daemon wants root's
        os.chown(target, 0, 0)
    os.chmod(target, 0o600)  # and its mode
    say(f"wrote {target}")
    return True, given


@dataclass
class Options:
    """How setup runs: `json` prints one object at the end (what changed, compliant or
    not) for the role; `dry_run` changes nothing and ends with a check; `enable=False`
    installs the unit without enabling or starting it."""

    json: bool = False
    dry_run: bool = False
    enable: bool = True


@dataclass
class Steps:
    say: Say
    opts: Options
    changed: list[str] = field(default_factory=list)

    def installed(self, result: install.Result) -> None:
        self.changed.extend(result.changed)
        if not self.opts.json:
            for line in install.render(result):
                print(line, flush=True)

    def run(self, globals_: list[str], command: str) -> tuple[int, dict[str, Any] | None]:
        """apply or check as its own process with this one's global options: its report on
        our stdout, as an operator would see it; in JSON read, not shown."""
        sys.stdout.flush()
        argv = [sys.executable, "-m", "ecs_harden", *globals_, command, "--format",
                "json" if self.opts.json else "text"]
        if not self.opts.json:
            return subprocess.run(argv, env=proc.child_env(), check=False).returncode, None
        done = subprocess.run(argv, env=proc.child_env(), check=False, stdout=subprocess.PIPE, text=True)
        try:
            report = json.loads(done.stdout)
        except ValueError:
            report = None
        return done.returncode, report if isinstance(report, dict) else None


def _findings(report: dict[str, Any] | None, *, key: str, value: object) -> list[str]:
    found = report.get("findings", []) if report else []
    return [str(f.get("check")) for f in found if isinstance(f, dict) and f.get(key) == value]


def setup(cli_policy: str | None, policy_from: str | None, *, globals_: list[str],
          say: Say = _say, opts: Options | None = None) -> int:
    opts = opts or Options()
    steps = Steps(say, opts)
    path, _explicit = policy_mod.resolve_path(cli_policy)
    wrote, given = False, None
    if policy_from is not None:
        wrote, given = stage_policy(policy_from, path, say, dry_run=opts.dry_run)
    if wrote:
        steps.changed.append(f"{'write' if not opts.dry_run else 'would write'} {path}")
    policy = given if opts.dry_run and given is not None else policy_mod.load(cli_policy)
    steps.installed(install.install(policy, enable=opts.enable, dry_run=opts.dry_run))
    if opts.dry_run:
        code, report = steps.run(globals_, "check")
        steps.changed.extend(f"repair {c}" for c in _findings(report, key="status", value="drift"))
        if code not in (EXIT_OK, EXIT_DRIFT):
            raise SetupFailed(f"ecs-harden check exited {code} (dry run: nothing was changed)", code)
        return _done(steps, compliant=code == EXIT_OK, unit=_active())
    code, report = steps.run(globals_, "apply")
    steps.changed.extend(f"apply {c}" for c in _findings(report, key="changed", value=True))
    if code != EXIT_OK:
        raise SetupFailed(f"ecs-harden apply exited {code}: the host is NOT compliant (report above)", code)
    if opts.enable:  # started; restarted for a new policy (a new version or unit restarts it anyway)
        steps.installed(install.install(policy, restore=False, now=True, restart=wrote))
    code, report = steps.run(globals_, "check")
    if code != EXIT_OK:
        bad = ", ".join(_findings(report, key="status", value="drift")
                        + _findings(report, key="status", value="error"))
        raise SetupFailed(f"ecs-harden check exited {code} after the unit started: NOT compliant"
                          + (f" ({bad})" if bad else ""), code)
    unit = _active()
    say(f"done: compliant, {install.UNIT} {unit}")
    return _done(steps, compliant=True, unit=unit)


def _done(steps: Steps, *, compliant: bool, unit: str) -> int:
    if steps.opts.json:
        print(json.dumps({"changed": steps.changed, "compliant": compliant, "dry_run": steps.opts.dry_run,
                          "unit": unit}, indent=2), flush=True)
    return EXIT_OK


def _active() -> str:
    cp = proc.run(["systemctl", "is-active", install.UNIT], check=False, timeout=30)
    return cp.stdout.strip() or "unknown"
