"""The top-level Vagrantfile: `vagrant validate` for every provisioning choice, with the
libvirt provider's settings checked and with every provider (VirtualBox too) accepted."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.require import require

PROJECT = Path(__file__).resolve().parents[2]


def validate(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("vagrant") is None:
        require("vagrant is not installed (scripts/bootstrap installs it)")
    return subprocess.run(
        ["vagrant", "validate", *args], capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "VAGRANT_HOME": str(tmp_path / "home"), "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"),
             "VAGRANT_CWD": str(PROJECT), "VAGRANT_CHECKPOINT_DISABLE": "1", **env},
    )


@pytest.mark.parametrize("provision", ["user-data", "ansible", "none"])
def test_vagrant_validate_libvirt(tmp_path: Path, provision: str) -> None:
    cp = validate(tmp_path, VAGRANT_DEFAULT_PROVIDER="libvirt", ECS_HARDEN_PROVISION=provision)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "validated successfully" in cp.stdout


def test_vagrant_validate_every_provider(tmp_path: Path) -> None:
    cp = validate(tmp_path, "--ignore-provider")
    assert cp.returncode == 0, cp.stdout + cp.stderr


def test_the_test_vm_settings_validate(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("")
    cp = validate(tmp_path, VAGRANT_DEFAULT_PROVIDER="libvirt", ECS_HARDEN_BOX="ecs-harden-test",
                  ECS_HARDEN_LIBVIRT_DRIVER="qemu", ECS_HARDEN_KERNEL="/boot/vmlinuz",
                  ECS_HARDEN_INITRD="/boot/initrd.img", ECS_HARDEN_SEED=str(tmp_path / "seed.iso"),
                  ECS_HARDEN_SSH_KEY=str(tmp_path / "key"), ECS_HARDEN_CONSOLE_LOG=str(tmp_path / "console.log"))
    assert cp.returncode == 0, cp.stdout + cp.stderr


def test_a_wrong_provisioning_choice_is_refused(tmp_path: Path) -> None:
    cp = validate(tmp_path, ECS_HARDEN_PROVISION="salt")
    assert cp.returncode != 0
    assert "ECS_HARDEN_PROVISION=salt: want user-data, ansible or none" in cp.stdout + cp.stderr
