"""The one way ecs-harden runs other programs: argv lists, LANG=C, a timeout."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ecs_harden.errors import RuntimeFailure

DEFAULT_TIMEOUT = 30.0


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
        cp = subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_env(env),
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandError(argv, None, _text(exc.stdout), _text(exc.stderr)) from exc
    except OSError as exc:
        raise CommandError(argv, 127, "", str(exc)) from exc
    done = Completed(tuple(argv), cp.returncode, cp.stdout, cp.stderr)
    if check and cp.returncode != 0:
        raise CommandError(argv, cp.returncode, cp.stdout, cp.stderr)
    return done


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data
