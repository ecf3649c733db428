"""The reconcile pass: inspect every component, repair what drifted, inspect again."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ecs_harden import logs
from ecs_harden.component import AnyComponent
from ecs_harden.errors import HardenError
from ecs_harden.findinglog import FindingLog
from ecs_harden.policy import Policy
from ecs_harden.report import DRIFT, ERROR, OK, Finding, Report


def failed_finding(f: Finding, why: str) -> Finding:
    """A finding whose check could not be made to hold (or not be looked at): error, with
    what was last seen, so that `compliant` is false while ecs-harden cannot do its job."""
    detail = f"{why}; last seen: {f.status}: {f.detail}" if f.detail else why
    return dataclasses.replace(f, status=ERROR, detail=detail, changed=False)


@dataclass(frozen=True)
class Outcome:
    report: Report
    changes: tuple[str, ...]  # done, or with dry_run: what would be done
    errors: tuple[str, ...]

    def to_json(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.report.to_json({"changes": list(self.changes), **(extra or {})})


# Failures another try usually clears (reconcile.failed: the transaction, the lock).
TRANSIENT = frozenset({"repair.failed", "reconcile.failed"})


class Reconciler:
    def __init__(
        self,
        policy: Policy,
        platform: dict[str, Any],
        components: Sequence[AnyComponent],
        finding_log: FindingLog | None = None,
        *,
        announce: bool = True,
    ):
        self.policy = policy
        self.platform = platform
        self.components = components
        self.log = logs.get("ecs_harden.reconcile")
        self.finding_log = finding_log or FindingLog()
        # The daemon says what drifts in its log; a one-shot command (check, apply)
        # reports it, and does not also warn about every finding.
        self.announce = announce
        self._in_a_row: dict[str, int] = {}  # failures of an event and component, consecutive

    def _failed(self, event: str, component: AnyComponent, error: str) -> None:
        """A failed repair or transaction (a commit that lost a race, the xtables lock
        busy) is retried at once and usually holds then: the first of a row is a
        warning; it is an error from the second in a row on, what stays broken."""
        key = f"{event}:{component.name}"
        self._in_a_row[key] = n = self._in_a_row.get(key, 0) + 1
        if event in TRANSIENT and n == 1:
            self.log.warning(event, component=component.name, error=error, retrying=True)
            return
        why = self.finding_log.should_log(key, error)
        if why or (event in TRANSIENT and n == 2):
            self.log.error(event, component=component.name, error=error, failures_in_a_row=n)

    def _succeeded(self, event: str, component: AnyComponent) -> None:
        self._in_a_row.pop(f"{event}:{component.name}", None)
        self.finding_log.clear(f"{event}:{component.name}")

    def _detected(self, findings: Sequence[Finding]) -> None:
        if not self.announce:
            return
        for f in findings:
            if f.status not in (DRIFT, ERROR):
                continue
            why = self.finding_log.should_log(f.check, f"{f.status}\0{f.detail}")
            if why:
                again = {} if why == "new" else {"logged": why}  # a reminder, or a changed drift
                self.log.warning(
                    "drift.detected", check=f.check, status=f.status, **again,
                    expected=f.expected, actual=f.actual, detail=f.detail,
                )

    def _settled(self, findings: Sequence[Finding]) -> None:
        """Forget what holds again; say so where nobody repaired it (someone else did)."""
        for f in findings:
            if f.status in (DRIFT, ERROR):
                continue
            if self.finding_log.clear(f.check) and not f.changed:
                self.log.info("drift.cleared", check=f.check, status=f.status, now=f.actual)

    def run(self, *, repair: bool, dry_run: bool = False) -> Outcome:
        findings: list[Finding] = []
        changes: list[str] = []
        errors: list[str] = []
        for component in self.components:
            f, c, e = self.run_component(component, repair=repair, dry_run=dry_run)
            findings.extend(f)
            changes.extend(c)
            errors.extend(e)
        report = Report(self.policy.mode, self.platform, tuple(findings))
        return Outcome(report, tuple(changes), tuple(errors))

    def may_repair(self, *, repair: bool, dry_run: bool) -> bool:
        """The one place that decides whether a repair may run: every command and the
        daemon go through run_component, so report mode and dry runs cannot be skipped."""
        return repair and not dry_run and self.policy.enforce

    def run_component(
        self, component: AnyComponent, *, repair: bool, dry_run: bool = False
    ) -> tuple[list[Finding], list[str], list[str]]:
        """Findings, changes made (or planned, with dry_run) and errors for one component."""
        repair = self.may_repair(repair=repair, dry_run=dry_run)
        # A component that can hold off other writers between its read and its commit
        # (legacy iptables: the xtables lock) inspects, repairs and checks again in one
        # transaction, so its commit needs no second read of the table.
        try:
            with component.transaction() if repair else contextlib.nullcontext():
                result = self._run_component(component, repair=repair, dry_run=dry_run)
            self._succeeded("reconcile.failed", component)
            return result
        except HardenError as exc:  # the transaction itself (the xtables lock)
            self._failed("reconcile.failed", component, str(exc))
            return [Finding(component.name, ERROR, detail=str(exc))], [], [str(exc)]
        except Exception as exc:  # a bug, or input nobody foresaw: an error finding, never a traceback
            error = f"internal error in {component.name}: {type(exc).__name__}: {exc}"
            self.log.error("reconcile.crashed", component=component.name, error=error)
            self.log.debug("reconcile.traceback", component=component.name, exc_info=True)
            return [Finding(component.name, ERROR, detail=error)], [], [error]

    def _run_component(
        self, component: AnyComponent, *, repair: bool, dry_run: bool = False
    ) -> tuple[list[Finding], list[str], list[str]]:
        try:
            first = component.inspect()
        except HardenError as exc:
            self._failed("inspect.failed", component, str(exc))
            return [Finding(f"{component.name}", ERROR, detail=str(exc))], [], [str(exc)]
        self._succeeded("inspect.failed", component)
        self._detected(first.findings)
        if dry_run:
            return list(first.findings), list(first.changes), []
        if not first.changes or not repair:
            self._settled(first.findings)
            return list(first.findings), [], []
        error: str | None = None
        try:
            component.execute(first)
            self._succeeded("repair.failed", component)
        except HardenError as exc:
            error = str(exc)
            self._failed("repair.failed", component, error)
        try:
            after = component.inspect()
        except HardenError as exc:
            msg = str(exc)
            self._failed("inspect.failed", component, msg)
            return [Finding(component.name, ERROR, detail=msg)], [], [e for e in (error, msg) if e]
        before = {f.check: f for f in first.findings}
        out: list[Finding] = []
        for f in after.findings:
            if error is not None and f.check in first.repairs and f.status != OK:
                f = failed_finding(f, f"the repair failed: {error}")
            elif error is None and f.check in first.repairs:
                f = dataclasses.replace(f, changed=True)
                old = before.get(f.check)
                self.log.info(
                    "drift.repaired", check=f.check, expected=f.expected,
                    actual=old.actual if old else "", now=f.actual, status=f.status,
                )
                if f.status == DRIFT:
                    self.log.error("repair.did_not_hold", check=f.check, detail=f.detail)
            out.append(f)
        self._settled(out)
        return out, [] if error else list(first.changes), [error] if error else []
