"""A fleet of three VMs of the test box (`ECS_HARDEN_HOSTS=3 vagrant up`), an inventory
over SSH as an operator has one: ansible/site.yml converges all; one host drifts by
hand; `--check --diff` shows it there and changes nothing; ansible/fleet-report.yml
flags exactly that host and its two checks; a converge repairs it; a host that is down
is reported unreachable, not left out."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from tests.boot.image import CACHE, PROJECT
from tests.vm.test_vm import require_vm
from tests.vm.vagrantlab import VagrantLab, lab_with_box

HOSTS = ("ecs1", "ecs2", "ecs3")
ANSIBLE = PROJECT / "ansible"


class Fleet:
    def __init__(self, lab: VagrantLab, url: str):
        self.lab = lab
        self.url = url
        self.inventory = lab.dir / "inventory.ini"
        self.inventory.write_text(
            "[ecs_instances]\n" + "".join(f"{h}\n" for h in HOSTS)
            + "\n[ecs_instances:vars]\n"
            f"ansible_ssh_common_args=-F {lab.dir / 'ssh-config'}\n"
            "ansible_python_interpreter=/usr/bin/python3\n"
        )
        self.report_dir = lab.dir / "fleet-report"

    def env(self) -> dict[str, str]:
        return {
            "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
            "ANSIBLE_HOME": str(self.lab.dir / "ansible-home"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.lab.dir / "ansible-cp"),
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            # every module start costs seconds under emulation: fewer round trips, fewer facts
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_GATHER_SUBSET": "min",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_NOCOLOR": "1",
            "PATH": f"{PROJECT / '.venv' / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin",
        }

    def playbook(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self.lab.sandbox.run(
            [str(PROJECT / ".venv" / "bin" / "ansible-playbook"), "-i", str(self.inventory),
             str(ANSIBLE / name), "-e", f"ecs_harden_from={self.url}",
             "-e", f"fleet_report_dir={self.report_dir}", *args],
            env=self.env(), timeout=2400, check=False,
        )

    def ssh(self, host: str, command: str) -> subprocess.CompletedProcess[str]:
        return self.lab.sandbox.run(
            ["ssh", "-F", str(self.lab.dir / "ssh-config"), "-o", "BatchMode=yes", host, command],
            timeout=300, check=False,
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


def test_a_fleet_of_three(tmp_path_factory: pytest.TempPathFactory) -> None:
    require_vm()
    pytest.importorskip("ansible")
    with lab_with_box(tmp_path_factory, "fleet", hosts=len(HOSTS)) as lab:
        lab.timed("3 VMs up (parallel)", lab.up)
        lab.ssh_config()
        fleet = Fleet(lab, lab.wheelhouse_url)

        t0 = time.monotonic()
        cp = fleet.playbook("site.yml")
        lab.timings["converge 3 hosts"] = round(time.monotonic() - t0, 1)
        assert cp.returncode == 0, cp.stdout[-6000:] + cp.stderr[-2000:]
        assert all(recap(cp.stdout)[h]["failed"] == 0 for h in HOSTS)

        # ecs2 drifts by hand, its daemon stopped (it would repair in milliseconds)
        drift = fleet.ssh("ecs2", """sudo sh -ec '
            systemctl stop ecs-harden
            for t in "filter DOCKER-USER" "filter FORWARD" "raw PREROUTING"; do
                set -- $t
                iptables -t $1 -S $2 | grep -- "-d 169.254.169.254/32" | sed "s/^-A/-D/" \\
                  | while read -r rule; do eval iptables -t $1 $rule; done
            done
            sed -i "s/^ECS_AWSVPC_BLOCK_IMDS=.*/ECS_AWSVPC_BLOCK_IMDS=\\"true\\"/" /etc/ecs/ecs.config
            ! iptables -S DOCKER-USER | grep -q 169.254.169.254'""")
        assert drift.returncode == 0, drift.stderr
        state = "sudo iptables -S; sudo iptables -t raw -S; sudo ip6tables -S; sudo cat /etc/ecs/ecs.config"
        before = fleet.ssh("ecs2", state).stdout

        cp = fleet.playbook("site.yml", "--check", "--diff")
        assert cp.returncode == 0, cp.stdout[-6000:]
        rc = recap(cp.stdout)
        assert rc["ecs2"]["changed"] > 0 and rc["ecs1"]["changed"] == 0 and rc["ecs3"]["changed"] == 0, rc
        assert "imds.ipv4.live" in cp.stdout and "ecs_config.ECS_AWSVPC_BLOCK_IMDS" in cp.stdout
        assert fleet.ssh("ecs2", state).stdout == before

        data, md = fleet.report()
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
        cp = fleet.playbook("site.yml", "--limit", "ecs2")
        assert cp.returncode == 0, cp.stdout[-6000:]
        assert recap(cp.stdout)["ecs2"]["changed"] > 0
        assert fleet.ssh("ecs2", "sudo /usr/local/bin/ecs-harden check >/dev/null").returncode == 0
        assert fleet.ssh("ecs2", "systemctl is-active ecs-harden").stdout.strip() == "active"

        lab.vagrant("halt", "--force", "ecs3", timeout=300)
        data, md = fleet.report()
        assert data["summary"] == {"hosts": 3, "compliant": 2, "drifting": 0, "unreachable": 1}, data
        assert by_host(data)["ecs3"]["reachable"] is False
        assert "**unreachable**" in md
        (CACHE / "fleet-report-unreachable-sample.md").write_text(md)

