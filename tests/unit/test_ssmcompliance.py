"""A report as SSM Compliance items: what botocore's SSM model accepts, the status and
severity mapping, the daemon's item, the limits."""

from __future__ import annotations

from ecs_harden import ssmcompliance
from ecs_harden.report import Finding, Report
from tests.ssmmodel import operation_input, violations

PUT = operation_input("PutComplianceItems")


def report(*findings: Finding) -> Report:
    return Report(mode="enforce", platform={"flavor": "amzn2023"}, findings=findings,
                  time="2026-12-07T04:00:00.000000Z", host="ip-10-0-0-1")


FINDINGS = (
    Finding("imds.ipv4.live", "ok", "DROP ...", "DROP ...", "every new connection is dropped"),
    Finding("imds.ipv6.live", "drift", "DROP ...", "absent", "the block is missing"),
    Finding("imds.paths", "warn", detail="macvlan child mv0 of eth0: no rule can close it"),
    Finding("imds.persistence.service", "error", detail="cannot tell"),
    Finding("ecs_config.ECS_AWSVPC_BLOCK_IMDS", "stale", detail="not looked at since ..."),
    Finding("ecs_config.ECS_CLUSTER", "ok", "ECS_CLUSTER=prod", "ECS_CLUSTER=prod"),
    Finding("ecs_agent.restart", "ok"),
)


def put(doc: dict[str, object]) -> dict[str, object]:
    return {**doc, "ResourceId": "i-0123456789abcdef0"}


def test_every_item_is_what_ssm_accepts_one_per_check_and_the_daemon() -> None:
    daemon = ssmcompliance.daemon_item("active", 2.0, 15.0)
    doc = ssmcompliance.document(report(*FINDINGS), daemon)
    assert violations(PUT, put(doc)) == []
    assert doc["ComplianceType"] == "Custom:ecs_harden" and doc["UploadType"] == "COMPLETE"
    items = {it["Id"]: it for it in doc["Items"]}
    assert list(items) == [f.check for f in FINDINGS] + ["daemon"]
    status = {k: v["Status"] for k, v in items.items()}
    assert status == {"imds.ipv4.live": "COMPLIANT", "imds.ipv6.live": "NON_COMPLIANT",
                      "imds.paths": "COMPLIANT", "imds.persistence.service": "NON_COMPLIANT",
                      "ecs_config.ECS_AWSVPC_BLOCK_IMDS": "NON_COMPLIANT", "ecs_config.ECS_CLUSTER": "COMPLIANT",
                      "ecs_agent.restart": "COMPLIANT", "daemon": "COMPLIANT"}
    severity = {k: v["Severity"] for k, v in items.items()}
    assert severity["imds.ipv4.live"] == severity["ecs_config.ECS_AWSVPC_BLOCK_IMDS"] == "CRITICAL"
    assert severity["imds.paths"] == "HIGH" and severity["ecs_config.ECS_CLUSTER"] == "MEDIUM"
    assert severity["ecs_agent.restart"] == "INFORMATIONAL"
    drift = items["imds.ipv6.live"]
    assert drift["Details"] == {"status": "drift", "detail": "the block is missing", "expected": "DROP ...",
                                "actual": "absent"}
    assert drift["Title"] == "imds.ipv6.live: drift"


def test_the_model_check_itself_catches_what_ssm_refuses() -> None:
    """The judge can fail: a wrong severity, a type SSM's pattern refuses, a missing time."""
    doc = put(ssmcompliance.document(report(*FINDINGS), ssmcompliance.daemon_item("active", 1.0, 15.0)))
    doc["ComplianceType"] = "Custom:ecs.harden"  # a dot: not \w
    doc["ExecutionSummary"] = {}
    doc["Items"][0]["Severity"] = "SEVERE"  # type: ignore[index]
    found = violations(PUT, doc)
    # botocore 1.37 (the last for 3.8) has the pattern unanchored: a prefix matches it
    if PUT.members["ComplianceType"].metadata.get("pattern", "").startswith("^"):
        assert any(v.startswith("ComplianceType: 'Custom:ecs.harden' does not match") for v in found), found
    assert "ExecutionSummary.ExecutionTime: required, missing" in found
    assert any(v.startswith("Items[0].Severity: 'SEVERE' is not one of") for v in found), found


def test_long_and_odd_text_is_cut_to_ssms_limits() -> None:
    long = "é\u2028\0" * 5000 + "x"
    doc = ssmcompliance.document(report(Finding("imds.paths." + "n" * 200, "drift", detail=long)),
                                 ssmcompliance.daemon_item("active", 1.0, 15.0))
    assert violations(PUT, put(doc)) == []
    (it, _) = doc["Items"]
    assert len(it["Id"]) == 100 and len(it["Details"]["detail"]) == 4096
    assert it["Details"]["detail"].endswith("…")


def test_the_daemon_item_is_non_compliant_when_the_unit_is_down_or_its_status_stale() -> None:
    down = ssmcompliance.daemon_item("inactive", 2.0, 15.0)
    assert down["Status"] == "NON_COMPLIANT" and "ecs-harden.service is inactive" in down["Details"]["detail"]
    stale = ssmcompliance.daemon_item("active", 40.0, 15.0)
    assert stale["Status"] == "NON_COMPLIANT" and "40s old" in stale["Details"]["detail"]
    unread = ssmcompliance.daemon_item("active", None, 15.0)
    assert unread["Status"] == "NON_COMPLIANT" and "no readable status" in unread["Details"]["detail"]
    fine = ssmcompliance.daemon_item("active", 3.0, 15.0)
    assert fine["Status"] == "COMPLIANT" and fine["Severity"] == "HIGH"
