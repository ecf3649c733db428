"""The Ansible role and playbooks pass ansible-lint's production profile, and every
play parses (ansible-playbook --syntax-check)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.require import require

ANSIBLE = Path(__file__).resolve().parents[2] / "ansible"
VENV_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


def tool(name: str) -> str:
    path = VENV_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        require(f"{name} is not installed (the role extra: pip install -e '.[role]')")
        raise AssertionError("unreachable")
    return found


def run(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=ANSIBLE, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "ANSIBLE_HOME": str(tmp_path), "NO_COLOR": "1", "ANSIBLE_NOCOLOR": "1",
             "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg")},
    )


def test_ansible_lint_production_profile(tmp_path: Path) -> None:
    cp = run(tmp_path, tool("ansible-lint"), "--profile", "production", "--offline",
             "roles/ecs_harden", "site.yml", "fleet-report.yml")
    assert cp.returncode == 0, cp.stdout[-4000:] + cp.stderr[-4000:]
    assert "Profile 'production' was required, and it passed" in cp.stdout + cp.stderr


@pytest.mark.parametrize("playbook", ["site.yml", "fleet-report.yml"])
def test_playbooks_parse(tmp_path: Path, playbook: str) -> None:
    cp = run(tmp_path, tool("ansible-playbook"), "--syntax-check", "-i", "localhost,", playbook)
    assert cp.returncode == 0, cp.stdout + cp.stderr


@pytest.mark.parametrize(("variable", "value"), [
    ("ecs_harden_mode", "bogus"),
    ("ecs_harden_imds_persist", "maybe"),
    ("ecs_harden_ecs_config_restart_agent", "always"),
    ("ecs_harden_imds_host_network", "deny"),
])
def test_a_bad_variable_fails_before_any_task(tmp_path: Path, variable: str, value: str) -> None:
    # The host is a closed port on loopback: were the arguments accepted, the next task
    # could only fail to connect; nothing on this machine is touched.
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[ecs_instances]\nnowhere ansible_host=127.0.0.1 ansible_port=1 ansible_connection=ssh\n")
    cp = subprocess.run(
        [tool("ansible-playbook"), "-i", str(inventory), "site.yml", "-e", f"{variable}={value}"],
        cwd=ANSIBLE, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "ANSIBLE_HOME": str(tmp_path), "NO_COLOR": "1", "ANSIBLE_NOCOLOR": "1",
             "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"), "ANSIBLE_GATHERING": "explicit"},
    )
    out = cp.stdout + cp.stderr
    assert cp.returncode != 0
    assert "Validating arguments against arg spec" in out, out[-3000:]
    assert variable in out and "unreachable=0" in out, out[-3000:]
