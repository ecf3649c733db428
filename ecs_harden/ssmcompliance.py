"""A report as AWS Systems Manager Compliance items: `ecs-harden check --format
ssm-compliance` prints the input of `aws ssm put-compliance-items` (everything but the
instance's id, which the SSM document adds) for the custom type Custom:ecs_harden.

One item per check, plus `daemon` (is ecs-harden.service active, and is its status
fresh). COMPLIANT for ok and warn, NON_COMPLIANT for drift, error and stale; the
severity is the check's (the block and the two IMDS flags CRITICAL, the paths HIGH);
the finding's words go into the item's Details, each value cut to the 4,096 characters
SSM takes. UploadType COMPLETE: a check that is gone from the report is gone from SSM."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ecs_harden.report import DRIFT, ERROR, STALE, Report

COMPLIANCE_TYPE = "Custom:ecs_harden"  # botocore's pattern: Custom:[a-zA-Z0-9_-]\w+
RESOURCE_TYPE = "ManagedInstance"
DAEMON = "daemon"
# the limits of botocore's SSM model (ComplianceItemEntry)
MAX_ID, MAX_TITLE, MAX_KEY, MAX_VALUE = 100, 500, 64, 4096
IMDS_FLAGS = ("ECS_AWSVPC_BLOCK_IMDS", "ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST")
SEVERITY = {
    "imds.ipv4.live": "CRITICAL",
    "imds.ipv6.live": "CRITICAL",
    **{f"ecs_config.{flag}": "CRITICAL" for flag in IMDS_FLAGS},
    "imds.paths": "HIGH",
    "imds.host_network": "HIGH",
    "imds.probe": "HIGH",
    "imds.ipv4.persisted": "HIGH",
    "imds.ipv6.persisted": "HIGH",
    "imds.persistence.service": "HIGH",
    DAEMON: "HIGH",
    "ecs_agent.restart": "INFORMATIONAL",
}
NOT_COMPLIANT = (DRIFT, ERROR, STALE)


def severity(check: str) -> str:
    """The check's severity: as listed, else MEDIUM (another ecs.config key the policy
    manages, the IMDSv1 look, what later versions add)."""
    return SEVERITY.get(check, "MEDIUM")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def item(check: str, status: str, details: Mapping[str, str]) -> dict[str, Any]:
    return {
        "Id": _cut(check, MAX_ID),
        "Title": _cut(f"{check}: {status}", MAX_TITLE),
        "Severity": severity(check),
        "Status": "NON_COMPLIANT" if status in NOT_COMPLIANT else "COMPLIANT",
        "Details": {_cut(k, MAX_KEY): _cut(v, MAX_VALUE) for k, v in details.items() if v},
    }


def daemon_item(active: str, status_age: float | None, stale_after: float,
                attempts: int | None = None) -> dict[str, Any]:
    """active: what `systemctl is-active ecs-harden.service` said; status_age: the
    status file's age in seconds (None: none could be read); attempts: blocked attempts
    to reach IMDS in the daemon's last hour (its status file), in the item's Details as
    `attempts_last_hour` (the fleet report's column)."""
    if active != "active":
        status, why = ERROR, f"ecs-harden.service is {active or 'unknown'}: nothing repairs drift"
    elif status_age is None:
        status, why = STALE, "ecs-harden.service is active but wrote no readable status"
    elif status_age > stale_after:
        status, why = STALE, (f"ecs-harden.service is active but its status is {status_age:.0f}s old "
                              f"(more than {stale_after:g}s): it is not reconciling")
    else:
        status, why = "ok", f"ecs-harden.service is active; its status is {status_age:.0f}s old"
    extra = {"attempts_last_hour": str(attempts)} if attempts is not None else {}
    return item(DAEMON, status, {"status": status, "detail": why, **extra})


def document(report: Report, daemon: Mapping[str, Any]) -> dict[str, Any]:
    """put-compliance-items' input, but for --resource-id."""
    items: list[dict[str, Any]] = [
        item(f.check, f.status, {"status": f.status, "detail": f.detail, "expected": f.expected,
                                 "actual": f.actual})
        for f in report.findings
    ]
    platform = {k: str(report.platform.get(k) or "") for k in ("flavor", "iptables")}
    items.append({**daemon, "Details": {**daemon["Details"], **{k: v for k, v in platform.items() if v}}})
    return {
        "ResourceType": RESOURCE_TYPE,
        "ComplianceType": COMPLIANCE_TYPE,
        "ExecutionSummary": {"ExecutionTime": report.time, "ExecutionType": "Command"},
        "Items": _unique(items),
        "UploadType": "COMPLETE",
    }


def _unique(items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """SSM keys an item by its Id: a second finding of one check (never expected) would
    overwrite the first, so the worse one is kept."""
    kept: dict[str, dict[str, Any]] = {}
    for it in items:
        old = kept.get(it["Id"])
        if old is None or (old["Status"] == "COMPLIANT" and it["Status"] == "NON_COMPLIANT"):
            kept[it["Id"]] = it
    return list(kept.values())
