"""`ecs-harden setup`'s policy step: what it writes, when, and that a bad policy changes
nothing (the rest of setup runs on booted hosts: tests/boot, tests/vm)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from ecs_harden import cli
from ecs_harden.setup import SetupFailed, stage_policy

GOOD = b"mode: enforce\ninterval: 7\n"


def test_a_policy_is_written_0600_only_when_it_differs(tmp_path: Path) -> None:
    staged, target = tmp_path / "staged.yaml", tmp_path / "etc" / "policy.yaml"
    staged.write_bytes(GOOD)
    said: list[str] = []
    assert stage_policy(str(staged), str(target), said.append)[0] is True
    assert target.read_bytes() == GOOD and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert said == [f"wrote {target}"]
    target.chmod(0o644)  # an operator's slip: the next write puts it back
    staged.write_bytes(GOOD + b"resync: 120\n")
    assert stage_policy(str(staged), str(target), said.append)[0] is True
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stage_policy(str(staged), str(target), said.append)[0] is False
    assert said[-1] == f"unchanged: {target}"


def test_a_dry_run_says_what_it_would_write_and_writes_nothing(tmp_path: Path) -> None:
    staged, target = tmp_path / "staged.yaml", tmp_path / "policy.yaml"
    staged.write_bytes(GOOD + b"resync: 120\n")
    target.write_bytes(GOOD)
    said: list[str] = []
    differs, given = stage_policy(str(staged), str(target), said.append, dry_run=True)
    assert differs is True and given.resync == 120
    assert target.read_bytes() == GOOD and said == [f"would write {target}"]


@pytest.mark.parametrize("bad", [b"mode: sideways\n", b"interval: [\n", b"mode: \xff\n"])
def test_an_invalid_policy_is_one_failed_line_exit_2_and_nothing_changed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: bytes
) -> None:
    staged, target = tmp_path / "staged.yaml", tmp_path / "policy.yaml"
    staged.write_bytes(bad)
    target.write_bytes(GOOD)
    with pytest.raises(SetupFailed) as raised:
        stage_policy(str(staged), str(target))
    assert raised.value.exit_code == 2 and "nothing was changed" in str(raised.value)
    code = cli.main(["--policy", str(target), "setup", "--policy-from", str(staged)])
    out = capsys.readouterr().out.splitlines()
    assert code == 2, out
    assert len([ln for ln in out if "FAILED" in ln]) == 1
    assert out[-1].startswith("ecs-harden: FAILED: the policy given is invalid: ") and str(staged) in out[-1]
    assert target.read_bytes() == GOOD
