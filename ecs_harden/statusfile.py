"""The status file (the daemon's last report) and the node_exporter textfile."""

from __future__ import annotations

import datetime
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ecs_harden import __version__
from ecs_harden.atomic import ensure_dir
from ecs_harden.report import STALE, STATUSES, Report
from ecs_harden.trust import write_replacing


@dataclass
class Counters:
    """What the daemon counts since it started (the status file and the metrics show it)."""

    started: float = field(default_factory=time.time)
    reconciles: int = 0
    repairs: int = 0
    repairs_by_check: dict[str, int] = field(default_factory=dict)
    errors: int = 0  # reconciles that ended with an error
    last_error: str | None = None
    last_reconcile: float = 0.0
    last_duration: float = 0.0



def report_text(report: Report) -> str:
    """The report as the status file holds it, less its closing brace (see write_status)."""
    text = json.dumps(report.to_json(), indent=2)
    return text[: text.rstrip().rfind("}")].rstrip()


def write_status(path: str, report: Report | str, daemon: dict[str, Any]) -> None:
    """report: a Report, or report_text() of one, kept by a daemon between heartbeats."""
    ensure_dir(os.path.dirname(path), mode=0o755)
    body = report if isinstance(report, str) else report_text(report)
    daemon_text = json.dumps(daemon, indent=2).replace("\n", "\n  ")
    text = f'{body},\n  "daemon": {daemon_text}\n}}\n'
    # Rewritten every interval, on tmpfs by default: atomic, but not worth an fsync; never
    # through a symlink (trust).
    write_replacing(path, text.encode(), mode=0o644)


# The status file older than this many of the daemon's intervals: the daemon is not running.
HEARTBEATS = 3


def heartbeat_limit(data: dict[str, Any], policy_interval: float) -> float:
    """How old the status file may be while its daemon runs: HEARTBEATS of the interval
    the daemon runs with (its own, else the policy's)."""
    return HEARTBEATS * float((data.get("daemon") or {}).get("interval") or policy_interval)


def read_status(path: str) -> tuple[dict[str, Any], float]:
    """The status and its age in seconds; OSError/ValueError when unreadable."""
    with open(path, "rb") as fh:
        data = json.loads(fh.read())
        age = time.time() - os.fstat(fh.fileno()).st_mtime
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data, age


# A slow check (the probe, the namespace scan) is queued at the resync and may wait behind
# another and take seconds itself (a busy or emulated host): slack before it is called stale.
SLOW_GRACE = 15.0


def observed_age(f: dict[str, Any], now: float | None = None) -> float | None:
    """Seconds since the daemon looked at a finding of its status file; None: not said."""
    if not isinstance(f.get("observed"), str):
        return None
    try:
        seen = datetime.datetime.strptime(f["observed"], "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.timezone.utc).timestamp()
    except ValueError:
        return None
    return (time.time() if now is None else now) - seen


def age_limit(resync: float, interval: float) -> float:
    """How old a finding of the running daemon may be and still be taken as current."""
    return resync + 2 * interval + SLOW_GRACE


def aged_findings(
    data: dict[str, Any], resync: float, interval: float, now: float | None = None
) -> list[str]:
    """Mark stale, in data, each finding the daemon looked at longer ago than a resync
    (and two intervals' slack) says it must have: what was not looked at is not `ok`.
    Returns their check ids."""
    limit = age_limit(resync, interval)
    now = time.time() if now is None else now
    aged = []
    for i, f in enumerate(data.get("findings") or []):
        if not isinstance(f, dict) or f.get("status") == STALE:
            continue
        age = observed_age(f, now)
        if age is not None and age > limit:
            last = f"{f.get('status')} at {f['observed']}" + (f": {f['detail']}" if f.get("detail") else "")
            data["findings"][i] = {**f, "status": STALE, "changed": False,
                                   "detail": f"not looked at for {age:.0f}s (more than resync "
                                             f"{resync:g}s + 2 x {interval:g}s); last seen {last}"}
            aged.append(str(f.get("check")))
    return aged


def label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics_text(report: Report, counters: Counters, *, up: bool, now: float | None = None,
                 extra: Sequence[str] = ()) -> str:
    """The node_exporter textfile. Written at every reconcile and every heartbeat: an
    alert on `time() - ecs_harden_heartbeat_timestamp_seconds` catches a daemon that died
    (kill -9, OOM) with an old `ecs_harden_compliant 1` left in the file; a clean stop
    writes `ecs_harden_up 0`."""
    c = counters
    lines = [
        "# HELP ecs_harden_build_info The running ecs-harden's version.",
        "# TYPE ecs_harden_build_info gauge",
        f'ecs_harden_build_info{{version="{label(__version__)}"}} 1',
        "# HELP ecs_harden_up 1 while the daemon runs; 0 after a clean stop (the rules stay, unwatched).",
        "# TYPE ecs_harden_up gauge",
        f"ecs_harden_up {1 if up else 0}",
        "# HELP ecs_harden_heartbeat_timestamp_seconds When the daemon last wrote this file.",
        "# TYPE ecs_harden_heartbeat_timestamp_seconds gauge",
        f"ecs_harden_heartbeat_timestamp_seconds {time.time() if now is None else now:.3f}",
        "# HELP ecs_harden_compliant 1 when every check holds (no drift, no error).",
        "# TYPE ecs_harden_compliant gauge",
        f"ecs_harden_compliant {1 if report.compliant else 0}",
        "# HELP ecs_harden_finding 1 for the status each check has now.",
        "# TYPE ecs_harden_finding gauge",
    ]
    for f in report.findings:
        for status in STATUSES:
            value = 1 if f.status == status else 0
            lines.append(f'ecs_harden_finding{{check="{label(f.check)}",status="{status}"}} {value}')
    by_check = sorted(c.repairs_by_check.items())
    lines += [
        "# HELP ecs_harden_repairs_total Repairs made since the daemon started, by check.",
        "# TYPE ecs_harden_repairs_total counter",
        *(f'ecs_harden_repairs_total{{check="{label(k)}"}} {v}' for k, v in by_check),
        "# HELP ecs_harden_reconciles_total Reconciles since the daemon started.",
        "# TYPE ecs_harden_reconciles_total counter",
        f"ecs_harden_reconciles_total {c.reconciles}",
        "# HELP ecs_harden_reconcile_errors_total Reconciles that ended with an error (lock, commit, crash).",
        "# TYPE ecs_harden_reconcile_errors_total counter",
        f"ecs_harden_reconcile_errors_total {c.errors}",
        "# HELP ecs_harden_last_reconcile_duration_seconds How long the last reconcile took.",
        "# TYPE ecs_harden_last_reconcile_duration_seconds gauge",
        f"ecs_harden_last_reconcile_duration_seconds {c.last_duration:.6f}",
        "# HELP ecs_harden_last_reconcile_timestamp_seconds When the last reconcile finished.",
        "# TYPE ecs_harden_last_reconcile_timestamp_seconds gauge",
        f"ecs_harden_last_reconcile_timestamp_seconds {c.last_reconcile:.3f}",
        "# HELP ecs_harden_start_time_seconds When the daemon started (Unix time).",
        "# TYPE ecs_harden_start_time_seconds gauge",
        f"ecs_harden_start_time_seconds {c.started:.3f}",
        # The 0.3 names, written until 0.5.0 (CHANGELOG, Breaking): alerts have a release to move.
        "# HELP ecs_harden_check_repairs_total DEPRECATED (removed in 0.5.0): use ecs_harden_repairs_total.",
        "# TYPE ecs_harden_check_repairs_total counter",
        *(f'ecs_harden_check_repairs_total{{check="{label(k)}"}} {v}' for k, v in by_check),
        "# HELP ecs_harden_reconcile_duration_seconds DEPRECATED (removed in 0.5.0): use "
        "ecs_harden_last_reconcile_duration_seconds.",
        "# TYPE ecs_harden_reconcile_duration_seconds gauge",
        f"ecs_harden_reconcile_duration_seconds {c.last_duration:.6f}",
    ]
    return "\n".join([*lines, *extra]) + "\n"


def write_metrics(path: str, text: str) -> None:
    """node_exporter's textfile directory is its user's: a link planted there is replaced,
    never followed (trust)."""
    ensure_dir(os.path.dirname(path), mode=0o755)
    write_replacing(path, text.encode(), mode=0o644)
