"""Filters of ansible/fleet-report.yml: every host's `ecs-harden check` / `status` results
into one report (JSON) and one Markdown table. Plain Python, unit-tested in
tests/unit/test_fleet_report.py."""

from __future__ import annotations

import json
from typing import Any

DRIFT = ("drift", "error")


def _parsed(result: Any) -> dict[str, Any] | None:
    try:
        out = json.loads(str(result.get("stdout") or ""))
    except ValueError:
        return None
    return out if isinstance(out, dict) else None


NOT_YET_EFFECTIVE = ("ecs_agent.restart",)


def _row(host: str, check: Any, status: Any) -> dict[str, Any]:
    if not check or check.get("unreachable") or "rc" not in check:
        msg = (check or {}).get("msg") or "unreachable"
        return {"host": host, "reachable": False, "compliant": None, "error": str(msg).strip()}
    report = _parsed(check)
    if report is None:
        return {"host": host, "reachable": True, "compliant": None, "exit": check.get("rc"),
                "error": str(check.get("stderr") or check.get("msg") or "no report").strip()}
    platform = report.get("platform") or {}
    # flags written but the running agent still has the old ones (restart_agent: never)
    pending = [{"check": f.get("check"), "detail": f.get("detail")} for f in report.get("findings") or []
               if f.get("check") in NOT_YET_EFFECTIVE and f.get("status") == "warn"]
    daemon_report = _parsed(status) if status and status.get("rc") in (0, 3) else None
    daemon = (daemon_report or {}).get("daemon") or {}
    attempts = daemon.get("attempts") if isinstance(daemon.get("attempts"), dict) else {}
    return {
        "host": host,
        "reachable": True,
        "exit": check.get("rc"),
        "flavor": platform.get("flavor"),
        "iptables": platform.get("iptables"),
        "attempts_last_hour": attempts_count(attempts.get("last_hour")),
        "compliant": bool(report.get("compliant")),
        "effective": bool(report.get("compliant")) and not pending,
        "pending": pending,
        "drift": [
            {"check": f.get("check"), "status": f.get("status"), "expected": f.get("expected"),
             "actual": f.get("actual"), "detail": f.get("detail")}
            for f in report.get("findings") or [] if f.get("status") in DRIFT
        ],
        "daemon": {
            "running": bool(daemon),
            "pid": daemon.get("pid"),
            "last_reconcile": daemon.get("last_reconcile"),
            "repairs": daemon.get("repairs"),
            "status_exit": (status or {}).get("rc"),
        },
    }


def attempts_count(value: Any) -> int | None:
    """Blocked IMDS attempts in the host's last hour (the daemon's record); None: not known."""
    try:
        return max(0, int(value)) if value is not None and str(value).strip() != "" else None
    except (TypeError, ValueError):
        return None


def fleet_report(hostvars: Any, hosts: list[str], check_var: str = "fleet_report_check",
                 status_var: str = "fleet_report_status") -> dict[str, Any]:
    rows = []
    for host in hosts:
        hv = hostvars.get(host) or {}
        rows.append(_row(host, hv.get(check_var), hv.get(status_var)))
    return {"hosts": rows, "summary": summarize(rows)}


def summarize(rows: list[dict[str, Any]]) -> dict[str, int]:
    """The counts of the hosts' rows (deploy/ssm/compliance_report.py makes rows of this shape too)."""
    return {
        "hosts": len(rows),
        "compliant": sum(1 for r in rows if r["compliant"] is True and r.get("effective")),
        "not_yet_effective": sum(1 for r in rows if r["compliant"] is True and not r.get("effective")),
        "drifting": sum(1 for r in rows if r["reachable"] and r["compliant"] is not True),
        "unreachable": sum(1 for r in rows if not r["reachable"]),
        "with_attempts": sum(1 for r in rows if (r.get("attempts_last_hour") or 0) > 0),
    }


def _cell(text: Any) -> str:
    return str(text if text is not None else "").replace("|", "\\|").replace("\n", " ").strip()


def summary_line(report: dict[str, Any]) -> str:
    s = report["summary"]
    return (f"{s['hosts']} hosts, {s['compliant']} compliant, {s['not_yet_effective']} not yet effective "
            f"(the ECS agent runs the old flags), {s['drifting']} drifting, {s['unreachable']} unreachable"
            + (f"; {s['with_attempts']} with blocked IMDS attempts in the last hour" if s.get("with_attempts")
               else ""))


def fleet_markdown(report: dict[str, Any]) -> str:
    lines = [
        "# ecs-harden fleet report",
        "",
        "| host | flavor | iptables | compliant | drifting checks | daemon | IMDS attempts (last hour) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["hosts"]:
        if not r["reachable"]:
            lines.append(f"| {_cell(r['host'])} | | | **unreachable** | {_cell(r['error'])[:200]} | | |")
            continue
        if r["compliant"] is None:
            lines.append(f"| {_cell(r['host'])} | | | **error** | ecs-harden check exited {r['exit']}: "
                         f"{_cell(r['error'])[:200]} | | |")
            continue
        drift = "<br>".join(f"`{_cell(f['check'])}`: {_cell(f['detail'])}" for f in r["drift"] + r["pending"])
        state = ("yes" if r["effective"] else "yes, **not yet effective**") if r["compliant"] else "**NO**"
        d = r["daemon"]
        if d.get("pid") is None and d.get("detail"):  # from SSM Compliance: the daemon item's words
            daemon = d["detail"] if d["running"] else f"**{d['detail']}**"
        else:
            daemon = (f"running (pid {d['pid']}), {d['repairs']} repairs, "
                      f"last reconcile {d['last_reconcile']}" if d["running"] else "**not running**")
        tried = r.get("attempts_last_hour")
        lines.append(f"| {_cell(r['host'])} | {_cell(r['flavor'])} | {_cell(r['iptables'])} | "
                     f"{state} | {drift} | {_cell(daemon)} | "
                     f"{'' if tried is None else (f'**{tried}**' if tried else '0')} |")
    lines += ["", summary_line(report), ""]
    return "\n".join(lines)


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "ecs_harden_fleet_report": fleet_report,
            "ecs_harden_fleet_markdown": fleet_markdown,
            "ecs_harden_fleet_summary": summary_line,
        }
