"""A fleet of three hosts over SSH, as an operator has one (tests/vm/fleet.py: booted
systemd-nspawn instances of the test image, each with its own systemd, network
namespace and sshd): ansible/site.yml converges all; one host drifts by hand;
`--check --diff` shows it there and changes nothing; ansible/fleet-report.yml flags
exactly that host and its two checks; a converge repairs it; a host that is down is
reported unreachable, not left out."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.boot.conftest import require_boot
from tests.boot.image import CACHE, PROJECT, rootfs, wheelhouse
from tests.vm.fleet import Fleet

HOSTS = ("ecs1", "ecs2", "ecs3")
ANSIBLE = PROJECT / "ansible"


class Controller:
    """ansible-playbook in the fleet's sandbox, with the inventory an operator writes."""

    def __init__(self, fleet: Fleet, url: str):
        self.fleet = fleet
        self.url = url
        self.inventory = fleet.inventory()
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
             str(ANSIBLE / name), "-e", f"ecs_harden_from={self.url}",
             "-e", f"fleet_report_dir={self.report_dir}", *args],
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
    wheelhouse(www / "wheelhouse")
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    with Fleet(image, HOSTS, work / "hosts") as f:
        timings["3 hosts booted, sshd up"] = round(time.monotonic() - t0, 1)
        yield f, Controller(f, f.serve(www) + "wheelhouse/"), timings
    CACHE.mkdir(exist_ok=True)
    path = CACHE / "fleet-timings.json"
    path.write_text(json.dumps(timings, indent=2) + "\n")


def test_a_fleet_of_three(fleet: tuple[Fleet, Controller, dict[str, float]]) -> None:
    hosts, ansible, timings = fleet
    t0 = time.monotonic()
    cp = ansible.playbook("site.yml")
    timings["converge 3 hosts"] = round(time.monotonic() - t0, 1)
    assert cp.returncode == 0, cp.stdout[-6000:] + cp.stderr[-2000:]
    assert all(recap(cp.stdout)[h]["failed"] == 0 for h in HOSTS)
    for h in HOSTS:
        assert hosts.ssh(h, "systemctl is-active ecs-harden").stdout.strip() == "active"

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
    assert data["summary"] == {"hosts": 3, "compliant": 2, "drifting": 1, "unreachable": 0}, data
    assert rows["ecs1"]["compliant"] is True and rows["ecs3"]["compliant"] is True
    assert rows["ecs2"]["compliant"] is False
    assert sorted(f["check"] for f in rows["ecs2"]["drift"]) == [  # type: ignore[attr-defined]
        "ecs_config.ECS_AWSVPC_BLOCK_IMDS", "imds.ipv4.live"]
    CACHE.mkdir(exist_ok=True)
    (CACHE / "fleet-report-sample.md").write_text(md)

    # the converge that repairs it (on ecs2: the others were shown unchanged above,
    # and molecule proves a second converge changes nothing)
    cp = ansible.playbook("site.yml", "--limit", "ecs2")
    assert cp.returncode == 0, cp.stdout[-6000:]
    assert recap(cp.stdout)["ecs2"]["changed"] > 0
    assert hosts.ssh("ecs2", "/usr/local/bin/ecs-harden check >/dev/null").returncode == 0
    assert hosts.ssh("ecs2", "systemctl is-active ecs-harden").stdout.strip() == "active"

    hosts.hosts["ecs3"].shutdown()
    data, md = ansible.report()
    assert data["summary"] == {"hosts": 3, "compliant": 2, "drifting": 0, "unreachable": 1}, data
    assert by_host(data)["ecs3"]["reachable"] is False
    assert "**unreachable**" in md
    (CACHE / "fleet-report-unreachable-sample.md").write_text(md)


