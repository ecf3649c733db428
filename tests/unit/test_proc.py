"""The subprocess wrapper: argv lists, errors carrying what happened, concurrent reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecs_harden import proc


def test_run_records_the_child_pid_and_raises_with_argv_and_stderr() -> None:
    done = proc.run(["sh", "-c", "echo $$"])
    assert int(done.stdout) in proc.recent_pids
    with pytest.raises(proc.CommandError) as err:
        proc.run(["sh", "-c", "echo nope >&2; exit 3"])
    assert err.value.returncode == 3 and "nope" in str(err.value) and "sh -c" in str(err.value)


def test_run_many_runs_at_once_and_keeps_order(tmp_path: Path) -> None:
    # Each waits until the other has started: run one after the other, the first would
    # wait for ever (here: until its 10 s give up, and the test fails on its output).
    wait = "for i in $(seq 200); do [ -e {other} ] && break; sleep 0.05; done; [ -e {other} ]"
    a, b = tmp_path / "a", tmp_path / "b"
    out = proc.run_many([
        ["sh", "-c", f"touch {a}; {wait.format(other=b)} && echo a"],
        ["sh", "-c", f"touch {b}; {wait.format(other=a)} && echo b; exit 2"],
        ["/nonexistent/program"],
    ])
    assert [o.stdout.strip() for o in out[:2]] == ["a", "b"]
    assert [o.returncode for o in out] == [0, 2, 127]


def test_children_never_inherit_the_daemons_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "@ecs-harden-test")
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    done = proc.run(["sh", "-c", "echo ${NOTIFY_SOCKET:-none} ${WATCHDOG_USEC:-none} $LANG"])
    assert done.stdout.split() == ["none", "none", "C"]
