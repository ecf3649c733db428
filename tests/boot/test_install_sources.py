"""Where the user-data gets ecs-harden from, on an EMULATED Amazon Linux 2023 host
(tests/boot/amazon.py): a release tarball from S3 (a local S3-compatible server, moto's,
reachable from the host's network namespace only, fetched with the host's AWS CLI as an
ECS AMI's instance role would), pinned by its sha256; and what happens when it cannot
be had: no source, a wrong checksum, an unreachable URL. Each failure installs nothing,
lets the rest of the user-data run (the operator's ECS lines after ours), ends the
user-data with exit 1, and keeps the ECS agent (a stand-in ecs.service with the AMI's
ordering and restart) from starting until the host is hardened.

The tests run in order on one host, which has no user-data of its own: the script is
run by hand as cloud-init runs it (bash, as root); the move to the RPM goes through real
cloud-init (a NoCloud seed, its four stages)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import artifacts
from tests.boot import amazon, image
from tests.boot.cgroups import Subtree
from tests.boot.conftest import require_boot
from tests.boot.nspawn import BootedHost
from tests.boot.userdata import launch_template

S3 = "http://127.0.0.1:5000"  # moto's server, in the host's network namespace
GATE = "/etc/systemd/system/ecs.service.d/ecs-harden-gate.conf"


class SourcesHost(BootedHost):
    tarball: Path = Path()
    sha256: str = ""
    s3_url: str = ""
    moto: subprocess.Popen[bytes] | None = None

    def in_netns(self, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """argv on this machine, in the host's network namespace only."""
        return subprocess.run(["nsenter", "-t", str(self.init_pid), "-n", "--", *argv],
                              capture_output=True, text=True, timeout=timeout, check=False)

    def user_data(self, source: str, sha256: str, *, policy: tuple[str, str] = ("", ""),
                  **more: str) -> subprocess.CompletedProcess[str]:
        """policy: a line of the embedded policy, and what it becomes."""
        script = launch_template(source, sha256, before=artifacts.S3_CREDENTIALS, ECS_HARDEN_S3_ENDPOINT=S3, **more)
        if policy[0]:
            assert script.count(policy[0]) == 1, policy
            script = script.replace(*policy)
        return self.run(["bash", "-s"], input=script, check=False, timeout=900)

    def through_cloud_init(self, source: str, sha256: str) -> subprocess.CompletedProcess[str]:
        """The same user-data as EC2 hands it over: a NoCloud seed with a new instance-id,
        then real cloud-init's four stages in a boot's order (its scripts-user runs once per
        instance). Their output, then the user-data's own log."""
        script = launch_template(source, sha256, before=artifacts.S3_CREDENTIALS, ECS_HARDEN_S3_ENDPOINT=S3)
        seed = "/var/lib/cloud/seed/nocloud"
        self.sh(f"mkdir -p {seed} /etc/cloud/cloud.cfg.d")
        self.run(["cp", "/dev/stdin", "/etc/cloud/cloud.cfg.d/99-ecs-test-nocloud.cfg"],
                 input=amazon.NOCLOUD.read_text())
        self.run(["cp", "/dev/stdin", f"{seed}/meta-data"],
                 input=f"instance-id: i-ecs-test-rpm-{time.time_ns()}\nlocal-hostname: ecs-test-sources\n")
        self.run(["cp", "/dev/stdin", f"{seed}/user-data"], input=script)
        stages = self.sh("cloud-init init --local && cloud-init init && cloud-init modules --mode config "
                         "&& cloud-init modules --mode final", check=False, timeout=900)
        log = self.run(["cat", "/var/log/ecs-harden-user-data.log"], check=False).stdout
        return subprocess.CompletedProcess(stages.args, stages.returncode, stages.stdout + log, stages.stderr)

    def untouched(self) -> str:
        """What a failed run must leave as it was."""
        return self.sh("ls -d /opt/ecs-harden /etc/ecs-harden /usr/local/bin/ecs-harden 2>&1 || true; "
                       "iptables-save | sed '/^#/d'; ip6tables-save | sed '/^#/d'; "
                       "cat /etc/sysconfig/iptables 2>&1 || true").stdout

    def agent(self) -> str:
        return self.run(["systemctl", "is-active", "ecs.service"], check=False).stdout.strip()


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SourcesHost]:
    require_boot()
    pytest.importorskip("moto")
    dress = tmp_path_factory.mktemp("dress-sources")
    with SourcesHost(image.rootfs()) as h:
        h.subtree = Subtree(f"ecs-test-{os.getpid()}-sources")
        h.tarball, h.sha256 = artifacts.artifact(amazon.PYTHONS["amzn2023"][2])
        amazon.dressed(h, dress, "amzn2023", docker=True)
        h.boot()
        log = open(h.dir / "moto.log", "wb")  # noqa: SIM115 - the child owns it
        h.moto = subprocess.Popen(["nsenter", "-t", str(h.init_pid), "-n", "--", *artifacts.moto_argv("127.0.0.1", 5000)],
                                  stdout=log, stderr=log)
        log.close()
        try:
            deadline = time.monotonic() + 60
            upload, h.s3_url = artifacts.s3_upload(S3, h.tarball)
            while (cp := h.in_netns(upload, timeout=60)).returncode != 0:
                if time.monotonic() > deadline:
                    raise AssertionError("moto's server did not take the upload: " + cp.stderr[-2000:])
                time.sleep(0.5)
            yield h
        finally:
            h.moto.kill()
            h.moto.wait(10)


def failed_cleanly(host: SourcesHost, cp: subprocess.CompletedProcess[str], before: str, why: str) -> None:
    out = cp.stdout + cp.stderr
    assert cp.returncode == 1, out[-3000:]
    assert f"ecs-harden: FAILED: {why}" in out, out[-3000:]
    assert host.untouched() == before, "a failed install changed the host"
    # the rest of the user-data ran (the operator's line after ours) ...
    config = host.run(["cat", "/etc/ecs/ecs.config"]).stdout.splitlines()
    assert config[-1] == "ECS_ENABLE_CONTAINER_METADATA=true", config
    assert "ECS_AWSVPC_BLOCK_IMDS=true" not in config
    # ... and the agent does not start on the unhardened host
    assert host.run(["test", "-f", GATE], check=False).returncode == 0
    host.run(["systemctl", "restart", "ecs.service"], check=False)
    time.sleep(1)
    assert host.agent() != "active"
    # the gate's line reaches the journal a moment after the unit failed: wait for it
    deadline = time.monotonic() + 15
    while "ecs-harden" not in (journal := host.run(["journalctl", "-u", "ecs.service", "--no-pager", "-o", "cat"],
                                                   check=False).stdout) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "ecs-harden" in journal, journal[-2000:]


def test_no_source_is_a_clear_error_and_changes_nothing(host: SourcesHost) -> None:
    before = host.untouched()
    cp = host.user_data("", "")
    failed_cleanly(host, cp, before, "ECS_HARDEN_FROM: not a release: ''")
    assert "pip" not in cp.stdout.lower()  # never the public package index


def test_a_wrong_checksum_refuses_the_tarball_and_changes_nothing(host: SourcesHost) -> None:
    before = host.untouched()
    wrong = "0" * 64
    cp = host.user_data(host.s3_url, wrong)
    failed_cleanly(host, cp, before, f"sha256 is {host.sha256}, not the pinned {wrong}")


def test_an_unreachable_url_changes_nothing(host: SourcesHost) -> None:
    before = host.untouched()
    url = f"https://127.0.0.1:9/releases/{host.tarball.name}"
    cp = host.user_data(url, host.sha256)
    failed_cleanly(host, cp, before, f"cannot fetch {url}")


def test_from_s3_with_its_checksum_it_hardens_and_the_agent_starts(host: SourcesHost) -> None:
    cp = host.user_data(host.s3_url, host.sha256)
    assert cp.returncode == 0, (cp.stdout + cp.stderr)[-4000:]
    assert f"ecs-harden: fetching {host.s3_url}" in cp.stdout
    assert "ecs-harden: done: compliant, ecs-harden.service active" in cp.stdout
    deadline = time.monotonic() + 60  # the stand-in agent retries every 2 s
    while host.agent() != "active":
        assert time.monotonic() < deadline, host.run(["journalctl", "-u", "ecs.service", "--no-pager"]).stdout
        time.sleep(1)
    # again: nothing to install, the same version
    again = host.user_data(host.s3_url, host.sha256)
    assert again.returncode == 0 and "unchanged: ecs-harden" in again.stdout, again.stdout[-3000:]


def test_on_a_hardened_host_a_wrong_checksum_or_a_missing_url_changes_nothing(host: SourcesHost) -> None:
    """An upgrade that cannot be had leaves the installed release, its files and its
    running daemon as they were."""
    # ecs.config without the launch template's own lines, which every run appends
    state = ("grep -vxF -e ECS_CLUSTER=vmtest -e ECS_ENABLE_CONTAINER_METADATA=true /etc/ecs/ecs.config; "
             "sha256sum /etc/sysconfig/iptables /etc/sysconfig/ip6tables /etc/ecs-harden/policy.yaml "
             "/usr/local/bin/ecs-harden; /usr/local/bin/ecs-harden --version; "
             "systemctl show -p MainPID -p ActiveState ecs-harden.service; iptables-save | grep -c ecs-harden")
    before = host.sh(state).stdout
    assert "ActiveState=active" in before, before
    wrong = "0" * 64
    # a URL that answers 404 (fails at once; the refused one above takes curl's retries)
    url = f"{S3}/no-such-bucket/{host.tarball.name}"
    for source, sha256, why in ((host.s3_url, wrong, f"sha256 is {host.sha256}, not the pinned {wrong}"),
                                (url, host.sha256, f"cannot fetch {url}")):
        cp = host.user_data(source, sha256)
        assert cp.returncode == 1 and "ecs-harden: FAILED: " in cp.stdout and why in cp.stdout, cp.stdout[-3000:]
        assert host.sh(state).stdout == before
    # a policy in the user-data that is not valid: setup's one FAILED line, nothing replaced
    cp = host.user_data(host.s3_url, host.sha256, policy=("\nmode: enforce\n", "\nmode: sideways\n"))
    out = cp.stdout + cp.stderr
    assert cp.returncode == 1 and out.count("ecs-harden: FAILED: ") == 1, out[-3000:]
    assert "ecs-harden: FAILED: the policy given is invalid: <stdin>" in cp.stdout and "sideways" in cp.stdout, out[-3000:]
    assert host.sh(state).stdout == before


OLD_GATE = ("# Written by ecs-harden's user-data: the ECS agent starts only once this host\n"
            "# is hardened (ECS_HARDEN_GATE_AGENT=false in the user-data: not).\n"
            "[Unit]\nAfter=ecs-harden.service\n[Service]\n"
            "ExecStartPre=/usr/local/bin/ecs-harden --log-level error check --format text\n")
CID = "ab" * 32
# A task's cgroup where the agent makes it: ecstasks.slice on cgroup v2 (AL2023), /ecs/<task>
# in a v1 hierarchy (what this machine's booted hosts have); its path written to /run.
MAKE_TASK = f"""
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  d=/sys/fs/cgroup/ecstasks.slice/ecstasks-1234.slice/docker-{CID}.scope
else
  for h in pids memory systemd; do [ -d /sys/fs/cgroup/$h ] && {{ d=/sys/fs/cgroup/$h/ecs/1234/{CID}; break; }}; done
fi
mkdir -p "$d"; echo "$d" > /run/ecs-test-task
nohup sh -c "echo \\$\\$ > $d/cgroup.procs; exec sleep 300" >/dev/null 2>&1 &
"""
DROP_TASK = """
d=$(cat /run/ecs-test-task); kill $(cat "$d/cgroup.procs") 2>/dev/null; sleep 0.5
while [ "$d" != /sys/fs/cgroup ] && rmdir "$d" 2>/dev/null; do d=${d%/*}; done
"""


def agent_becomes(host: SourcesHost, want: str, within: float) -> None:
    deadline = time.monotonic() + within
    while host.agent() != want:
        assert time.monotonic() < deadline, host.run(["journalctl", "-u", "ecs.service", "--no-pager",
                                                      "-n", "30"], check=False).stdout
        time.sleep(0.5)


def test_the_gate_holds_the_agent_for_the_block_never_for_what_the_policy_reports(host: SourcesHost) -> None:
    """A host-network task under imds.host_network: report (the default) makes `check` exit 3:
    the old gate (a full check) kept a restarted agent down for good. `ecs-harden gate` lets
    it start; it holds the agent only while the block is not in force, and the agent comes
    up by itself (Restart=on-failure) once the block is back. `install` migrates an old
    gate drop-in."""
    assert "ExecStartPre=/usr/bin/ecs-harden gate\n" in host.run(["cat", GATE]).stdout
    host.run(["sh", "-c", f"cat > {GATE}"], input=OLD_GATE)
    cp = host.run(["/usr/local/bin/ecs-harden", "install", "--format", "json"])
    assert f"{GATE}: the ECS agent's gate is now `ecs-harden gate` (was a full check)" in cp.stdout, cp.stdout
    assert host.run(["cat", GATE]).stdout == OLD_GATE.replace(
        "--log-level error check --format text", "gate")
    # a host-network task: a process of the host's network namespace in a task's cgroup
    host.sh(MAKE_TASK)
    try:
        deadline = time.monotonic() + 10
        while (check := host.run(["/usr/local/bin/ecs-harden", "check"], check=False)).returncode != 3:
            where = host.sh('d=$(cat /run/ecs-test-task); echo $d; cat $d/cgroup.procs; '
                            'cat /proc/$(head -1 $d/cgroup.procs)/cgroup; ls -la /proc/$(head -1 $d/cgroup.procs)/ns/net '
                            '/proc/self/ns/net', check=False)
            assert time.monotonic() < deadline, where.stdout + where.stderr + check.stdout
            time.sleep(0.5)
        assert "imds.host_network" in check.stdout and "task 1234" in check.stdout, check.stdout
        host.run(["systemctl", "restart", "ecs.service"], check=False)
        agent_becomes(host, "active", 30)
        # the block gone while nothing keeps it: held, and named in the agent's journal
        host.run(["systemctl", "stop", "ecs-harden.service"])
        host.sh("for t in filter raw; do iptables-save -t $t | grep -- '^-A .*169.254.169.254.*ecs-harden' "
                "| sed 's/^-A/-D/' | while read -r l; do eval iptables -w -t $t $l; done; done")
        host.run(["systemctl", "restart", "ecs.service"], check=False)
        time.sleep(3)
        assert host.agent() != "active"
        journal = host.run(["journalctl", "-u", "ecs.service", "--no-pager", "-o", "cat", "-n", "20"]).stdout
        assert "ecs-harden gate: holding the ECS agent: imds.ipv4.live: traffic from docker+" in journal, journal
        host.run(["/usr/local/bin/ecs-harden", "apply"], check=False)
        agent_becomes(host, "active", 30)  # by itself: the agent's own restart passes the gate now
    finally:
        host.sh(DROP_TASK, check=False)
        host.run(["systemctl", "start", "ecs-harden.service"], check=False)


def test_with_the_gate_off_the_agent_is_not_held(host: SourcesHost) -> None:
    cp = host.user_data(host.s3_url, host.sha256, ECS_HARDEN_GATE_AGENT="false")
    assert cp.returncode == 0, cp.stdout[-3000:]
    assert host.run(["test", "-f", GATE], check=False).returncode == 1


def test_the_rpm_through_the_user_data_moves_the_host_to_the_package_and_again_changes_nothing(
        host: SourcesHost) -> None:
    """The same user-data pinned to the AL2023 RPM (s3://), through real cloud-init, on the
    host the tarball hardened: dnf installs it (the move to the package), setup ends
    compliant, cloud-init's status is done without errors, the agent's
    gate is the package's; run again, nothing changes (files, the daemon's process); the
    gate off masks the package's gate, on again unmasks it."""
    rpm = artifacts.rpm()
    upload, url = artifacts.s3_upload(S3, rpm)
    assert (cp := host.in_netns(upload, timeout=60)).returncode == 0, cp.stderr[-2000:]
    sha256 = hashlib.sha256(rpm.read_bytes()).hexdigest()
    cp = host.through_cloud_init(url, sha256)
    assert cp.returncode == 0, (cp.stdout + cp.stderr)[-4000:]
    assert "ecs-harden: done: compliant, ecs-harden.service active" in cp.stdout, cp.stdout[-3000:]
    # cloud-init's own verdict on this run (its status says "disabled" here: at this
    # host's boot its generator found no seed and disabled it, which an EC2 boot never does)
    result = json.loads(host.run(["cat", "/run/cloud-init/result.json"]).stdout)["v1"]
    assert result["errors"] == [] and "NoCloud" in result["datasource"], result
    assert host.run(["rpm", "-q", "ecs-harden"]).stdout.startswith("ecs-harden-")
    assert host.run(["test", "-e", GATE], check=False).returncode != 0  # the package's holds
    agent = host.run(["systemctl", "cat", "ecs.service"]).stdout
    assert "ExecStartPre=/usr/bin/ecs-harden gate" in agent and "/usr/local/bin" not in agent, agent
    state = ("grep -vxF -e ECS_CLUSTER=vmtest -e ECS_ENABLE_CONTAINER_METADATA=true /etc/ecs/ecs.config; "
             "sha256sum /etc/sysconfig/iptables /etc/ecs-harden/policy.yaml "
             "/etc/systemd/system/ecs-harden.service.d/*; ls /etc/systemd/system/ecs.service.d; "
             "systemctl show -p MainPID -p ActiveState ecs-harden.service; rpm -qa | sort")
    before = host.sh(state).stdout
    again = host.user_data(url, sha256)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert "unchanged: ecs-harden.service running" in again.stdout, again.stdout[-3000:]
    assert host.sh(state).stdout == before
    agent_becomes(host, "active", 30)
    off = host.user_data(url, sha256, ECS_HARDEN_GATE_AGENT="false")
    assert off.returncode == 0, off.stdout[-3000:]
    assert host.run(["readlink", GATE]).stdout.strip() == "/dev/null"
    assert "ecs-harden gate" not in host.run(["systemctl", "cat", "ecs.service"]).stdout
    on = host.user_data(url, sha256)
    assert on.returncode == 0 and host.run(["test", "-e", GATE], check=False).returncode != 0, on.stdout[-3000:]
    assert "ExecStartPre=/usr/bin/ecs-harden gate" in host.run(["systemctl", "cat", "ecs.service"]).stdout
