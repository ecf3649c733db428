"""Findings and the report that check, apply and the status file share."""

from __future__ import annotations

import dataclasses
import json
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ecs_harden.journal import utc_now

OK, DRIFT, WARN, ERROR, STALE = "ok", "drift", "warn", "error", "stale"
STATUSES = (OK, DRIFT, WARN, ERROR, STALE)
REPORT_VERSION = 1


@dataclass(frozen=True)
class Finding:
    check: str
    status: str
    expected: str = ""
    actual: str = ""
    detail: str = ""
    changed: bool = False
    # When the daemon last looked (UTC, ISO 8601); None in a one-shot command's report,
    # whose time is the report's.
    observed: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"bad finding status {self.status!r}")

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.observed is None:
            del out["observed"]
        return out


def stale_finding(f: Finding, why: str) -> Finding:
    """A finding that was not looked at since `why`: never `ok` (what it said then is in
    its detail)."""
    then = f" at {f.observed}" if f.observed else ""
    last = f"{f.status}{then}" + (f": {f.detail}" if f.detail else "")
    return dataclasses.replace(f, status=STALE, detail=f"not looked at since {why}; last seen {last}",
                               changed=False)


@dataclass(frozen=True)
class Report:
    mode: str
    platform: Mapping[str, Any]
    findings: tuple[Finding, ...]
    time: str = field(default_factory=utc_now)
    host: str = field(default_factory=socket.gethostname)

    @property
    def compliant(self) -> bool:
        """Every check holds as last looked at: none drifts, failed, or is stale."""
        return not any(f.status in (DRIFT, ERROR, STALE) for f in self.findings)

    def to_json(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": REPORT_VERSION,
            "time": self.time,
            "host": self.host,
            "mode": self.mode,
            "compliant": self.compliant,
            "platform": dict(self.platform),
            "findings": [f.to_json() for f in self.findings],
        }
        if extra:
            out.update(extra)
        return out


def render_json(report: Report) -> str:
    return json.dumps(report.to_json(), indent=2, sort_keys=False)


def render_text(report: Report, *, dry_run: bool = False) -> str:
    rows: list[Sequence[str]] = [("STATUS", "CHECK", "CHANGED", "DETAIL")]
    for f in report.findings:
        changed = "would" if dry_run and f.status == DRIFT else ("yes" if f.changed else "-")
        rows.append((f.status.upper(), f.check, changed, f.detail))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [
        "  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows
    ]
    plat = report.platform
    summary = "compliant" if report.compliant else "NOT compliant"
    if dry_run:
        would = sum(1 for f in report.findings if f.status == DRIFT)
        changes = f"dry run: {would} change(s) would be made"
    else:
        changes = f"{sum(1 for f in report.findings if f.changed)} change(s)"
    lines.append("")
    lines.append(
        f"{report.host}: {summary} (mode {report.mode}, flavor {plat.get('flavor')}, "
        f"iptables {plat.get('iptables')}; {changes})"
    )
    return "\n".join(line.rstrip() for line in lines)
