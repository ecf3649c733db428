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


def _env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"LANG": "C", "LC_ALL": "C"})
    if extra:
        env.update(extra)
    return env


def run(
    argv: Sequence[str],
    *,
    input: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    check: bool = True,
    env: Mapping[str, str] | None = None,
) -> Completed:
    """Run argv; raise CommandError on failure unless check is False."""
    try:
        child = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(env),
        )
    except OSError as exc:
        raise CommandError(argv, 127, "", str(exc)) from exc
    recent_pids.append(child.pid)
    with child:
        try:
            stdout, stderr = child.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            stdout, stderr = child.communicate()
            raise CommandError(argv, None, _text(stdout), _text(stderr)) from None
    done = Completed(tuple(argv), child.returncode, stdout, stderr)
    if check and done.returncode != 0:
        raise CommandError(argv, done.returncode, stdout, stderr)
    return done


def run_many(argvs: Sequence[Sequence[str]], *, timeout: float = DEFAULT_TIMEOUT) -> list[Completed]:
    """Run independent read-only commands at once (check=False semantics): their wall
    time is the slowest one's, not the sum. A program that cannot start gets exit 127."""
    children: list[tuple[Sequence[str], subprocess.Popen[str] | None]] = []
    for argv in argvs:
        try:
            child: subprocess.Popen[str] | None = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, env=_env(None),
            )
        except OSError:
            child = None
        if child is not None:
            recent_pids.append(child.pid)
        children.append((argv, child))
    out = []
    for argv, child in children:
        if child is None:
            out.append(Completed(tuple(argv), 127, "", "cannot start"))
            continue
        with child:
            try:
                stdout, stderr = child.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                stdout, stderr = child.communicate()
                out.append(Completed(tuple(argv), -9, stdout, stderr))
                continue
        out.append(Completed(tuple(argv), child.returncode, stdout, stderr))
    return out


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data
