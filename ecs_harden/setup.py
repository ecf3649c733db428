"""`ecs-harden setup`: what a host needs once the package is on it, in one command, for
every way a fleet installs it (the user-data, the role, a run by hand): the policy
staged and written, the boot restore and the unit installed, the block applied, the
unit (re)started, then a check. Its lines say what it did; a failure is one
`ecs-harden: FAILED: ...` line and the exit code of the step that failed."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Callable

from ecs_harden import install, proc
from ecs_harden import policy as policy_mod
from ecs_harden.atomic import read_bytes, write_atomic
from ecs_harden.errors import EXIT_OK, EXIT_USAGE, HardenError, PolicyError
from ecs_harden.policy.trusted import read_plain

Say = Callable[[str], None]


def _say(line: str) -> None:
    print(f"ecs-harden: {line}", flush=True)


class SetupFailed(HardenError):
    """A step failed: its message is the FAILED line, its code the step's exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = code


def stage_policy(source: str, target: str, say: Say = _say) -> bool:
    """The policy from source ('-': standard input) at target (0600, root's), written only
    when it differs and only when valid; True when written."""
    data = sys.stdin.buffer.read() if source == "-" else read_plain(source)
    where = "<stdin>" if source == "-" else source
    try:
        policy_mod.parse(data, source=where)
    except PolicyError as exc:
        raise SetupFailed(f"the policy given is invalid: {exc}; nothing was changed", EXIT_USAGE) from None
    if read_bytes(target) == data:
        say(f"unchanged: {target}")
        return False
    os.makedirs(os.path.dirname(target) or ".", mode=0o755, exist_ok=True)
    write_atomic(target, data, mode=0o600)
    if os.geteuid() == 0:  # an existing file kept its owner: the daemon wants root's
        os.chown(target, 0, 0)
    os.chmod(target, 0o600)  # and its mode
    say(f"wrote {target}")
    return True


def _ours(*args: str) -> int:
    """An ecs-harden command as its own process (its report on our stdout, as an operator
    would see it), with this one's global options."""
    sys.stdout.flush()
    argv = [sys.executable, "-m", "ecs_harden", *args]
    return subprocess.run(argv, env=proc.child_env(), check=False).returncode


def setup(cli_policy: str | None, policy_from: str | None, *, globals_: list[str],
          say: Say = _say) -> int:
    path, _explicit = policy_mod.resolve_path(cli_policy)
    wrote = policy_from is not None and stage_policy(policy_from, path, say)
    policy = policy_mod.load(cli_policy)
    result = install.install(policy)
    for line in install.render(result):
        print(line, flush=True)
    code = _ours(*globals_, "apply", "--format", "text")
    if code != EXIT_OK:
        raise SetupFailed(f"ecs-harden apply exited {code}: the host is NOT compliant (report above)", code)
    # started; restarted for a new policy (a new version or unit restarts it anyway)
    result = install.install(policy, restore=False, now=True, restart=wrote)
    for line in install.render(result):
        print(line, flush=True)
    code = _ours(*globals_, "check", "--format", "text")
    if code != EXIT_OK:
        raise SetupFailed(f"ecs-harden check exited {code} after the unit started: NOT compliant", code)
    say(f"done: compliant, {install.UNIT} {_active()}")
    return EXIT_OK


def _active() -> str:
    cp = proc.run(["systemctl", "is-active", install.UNIT], check=False, timeout=30)
    return cp.stdout.strip() or "unknown"
