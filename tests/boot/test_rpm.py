"""EMULATED Amazon Linux 2023 (tests/boot/amazon.py) with the real rpm and dnf: the
release's RPM from a local repository, as an operator or an image build installs it.
A fresh host (Docker and a stand-in ECS agent running, no user-data):

- `dnf install ecs-harden` pulls iptables-services, enables the unit by its preset and
  starts nothing; iptables.service stays disabled over its sample; `rpm -V` is clean;
- the next boot (an image baked with `dnf install` alone) is compliant: the daemon
  blocks before Docker and the agent start, replaces the sample, enables the restore;
- an upgrade from a file and a downgrade with the daemon running: a container probing
  IMDS every 50 ms never reaches it;
- `dnf remove` stops the unit and takes it and the agent gate away (the agent then
  starts whatever the firewall holds), and keeps the block and ecs.config's flags,
  saying so.

The tests of this module run in order on one host."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator

import pytest

from tests import artifacts
from tests.boot import amazon, image
from tests.boot.cgroups import Subtree
from tests.boot.conftest import require_boot
from tests.boot.nspawn import BootedHost

VENDOR_GATE = "/usr/lib/systemd/system/ecs.service.d/ecs-harden-gate.conf"


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootedHost]:
    require_boot()
    dress = tmp_path_factory.mktemp("dress-rpm")
    with BootedHost(image.rootfs()) as h:
        h.subtree = Subtree(f"ecs-test-{os.getpid()}-rpm")
        amazon.dressed(h, dress, "amzn2023", docker=True, rpms=[artifacts.rpm()])
        h.boot()
        yield h


def state(host: BootedHost, verb: str, unit: str) -> str:
    return host.run(["systemctl", verb, unit], check=False).stdout.strip()


def test_dnf_install_enables_the_unit_and_starts_nothing(host: BootedHost) -> None:
    sample = host.run(["cat", "/etc/sysconfig/iptables"], check=False)
    assert sample.returncode != 0  # a fresh AMI: no iptables-services yet
    cp = host.run(["dnf", "install", "-y", "ecs-harden"], check=False, timeout=600)
    assert cp.returncode == 0, cp.stdout[-3000:] + cp.stderr[-3000:]
    assert host.run(["rpm", "-q", "iptables-services"]).stdout.startswith("iptables-services-1.8.8-")
    verify = host.run(["rpm", "-V", "ecs-harden"], check=False)
    assert verify.returncode == 0 and verify.stdout == "", verify.stdout
    assert state(host, "is-enabled", "ecs-harden.service") == "enabled"
    assert state(host, "is-active", "ecs-harden.service") == "inactive"
    assert state(host, "is-enabled", "iptables.service") == "disabled"
    assert "REJECT" in host.run(["cat", "/etc/sysconfig/iptables"]).stdout  # the sample, untouched
    assert host.run(["test", "-e", "/etc/systemd/system/ecs-harden.service"], check=False).returncode != 0
    assert host.run(["ecs-harden", "--version"]).stdout.startswith("ecs-harden ")
    assert "ExecStartPre=/usr/bin/ecs-harden gate" in host.run(["systemctl", "cat", "ecs.service"]).stdout


def test_the_next_boot_is_compliant_with_the_block_before_the_agent(host: BootedHost) -> None:
    host.reboot()
    host.run(["systemctl", "is-system-running", "--wait"], check=False, timeout=600)
    journal = host.run(["journalctl", "-b", "-u", "ecs-harden", "--no-pager", "-o", "cat"], check=False).stdout
    assert state(host, "is-active", "ecs-harden.service") == "active", journal[-3000:]
    assert state(host, "is-active", "ecs.service") == "active"  # through the gate
    check = host.run(["ecs-harden", "check"], check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert state(host, "is-enabled", "iptables.service") == "enabled"
    now = host.run(["cat", "/etc/sysconfig/iptables"]).stdout
    assert "REJECT" not in now and "ecs-harden" in now
    # an upgrade's %config(noreplace) keeps an edited policy: rpm -V says it changed
    host.sh("echo 'interval: 5' >> /etc/ecs-harden/policy.yaml")
    assert "/etc/ecs-harden/policy.yaml" in host.run(["rpm", "-V", "ecs-harden"], check=False).stdout


def test_upgrade_from_a_file_and_downgrade_with_the_daemon_running_never_open_imds(host: BootedHost) -> None:
    """A container probes IMDS every 50 ms through `dnf install FILE` (an upgrade: the
    old package's %postun try-restarts the daemon) and `dnf downgrade`: it never
    reaches it (the block stays in the live ruleset while the daemon restarts). The
    same prober reaches IMDS once the block is gone (the last test)."""
    amazon.start_prober(host)
    before = amazon.main_pid(host)
    newer = artifacts.rpm_release(2)
    host.run(["sh", "-c", f"base64 -d > /tmp/{newer.name}"], input=base64.b64encode(newer.read_bytes()).decode())
    cp = host.run(["dnf", "install", "-y", f"/tmp/{newer.name}"], check=False, timeout=600)
    assert cp.returncode == 0, cp.stdout[-3000:] + cp.stderr[-3000:]
    assert host.run(["rpm", "-q", "ecs-harden"]).stdout.strip() == newer.name[:-len(".rpm")]
    assert state(host, "is-active", "ecs-harden.service") == "active"
    assert amazon.main_pid(host) != before  # restarted by the upgrade
    assert "interval: 5" in host.run(["cat", "/etc/ecs-harden/policy.yaml"]).stdout  # %config(noreplace)
    cp = host.run(["dnf", "downgrade", "-y", "ecs-harden"], check=False, timeout=600)
    assert cp.returncode == 0, cp.stdout[-3000:] + cp.stderr[-3000:]
    assert ".1.amzn2023" not in newer.name and "-1.amzn2023" in host.run(["rpm", "-q", "ecs-harden"]).stdout
    assert state(host, "is-active", "ecs-harden.service") == "active"
    time.sleep(1)
    assert amazon.reached(host) == 0, host.run(["docker", "logs", "prober"], check=False).stdout[-2000:]
    assert host.run(["ecs-harden", "check"], check=False).returncode == 0


def test_dnf_remove_takes_the_unit_and_the_gate_and_keeps_block_and_flags(host: BootedHost) -> None:
    cp = host.run(["dnf", "remove", "-y", "ecs-harden"], check=False, timeout=600)
    out = cp.stdout + cp.stderr
    assert cp.returncode == 0, out[-3000:]
    assert "the IMDS block stays" in out and "ecs.config keeps its flags" in out, out[-3000:]
    assert host.run(["systemctl", "cat", "ecs-harden.service"], check=False).returncode != 0
    assert host.run(["test", "-e", VENDOR_GATE], check=False).returncode != 0
    assert host.run(["test", "-e", "/opt/ecs-harden"], check=False).returncode != 0
    config = host.run(["cat", "/etc/ecs/ecs.config"]).stdout.splitlines()
    assert "ECS_AWSVPC_BLOCK_IMDS=true" in config
    rules = host.run(["iptables", "-S", "DOCKER-USER"]).stdout
    assert "ecs-harden" in rules  # the block stays
    # with the block gone too, the agent still starts: no gate is left anywhere
    host.sh("for t in filter raw; do iptables-save -t $t | grep -F ecs-harden | grep '^-A' | sed 's/^-A/-D/' "
            "| while read -r r; do eval iptables -w -t $t $r; done; done")
    assert not [ln for ln in host.run(["iptables-save"]).stdout.splitlines()
                if ln.startswith("-A") and "ecs-harden" in ln]
    host.run(["systemctl", "restart", "ecs.service"], check=False)
    time.sleep(1)
    assert state(host, "is-active", "ecs.service") == "active"
    assert "ecs-harden" not in host.run(["systemctl", "cat", "ecs.service"]).stdout
    # the prober of the upgrade test does reach IMDS now: its silence there meant blocked
    deadline = time.monotonic() + 20
    while amazon.reached(host) == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert amazon.reached(host) > 0
