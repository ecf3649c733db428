"""A fleet of three hosts over SSH, as an operator has one (tests/vm/fleet.py: booted
systemd-nspawn instances of the test image, each with its own systemd, network
namespace and sshd), of three flavors: ecs1 Debian (nf_tables), ecs2 an EMULATED
Amazon Linux 2023 (nf_tables, Python 3.9, dnf) and ecs3 an EMULATED Amazon Linux 2
(legacy, Python 3.8 from amazon-linux-extras, yum; tests/boot/amazon.py), each fresh
with iptables-services not installed: ansible/site.yml converges all, a second run
changes nothing; the fleet report shows each flavor and variant; one host drifts by hand;
`--check --diff` shows it there and changes nothing; ansible/fleet-report.yml flags
exactly that host and its two checks; a converge repairs it; a host that is down is
reported unreachable, not left out."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests import artifacts
from tests.boot import amazon
from tests.boot.conftest import require_boot
from tests.boot.image import CACHE, PROJECT, rootfs
from tests.vm.fleet import Fleet, FleetHost

HOSTS = ("ecs1", "ecs2", "ecs3")
DRESS = PROJECT / "tests" / "boot" / "scripts" / "amazon-linux"
ANSIBLE = PROJECT / "ansible"


# flavor, the host's Python for Ansible and the venv, its release tarball
FLAVORS = {"ecs1": "debian", "ecs2": "amzn2023", "ecs3": "amzn2"}
VENV_PYTHON = {"debian": "3.11", "amzn2023": "3.9", "amzn2": "3.8"}
INTERPRETER = {"debian": "/usr/bin/python3", "amzn2023": "/usr/bin/python3", "amzn2": "/usr/bin/python3.8"}


class Controller:
    """ansible-playbook in the fleet's sandbox, with the inventory an operator writes:
    per host its Python and the release tarball for it, pinned by its sha256."""

    def __init__(self, fleet: Fleet, url: str, releases: dict[str, tuple[str, str]]):
        self.fleet = fleet
        self.url = url
        self.inventory = fleet.inventory({
            name: {"ansible_python_interpreter": INTERPRETER[flavor],
                   "ecs_harden_from": f"{url}{releases[flavor][0]}", "ecs_harden_sha256": releases[flavor][1]}
            for name, flavor in FLAVORS.items()})
        self.report_dir = fleet.dir / "fleet-report"

    def env(self) -> dict[str, str]:
        d = self.fleet.dir
        return {
            "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
            "ANSIBLE_HOME": str(d / "ansible-home"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(d / "ansible-cp"),
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_NOCOLOR": "1",
            "PATH": f"{PROJECT / '.venv' / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin",
        }

    def playbook(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self.fleet.outer(
            [str(PROJECT / ".venv" / "bin" / "ansible-playbook"), "-i", str(self.inventory),
             str(ANSIBLE / name), "-e", f"fleet_report_dir={self.report_dir}", *args],
            env=self.env(), timeout=1200, check=False,
        )

    def report(self) -> tuple[dict[str, object], str]:
        cp = self.playbook("fleet-report.yml")
        assert cp.returncode == 0, cp.stdout[-4000:] + cp.stderr[-2000:]
        data = json.loads((self.report_dir / "fleet-report.json").read_text())
        return data, (self.report_dir / "fleet-report.md").read_text()


def recap(out: str) -> dict[str, dict[str, int]]:
    rows = {}
    for m in re.finditer(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", out, re.M):
        rows[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return rows


def by_host(data: dict[str, object]) -> dict[str, dict[str, object]]:
    return {str(r["host"]): r for r in data["hosts"]}  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fleet, Controller, dict[str, float]]]:
    require_boot()
    pytest.importorskip("ansible")
    image = rootfs()
    work = tmp_path_factory.mktemp("fleet")
    www = work / "www"
    www.mkdir()
    releases = {}
    for flavor, minor in VENV_PYTHON.items():
        tarball, sha256 = artifacts.artifact(minor)
        shutil.copy(tarball, www / tarball.name)
        releases[flavor] = (tarball.name, sha256)

    def dress(host: FleetHost) -> None:
        flavor = FLAVORS[host.name]
        if flavor == "debian":
            return
        d = work / f"dress-{host.name}"
        d.mkdir()
        binds = amazon.dress(d, flavor, None, python38=flavor == "amzn2")
        host.offline(DRESS.read_text(), binds=[f"{d}:/dress", *binds], timeout=900)

    timings: dict[str, float] = {}
    t0 = time.monotonic()
    with Fleet(image, HOSTS, work / "hosts", prepare=dress) as f:
        timings["3 hosts dressed and booted, sshd up"] = round(time.monotonic() - t0, 1)
        yield f, Controller(f, f.serve(www), releases), timings
    CACHE.mkdir(exist_ok=True)
    path = CACHE / "fleet-timings.json"
    path.write_text(json.dumps(timings, indent=2) + "\n")


def test_a_wrong_checksum_or_no_source_installs_nothing(fleet: tuple[Fleet, Controller, dict[str, float]]) -> None:
    hosts, ansible, _ = fleet
    wrong = ansible.playbook("site.yml", "--limit", "ecs2", "-e", "ecs_harden_sha256=" + "0" * 64)
    assert wrong.returncode != 0 and recap(wrong.stdout)["ecs2"]["failed"] == 1, wrong.stdout[-4000:]
    assert "sha256 is " in wrong.stdout and f"not the pinned {'0' * 64}" in wrong.stdout, wrong.stdout[-4000:]
    none = ansible.playbook("site.yml", "--limit", "ecs1", "-e", "ecs_harden_from=")
    assert none.returncode != 0 and "ecs_harden_from must be a release tarball" in none.stdout, none.stdout[-4000:]
    for h in ("ecs1", "ecs2"):
        left = hosts.ssh(h, "ls -d /opt/ecs-harden /usr/local/bin/ecs-harden /etc/ecs-harden /var/tmp/ecs-harden-dist.* "
                            "2>/dev/null; systemctl cat ecs-harden.service >/dev/null 2>&1 && echo unit")
        assert left.stdout.strip() == "", (h, left.stdout)


def test_a_fleet_of_three(fleet: tuple[Fleet, Controller, dict[str, float]]) -> None:
    hosts, ansible, timings = fleet
    t0 = time.monotonic()
    cp = ansible.playbook("site.yml")
    timings["converge 3 hosts"] = round(time.monotonic() - t0, 1)
    assert cp.returncode == 0, cp.stdout[-6000:] + cp.stderr[-2000:]
    assert all(recap(cp.stdout)[h]["failed"] == 0 for h in HOSTS)
    for h in HOSTS:
        assert hosts.ssh(h, "systemctl is-active ecs-harden").stdout.strip() == "active"
    # on the Amazon Linux hosts: iptables-services from dnf/yum, its sample replaced
    for h in ("ecs2", "ecs3"):
        assert hosts.ssh(h, "rpm -q iptables-services").returncode == 0
        assert hosts.ssh(h, "systemctl is-enabled iptables.service").stdout.strip() == "enabled"
        assert "REJECT" not in hosts.ssh(h, "cat /etc/sysconfig/iptables").stdout
    t0 = time.monotonic()
    again = ansible.playbook("site.yml")
    timings["converge 3 hosts again"] = round(time.monotonic() - t0, 1)
    assert again.returncode == 0, again.stdout[-6000:]
    assert all(recap(again.stdout)[h]["changed"] == 0 for h in HOSTS), recap(again.stdout)

    # ecs2 drifts by hand, its daemon stopped (it would repair in milliseconds)
    drift = hosts.ssh("ecs2", """sh -ec '
        systemctl stop ecs-harden
        for t in "filter DOCKER-USER" "filter FORWARD" "raw PREROUTING"; do
            set -- $t
            iptables -t $1 -S $2 | grep -- "-d 169.254.169.254/32" | sed "s/^-A/-D/" \\
              | while read -r rule; do eval iptables -t $1 $rule; done
        done
        sed -i "s/^ECS_AWSVPC_BLOCK_IMDS=.*/ECS_AWSVPC_BLOCK_IMDS=\\"true\\"/" /etc/ecs/ecs.config
        ! iptables -S DOCKER-USER | grep -q 169.254.169.254'""")
    assert drift.returncode == 0, drift.stderr
    state = "iptables -S; iptables -t raw -S; ip6tables -S; cat /etc/ecs/ecs.config"
    before = hosts.ssh("ecs2", state).stdout

    cp = ansible.playbook("site.yml", "--check", "--diff")
    assert cp.returncode == 0, cp.stdout[-6000:]
    rc = recap(cp.stdout)
    assert rc["ecs2"]["changed"] > 0 and rc["ecs1"]["changed"] == 0 and rc["ecs3"]["changed"] == 0, rc
    assert "imds.ipv4.live" in cp.stdout and "ecs_config.ECS_AWSVPC_BLOCK_IMDS" in cp.stdout
    assert hosts.ssh("ecs2", state).stdout == before

    data, md = ansible.report()
    rows = by_host(data)
    assert data["summary"] == {"hosts": 3, "compliant": 2, "not_yet_effective": 0, "drifting": 1, "unreachable": 0,
                               "with_attempts": 0}, data
    assert rows["ecs1"]["compliant"] is True and rows["ecs3"]["compliant"] is True
    # each running daemon's record; ecs2's daemon is stopped: not known, never 0
    assert {h: rows[h]["attempts_last_hour"] for h in HOSTS} == {"ecs1": 0, "ecs2": None, "ecs3": 0}
    assert rows["ecs2"]["compliant"] is False
    assert {h: (rows[h]["flavor"], rows[h]["iptables"]) for h in HOSTS} == {
        "ecs1": ("debian", "nf_tables"), "ecs2": ("amzn2023", "nf_tables"), "ecs3": ("amzn2", "legacy")}
    assert sorted(f["check"] for f in rows["ecs2"]["drift"]) == [  # type: ignore[attr-defined]
        "ecs_config.ECS_AWSVPC_BLOCK_IMDS", "imds.ipv4.live"]
    CACHE.mkdir(exist_ok=True)
    (CACHE / "fleet-report-sample.md").write_text(md)

    # the converge that repairs it (on ecs2: the others were shown unchanged above)
    cp = ansible.playbook("site.yml", "--limit", "ecs2")
    assert cp.returncode == 0, cp.stdout[-6000:]
    assert recap(cp.stdout)["ecs2"]["changed"] > 0
    assert hosts.ssh("ecs2", "/usr/local/bin/ecs-harden check >/dev/null").returncode == 0
    assert hosts.ssh("ecs2", "systemctl is-active ecs-harden").stdout.strip() == "active"

    hosts.hosts["ecs3"].shutdown()
    data, md = ansible.report()
    assert data["summary"] == {"hosts": 3, "compliant": 2, "not_yet_effective": 0, "drifting": 0, "unreachable": 1,
                               "with_attempts": 0}, data
    assert by_host(data)["ecs3"]["reachable"] is False
    assert "**unreachable**" in md
    (CACHE / "fleet-report-unreachable-sample.md").write_text(md)


