"""The subprocess wrapper: argv lists, errors carrying what happened, concurrent reads."""

from __future__ import annotations

import time

import pytest

from ecs_harden import proc


def test_run_records_the_child_pid_and_raises_with_argv_and_stderr() -> None:
    done = proc.run(["sh", "-c", "echo $$"])
    assert int(done.stdout) in proc.recent_pids
    with pytest.raises(proc.CommandError) as err:
        proc.run(["sh", "-c", "echo nope >&2; exit 3"])
    assert err.value.returncode == 3 and "nope" in str(err.value) and "sh -c" in str(err.value)


def test_run_many_runs_at_once_and_keeps_order() -> None:
    t0 = time.monotonic()
    out = proc.run_many([["sh", "-c", "sleep 0.5; echo a"], ["sh", "-c", "sleep 0.5; echo b; exit 2"],
                         ["/nonexistent/program"]])
    assert time.monotonic() - t0 < 1.4  # not one after the other
    assert [o.stdout.strip() for o in out[:2]] == ["a", "b"]
    assert [o.returncode for o in out] == [0, 2, 127]
