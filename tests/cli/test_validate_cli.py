"""`ecs-harden validate [FILE]`: the policy a file makes, or every error in it (exit 2); it
touches nothing and needs no privilege."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.cli.conftest import Harden


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in root.rglob("*") if p.name != "staged.yaml"}


def test_a_valid_policy_prints_the_policy_it_makes_and_changes_nothing(harden: Harden) -> None:
    harden.write_policy("interval: 2\nimds:\n  interfaces: [docker0, 'br-+']\n  ipv6: null\n",
                        ecs_config="  settings:\n    ECS_CLUSTER: \"prod\"\n")
    before = tree(harden.tmp)
    r = harden("validate", "--format", "json")
    assert r.code == 0, r.stderr
    out = r.json()
    assert out["valid"] is True and out["file"] == str(harden.policy)
    assert out["policy"]["interval"] == 2.0 and out["policy"]["imds"]["interfaces"] == ["docker0", "br-+"]
    assert out["policy"]["imds"]["ipv6"] is None
    # merged over the defaults: the two IMDS flags stay managed
    assert out["policy"]["ecs_config"]["settings"] == {
        "ECS_AWSVPC_BLOCK_IMDS": "true", "ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST": "false", "ECS_CLUSTER": "prod"}
    text = harden("validate")
    assert text.code == 0 and text.stdout.startswith(f"{harden.policy}: valid\n")
    assert "ECS_AWSVPC_BLOCK_IMDS: 'true'" in text.stdout  # the YAML it prints reads back the same
    assert tree(harden.tmp) == before  # no state dir, no lock file, no status file


def test_every_error_is_named_with_its_line_exit_2(harden: Harden) -> None:
    staged = harden.tmp / "staged.yaml"
    staged.write_text("interval: 0\nimds:\n  interfaces: ['br-*']\necs_config:\n  settings:\n"
                      "    ECS_AWSVPC_BLOCK_IMDS: true\n")
    r = harden("validate", str(staged))
    assert r.code == 2 and r.stdout == ""
    assert "3 errors" in r.stderr
    assert "line 1: interval: must be a number of seconds > 0" in r.stderr
    assert "line 3: imds.interfaces[0]: 'br-*' would match no interface" in r.stderr
    assert "line 6: ecs_config.settings.ECS_AWSVPC_BLOCK_IMDS" in r.stderr


def test_standard_input(harden: Harden) -> None:
    argv = [sys.executable, "-m", "ecs_harden", "validate", "--format", "json", "-"]
    cp = subprocess.run(argv, input="mode: report\n", capture_output=True, text=True, timeout=60, check=False,
                        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert cp.returncode == 0, cp.stderr
    assert '"mode": "report"' in cp.stdout and '"file": "<stdin>"' in cp.stdout
    bad = subprocess.run(argv, input="mode: audit\n", capture_output=True, text=True, timeout=60, check=False,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert bad.returncode == 2 and "<stdin>: line 1: mode: must be one of enforce, report" in bad.stderr


def test_a_staged_copy_is_checked_for_its_contents_the_policy_in_place_for_its_owner_too(harden: Harden) -> None:
    """A template's copy may sit anywhere while it is checked: its mode is said, not fatal.
    The policy the daemon reads (no FILE) is refused as the daemon would refuse it."""
    os.chmod(harden.policy, 0o666)
    staged = harden("validate", str(harden.policy))
    assert staged.code == 0, staged.stderr
    assert "warning: in place, the daemon would refuse it" in staged.stdout and "writable by group" in staged.stdout
    in_place = harden("validate")
    assert in_place.code == 2 and "refusing a policy writable by group or others" in in_place.stderr
    link = harden.tmp / "link.yaml"
    link.symlink_to(harden.policy)
    assert harden("validate", str(link)).code == 2


def test_it_needs_no_privilege(harden: Harden) -> None:
    """Nothing privileged is done: no probe, no namespace, no firewall read.
    Every capability is dropped (bounding set empty, no_new_privs); the uid stays, so the
    interpreter is reachable wherever it is installed (pyenv's live under /root, mode 0700)."""
    unprivileged = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs"]
    proof = subprocess.run([*unprivileged, "unshare", "--net", "true"], capture_output=True, timeout=30, check=False)
    assert proof.returncode != 0, "the sandbox should have taken the privilege to make a namespace"
    cp = subprocess.run([*unprivileged, sys.executable, "-m", "ecs_harden", "validate", "-"],
                        input="imds:\n  probe: true\n  host_network: block\n",
                        capture_output=True, text=True, timeout=60, check=False,
                        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert cp.returncode == 0, cp.stderr
    assert "host_network: block" in cp.stdout
