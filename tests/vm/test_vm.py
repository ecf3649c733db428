"""The test VM: a real guest (its own kernel, QEMU under software emulation) booted by
Vagrant from the box vm/box builds, hardened by the fleet template's user-data
(deploy/user-data.sh as deploy/cloudformation's launch template carries it, byte for
byte) through cloud-init's NoCloud datasource, checked by the testinfra suite (tests/infra), rebooted once.

The tests run in order on one VM, each on what the one before left: first boot,
user-data again, host-network tasks, a reboot under imds.host_network: block (the boot
restore puts the block in force before the daemon starts; no process of a task slice
ever reaches IMDS, across the reboot and a forced re-creation of the slice), and the
testinfra suite once at the end. What a booted systemd-nspawn host proves as well (a
wrong checksum or an unreachable source changing nothing, the unit's stop and kill -9)
is proven there (tests/boot), where it costs seconds instead of minutes."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests import artifacts
from tests.boot.image import PROJECT
from tests.boot.userdata import TEST_POLICY, ours
from tests.fleettemplate import user_data
from tests.require import require
from tests.vm.vagrantlab import HOST_ADDR, VagrantLab, lab_with_box

NEEDED = ("vagrant", "virsh", "libvirtd", "virtlogd", "qemu-system-x86_64", "qemu-img", "genisoimage",
          "debootstrap", "mkfs.ext4", "ssh", "nsenter", "unshare")
# TEST FIXTURE: what netfilter holds after the boot restore, before the daemon starts.
RECORD_UNIT = """# TEST FIXTURE (tests/vm): the ruleset the boot restore alone made
[Unit]
DefaultDependencies=no
After=netfilter-persistent.service
Before=ecs-harden.service docker.service
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'mkdir -p /var/log/ecs-test; \
{ cat /proc/sys/kernel/random/boot_id; systemctl is-active ecs-harden; iptables -S; iptables -t raw -S; } \
> /var/log/ecs-test/before-daemon.v4; \
{ ip6tables -S; ip6tables -t raw -S; } > /var/log/ecs-test/before-daemon.v6'
[Install]
WantedBy=multi-user.target
"""
DROP_V4 = '-d 169.254.169.254/32 -i docker+ -m comment --comment "ecs-harden: block IMDS from containers" -j DROP'
DROP_V6 = '-d fd00:ec2::254/128 -i docker+ -m comment --comment "ecs-harden: block IMDS from containers" -j DROP'



def require_vm() -> None:
    why = None
    if os.geteuid() != 0:
        why = "the VM lab needs root"
    elif missing := [t for t in NEEDED if shutil.which(t) is None]:
        why = "needs " + ", ".join(missing) + " (scripts/bootstrap installs them)"
    require(why)


MOTO_PORT = 5000
S3_ENDPOINT = f"http://{HOST_ADDR}:{MOTO_PORT}"  # moto's server, on the lab's bridge only


def s3_source(lab: VagrantLab) -> str:
    """The release tarball put into moto's S3 server (started in the lab's sandbox: the
    guest's network is the only one that reaches it); its s3:// URL."""
    pytest.importorskip("moto")
    lab.sandbox.spawn(artifacts.moto_argv("0.0.0.0", MOTO_PORT), lab.dir / "moto.log")
    upload, url = artifacts.s3_upload(f"http://127.0.0.1:{MOTO_PORT}", lab.release_file)
    deadline = time.monotonic() + 60
    while lab.sandbox.run(upload, check=False, timeout=60).returncode != 0:
        assert time.monotonic() < deadline, "moto's server did not take the upload"
        time.sleep(0.5)
    return url


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VagrantLab]:
    require_vm()
    t_all = time.monotonic()
    with lab_with_box(tmp_path_factory, "vm") as lab:
        # First boot from S3: the fleet stack's launch template (deploy/cloudformation)
        # for a stack of the tarball and the tests' policy, its UserData byte for byte;
        # the box's cloud-final environment stands in for the instance role.
        lab.s3 = s3_source(lab)
        values = {"ClusterName": "vmtest", "ReleaseBucket": artifacts.BUCKET, "ReleasePrefix": "ecs-harden/",
                  "ReleaseFile": lab.release_file.name, "ReleaseSha256": lab.release[1], "Policy": TEST_POLICY}
        lab.user_data = user_data(values)
        assert f"ECS_HARDEN_S3_ENDPOINT={S3_ENDPOINT}\n" in (PROJECT / "vm/box/files/ecs-test-instance-role.conf").read_text()
        assert lab.s3 == f"s3://{artifacts.BUCKET}/ecs-harden/{lab.release_file.name}"
        lab.seed_iso(lab.user_data, f"ecs-test-{int(time.time())}")
        lab.timed("vagrant up (boot to ssh)", lab.up)
        lab.ssh_config()
        lab.timed("cloud-init user-data done", lab.ssh, "sudo cloud-init status --wait >/dev/null", check=False)
        yield lab
        lab.timings["whole VM run"] = round(time.monotonic() - t_all, 1)


def infra(lab: VagrantLab, *args: str) -> None:
    cp = lab.pytest(list(args))
    assert cp.returncode == 0, cp.stdout[-6000:] + cp.stderr[-2000:]


def test_user_data_hardens_the_host_on_first_boot(vm: VagrantLab) -> None:
    st = vm.ssh("sudo cloud-init status --long", check=False)
    log = vm.ssh("sudo cat /var/log/ecs-harden-user-data.log").stdout
    assert st.returncode == 0 and "status: done" in st.stdout, st.stdout + log
    assert "ecs-harden: done: compliant, ecs-harden.service active" in log, log
    assert f"ecs-harden: fetching {vm.s3}" in log, log
    assert "FAILED" not in log
    assert vm.ssh("sudo cat /var/lib/cloud/instance/user-data.txt").stdout == vm.user_data
    config = vm.ssh("cat /etc/ecs/ecs.config").stdout.splitlines()
    # the launch template's cluster line before ours, ours once each
    assert config[0] == "ECS_CLUSTER=vmtest", config
    assert config.count("ECS_AWSVPC_BLOCK_IMDS=true") == 1, config
    assert config.count("ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST=false") == 1, config
    assert vm.ssh("/opt/ecs-harden/bin/python -c 'import ecs_harden'").returncode == 0


def test_user_data_again_changes_nothing(vm: VagrantLab) -> None:
    files = "/etc/ecs/ecs.config /etc/iptables/rules.v4 /etc/iptables/rules.v6 /etc/ecs-harden/policy.yaml"
    before = vm.ssh(f"sudo sha256sum {files}; sudo iptables-save | grep -c 'ecs-harden'").stdout
    again = vm.ssh("sudo bash -s", input=ours(*vm.release), check=False, timeout=900)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-2000:]
    assert "ecs-harden: done: compliant" in again.stdout
    after = vm.ssh(f"sudo sha256sum {files}; sudo iptables-save | grep -c 'ecs-harden'").stdout
    assert after == before


SSM_PORT = 5001  # the stand-in SSM endpoint (tests/ssmendpoint.py), on the lab's bridge only


def test_the_ssm_document_upgrades_in_place_and_reports_compliance(vm: VagrantLab) -> None:
    """The SSM Command document's script (deploy/ssm) as aws:runShellScript runs it (root,
    `sh -c` on the script file in a working directory of its own, the parameters as SSM_*
    variables): upgrade to the same release (the tarball from moto's S3: unchanged, the
    host's policy kept), then the items to a stand-in SSM endpoint that judges each request
    by botocore's model: one per check of `check`, and the daemon's, all compliant."""
    record = vm.dir / "ssm-requests.jsonl"
    vm.sandbox.spawn([sys.executable, "-m", "tests.ssmendpoint", "0.0.0.0", str(SSM_PORT), str(record)],
                     vm.dir / "ssm-endpoint.log", env={"PYTHONPATH": str(PROJECT)})
    document = json.loads((PROJECT / "deploy" / "ssm" / "ecs-harden.json").read_text())
    work = "/var/lib/amazon/ssm/i-0123456789abcdef0/document/orchestration/vmtest/awsrunShellScript/ecsHarden"
    vm.ssh(f"sudo mkdir -p {work} && sudo tee {work}/_script.sh >/dev/null && sudo chmod 700 {work}/_script.sh",
           input="\n".join(document["mainSteps"][0]["inputs"]["runCommand"]) + "\n")
    files = "/etc/ecs/ecs.config /etc/iptables/rules.v4 /etc/ecs-harden/policy.yaml"
    before = vm.ssh(f"sudo sha256sum {files}").stdout
    env = (f"SSM_Action=upgrade SSM_ReleaseUri={vm.s3} SSM_ReleaseSha256={vm.release[1]} SSM_Policy= "
           "AWS_SSM_INSTANCE_ID=i-0123456789abcdef0 AWS_SSM_REGION_NAME=us-east-1 AWS_ACCESS_KEY_ID=testing "
           f"AWS_SECRET_ACCESS_KEY=testing AWS_EC2_METADATA_DISABLED=true ECS_HARDEN_S3_ENDPOINT={S3_ENDPOINT} "
           f"ECS_HARDEN_SSM_ENDPOINT=http://{HOST_ADDR}:{SSM_PORT}")
    deadline = time.monotonic() + 30
    while vm.sandbox.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{SSM_PORT}"], check=False).returncode != 0:
        assert time.monotonic() < deadline, "the stand-in SSM endpoint did not start"
        time.sleep(0.5)
    cp = vm.ssh(f"cd {work} && sudo env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin {env} sh -c ./_script.sh",
                check=False, timeout=900)
    assert cp.returncode == 0, cp.stdout[-4000:] + cp.stderr[-2000:]
    assert "ecs-harden: unchanged: ecs-harden" in cp.stdout and cp.stdout.splitlines()[-1] == "ecs-harden: done: upgrade"
    assert vm.ssh(f"sudo sha256sum {files}").stdout == before
    (put,) = [json.loads(line) for line in record.read_text().splitlines()]
    assert put["operation"] == "PutComplianceItems" and put["violations"] == [], put
    items = {it["Id"]: it["Status"] for it in put["body"]["Items"]}
    _, findings = _check(vm)
    assert sorted(items) == sorted([*findings, "daemon"])
    assert set(items.values()) == {"COMPLIANT"}, items


HOST_NET_TASK = "ecs-test-hostnet"
SET_MODE = ("sudo /opt/ecs-harden/bin/python -c 'import sys, yaml; f = \"/etc/ecs-harden/policy.yaml\"; "
            "p = yaml.safe_load(open(f)) or {{}}; p.setdefault(\"imds\", {{}})[\"host_network\"] = \"{mode}\"; "
            "p.setdefault(\"report\", {{}})[\"attempts_window\"] = 5; "
            "yaml.safe_dump(p, open(f, \"w\"))'")
NC_IMDS = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 169.254.169.254 80"


HOST_NET_LABELS = ("--label com.amazonaws.ecs.task-arn=arn:aws:ecs:us-east-1:123456789012:task/lab/1234 "
                   "--label com.amazonaws.ecs.task-definition-family=hostnet-family "
                   "--label com.amazonaws.ecs.task-definition-version=2 --label com.amazonaws.ecs.container-name=prober")


def _journal_event(vm: VagrantLab, event: str, needle: str, timeout: float) -> dict[str, Any]:
    """The daemon's first journal event of this name whose line has `needle`."""
    deadline = time.monotonic() + timeout
    while True:
        out = vm.ssh("sudo journalctl -u ecs-harden -o cat --no-pager", check=False).stdout
        for line in out.splitlines():
            if needle in line and event in line:
                try:
                    found = json.loads(line[line.index("{"):])
                except ValueError:
                    continue
                if isinstance(found, dict) and found.get("event") == event:
                    return found
        assert time.monotonic() < deadline, f"no {event} with {needle} in the journal: {out[-3000:]}"
        time.sleep(2)


def _check(vm: VagrantLab) -> tuple[int, dict[str, dict[str, str]]]:
    cp = vm.ssh("sudo /usr/local/bin/ecs-harden check --format json", check=False)
    return cp.returncode, {f["check"]: f for f in json.loads(cp.stdout)["findings"]}


def test_host_network_tasks_in_the_task_cgroup_are_blocked_the_agents_place_is_not(vm: VagrantLab) -> None:
    """cgroup v2, real systemd and Docker: a --network host container under ecstasks-<id>.slice
    (where the ECS agent puts a task) cannot reach IMDS under imds.host_network: block; one in
    system.slice (the agent's own place) and a host process can; report names the task."""
    vm.ssh("sudo /usr/local/lib/ecs-test/ecs-test-image")  # the box's image (no registry here)
    vm.ssh("sudo cp -p /etc/ecs-harden/policy.yaml /etc/ecs-harden/policy.yaml.ecs-test")
    try:
        vm.ssh(f"sudo docker run -d --name {HOST_NET_TASK} --network host --cgroup-parent ecstasks-1234.slice "
               f"{HOST_NET_LABELS} lab/busybox sleep 900")
        assert vm.ssh("test -d /sys/fs/cgroup/ecstasks.slice/ecstasks-1234.slice").returncode == 0
        # report (the default): drift, naming the container and its task
        code, found = _check(vm)
        assert code == 3 and found["imds.host_network"]["status"] == "drift", found["imds.host_network"]
        assert "prober (" in found["imds.host_network"]["detail"]  # the ECS container-name label
        assert "of task 1234 can reach IMDS" in found["imds.host_network"]["detail"]
        assert "imds-ok" in vm.ssh(f"sudo docker exec {HOST_NET_TASK} sh -c \"{NC_IMDS}\"", check=False).stdout
        # block: the daemon's policy says so, apply inserts the live OUTPUT rule
        vm.ssh(SET_MODE.format(mode="block") + " && sudo systemctl reload ecs-harden")
        cp = vm.ssh("sudo /usr/local/bin/ecs-harden apply", check=False)
        assert cp.returncode == 0, cp.stdout + cp.stderr
        rules = vm.ssh("sudo iptables -S OUTPUT; sudo ip6tables -S OUTPUT").stdout
        assert rules.count("--path \"ecstasks.slice\"") == 2, rules  # iptables quotes the path
        assert "ecstasks" not in vm.ssh("sudo cat /etc/iptables/rules.v4 /etc/iptables/rules.v6").stdout
        assert "imds-ok" not in vm.ssh(f"sudo docker exec {HOST_NET_TASK} sh -c \"{NC_IMDS}\"", check=False).stdout
        # who tried: the journal names the task, on the host path (its socket's cgroup)
        attempt = _journal_event(vm, "imds.attempt", "hostnet-family", timeout=40)
        assert attempt["path"] == "host" and attempt["container"] == "prober", attempt
        assert attempt["task_arn"].endswith("/1234") and attempt["count"] >= 1, attempt
        agent_place = vm.ssh(f"sudo docker run --rm --network host --cgroup-parent system.slice lab/busybox "
                             f"sh -c \"{NC_IMDS}\"", check=False)
        assert "imds-ok" in agent_place.stdout, agent_place.stdout + agent_place.stderr
        host = vm.ssh(f"sh -c \"{NC_IMDS.replace('| nc', '| busybox nc')}\"", check=False)
        assert "imds-ok" in host.stdout, host.stdout + host.stderr  # the host itself
        code, found = _check(vm)
        assert code == 0, found
        assert found["imds.host_network"]["status"] == "ok"
        assert "cannot reach IMDS" in found["imds.host_network"]["detail"]
        assert "the task cgroup: IMDS blocked" in found["imds.probe"]["actual"], found["imds.probe"]
    finally:
        vm.ssh(f"sudo docker rm -f {HOST_NET_TASK}", check=False)
        vm.ssh("sudo mv /etc/ecs-harden/policy.yaml.ecs-test /etc/ecs-harden/policy.yaml && "
               "sudo systemctl reload ecs-harden && sudo /usr/local/bin/ecs-harden apply", check=False)
    assert "ecstasks" not in vm.ssh("sudo iptables -S OUTPUT").stdout


def _recorded(vm: VagrantLab) -> tuple[list[str], list[str]]:
    v4 = vm.ssh("sudo cat /var/log/ecs-test/before-daemon.v4").stdout.splitlines()
    v6 = vm.ssh("sudo cat /var/log/ecs-test/before-daemon.v6").stdout.splitlines()
    return v4, v6


def _loop_unit(name: str, where: str) -> str:
    """TEST FIXTURE: a process that tries IMDS every 0.2 s from boot on, one line a try."""
    return f"""# TEST FIXTURE (tests/vm): tries IMDS in a loop from {where}
[Unit]
After=ecs-harden.service
[Service]
Slice={where}
ExecStart=/bin/sh -c 'mkdir -p /var/log/ecs-test; while :; do \
if printf "GET / HTTP/1.0\\r\\n\\r\\n" | busybox nc -w 1 169.254.169.254 80 2>/dev/null | grep -q imds-ok; \
then echo reached; else echo no; fi >> /var/log/ecs-test/{name}.log; sleep 0.2; done'
[Install]
WantedBy=multi-user.target
"""


def _tries(vm: VagrantLab, name: str) -> list[str]:
    return vm.ssh(f"sudo cat /var/log/ecs-test/{name}.log", check=False).stdout.split()


def test_across_a_reboot_the_restore_comes_first_and_no_task_process_ever_reaches_imds(vm: VagrantLab) -> None:
    """One reboot under imds.host_network: block. What the distribution restores at boot
    holds the block, in every chain and both families, before the daemon starts (recorded
    by a unit ordered between them); the daemon makes ecstasks.slice through systemd and
    binds its rule before it is ready, so a process in a task slice started after it
    (like the ECS agent's tasks) never reaches IMDS, while the same loop in system.slice
    does; the slice stopped (systemd removes its cgroup) is made and bound again within a
    second, and the task started again still never reaches IMDS. (That the unit starts at
    boot, ordered before Docker, is also the booted systemd's test: tests/boot.)"""
    units = {"ecs-test-record.service": RECORD_UNIT,
             "ecs-test-task.service": _loop_unit("task", "ecstasks-1234.slice"),
             "ecs-test-control.service": _loop_unit("control", "system.slice")}
    for unit, text in units.items():
        vm.ssh(f"sudo tee /etc/systemd/system/{unit} >/dev/null", input=text)
    vm.ssh("sudo systemctl daemon-reload && sudo systemctl enable " + " ".join(units))
    vm.ssh(SET_MODE.format(mode="block") + " && sudo systemctl reload ecs-harden")
    try:
        vm.timed("reboot", vm.reboot)
        vm.ssh("sudo systemctl is-system-running --wait >/dev/null", check=False, timeout=600)
        v4, v6 = _recorded(vm)
        assert v4[0] == vm.ssh("cat /proc/sys/kernel/random/boot_id").stdout.strip(), "no record from this boot"
        assert v4[1] != "active", v4[:2]  # recorded before the daemon ran
        for chain in ("DOCKER-USER", "FORWARD"):
            assert v4.count(f"-A {chain} {DROP_V4}") == 1, v4
            assert v6.count(f"-A {chain} {DROP_V6}") == 1, v6
        assert v4.count(f"-A PREROUTING {DROP_V4}") == 1 and v6.count(f"-A PREROUTING {DROP_V6}") == 1
        deadline = time.monotonic() + 120
        while _tries(vm, "control").count("reached") < 20:
            assert time.monotonic() < deadline, (_tries(vm, "control")[-20:], _tries(vm, "task")[-20:])
            time.sleep(2)
        task = _tries(vm, "task")
        assert "reached" not in task and len(task) >= 10, task
        # forced re-creation: the slice stopped (its task with it) is made and bound again by the daemon
        rebound = vm.ssh(
            "sudo sh -c 'systemctl stop ecstasks.slice; t0=$(date +%s%N); n=0; while [ $n -lt 1500 ]; do "
            "i=$(stat -c %i /sys/fs/cgroup/ecstasks.slice 2>/dev/null); "
            "if [ -n \"$i\" ] && grep -Eq \": $i[,}]\" /var/lib/ecs-harden/host-network.json; then "
            "echo $(( ($(date +%s%N) - t0) / 1000000 )); exit 0; fi; n=$((n+1)); sleep 0.02; done; exit 1'",
            check=False)
        assert rebound.returncode == 0, "the rule was not bound to the new slice within 30 s"
        vm.timings["ecstasks.slice stopped: made and bound again after (ms)"] = int(rebound.stdout)
        before = len(_tries(vm, "task"))
        vm.ssh("sudo systemctl start ecs-test-task.service")
        deadline = time.monotonic() + 120
        while len(task := _tries(vm, "task")) < before + 10:  # ten tries of the restarted task
            assert time.monotonic() < deadline, task[before:]
            time.sleep(2)
        assert "reached" not in task, task
        assert _tries(vm, "control")[-5:].count("reached") == 5
    finally:
        vm.ssh("sudo systemctl disable --now " + " ".join(units), check=False)
        vm.ssh(SET_MODE.format(mode="report") + " && sudo systemctl reload ecs-harden && "
               "sudo /usr/local/bin/ecs-harden apply", check=False)


def test_the_testinfra_suite_passes_after_all_of_it(vm: VagrantLab) -> None:
    """The testinfra suite once, on the state everything above left (first boot, user-data
    again, host-network tasks, the reboot): the host's checks, and from the unit's life
    cycle the failed reload at priority err in the journal (`journalctl -p err`). The
    rest of the life cycle (stop, kill -9, the sandbox) is the booted hosts' run of the
    same suite (tests/boot/test_amazon_linux.py), and Debian's unit the booted systemd's
    (tests/boot/test_unit_boot.py): the VM adds nothing to them but minutes."""
    chosen = ["--disruptive", "-k", "not test_unit_lifecycle or an_invalid_policy_on_reload"]
    listed = vm.pytest([*chosen, "--collect-only", "-qq"]).stdout  # one line per file: "path: count"
    assert "tests/infra/test_unit_lifecycle.py: 1\n" in listed and "test_host.py: " in listed, listed[-3000:]
    infra(vm, *chosen)
