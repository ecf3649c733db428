#!/usr/bin/env python3
"""deploy/ssm/compliance_report.py [--out DIR] [--max-age MINUTES] [AWS CLI OPTION ...]

The fleet's drift read back from SSM Compliance (type Custom:ecs_harden, which the SSM
document's runs put there), without a controller and without SSH: the same report and
table as the Ansible playbook's fleet-report.yml (ansible/filter_plugins/fleet_report.py
renders both), written to DIR/fleet-report.json and DIR/fleet-report.md (default
./fleet-report). An instance whose items are older than --max-age minutes (default 90:
three runs of a 30-minute association) is listed as not reporting. Uses the AWS CLI (its
credentials, region and pagination); options after ours go to every `aws` call
(`--region eu-west-1`, `--profile prod`). Exit 0: every instance compliant; 3: not;
1: the AWS CLI failed."""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PLUGIN = HERE.parent.parent / "ansible" / "filter_plugins" / "fleet_report.py"
TYPE = "Custom:ecs_harden"
FILTER = f"Key=ComplianceType,Values={TYPE},Type=EQUAL"


@functools.lru_cache(maxsize=None)
def renderer() -> Any:
    spec = importlib.util.spec_from_file_location("fleet_report", PLUGIN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def aws(args: list[str], extra: list[str]) -> dict[str, Any]:
    cp = subprocess.run(["aws", *args, *extra, "--output", "json"], capture_output=True, text=True,
                        check=False)
    if cp.returncode != 0:
        raise RuntimeError(f"aws {' '.join(args[:2])} exited {cp.returncode}: {cp.stderr.strip()}")
    data = json.loads(cp.stdout or "{}")
    return data if isinstance(data, dict) else {}


def when(item: dict[str, Any]) -> datetime.datetime | None:
    raw = (item.get("ExecutionSummary") or {}).get("ExecutionTime")
    if isinstance(raw, (int, float)):
        return datetime.datetime.fromtimestamp(raw, datetime.timezone.utc)
    try:
        return datetime.datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError:
        return None


def row(instance: str, items: list[dict[str, Any]], now: datetime.datetime, max_age: float) -> dict[str, Any]:
    """One host of fleet_report's shape, from its compliance items."""
    times = [t for t in map(when, items) if t is not None]
    last = max(times) if times else None
    if not items or last is None or (now - last).total_seconds() > max_age * 60:
        seen = f"last report {last.isoformat()}" if last else "no report"
        return {"host": instance, "reachable": False, "compliant": None,
                "error": f"not reporting to SSM Compliance ({seen})"}
    by_id = {it.get("Id"): it for it in items}
    daemon = by_id.pop("daemon", {})
    details = daemon.get("Details") or {}

    def finding(it: dict[str, Any]) -> dict[str, Any]:
        d = it.get("Details") or {}
        return {"check": it.get("Id"), "status": d.get("status"), "expected": d.get("expected"),
                "actual": d.get("actual"), "detail": d.get("detail")}

    drift = [finding(it) for it in by_id.values() if it.get("Status") == "NON_COMPLIANT"]
    pending = [{"check": i, "detail": (it.get("Details") or {}).get("detail")} for i, it in by_id.items()
               if i == "ecs_agent.restart" and (it.get("Details") or {}).get("status") == "warn"]
    compliant = not drift and daemon.get("Status") == "COMPLIANT"
    return {
        "host": instance, "reachable": True, "exit": 0 if compliant else 3,
        "flavor": details.get("flavor"), "iptables": details.get("iptables"),
        "attempts_last_hour": renderer().attempts_count(details.get("attempts_last_hour")),
        "compliant": compliant, "effective": compliant and not pending, "pending": pending,
        "drift": drift + ([finding(daemon)] if daemon and daemon.get("Status") != "COMPLIANT" else []),
        "daemon": {"running": daemon.get("Status") == "COMPLIANT", "detail": details.get("detail")},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="deploy/ssm/compliance_report.py", description=__doc__.split("\n\n")[1])
    ap.add_argument("--out", default="fleet-report", help="where the report goes (default ./fleet-report)")
    ap.add_argument("--max-age", type=float, default=90.0,
                    help="minutes after which an instance is not reporting")
    args, extra = ap.parse_known_args(argv)
    plugin = renderer()
    now = datetime.datetime.now(datetime.timezone.utc)
    try:
        summaries = aws(["ssm", "list-resource-compliance-summaries", "--filters", FILTER], extra)
        rows = []
        for summary in summaries.get("ResourceComplianceSummaryItems") or []:
            instance = str(summary.get("ResourceId"))
            items = aws(["ssm", "list-compliance-items", "--resource-ids", instance, "--resource-types",
                         str(summary.get("ResourceType") or "ManagedInstance"), "--filters", FILTER], extra)
            rows.append(row(instance, list(items.get("ComplianceItems") or []), now, args.max_age))
    except (RuntimeError, ValueError) as exc:
        print(f"compliance_report: {exc}", file=sys.stderr)
        return 1
    report = {"hosts": rows, "summary": plugin.summarize(rows)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fleet-report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "fleet-report.md").write_text(plugin.fleet_markdown(report))
    print(plugin.summary_line(report))
    return 0 if rows and all(r["compliant"] and r.get("effective") for r in rows) else 3


if __name__ == "__main__":
    sys.exit(main())
