"""ReconcileLock: one lock that serializes every ecs-harden reconcile on the host.

`apply`, `remove` and each reconcile of the daemon read, plan and commit under it,
so two processes never plan the same insert from the same read. It is an flock(2)
on a fixed file (not on the policy's state_dir: two processes with different
policies still manage the same ruleset); the holder writes its pid into the file
so that a process that waits too long can say who holds it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from types import TracebackType

from ecs_harden.atomic import read_only_hint
from ecs_harden.errors import RuntimeFailure

DEFAULT_PATH = "/run/ecs-harden/reconcile.lock"
ENV_VAR = "ECS_HARDEN_LOCK_FILE"
TIMEOUT_ENV_VAR = "ECS_HARDEN_LOCK_TIMEOUT"
CLI_TIMEOUT = 60.0
DAEMON_TIMEOUT = 10.0  # well inside the unit's WatchdogSec=30


class LockTimeout(RuntimeFailure):
    """Another ecs-harden process held the lock for longer than we may wait."""


def flock_within(fd: int, timeout: float, *, first: float, most: float) -> bool:
    """Take an exclusive flock on fd, polling (first, doubling up to most seconds between
    tries) for at most timeout seconds; False when it stayed held by someone else."""
    deadline = time.monotonic() + timeout
    delay = first
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, most)


def default_path() -> str:
    return os.environ.get(ENV_VAR) or DEFAULT_PATH


def cli_timeout() -> float:
    """How long `apply`/`remove` wait for the lock: $ECS_HARDEN_LOCK_TIMEOUT seconds, else 60."""
    try:
        value = float(os.environ.get(TIMEOUT_ENV_VAR, ""))
    except ValueError:
        return CLI_TIMEOUT
    return value if value >= 0 else CLI_TIMEOUT


class ReconcileLock:
    def __init__(self, path: str | None = None, timeout: float | None = None):
        self.path = path or default_path()
        self.timeout = cli_timeout() if timeout is None else timeout
        self.fd: int | None = None

    def _open(self) -> int:
        directory = os.path.dirname(self.path)
        try:
            os.makedirs(directory, mode=0o755, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            hint = read_only_hint(directory) if exc.errno == errno.EROFS else ""
            raise RuntimeFailure(
                f"{self.path}: cannot open the reconcile lock: {exc.strerror}{hint}"
            ) from None

    def holder(self) -> str:
        try:
            with open(self.path, encoding="ascii", errors="replace") as fh:
                pid = fh.read().strip()
        except OSError:
            return "unknown"
        return pid if pid.isdigit() else "unknown"

    def acquire(self) -> None:
        fd = self._open()
        if not flock_within(fd, self.timeout, first=0.005, most=0.1):
            os.close(fd)
            raise LockTimeout(
                f"another ecs-harden process (pid {self.holder()}) has held {self.path} "
                f"for more than {self.timeout:g}s; nothing was changed"
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    def __enter__(self) -> ReconcileLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
