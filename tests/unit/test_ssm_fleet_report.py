"""deploy/ssm/compliance_report.py: what hosts put into SSM Compliance (ecs-harden's own items),
read back as SSM returns them, into the Ansible fleet report's JSON and table. The AWS
CLI is a stand-in here that answers as SSM does and records its arguments."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from ecs_harden import ssmcompliance
from ecs_harden.report import Finding, Report
from tests.boot.image import PROJECT

SCRIPT = PROJECT / "deploy" / "ssm" / "compliance_report.py"
NOW = datetime.datetime.now(datetime.timezone.utc)

FAKE_AWS = """#!/usr/bin/env python3
# TEST FIXTURE: answers list-resource-compliance-summaries and list-compliance-items
import json, os, sys
args = sys.argv[1:]
with open(os.environ["CALLS"], "a") as f:
    f.write(json.dumps(args) + "\\n")
data = json.load(open(os.environ["SSM_DATA"]))
if args[:2] == ["ssm", "list-resource-compliance-summaries"]:
    print(json.dumps({"ResourceComplianceSummaryItems": [
        {"ResourceId": i, "ResourceType": "ManagedInstance"} for i in data]}))
elif args[:2] == ["ssm", "list-compliance-items"]:
    print(json.dumps({"ComplianceItems": data[args[args.index("--resource-ids") + 1]]}))
else:
    sys.exit("unexpected " + " ".join(args))
"""


def stored(instance: str, findings: tuple[Finding, ...], active: str, minutes_ago: float,
           attempts: int | None = None) -> list[dict[str, Any]]:
    """The items a host's `check --format ssm-compliance` put, as list-compliance-items
    returns them (each with the resource, the type and the execution summary)."""
    then = (NOW - datetime.timedelta(minutes=minutes_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    report = Report(mode="enforce", platform={"flavor": "amzn2023", "iptables": "nf_tables"},
                    findings=findings, time=then, host=instance)
    doc = ssmcompliance.document(report, ssmcompliance.daemon_item(active, 3.0, 15.0, attempts))
    return [{**it, "ResourceId": instance, "ResourceType": "ManagedInstance", "ComplianceType": doc["ComplianceType"],
             "ExecutionSummary": doc["ExecutionSummary"]} for it in doc["Items"]]


def test_the_fleet_table_from_ssm_compliance(tmp_path: Path) -> None:
    ok = (Finding("imds.ipv4.live", "ok", detail="dropped"), Finding("ecs_config.ECS_AWSVPC_BLOCK_IMDS", "ok"))
    drifting = (Finding("imds.ipv4.live", "drift", "DROP once", "absent", "the block is missing"),
                Finding("ecs_config.ECS_AWSVPC_BLOCK_IMDS", "ok"))
    data = {"i-0aaaaaaaaaaaaaaa1": stored("i-0aaaaaaaaaaaaaaa1", ok, "active", 5, attempts=7),
            "i-0bbbbbbbbbbbbbbb2": stored("i-0bbbbbbbbbbbbbbb2", drifting, "active", 5),
            "i-0ccccccccccccccc3": stored("i-0ccccccccccccccc3", ok, "inactive", 5),
            "i-0ddddddddddddddd4": stored("i-0ddddddddddddddd4", ok, "active", 600)}
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "aws").write_text(FAKE_AWS)
    (tmp_path / "bin" / "aws").chmod(0o755)
    (tmp_path / "data.json").write_text(json.dumps(data))
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "SSM_DATA": str(tmp_path / "data.json"),
           "CALLS": str(tmp_path / "calls")}
    cp = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out"), "--region", "eu-west-1"],
                        capture_output=True, text=True, env=env, timeout=60)
    assert cp.returncode == 3, cp.stdout + cp.stderr
    assert cp.stdout.strip() == ("4 hosts, 1 compliant, 0 not yet effective (the ECS agent runs the old flags), "
                                 "2 drifting, 1 unreachable; 1 with blocked IMDS attempts in the last hour")
    calls = [json.loads(line) for line in (tmp_path / "calls").read_text().splitlines()]
    assert calls[0][:2] == ["ssm", "list-resource-compliance-summaries"]
    assert all("--region" in c and "Key=ComplianceType,Values=Custom:ecs_harden,Type=EQUAL" in c for c in calls)
    report = json.loads((tmp_path / "out" / "fleet-report.json").read_text())
    rows = {r["host"]: r for r in report["hosts"]}
    assert rows["i-0aaaaaaaaaaaaaaa1"]["compliant"] is True and rows["i-0aaaaaaaaaaaaaaa1"]["flavor"] == "amzn2023"
    assert rows["i-0aaaaaaaaaaaaaaa1"]["attempts_last_hour"] == 7  # the daemon item's Details
    assert rows["i-0bbbbbbbbbbbbbbb2"]["attempts_last_hour"] is None
    assert [f["check"] for f in rows["i-0bbbbbbbbbbbbbbb2"]["drift"]] == ["imds.ipv4.live"]
    assert rows["i-0bbbbbbbbbbbbbbb2"]["drift"][0]["detail"] == "the block is missing"
    assert rows["i-0ccccccccccccccc3"]["compliant"] is False
    assert [f["check"] for f in rows["i-0ccccccccccccccc3"]["drift"]] == ["daemon"]
    assert rows["i-0ddddddddddddddd4"]["reachable"] is False
    table = (tmp_path / "out" / "fleet-report.md").read_text()
    assert "| i-0bbbbbbbbbbbbbbb2 | amzn2023 | nf_tables | **NO** | `imds.ipv4.live`: the block is missing |" in table
    assert "**ecs-harden.service is inactive: nothing repairs drift**" in table
    assert "not reporting to SSM Compliance (last report" in table


def test_a_failing_aws_cli_is_exit_1_naming_it(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "aws").write_text("#!/bin/sh\necho 'Unable to locate credentials' >&2\nexit 255\n")
    (tmp_path / "bin" / "aws").chmod(0o755)
    cp = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")], capture_output=True,
                        text=True, env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}, timeout=60)
    assert cp.returncode == 1
    assert "aws ssm list-resource-compliance-summaries exited 255: Unable to locate credentials" in cp.stderr
    assert not (tmp_path / "out").exists()
