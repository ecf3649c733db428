"""ReconcileLock: one holder at a time, across processes; a waiter that gives up names the holder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ecs_harden.errors import RuntimeFailure
from ecs_harden.lock import LockTimeout, ReconcileLock

HOLD = """
import sys, time
from ecs_harden.lock import ReconcileLock
with ReconcileLock(sys.argv[1], timeout=5):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    open(sys.argv[1] + ".released", "w").close()  # the last thing done while holding it
"""


def hold(path: Path, seconds: float) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)],
                         stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    assert p.stdout is not None and p.stdout.readline() == "held\n"
    return p


def test_a_waiter_that_gives_up_names_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "run" / "reconcile.lock"
    holder = hold(path, 30)
    try:
        t0 = time.monotonic()
        with pytest.raises(LockTimeout) as err:
            ReconcileLock(str(path), timeout=0.3).acquire()
        assert time.monotonic() - t0 < 5
        assert f"pid {holder.pid}" in str(err.value) and "nothing was changed" in str(err.value)
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_free_once_the_holder_is_gone(tmp_path: Path) -> None:
    path = tmp_path / "reconcile.lock"
    holder = hold(path, 0.2)
    with ReconcileLock(str(path), timeout=10) as lock:  # waits for the holder, then gets it
        # A lock that excluded nothing would be ours while the holder still sleeps in it.
        assert (tmp_path / "reconcile.lock.released").exists()
        assert path.read_text().strip() == str(os.getpid())
        assert lock.fd is not None
    assert lock.fd is None
    assert holder.wait(5) == 0


AGAIN_AND_AGAIN = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
while True:  # like a daemon probing every second, only harder: free 2 ms in every 200
    time.sleep(0.2)
    fcntl.flock(fd, fcntl.LOCK_UN)
    time.sleep(0.002)
    fcntl.flock(fd, fcntl.LOCK_EX)
"""


def test_a_process_taking_the_lock_again_and_again_cannot_starve_a_waiter(tmp_path: Path) -> None:
    """The waiter is woken the moment the holder lets go (it waits in the kernel), not at
    its next poll: a holder that lets go for 2 ms in every 200 ms cannot keep it out."""
    path = tmp_path / "reconcile.lock"
    with ReconcileLock(str(path), timeout=1):  # made as the lock makes it
        pass
    holder = subprocess.Popen([sys.executable, "-c", AGAIN_AND_AGAIN, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        for _ in range(5):  # each within 3 s (it takes 0.2 s), where polling took 5 s on average
            with ReconcileLock(str(path), timeout=3) as lock:
                assert lock.fd is not None
    finally:
        holder.kill()
        holder.wait()


def test_one_holder_at_a_time_in_one_process_too(tmp_path: Path) -> None:
    path = str(tmp_path / "reconcile.lock")
    with ReconcileLock(path, timeout=1), pytest.raises(LockTimeout):
        ReconcileLock(path, timeout=0.1).acquire()


def test_the_lock_is_root_only_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "lockdir" / "reconcile.lock"
    old = os.umask(0)
    try:
        with ReconcileLock(str(path), timeout=1):
            pass
    finally:
        os.umask(old)
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    assert oct(path.parent.stat().st_mode & 0o777) == oct(0o700)


def test_an_existing_lock_file_open_to_others_is_fixed(tmp_path: Path) -> None:
    path = tmp_path / "reconcile.lock"
    path.write_text("")
    path.chmod(0o644)
    with ReconcileLock(str(path), timeout=1):
        assert oct(path.stat().st_mode & 0o777) == oct(0o600)


def test_a_symlink_in_place_of_the_lock_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "reconcile.lock").symlink_to(victim)
    with pytest.raises(RuntimeFailure, match="symlink"):
        ReconcileLock(str(tmp_path / "reconcile.lock"), timeout=1).acquire()
    assert victim.read_text() == "keep"


def test_a_lock_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "shared"
    d.mkdir()
    d.chmod(0o777)
    with pytest.raises(RuntimeFailure, match="writable by group or others"):
        ReconcileLock(str(d / "reconcile.lock"), timeout=1).acquire()
    assert list(d.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as another user")
def test_an_unprivileged_user_cannot_even_open_the_lock(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    path = tmp_path / "reconcile.lock"
    with ReconcileLock(str(path), timeout=1):
        pass
    done = subprocess.run(
        [sys.executable, "-c", "import os, sys; os.setgid(65534); os.setuid(65534); open(sys.argv[1])",
         str(path)], capture_output=True, text=True, check=False,
    )
    assert done.returncode != 0 and "PermissionError" in done.stderr
