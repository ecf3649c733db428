"""ReconcileLock: one holder at a time, across processes; a waiter that gives up names the holder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ecs_harden.lock import LockTimeout, ReconcileLock

HOLD = """
import sys, time
from ecs_harden.lock import ReconcileLock
with ReconcileLock(sys.argv[1], timeout=5):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
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
        assert holder.poll() is not None or holder.wait(5) == 0
        assert path.read_text().strip() == str(os.getpid())
        assert lock.fd is not None
    assert lock.fd is None


def test_one_holder_at_a_time_in_one_process_too(tmp_path: Path) -> None:
    path = str(tmp_path / "reconcile.lock")
    with ReconcileLock(path, timeout=1), pytest.raises(LockTimeout):
        ReconcileLock(path, timeout=0.1).acquire()
