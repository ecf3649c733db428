"""trust: links and directories someone other than root could have planted are never followed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ecs_harden import policy
from ecs_harden.atomic import read_bytes, write_atomic
from ecs_harden.errors import PolicyError
from ecs_harden.trust import UntrustedLink, UntrustedPath, write_replacing

NOBODY = 65534


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("ownership checks need root to create files of other users")


def test_a_planted_link_is_replaced_and_its_target_keeps_every_byte(tmp_path: Path) -> None:
    target = tmp_path / "ecs.config"
    target.write_bytes(b"ECS_CLUSTER=prod\nECS_ENGINE_AUTH_DATA=secret\n")
    textfiles = tmp_path / "textfile_collector"
    textfiles.mkdir()
    os.chown(textfiles, NOBODY, NOBODY)  # node_exporter's own directory
    (textfiles / "ecs_harden.prom").symlink_to(target)
    write_replacing(str(textfiles / "ecs_harden.prom"), b"ecs_harden_compliant 1\n")
    assert target.read_bytes() == b"ECS_CLUSTER=prod\nECS_ENGINE_AUTH_DATA=secret\n"
    assert not (textfiles / "ecs_harden.prom").is_symlink()
    assert (textfiles / "ecs_harden.prom").read_bytes() == b"ecs_harden_compliant 1\n"
    assert stat.S_IMODE((textfiles / "ecs_harden.prom").stat().st_mode) == 0o644
    assert sorted(p.name for p in textfiles.iterdir()) == ["ecs_harden.prom"]  # no temp left


def test_a_world_writable_directory_without_sticky_bit_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "open"
    d.mkdir()
    d.chmod(0o777)
    with pytest.raises(UntrustedPath, match="without the sticky bit"):
        write_replacing(str(d / "status.json"), b"{}")
    assert list(d.iterdir()) == []
    d.chmod(0o1777)
    write_replacing(str(d / "status.json"), b"{}")
    assert (d / "status.json").read_bytes() == b"{}"


def test_a_directory_that_is_a_symlink_is_refused_for_status(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "run").symlink_to(tmp_path / "real")
    with pytest.raises(UntrustedPath, match="is a symlink"):
        write_replacing(str(tmp_path / "run" / "status.json"), b"{}")


@pytest.mark.parametrize("plant", ["target_owner", "target_mode", "link_dir", "target_dir", "link_owner"])
def test_a_link_someone_else_could_change_is_not_followed(tmp_path: Path, plant: str) -> None:
    cm = tmp_path / "cm"
    cm.mkdir()
    target = cm / "ecs.config"
    target.write_bytes(b"ECS_CLUSTER=prod\n")
    etc = tmp_path / "etc-ecs"
    etc.mkdir()
    link = etc / "ecs.config"
    link.symlink_to(target)
    if plant == "target_owner":
        os.chown(target, NOBODY, NOBODY)
    elif plant == "target_mode":
        target.chmod(0o666)
    elif plant == "link_dir":
        etc.chmod(0o777)
    elif plant == "target_dir":
        cm.chmod(0o775)
    else:
        os.lchown(link, NOBODY, NOBODY)
    with pytest.raises(UntrustedLink, match="will not follow"):
        read_bytes(str(link))
    with pytest.raises(UntrustedLink):
        write_atomic(str(link), b"ECS_CLUSTER=evil\n")
    assert target.read_bytes() == b"ECS_CLUSTER=prod\n" and link.is_symlink()


def test_a_root_link_in_root_directories_is_followed(tmp_path: Path) -> None:
    target = tmp_path / "cm.config"
    target.write_bytes(b"A=1\n")
    link = tmp_path / "ecs.config"
    link.symlink_to(target)
    write_atomic(str(link), b"A=2\n")
    assert link.is_symlink() and target.read_bytes() == b"A=2\n"


def test_a_policy_symlink_is_refused_and_not_salvaged(tmp_path: Path) -> None:
    real = tmp_path / "real.yaml"
    real.write_text("report:\n  status_file: /etc/ecs/ecs.config\n")
    real.chmod(0o600)
    link = tmp_path / "policy.yaml"
    link.symlink_to(real)
    with pytest.raises(policy.UntrustedPolicy, match="symlink"):
        policy.load(str(link))
    assert policy.salvage_status_file(str(link)) == policy.ReportPolicy.status_file


def test_a_policy_in_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "conf"
    d.mkdir()
    p = d / "policy.yaml"
    p.write_text("mode: report\nreport:\n  status_file: /etc/ecs/ecs.config\n")
    p.chmod(0o600)
    assert policy.load(str(p)).mode == "report"
    d.chmod(0o777)
    with pytest.raises(PolicyError, match=f"directory {d} is writable by group or others"):
        policy.load(str(p))
    assert policy.salvage_status_file(str(p)) == policy.ReportPolicy.status_file
    d.chmod(0o755)
    os.chown(p, NOBODY, NOBODY)
    with pytest.raises(PolicyError, match="owned by uid 65534"):
        policy.load(str(p))
