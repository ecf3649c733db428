"""The SSM Command document's script (deploy/ssm/ecs-harden.json) on an EMULATED Amazon
Linux 2023 host (tests/boot/amazon.py), run exactly as aws:runShellScript runs it: as
root, from `sh -c` on the script file the agent writes in its own working directory, the
parameters as SSM_* environment variables (interpolationType ENV_VAR), with the host's
real AWS CLI, dnf and rpm. The release comes from moto's S3; the compliance items go to a
stand-in SSM endpoint (tests/ssmendpoint.py: moto does not implement them) that judges
every request the CLI sends by botocore's SSM model and records it. Both servers live in
the host's network namespace only.

In order, on one host: install from the RPM (items = `check`'s, every one compliant, and
the daemon's); a drifted host (daemon stopped, a DROP deleted) reported NON_COMPLIANT by
name; hostile values change nothing; remove (the package gone, the agent not held, no
items left); then a launch: the CloudFormation template's UserData, resolved for a stack,
run by the host's real cloud-init while the association's first run starts beside it."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
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
from tests.boot.nspawn import BootedHost
from tests.fleettemplate import user_data

S3, SSM = "http://127.0.0.1:5000", "http://127.0.0.1:5001"
DOCUMENT = json.loads((image.PROJECT / "deploy" / "ssm" / "ecs-harden.json").read_text())
INSTANCE = "i-0123456789abcdef0"
WORKDIR = f"/var/lib/amazon/ssm/{INSTANCE}/document/orchestration/%s/awsrunShellScript/ecsHarden"


class SsmHost(BootedHost):
    record: Path = Path()
    url: str = ""
    sha256: str = ""
    servers: list[subprocess.Popen[bytes]] = []  # noqa: RUF012 - set per host

    def serve(self, argv: list[str], name: str) -> None:
        log = open(self.dir / f"{name}.log", "wb")  # noqa: SIM115 - the child owns it
        self.servers.append(subprocess.Popen(["nsenter", "-t", str(self.init_pid), "-n", "--", *argv],
                                             stdout=log, stderr=log, cwd=image.PROJECT))
        log.close()

    def document(self, *, unit: str = "", **parameters: str) -> subprocess.CompletedProcess[str]:
        """One run of the document, as the SSM agent runs it (unit: in a service of that
        name, its lines in the journal, as the agent's own service has them)."""
        step = DOCUMENT["mainSteps"][0]
        workdir = WORKDIR % f"{time.time_ns():x}"
        self.run(["mkdir", "-p", workdir])
        self.run(["sh", "-c", f"cat > {workdir}/_script.sh && chmod 700 {workdir}/_script.sh"],
                 input="\n".join(step["inputs"]["runCommand"]) + "\n")
        env = [f"SSM_{k}={v}" for k, v in {**{n: p["default"] for n, p in DOCUMENT["parameters"].items()},
                                           **parameters}.items()]
        env += [f"AWS_SSM_INSTANCE_ID={INSTANCE}", "AWS_SSM_REGION_NAME=us-east-1",
                "AWS_ACCESS_KEY_ID=testing", "AWS_SECRET_ACCESS_KEY=testing", "AWS_EC2_METADATA_DISABLED=true",
                f"ECS_HARDEN_S3_ENDPOINT={S3}", f"ECS_HARDEN_SSM_ENDPOINT={SSM}"]
        argv = ["sh", "-c", f"cd {workdir} && exec env {shlex.join(env)} sh -c ./_script.sh"]
        if unit:
            argv = ["systemd-run", "--quiet", "--wait", "--collect", f"--unit={unit}", *argv]
        return self.run(argv, check=False, timeout=900)

    def puts(self) -> list[dict[str, Any]]:
        text = self.record.read_text() if self.record.exists() else ""
        return [json.loads(line) for line in text.splitlines()]


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SsmHost]:
    require_boot()
    pytest.importorskip("moto")
    dress = tmp_path_factory.mktemp("dress-ssm")
    with SsmHost(image.rootfs()) as h:
        h.servers = []
        h.subtree = Subtree(f"ecs-test-{os.getpid()}-ssm")
        amazon.dressed(h, dress, "amzn2023", docker=True)
        h.boot()
        h.record = h.dir / "ssm-requests.jsonl"
        h.serve(artifacts.moto_argv("127.0.0.1", 5000), "moto")
        h.serve([str(image.PROJECT / ".venv" / "bin" / "python"), "-m", "tests.ssmendpoint", "127.0.0.1", "5001",
                 str(h.record)], "ssm-endpoint")
        try:
            rpm = artifacts.rpm()
            upload, h.url = artifacts.s3_upload(S3, rpm)
            h.sha256 = hashlib.sha256(rpm.read_bytes()).hexdigest()
            deadline = time.monotonic() + 60
            while (cp := subprocess.run(["nsenter", "-t", str(h.init_pid), "-n", "--", *upload],
                                        capture_output=True, text=True, timeout=60)).returncode != 0:
                if time.monotonic() > deadline:
                    raise AssertionError("moto's server did not take the upload: " + cp.stderr[-2000:])
                time.sleep(0.5)
            yield h
        finally:
            for server in h.servers:
                server.kill()
                server.wait(10)


def items(put: dict[str, Any]) -> dict[str, dict[str, Any]]:
    assert put["operation"] == "PutComplianceItems" and put["violations"] == [], put
    body = put["body"]
    assert body["ResourceId"] == INSTANCE and body["ComplianceType"] == "Custom:ecs_harden"
    assert body["ResourceType"] == "ManagedInstance" and body["UploadType"] == "COMPLETE"
    return {it["Id"]: it for it in body["Items"]}


def test_install_from_s3_reports_every_check_compliant(host: SsmHost) -> None:
    cp = host.document(Action="install", ReleaseUri=host.url, ReleaseSha256=host.sha256,
                       Policy="mode: enforce\nreport:\n  status_file: /run/ecs-harden/status.json\n")
    assert cp.returncode == 0, (cp.stdout + cp.stderr)[-4000:]
    assert cp.stdout.splitlines()[-1] == "ecs-harden: done: install", cp.stdout[-2000:]
    assert host.run(["rpm", "-q", "ecs-harden"]).stdout.startswith("ecs-harden-")
    (put,) = host.puts()
    got = items(put)
    check = json.loads(host.run(["ecs-harden", "check", "--format", "json"], check=False).stdout)
    assert sorted(got) == sorted([f["check"] for f in check["findings"]] + ["daemon"])
    assert {i: it["Status"] for i, it in got.items() if it["Status"] != "COMPLIANT"} == {}
    assert got["imds.ipv4.live"]["Severity"] == "CRITICAL"
    assert got["daemon"]["Details"]["flavor"] == "amzn2023"


def test_a_drifted_host_is_reported_non_compliant_naming_the_check(host: SsmHost) -> None:
    host.run(["systemctl", "stop", "ecs-harden.service"])
    rule = host.sh("iptables -S FORWARD | grep -m1 'ecs-harden: block IMDS'").stdout.strip()
    host.sh(f"iptables {rule.replace('-A FORWARD', '-D FORWARD')}")
    cp = host.document(Action="check")
    assert cp.returncode == 3, (cp.stdout + cp.stderr)[-4000:]
    assert "ecs-harden: NOT compliant (ecs-harden check)" in cp.stdout
    got = items(host.puts()[-1])
    assert got["imds.ipv4.live"]["Status"] == "NON_COMPLIANT"
    assert got["imds.ipv4.live"]["Details"]["status"] == "drift"
    assert got["daemon"]["Status"] == "NON_COMPLIANT" and "inactive" in got["daemon"]["Details"]["detail"]
    host.run(["systemctl", "start", "ecs-harden.service"])  # it puts the block back


@pytest.mark.parametrize("parameters", [
    {"Action": "check; touch /tmp/pwned"},
    {"Action": "install", "ReleaseUri": "s3://fleet-artifacts/ecs-harden/x.rpm`touch /tmp/pwned`",
     "ReleaseSha256": "0" * 64},
    {"Action": "upgrade", "ReleaseUri": "http://127.0.0.1:5000/ecs-harden-0.rpm", "ReleaseSha256": "0" * 64},
    {"Action": "upgrade", "ReleaseUri": "s3://fleet-artifacts/ecs-harden/ecs-harden-0.rpm",
     "ReleaseSha256": "$(touch /tmp/pwned)"},
])
def test_hostile_values_change_nothing(host: SsmHost, parameters: dict[str, str]) -> None:
    state = "rpm -qa | sort; iptables-save | grep -c ecs-harden; ls /tmp"
    before, puts = host.sh(state).stdout, len(host.puts())
    cp = host.document(**parameters)
    assert cp.returncode == 1 and "ecs-harden: FAILED: " in cp.stdout, (cp.stdout + cp.stderr)[-2000:]
    assert host.sh(state).stdout == before and len(host.puts()) == puts
    assert host.run(["test", "-e", "/tmp/pwned"], check=False).returncode != 0


def test_remove_takes_the_package_away_the_agent_not_held_and_no_items_left(host: SsmHost) -> None:
    cp = host.document(Action="remove")
    assert cp.returncode == 0, (cp.stdout + cp.stderr)[-4000:]
    assert host.run(["rpm", "-q", "ecs-harden"], check=False).returncode != 0
    assert "ecs-harden" not in host.sh("iptables-save").stdout
    assert "ecs-harden gate" not in host.run(["systemctl", "cat", "ecs.service"]).stdout
    last = host.puts()[-1]
    assert last["violations"] == [] and last["body"]["Items"] == [] and last["body"]["UploadType"] == "COMPLETE"


# TEST FIXTURE: the test box's stand-in for the instance role (credentials, region) and
# the S3 endpoint, for cloud-init's final stage: here moto's S3 in the host's network.
INSTANCE_ROLE = (amazon.BOX_FILES / "ecs-test-instance-role.conf").read_text()
assert INSTANCE_ROLE.count("http://192.168.121.1:5000") == 1
INSTANCE_ROLE = INSTANCE_ROLE.replace("http://192.168.121.1:5000", S3)
STACK_POLICY = "mode: enforce\ninterval: 5\nreport:\n  status_file: /run/ecs-harden/status.json\n"


def journal(host: SsmHost, unit: str) -> list[tuple[int, str]]:
    """(CLOCK_MONOTONIC µs, line) of what unit's processes wrote (not systemd's lines)."""
    out = host.run(["journalctl", "-q", "-o", "json", f"_SYSTEMD_UNIT={unit}.service", "_TRANSPORT=stdout",
                    "--output-fields=MESSAGE"]).stdout
    return [(int(e["__MONOTONIC_TIMESTAMP"]), str(e["MESSAGE"])) for e in map(json.loads, out.splitlines())
            if isinstance(e.get("MESSAGE"), str)]


def test_at_launch_the_association_waits_for_the_templates_user_data(host: SsmHost) -> None:
    """An instance of the fleet stack at launch: cloud-init runs the launch template's
    UserData, byte for byte what CloudFormation makes of the template for the stack's
    values (the RPM from S3, a policy of the stack's), while the association's first run
    (the SSM agent starts beside cloud-init) starts at once: it waits until cloud-init's
    final stage is over, then finds the host installed, changes nothing and reports."""
    bucket, _, key = host.url.removeprefix("s3://").partition("/")
    prefix, _, name = key.rpartition("/")
    text = user_data({"ClusterName": "ssmtest", "ReleaseBucket": bucket, "ReleasePrefix": prefix + "/",
                      "ReleaseFile": name, "ReleaseSha256": host.sha256, "Policy": STACK_POLICY})
    host.run(["mkdir", "-p", "/etc/ecs", "/etc/cloud/cloud.cfg.d", "/var/lib/cloud/seed/nocloud",
              "/etc/systemd/system/cloud-final.service.d"])
    for path, content in {"/etc/cloud/cloud.cfg.d/99-ecs-test-nocloud.cfg": amazon.NOCLOUD.read_text(),
                          "/var/lib/cloud/seed/nocloud/meta-data": f"instance-id: i-launch-{time.time_ns():x}\n",
                          "/var/lib/cloud/seed/nocloud/user-data": text,
                          "/etc/systemd/system/cloud-final.service.d/ecs-test-instance-role.conf": INSTANCE_ROLE,
                          }.items():
        host.run(["sh", "-c", f"cat > {path}"], input=content)
    # a launch: nothing of an earlier boot's cloud-init, /run's status included (a fresh boot's
    # /run is empty; left, `cloud-init status` said the last run was done until the local stage
    # started again, and under load the association read that first)
    host.sh("cloud-init clean --logs; rm -rf /run/cloud-init; rm -f /var/log/ecs-harden-user-data.log; "
            "systemctl daemon-reload")
    assert "not run" in host.run(["cloud-init", "status"], check=False).stdout
    puts = len(host.puts())
    # the launch: cloud-init's four stages in their boot order, and at once the association
    host.run(["systemctl", "restart", "--no-block", "cloud-init-local.service", "cloud-init.service",
              "cloud-config.service", "cloud-final.service"])
    cp = host.document(unit="ecs-test-association", Action="install", ReleaseUri=host.url,
                       ReleaseSha256=host.sha256, Policy=STACK_POLICY)
    lines = journal(host, "ecs-test-association")
    said = "\n".join(line for _, line in lines)
    assert cp.returncode == 0, said[-4000:] + cp.stderr[-2000:]
    final = host.run(["systemctl", "show", "-P", "ExecMainExitTimestampMonotonic", "cloud-final.service"])
    waited = [t for t, line in lines if line.startswith("ecs-harden: waiting for cloud-init")]
    fetched = [t for t, line in lines if line.startswith("ecs-harden: fetching ")]
    assert waited and fetched, said
    assert waited[0] < int(final.stdout) < fetched[0], (waited, final.stdout, fetched)  # serialised
    assert said.splitlines()[-1] == "ecs-harden: done: install", said[-2000:]
    # cloud-init ran exactly the template's text, and it did the install
    assert host.run(["cat", "/var/lib/cloud/instance/user-data.txt"]).stdout == text
    result = json.loads(host.run(["cat", "/var/lib/cloud/data/result.json"]).stdout)["v1"]
    assert result["errors"] == [] and "NoCloud" in result["datasource"], result
    ran = log(host)
    assert f"ecs-harden: fetching {host.url}" in ran and "FAILED" not in ran, ran[-3000:]
    assert host.run(["rpm", "-q", "ecs-harden"]).stdout.startswith("ecs-harden-")
    assert "ECS_CLUSTER=ssmtest" in host.run(["cat", "/etc/ecs/ecs.config"]).stdout
    assert host.run(["ecs-harden", "check"], check=False).returncode == 0
    assert "interval: 5" in host.run(["cat", "/etc/ecs-harden/policy.yaml"]).stdout  # the stack's
    (put,) = host.puts()[puts:]
    assert {i: it["Status"] for i, it in items(put).items() if it["Status"] != "COMPLIANT"} == {}


def log(host: SsmHost) -> str:
    return host.run(["cat", "/var/log/ecs-harden-user-data.log"], check=False).stdout
