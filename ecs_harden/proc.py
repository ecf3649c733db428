"""The one way ecs-harden runs other programs: argv lists, LANG=C, a timeout."""

from __future__ import annotations

import collections
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ecs_harden.errors import RuntimeFailure

DEFAULT_TIMEOUT = 30.0

# The pids of the programs we ran last: the daemon tells its own nf_tables changes
# (whose notifications name the committing pid) from everybody else's.
recent_pids: collections.deque[int] = collections.deque(maxlen=64)


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class CommandError(RuntimeFailure):
    """A program exited non-zero, timed out or could not be started."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stdout: str, stderr: str):
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        how = "timed out" if returncode is None else f"exited {returncode}"
        tail = stderr.strip().splitlines()[-1:] or stdout.strip().splitlines()[-1:]
        super().__init__(f"`{' '.join(self.argv)}` {how}" + (f": {tail[0]}" if tail else ""))


# systemd's notify protocol is the daemon's own: a child that inherits NOTIFY_SOCKET
# speaks into it (systemctl sends ERRNO= on failure), and blocks when the receiver does
# not read; found when `systemctl is-enabled` hung for its whole timeout in the lab.
PRIVATE = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every child: ours less systemd's private variables, LANG=C."""
    env = {k: v for k, v in os.environ.items() if k not in PRIVATE}
    env.update({"LANG": "C", "LC_ALL": "C"})
    if extra:
        env.update(extra)
    return env


def _start(argv: Sequence[str], *, stdin: bool, env: Mapping[str, str] | None) -> subprocess.Popen[str]:
    try:
        child = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # What a child prints may carry anyone's bytes (an interface alias a user set in
            # their own namespace): undecodable bytes become U+FFFD, never a crash.
            errors="replace",
            env=child_env(env),
        )
    except OSError as exc:
        raise CommandError(argv, 127, "", str(exc)) from exc
    recent_pids.append(child.pid)
    return child


def _wait(child: subprocess.Popen[str], argv: Sequence[str], input: str | None, timeout: float) -> Completed:
    """Its output and exit code; CommandError (exit None) when it outlives timeout."""
    with child:
        try:
            stdout, stderr = child.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            stdout, stderr = child.communicate()
            raise CommandError(argv, None, _text(stdout), _text(stderr)) from None
    return Completed(tuple(argv), child.returncode, stdout, stderr)


def run(
    argv: Sequence[str],
    *,
    input: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    check: bool = True,
    env: Mapping[str, str] | None = None,
) -> Completed:
    """Run argv; raise CommandError on failure unless check is False."""
    done = _wait(_start(argv, stdin=input is not None, env=env), argv, input, timeout)
    if check and done.returncode != 0:
        raise CommandError(argv, done.returncode, done.stdout, done.stderr)
    return done


def run_many(argvs: Sequence[Sequence[str]], *, timeout: float = DEFAULT_TIMEOUT) -> list[Completed]:
    """Run independent read-only commands at once (check=False semantics): their wall
    time is the slowest one's, not the sum. A program that cannot start gets exit 127,
    one that outlives timeout exit -9."""
    started: list[subprocess.Popen[str] | CommandError] = []
    for argv in argvs:
        try:
            started.append(_start(argv, stdin=False, env=None))
        except CommandError as exc:
            started.append(exc)
    out = []
    for argv, child in zip(argvs, started):
        if isinstance(child, CommandError):
            out.append(Completed(tuple(argv), 127, "", child.stderr))
            continue
        try:
            out.append(_wait(child, argv, None, timeout))
        except CommandError as exc:
            out.append(Completed(tuple(argv), -9, exc.stdout, exc.stderr))
    return out


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data
