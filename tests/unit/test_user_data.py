"""deploy/user-data.sh as a launch template carries it: it fits beside an operator's own
lines (EC2's user data is 16,384 bytes in all), its embedded policy is valid, and the
gate it writes before anything is fetched is the command both the RPM and the tarball
install. What it does is proven on booted hosts (tests/boot, tests/vm)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from ecs_harden.policy import parse

PROJECT = Path(__file__).resolve().parents[2]
USER_DATA = PROJECT / "deploy" / "user-data.sh"


def test_the_user_data_is_at_most_2_kb_with_its_policy() -> None:
    size = len(USER_DATA.read_bytes())
    assert size <= 2048, f"deploy/user-data.sh is {size} bytes: more than 2 KB"
    assert subprocess.run(["bash", "-n", str(USER_DATA)]).returncode == 0


def test_its_policy_is_valid_and_its_gate_is_the_packages_path() -> None:
    text = USER_DATA.read_text()
    (policy,) = re.findall(r"<<'POLICY'\n(.*?)\nPOLICY\n", text, re.S)
    assert parse(policy, source="user-data").mode == "enforce"
    assert "ExecStartPre=/usr/bin/ecs-harden gate" in text
    assert "/usr/local/bin" not in text
