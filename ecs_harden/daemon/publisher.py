"""What the daemon shows the outside: the status file, the node_exporter textfile and
systemd's STATUS= line, from the last report and the daemon's counters."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from ecs_harden import logs
from ecs_harden.attempts import recorder as attempts
from ecs_harden.daemon.notify import Notifier
from ecs_harden.errors import HardenError
from ecs_harden.facts import iso
from ecs_harden.policy import Policy
from ecs_harden.report import DRIFT, ERROR, STALE, Report
from ecs_harden.statusfile import Counters, metrics_text, report_text, write_metrics, write_status


@dataclass
class PolicyState:
    """Which policy the daemon runs, and the last reload that failed while it stands."""

    loaded: float = field(default_factory=time.time)
    reload_error: str | None = None


class StatusPublisher:
    def __init__(self, notifier: Notifier):
        self.notifier = notifier
        self.log = logs.get("ecs_harden.daemon")
        self._report: Report | None = None
        self._text = ""
        self._summary = ""

    @property
    def published(self) -> bool:
        """A report was published: a heartbeat can rewrite the status file from it."""
        return self._report is not None

    def fields(self, policy: Policy, counters: Counters, state: PolicyState) -> dict[str, Any]:
        c = counters
        return {
            "pid": os.getpid(),
            "started": iso(c.started),
            "reconciles": c.reconciles,
            "repairs": c.repairs,
            "last_error": c.last_error,
            "last_reconcile": iso(c.last_reconcile) if c.last_reconcile else None,
            "interval": policy.interval,
            "resync": policy.resync,
            "heartbeat": iso(time.time()),
            "policy": {"source": policy.source, "loaded": iso(state.loaded),
                       "reload_error": state.reload_error},
            **({"attempts": attempts.RECORDER.status()} if attempts.RECORDER is not None else {}),
        }

    @staticmethod
    def summary(report: Report, policy: Policy, counters: Counters, state: PolicyState) -> str:
        bad = [f.check + (" (stale)" if f.status == STALE else "") for f in report.findings
               if f.status in (DRIFT, ERROR, STALE)]
        if not bad:
            line = f"compliant: {len(report.findings)} checks hold; {counters.repairs} repairs"
        else:
            line = f"NOT compliant: {', '.join(bad)}"
        if state.reload_error:
            line += f"; policy reload failed, running the policy from {policy.source}"
        return line

    def publish(self, report: Report | None, policy: Policy, counters: Counters, state: PolicyState) -> None:
        """After a reconcile (report given), or at a heartbeat (None: from the report
        already built): the status file, the metrics (their heartbeat timestamp is what
        a staleness alert watches) and STATUS=."""
        if report is not None:
            self._report = report
            self._text = report_text(report)
        if attempts.RECORDER is not None:
            attempts.RECORDER.refresh()  # the attempts table read once, for both
        current = self._report
        if current is None:
            raise ValueError("a heartbeat before any report was published")
        try:
            write_status(policy.report.status_file, self._text, self.fields(policy, counters, state))
        except HardenError as exc:
            self.log.error("status.write_failed", error=str(exc))
        self._write_metrics(policy, counters, up=True)
        summary = self.summary(current, policy, counters, state)
        if summary != self._summary:
            self._summary = summary
            self.notifier.status(summary)

    def stopped(self, policy: Policy, counters: Counters) -> None:
        """At a clean stop: the textfile says the daemon is not running (ecs_harden_up 0);
        the rules stay, but nothing keeps them any more."""
        self._write_metrics(policy, counters, up=False)

    def _write_metrics(self, policy: Policy, counters: Counters, *, up: bool) -> None:
        if self._report is None or not policy.report.textfile:
            return
        try:
            extra = attempts.RECORDER.metrics_lines() if attempts.RECORDER is not None else []
            write_metrics(policy.report.textfile, metrics_text(self._report, counters, up=up, extra=extra))
        except HardenError as exc:
            self.log.error("status.write_failed", error=str(exc))
