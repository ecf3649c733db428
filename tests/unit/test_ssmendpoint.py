"""The stand-in SSM endpoint (tests/ssmendpoint.py), spoken to by botocore's own client on
loopback: a good put-compliance-items is taken and recorded as sent; one SSM would refuse
is answered 400 naming what is wrong (the client raises), and recorded so."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ecs_harden import ssmcompliance
from ecs_harden.report import Finding, Report
from tests.boot.image import PROJECT

boto3 = pytest.importorskip("boto3")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_endpoint_takes_what_ssm_takes_and_refuses_what_it_refuses(tmp_path: Path) -> None:
    port, record = free_port(), tmp_path / "record.jsonl"
    server = subprocess.Popen([sys.executable, "-m", "tests.ssmendpoint", "127.0.0.1", str(port), str(record)],
                              cwd=PROJECT)
    try:
        client = boto3.client("ssm", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        report = Report(mode="enforce", platform={}, findings=(Finding("imds.ipv4.live", "ok"),),
                        time="2026-12-07T04:00:00Z", host="h")
        doc = ssmcompliance.document(report, ssmcompliance.daemon_item("active", 1.0, 15.0))
        deadline = time.monotonic() + 30
        while True:
            try:
                client.put_compliance_items(ResourceId="i-0123456789abcdef0", **doc)
                break
            except Exception as exc:  # the server still starting: connection refused
                if "Could not connect" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        bad = {**doc, "ComplianceType": "Custom:ecs.harden",
               "Items": [{**doc["Items"][0], "Severity": "SEVERE"}]}
        with pytest.raises(Exception, match="Severity: 'SEVERE' is not one of"):
            client.put_compliance_items(ResourceId="i-0123456789abcdef0", **bad)
    finally:
        server.kill()
        server.wait(10)
    good, refused = [json.loads(line) for line in record.read_text().splitlines()]
    assert good["operation"] == "PutComplianceItems" and good["violations"] == []
    assert good["body"]["Items"][0]["Id"] == "imds.ipv4.live" and good["body"]["ResourceId"] == "i-0123456789abcdef0"
    assert isinstance(good["body"]["ExecutionSummary"]["ExecutionTime"], (int, float))  # as the wire has it
    assert any("Severity" in v for v in refused["violations"]), refused
