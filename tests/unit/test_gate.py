"""`ecs-harden gate`'s verdict (what is missing is the lab's to find: tests/integration/
test_gate.py) and the migration of an older user-data's gate by `ecs-harden install`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ecs_harden import gate
from ecs_harden.install import Result, migrate_gates

MISSING = "imds.ipv4.live: traffic from docker+ to 169.254.169.254/32 is not dropped"


def policy(tmp_path: Path, text: str) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    os.chmod(path, 0o600)
    return str(path)


@pytest.fixture
def found(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """What gate.missing returns, and the flags= it was called with."""
    state: list[object] = [[]]

    def missing(p: object, *, flags: bool = True) -> list[str]:
        state.append(flags)
        return [str(x) for x in state[0]]  # type: ignore[attr-defined]

    monkeypatch.setattr(gate, "missing", missing)
    return state


def test_enforce_holds_the_agent_only_for_what_is_missing(tmp_path: Path, found: list[object]) -> None:
    path = policy(tmp_path, "mode: enforce\n")
    v = gate.verdict(path)
    assert v.code == 0 and v.line == "ecs-harden gate: the IMDS block is in force"
    found[0] = [MISSING]
    v = gate.verdict(path)
    assert v.code == 3 and v.line == f"ecs-harden gate: holding the ECS agent: {MISSING}"


def test_report_mode_never_holds_the_agent_and_says_what_is_missing(tmp_path: Path, found: list[object]) -> None:
    found[0] = [MISSING, "ecs_config.ECS_AWSVPC_BLOCK_IMDS: no line sets it"]
    v = gate.verdict(policy(tmp_path, "mode: report\n"))
    assert v.code == 0
    assert v.line.startswith("ecs-harden gate: not holding the agent (mode: report); missing: ")
    assert MISSING in v.line and "ECS_AWSVPC_BLOCK_IMDS" in v.line


def test_a_broken_policy_judges_the_block_by_the_defaults_and_says_so(tmp_path: Path, found: list[object]) -> None:
    path = policy(tmp_path, "mode: sideways\n")
    v = gate.verdict(path)
    assert v.code == 0 and "the policy is broken" in v.line and "mode" in v.line
    assert found[-1] is False  # the flags are not judged by a policy nobody wrote
    found[0] = [MISSING]
    v = gate.verdict(path)
    assert v.code == 3 and MISSING in v.line and "the policy is broken" in v.line


def test_an_internal_error_holds_the_agent_with_a_line(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    def boom(path: str | None) -> gate.Verdict:
        raise KeyError("x")

    monkeypatch.setattr(gate, "verdict", boom)
    assert gate.main(None) == 3
    assert "cannot tell whether the block is in force (internal error: KeyError" in capsys.readouterr().out


OLD = (b"# Written by ecs-harden's user-data: the ECS agent starts only once this host\n"
       b"# is hardened (ECS_HARDEN_GATE_AGENT=false in the user-data: not).\n"
       b"[Unit]\nAfter=ecs-harden.service\n[Service]\n"
       b"ExecStartPre=/usr/local/bin/ecs-harden --log-level error check --format text\n")


def test_install_turns_an_old_gate_into_gate_and_keeps_every_other_byte(tmp_path: Path) -> None:
    d = tmp_path / "ecs.service.d"
    d.mkdir()
    (d / "ecs-harden-gate.conf").write_bytes(OLD)
    (d / "other.conf").write_bytes(b"[Service]\nExecStartPre=/usr/bin/true check\nEnvironment=A=\xff\n")
    theirs = tmp_path / "theirs.conf"
    theirs.write_bytes(b"[Service]\nExecStartPre=ecs-harden check\n")
    (d / "link.conf").symlink_to(theirs)
    dry = Result()
    assert migrate_gates(dry, dry_run=True, directory=str(d))
    assert (d / "ecs-harden-gate.conf").read_bytes() == OLD  # a dry run writes nothing
    result = Result()
    assert migrate_gates(result, dry_run=False, directory=str(d))
    assert (d / "ecs-harden-gate.conf").read_bytes() == OLD.replace(
        b"ExecStartPre=/usr/local/bin/ecs-harden --log-level error check --format text",
        b"ExecStartPre=/usr/local/bin/ecs-harden gate")
    assert (d / "other.conf").read_bytes() == b"[Service]\nExecStartPre=/usr/bin/true check\nEnvironment=A=\xff\n"
    assert theirs.read_bytes() == b"[Service]\nExecStartPre=ecs-harden check\n"  # a link is not ours
    assert result.changed == [f"{d}/ecs-harden-gate.conf: the ECS agent's gate is now `ecs-harden gate` "
                              "(was a full check)"]
    assert not migrate_gates(Result(), dry_run=False, directory=str(d))  # once
    assert not migrate_gates(Result(), dry_run=False, directory=str(tmp_path / "none"))
