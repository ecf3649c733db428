"""ReconcileLock: one lock that serializes every ecs-harden reconcile on the host.

`apply`, `remove` and each reconcile of the daemon read, plan and commit under it,
so two processes never plan the same insert from the same read. It is an flock(2)
on a fixed file (not on the policy's state_dir: two processes with different
policies still manage the same ruleset).

Nobody but root may take it: a lock anyone can open is a lock any local user can
hold forever, and the daemon would never repair again. The file is 0600 in a 0700
directory, opened with O_NOFOLLOW and checked on the open descriptor (a regular
file of ours), whatever the umask; an existing file or directory is fixed. A
waiter that gives up names every holder from /proc/locks (pid, command, uid).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import stat
import threading
import time
from types import TracebackType

from ecs_harden.errors import RuntimeFailure, read_only_hint
from ecs_harden.trust import others_may_write

DEFAULT_PATH = "/run/ecs-harden/lock/reconcile.lock"
ENV_VAR = "ECS_HARDEN_LOCK_FILE"
TIMEOUT_ENV_VAR = "ECS_HARDEN_LOCK_TIMEOUT"
CLI_TIMEOUT = 60.0
DAEMON_TIMEOUT = 10.0  # well inside the unit's WatchdogSec=30


class LockTimeout(RuntimeFailure):
    """Another ecs-harden process held the lock for longer than we may wait."""


class _Expired(Exception):
    pass


def flock_within(fd: int, timeout: float, *, first: float, most: float) -> bool:
    """Take an exclusive flock on fd within timeout seconds; False when it stayed held by
    someone else. The main thread waits in the kernel (woken the moment the holder lets
    go, so a process that takes the lock again and again cannot starve it), bounded by
    an interval timer; another thread, or one whose process already runs a timer, polls
    (first, doubling up to most seconds)."""
    if (threading.current_thread() is threading.main_thread() and timeout > 0
            and signal.getitimer(signal.ITIMER_REAL)[0] == 0):  # nobody else's timer running
        return _flock_waiting(fd, timeout)
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


def _flock_waiting(fd: int, timeout: float) -> bool:
    def expired(signum: int, frame: object) -> None:
        raise _Expired

    previous = signal.signal(signal.SIGALRM, expired)
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, timeout)
            fcntl.flock(fd, fcntl.LOCK_EX)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        return True
    except _Expired:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)  # the timer fired just as it was taken
        return False
    finally:
        signal.signal(signal.SIGALRM, previous)


def default_path() -> str:
    return os.environ.get(ENV_VAR) or DEFAULT_PATH


def cli_timeout() -> float:
    """How long `apply`/`remove` wait for the lock: $ECS_HARDEN_LOCK_TIMEOUT seconds, else 60."""
    try:
        value = float(os.environ.get(TIMEOUT_ENV_VAR, ""))
    except ValueError:
        return CLI_TIMEOUT
    return value if value >= 0 else CLI_TIMEOUT


def _refuse(path: str, why: str) -> RuntimeFailure:
    return RuntimeFailure(f"{path}: refusing the reconcile lock: {why}; nothing was changed")


def secure_directory(directory: str, *, own: bool) -> None:
    """Create directory 0700, or check an existing one: a real directory (not a link) of
    ours. One we own by name (own) is made 0700; another must not be writable by group
    or others (unless sticky, as /tmp)."""
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        st = os.lstat(directory)
    except OSError as exc:
        hint = read_only_hint(directory) if exc.errno == errno.EROFS else ""
        raise RuntimeFailure(f"{directory}: cannot create the lock directory: {exc.strerror}{hint}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(directory, "not a directory (a symlink or a file is in its place)")
    if st.st_uid != os.geteuid():
        raise _refuse(directory, f"the directory is owned by uid {st.st_uid}, not by us")
    if own and st.st_mode & 0o077:
        os.chmod(directory, 0o700)
    elif not own and others_may_write(st):
        raise _refuse(directory, f"the directory is writable by group or others ({st.st_mode & 0o777:o})")


def holders(path: str, fd: int | None = None) -> list[str]:
    """Who holds a lock on the file, from /proc/locks: 'pid N (command, uid U)'."""
    try:
        st = os.fstat(fd) if fd is not None else os.stat(path)
        with open("/proc/locks", encoding="ascii", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    out: list[str] = []
    for line in lines:
        words = line.split()
        if "->" in words:  # a waiter, not a holder
            continue
        if len(words) < 6:
            continue
        try:
            major, minor, inode = words[5].split(":")
            same = (int(inode) == st.st_ino and int(major, 16) == os.major(st.st_dev)
                    and int(minor, 16) == os.minor(st.st_dev))
        except ValueError:
            continue
        if same and words[4].isdigit():
            out.append(describe_pid(int(words[4])))
    return out


def describe_pid(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as fh:
            fields = dict(line.split(":", 1) for line in fh if ":" in line)
        comm = fields.get("Name", "?").strip()
        uid = fields.get("Uid", "?").split()[0]
    except (OSError, IndexError):
        return f"pid {pid}"
    return f"pid {pid} ({comm}, uid {uid})"


class ReconcileLock:
    def __init__(self, path: str | None = None, timeout: float | None = None):
        self.path = path or default_path()
        self.timeout = cli_timeout() if timeout is None else timeout
        self.fd: int | None = None

    def _open(self) -> int:
        directory = os.path.dirname(os.path.abspath(self.path))
        secure_directory(directory, own=os.path.abspath(self.path) == DEFAULT_PATH)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _refuse(self.path, "it is a symlink") from None
            hint = read_only_hint(directory) if exc.errno == errno.EROFS else ""
            raise RuntimeFailure(
                f"{self.path}: cannot open the reconcile lock: {exc.strerror}{hint}"
            ) from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            os.close(fd)
            raise _refuse(self.path, f"not a regular file of ours (uid {st.st_uid})")
        if st.st_mode & 0o7777 != 0o600:
            os.fchmod(fd, 0o600)
        return fd

    def holder(self, fd: int | None = None) -> str:
        return ", ".join(holders(self.path, fd)) or "unknown"

    def acquire(self) -> None:
        fd = self._open()
        if not flock_within(fd, self.timeout, first=0.005, most=0.1):
            who = self.holder(fd)
            os.close(fd)
            raise LockTimeout(
                f"another process ({who}) has held {self.path} "
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
