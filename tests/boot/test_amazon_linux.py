"""EMULATED Amazon Linux 2023 and Amazon Linux 2, booted (tests/boot/amazon.py says what
is emulated): deploy/user-data.sh, unchanged and as a launch template carries it,
through real cloud-init (NoCloud seed) from the first boot of a fresh host, where
installing iptables-services lays down its catch-all REJECT sample; then two reboots.

What this proves: the user-data's and `ecs-harden install`'s Amazon Linux paths (dnf;
yum and amazon-linux-extras' python3.8; iptables-services' units and sample; rpm -V),
the sample replaced on the first apply, the restore enabled for boot and never started
under the running host, the block restored by iptables.service before docker.service
starts at every boot, with systemd 252, and a real container on docker0 that cannot
reach the (fake) IMDS: tests/infra, over ssh, after the first boot (with the unit's
life cycle) and after the last reboot. What it does not: AL2's systemd 219, Amazon's
real packages and kernel.

The tests of this module run in order on one host per flavor."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import artifacts
from tests.boot import amazon, image
from tests.boot.cgroups import Subtree
from tests.boot.conftest import require_boot
from tests.boot.image import PROJECT
from tests.boot.nspawn import BootedHost
from tests.boot.userdata import launch_template, mime, ours

SCRIPT = Path(__file__).resolve().parent / "scripts" / "amazon-linux"
CASES = [("amzn2023", "nft"), ("amzn2", "legacy")]
MARK = '-m comment --comment "ecs-harden: block IMDS from containers" -j DROP'
DIST = "/opt/ecs-harden-dist"  # where the dress lays the release tarball down (a baked AMI)
SYSCONFIG = ("/etc/sysconfig/iptables", "/etc/sysconfig/ip6tables")
KEY = "id_ed25519"  # root's login, in the host's work directory


class EmulatedHost(BootedHost):
    source: tuple[str, str] = ("", "")  # ECS_HARDEN_FROM and ECS_HARDEN_SHA256 of its user-data


@pytest.fixture(scope="module", params=CASES, ids=[f"emulated-{f}-{v}" for f, v in CASES])
def host(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedHost]:
    require_boot()
    flavor, variant = request.param
    dress = tmp_path_factory.mktemp(f"dress-{flavor}")
    with EmulatedHost(image.rootfs()) as h:
        h.flavor, h.variant = flavor, variant
        h.subtree = Subtree(f"ecs-test-{os.getpid()}-{flavor}")
        key = h.dir / KEY
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        tarball, sha256 = artifacts.artifact(amazon.PYTHONS[flavor][2])
        h.source = (f"{DIST}/{tarball.name}", sha256)
        rpms = [artifacts.rpm()] if flavor == "amzn2023" else []  # to move to, last
        # AL2023's launch template carries cloud-config too: the multi-part MIME form
        user_data = launch_template(*h.source)
        user_data = mime(user_data) if flavor == "amzn2023" else user_data
        binds = amazon.dress(dress, flavor, user_data, docker=True,
                             login=key.with_suffix(".pub"), release=tarball, rpms=rpms)
        h.offline(SCRIPT.read_text(), binds=[f"{dress}:/dress", *binds], timeout=900)
        h.boot()
        h.run(["cloud-init", "status", "--wait"], check=False, timeout=900)
        yield h


def log(host: BootedHost) -> str:
    return host.run(["cat", "/var/log/ecs-harden-user-data.log"], check=False).stdout


def recorded(host: BootedHost) -> tuple[list[str], list[str]]:
    v4 = host.run(["cat", "/var/log/ecs-test/before-docker.v4"], check=False).stdout.splitlines()
    v6 = host.run(["cat", "/var/log/ecs-test/before-docker.v6"], check=False).stdout.splitlines()
    return v4, v6


def infra(host: BootedHost, *args: str) -> None:
    """tests/infra against the host as an operator runs it (`--hosts=ssh://root@...`,
    the host's own sshd), from this machine with only the host's network namespace
    entered (the host has no network but its loopback), one multiplexed connection."""
    config = host.dir / f"ssh-config.{host.boots}"
    config.write_text(
        f"Host emulated\n  HostName 127.0.0.1\n  User root\n  IdentityFile {host.dir / KEY}\n"
        "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
        f"  ControlMaster auto\n  ControlPath {host.dir}/mux-{host.boots}-%C\n  ControlPersist 30\n"
    )
    python = os.environ.get("ECS_HARDEN_PYTHON") or str(PROJECT / ".venv" / "bin" / "python")
    try:
        cp = subprocess.run(
            ["nsenter", "-t", str(host.init_pid), "-n", "--",
             python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(PROJECT),
             "--hosts=ssh://emulated", f"--ssh-config={config}", str(PROJECT / "tests" / "infra"), *args],
            capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(PROJECT)},
        )
    finally:  # the master, before the host reboots
        subprocess.run(["nsenter", "-t", str(host.init_pid), "-n", "--", "ssh", "-F", str(config),
                        "-O", "exit", "emulated"], capture_output=True, check=False, timeout=30)
    assert cp.returncode == 0, cp.stdout[-6000:] + cp.stderr[-2000:]
    assert " passed" in cp.stdout and " failed" not in cp.stdout, cp.stdout[-3000:]


def test_user_data_hardens_the_fresh_host_and_replaces_the_sample(host: BootedHost) -> None:
    status = host.run(["cloud-init", "status", "--long"], check=False)
    text = log(host)
    unit = host.run(["journalctl", "-b", "--no-pager", "-o", "cat", "-u", "ecs-harden.service"], check=False)
    assert "status: done" in status.stdout, status.stdout + text + unit.stdout[-6000:]
    assert "FAILED" not in text and "ecs-harden: done: compliant, ecs-harden.service active" in text, text
    if host.flavor == "amzn2023":  # its user data is multi-part: the cloud-config part ran too
        assert host.run(["cat", "/var/lib/ecs-test/cloud-config-ran"]).stdout == "yes\n"
    # the package came from the flavor's own tool, its sample replaced (and said so)
    tool = "dnf" if host.flavor == "amzn2023" else "yum"
    assert host.run(["rpm", "-q", "iptables-services"]).stdout.startswith("iptables-services-")
    assert f"changed: install iptables-services (the boot restore) with {tool}" in text
    for path in SYSCONFIG:
        assert f"changed: replace the iptables-services sample (catch-all REJECT) in {path}" in text, text
        now = host.run(["cat", path]).stdout
        assert "REJECT" not in now and "ecs-harden" in now
    verify = host.run(["rpm", "-V", "iptables-services"], check=False).stdout
    assert "5" in verify.split("/etc/sysconfig/iptables")[0].splitlines()[-1], verify  # no longer as shipped
    # enabled for boot, never started under the running host
    for name in ("iptables.service", "ip6tables.service"):
        assert host.run(["systemctl", "is-enabled", name]).stdout.strip() == "enabled"
        assert host.run(["systemctl", "is-active", name], check=False).stdout.strip() == "inactive"
    # the operator's ECS lines before and after ours, ours once each
    config = host.run(["cat", "/etc/ecs/ecs.config"]).stdout.splitlines()
    assert "ECS_CLUSTER=vmtest" in config and "ECS_ENABLE_CONTAINER_METADATA=true" in config, config
    assert config.count("ECS_AWSVPC_BLOCK_IMDS=true") == 1 and config.count(
        "ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST=false") == 1, config
    # the Python the release has: 3.9 on AL2023, 3.8 from amazon-linux-extras on AL2
    venv = host.run(["/opt/ecs-harden/bin/python", "-c", "import sys; print(sys.version_info[:2])"]).stdout
    assert venv.strip() == ("(3, 9)" if host.flavor == "amzn2023" else "(3, 8)")
    if host.flavor == "amzn2":
        assert host.run(["python3", "-c", "import sys; print(sys.version_info[:2])"]).stdout.strip() == "(3, 7)"
        assert "installing python3.8 from amazon-linux-extras" in text
    al2 = host.run(["test", "-f", "/etc/systemd/system/ecs-harden.service.d/al2.conf"], check=False)
    assert (al2.returncode == 0) == (host.flavor == "amzn2")
    # the sample is kept
    backups = host.sh("cat /var/lib/ecs-harden/backups/iptables.*.bak").stdout
    sample = (Path(__file__).resolve().parents[1] / "fixtures" / "iptables-services" / "iptables").read_text()
    assert sample in backups
    # the agent (a stand-in ecs.service) passed the gate: it starts on a hardened host
    host.run(["systemctl", "is-system-running", "--wait"], check=False, timeout=300)
    assert host.run(["systemctl", "is-active", "ecs.service"], check=False).stdout.strip() == "active"
    facts = json.loads(host.run(["ecs-harden", "facts", "--format", "json"]).stdout)
    assert facts["flavor"] == host.flavor
    assert facts["iptables"] == ("nf_tables" if host.variant == "nft" else "legacy")


def test_the_testinfra_suite_passes_with_the_units_life_cycle(host: BootedHost) -> None:
    """A real container on docker0 cannot reach IMDS (v4 and v6) and reaches the
    credentials endpoint; the unit's stop, kill -9 and reload under systemd."""
    assert "imds-ok" in host.sh("python3.11 -c \"import urllib.request as u; "
                                "print(u.urlopen('http://169.254.169.254/', timeout=5).read().decode())\"").stdout
    infra(host, "--disruptive")


REPAIRED_AT_ONCE = r"""
rule=$(iptables -S DOCKER-USER | grep -F 'ecs-harden: block IMDS' | head -1 | cut -d' ' -f3-)
[ -n "$rule" ]
for pause in 0.3 1.1 0.6 1.7; do
    t0=$(date +%s%N)
    eval "iptables -w -D DOCKER-USER $rule"
    until eval "iptables -w -C DOCKER-USER $rule" 2>/dev/null; do
        [ $(( ($(date +%s%N) - t0) / 1000000 )) -lt 2500 ] || { echo "not repaired within 2.5 s"; exit 1; }
        sleep 0.02
    done
    echo "repaired after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
    sleep $pause
done
"""


def test_under_the_units_sandbox_a_deletion_is_repaired_at_once(host: EmulatedHost) -> None:
    """interval 60 s, so neither a timer (legacy: 12 s) nor the resync repairs within
    seconds: on legacy the daemon, in its sandbox (ProtectSystem=strict, the lock a
    ReadWritePaths= bind), sees iptables close /run/xtables.lock; on nf_tables, events."""
    policy = "/etc/ecs-harden/policy.yaml"
    edit = f'f = "{policy}"; p = yaml.safe_load(open(f)) or {{}}; p["interval"] = 60; yaml.safe_dump(p, open(f, "w"))'
    set_interval = f"/opt/ecs-harden/bin/python -c 'import yaml; {edit}'"
    host.sh(f"cp -p {policy} {policy}.ecs-test && {set_interval} && systemctl reload ecs-harden && sleep 3")
    try:
        cp = host.sh(REPAIRED_AT_ONCE, check=False, timeout=120)
        assert cp.returncode == 0 and cp.stdout.count("repaired after") == 4, cp.stdout + cp.stderr
    finally:
        host.sh(f"mv -f {policy}.ecs-test {policy} && systemctl reload ecs-harden")


def test_user_data_again_changes_nothing(host: EmulatedHost) -> None:
    files = ["/etc/ecs/ecs.config", *SYSCONFIG, "/etc/ecs-harden/policy.yaml",
             "/etc/systemd/system/ecs-harden.service.d/paths.conf"]

    def sums() -> str:
        return "".join(hashlib.sha256(host.run(["cat", f]).stdout.encode()).hexdigest() for f in files)

    before = sums()
    # ours again (not the launch template: its own ECS lines append each time)
    again = host.run(["bash", "-s"], input=ours(*host.source), check=False, timeout=900)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-2000:]
    assert "unchanged: iptables-services (the boot restore) is installed" in again.stdout
    assert "replace the iptables-services sample" not in again.stdout
    assert sums() == before


DELETE_THE_BLOCK = """
for t in "filter DOCKER-USER" "filter FORWARD" "raw PREROUTING"; do
    set -- $t
    iptables -t $1 -S $2 | grep -- "-d 169.254.169.254/32" | sed "s/^-A/-D/" \\
      | while read -r rule; do eval iptables -t $1 $rule; done
done
"""


def test_setup_as_the_role_runs_it_says_what_changed_and_its_dry_run_changes_nothing(host: EmulatedHost) -> None:
    """`setup --format json` (the Ansible role's call): nothing to do is `changed: []`; with
    the daemon stopped and the block deleted, `--dry-run` names the repair and changes
    nothing (rules, unit); the real run repairs, starts the unit and says both."""
    def setup(*args: str) -> dict[str, Any]:
        cp = host.run(["ecs-harden", "--log-level", "error", "setup", "--format", "json", *args],
                      check=False, timeout=300)
        assert cp.returncode == 0, cp.stdout[-3000:] + cp.stderr[-2000:]
        return dict(json.loads(cp.stdout))

    quiet = setup()
    assert quiet["changed"] == [] and quiet["compliant"] is True and quiet["unit"] == "active", quiet
    state = "iptables -S; iptables -t raw -S; systemctl is-active ecs-harden"
    host.sh("systemctl stop ecs-harden && " + DELETE_THE_BLOCK)
    try:
        before = host.sh(state, check=False).stdout
        dry = setup("--dry-run")
        assert dry["compliant"] is False and dry["dry_run"] is True, dry
        assert "repair imds.ipv4.live" in dry["changed"], dry
        assert host.sh(state, check=False).stdout == before  # nothing applied, nothing started
        real = setup()
        assert real["compliant"] is True and real["unit"] == "active", real
        assert "apply imds.ipv4.live" in real["changed"] and "start ecs-harden.service" in real["changed"], real
    finally:
        host.sh("systemctl start ecs-harden", check=False)


def test_after_a_reboot_the_restore_blocks_before_docker_starts(host: BootedHost) -> None:
    """The boot after the first: what was saved is restored before Docker starts, and what
    the daemon saves after it again holds one copy of each rule (what the next boot restores)."""
    host.reboot()
    host.run(["systemctl", "is-system-running", "--wait"], check=False, timeout=600)
    v4, v6 = recorded(host)
    boot_id = host.run(["cat", "/proc/sys/kernel/random/boot_id"]).stdout.strip()
    assert v4 and v4[0] == boot_id, "docker.service recorded nothing this boot"
    for chain in ("DOCKER-USER", "FORWARD"):
        assert sum(1 for ln in v4 if ln.startswith(f"-A {chain} ") and MARK in ln) == 1, v4
        assert sum(1 for ln in v6 if ln.startswith(f"-A {chain} ") and MARK in ln) == 1, v6
    assert sum(1 for ln in v4 if ln.startswith("-A PREROUTING ") and MARK in ln) == 1, v4
    assert not any("REJECT" in ln for ln in v4 + v6), v4 + v6
    for unit in ("iptables.service", "ip6tables.service", "ecs-harden.service"):
        state = host.run(["systemctl", "is-active", unit], check=False).stdout.strip()
        assert state == "active", (unit, host.run(["journalctl", "-b", "-u", unit, "--no-pager"], check=False).stdout)
    check = host.run(["ecs-harden", "check"], check=False)
    assert check.returncode == 0, check.stdout
    for path in SYSCONFIG:
        saved = host.run(["cat", path]).stdout.splitlines()
        for chain in ("DOCKER-USER", "FORWARD"):
            assert sum(1 for ln in saved if ln.startswith(f"-A {chain} ") and MARK in ln) == 1, (path, saved)
    saved = host.run(["cat", SYSCONFIG[0]]).stdout.splitlines()
    assert sum(1 for ln in saved if ln.startswith("-A PREROUTING ") and MARK in ln) == 1, saved
    infra(host)


def test_moving_to_the_rpm_keeps_imds_blocked_and_leaves_nothing_of_the_tarball(host: EmulatedHost) -> None:
    """AL2023, after the reboots: `dnf install ecs-harden` on the host the release tarball
    hardened (its unit and the user-data's gate in /etc, its venv in /opt/ecs-harden), with
    the daemon running and a container probing IMDS every 50 ms: it never reaches it; the
    daemon runs the package's unit (nothing in /etc shadows it), the agent's gate is the
    package's, the tarball's venv is gone (every file under /opt/ecs-harden is the
    package's), the operator's policy is kept, and the agent restarts through the gate."""
    if host.flavor != "amzn2023":
        pytest.skip("the RPM is AL2023's (AL2 is in maintenance: tarballs only)")
    amazon.start_prober(host)
    policy = host.run(["sha256sum", "/etc/ecs-harden/policy.yaml"]).stdout
    before = amazon.main_pid(host)
    cp = host.run(["dnf", "install", "-y", "ecs-harden"], check=False, timeout=600)
    assert cp.returncode == 0, cp.stdout[-3000:] + cp.stderr[-3000:]
    assert "did not finish" not in cp.stdout + cp.stderr, cp.stdout[-3000:] + cp.stderr[-3000:]
    fragment = host.run(["systemctl", "show", "-p", "FragmentPath", "--value", "ecs-harden.service"])
    assert fragment.stdout.strip().endswith("lib/systemd/system/ecs-harden.service"), fragment.stdout  # /lib: /usr/lib
    for gone in ("/etc/systemd/system/ecs-harden.service", "/opt/ecs-harden.tarball",
                 "/etc/systemd/system/ecs.service.d/ecs-harden-gate.conf"):
        assert host.run(["test", "-e", gone], check=False).returncode != 0, gone
    assert host.run(["systemctl", "is-active", "ecs-harden.service"], check=False).stdout.strip() == "active"
    assert amazon.main_pid(host) != before  # restarted from the package's venv
    owned = set(host.run(["rpm", "-ql", "ecs-harden"]).stdout.split())
    present = set(host.run(["find", "/opt/ecs-harden"]).stdout.split())
    assert present <= owned, sorted(present - owned)[:20]
    verify = host.run(["rpm", "-V", "ecs-harden"], check=False).stdout.splitlines()
    assert all(line.endswith(" /etc/ecs-harden/policy.yaml") for line in verify), verify
    assert host.run(["sha256sum", "/etc/ecs-harden/policy.yaml"]).stdout == policy
    assert host.run(["test", "-f", "/etc/ecs-harden/policy.yaml.rpmnew"], check=False).returncode == 0
    agent = host.run(["systemctl", "cat", "ecs.service"]).stdout
    assert "ExecStartPre=/usr/bin/ecs-harden gate" in agent and "/usr/local/bin/ecs-harden" not in agent, agent
    host.run(["systemctl", "restart", "ecs.service"], check=False)
    time.sleep(1)
    assert host.run(["systemctl", "is-active", "ecs.service"], check=False).stdout.strip() == "active"
    check = host.run(["ecs-harden", "check"], check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert amazon.reached(host) == 0, host.run(["docker", "logs", "prober"], check=False).stdout[-2000:]
