"""The reconciler: one place decides whether a repair runs; a failed one is an error finding."""

from __future__ import annotations

import dataclasses

import pytest

from ecs_harden.component import Base, Inspection
from ecs_harden.errors import RuntimeFailure
from ecs_harden.policy import Policy
from ecs_harden.reconcile import Reconciler
from ecs_harden.report import DRIFT, OK, Finding


class Fake(Base):
    """A component whose check drifts until it is repaired."""

    name = "fake"
    wakes_on = "ecs"

    def __init__(self, fail: Exception | None = None):
        self.fixed = False
        self.executed = 0
        self.fail = fail

    def inspect(self) -> Inspection[bool]:
        if self.fixed:
            return Inspection((Finding("fake.check", OK, "x", "x"),))
        return Inspection((Finding("fake.check", DRIFT, "x", "y", "y is not x"),), ("fix it",),
                          frozenset({"fake.check"}), True)

    def execute(self, inspection: Inspection[bool]) -> None:
        self.executed += 1
        if self.fail is not None:
            raise self.fail
        self.fixed = True


def reconciler(mode: str, component: Fake) -> Reconciler:
    return Reconciler(dataclasses.replace(Policy(), mode=mode), {}, [component])


@pytest.mark.parametrize("call", ["run", "run_component"])
def test_report_mode_never_repairs_whoever_asks(call: str) -> None:
    c = Fake()
    r = reconciler("report", c)
    for _ in range(3):
        if call == "run":
            outcome = r.run(repair=True)
            assert outcome.report.findings[0].status == DRIFT and outcome.changes == ()
        else:  # the daemon's way in
            found, changes, errors = r.run_component(c, repair=True)
            assert found[0].status == DRIFT and changes == [] and errors == []
    assert c.executed == 0


def test_enforce_mode_repairs() -> None:
    c = Fake()
    outcome = reconciler("enforce", c).run(repair=True)
    assert c.executed == 1 and outcome.report.findings[0].status == OK and outcome.report.findings[0].changed


def test_a_failed_repair_is_an_error_finding_not_a_drift() -> None:
    c = Fake(RuntimeFailure("iptables-restore: line 3 failed"))
    outcome = reconciler("enforce", c).run(repair=True)
    f = outcome.report.findings[0]
    assert f.status == "error" and "the repair failed: iptables-restore: line 3 failed" in f.detail
    assert "y is not x" in f.detail and not outcome.report.compliant


def test_a_crash_is_an_error_finding_never_a_traceback() -> None:
    c = Fake(RecursionError("maximum recursion depth exceeded"))
    outcome = reconciler("enforce", c).run(repair=True)
    (f,) = outcome.report.findings
    assert f.status == "error" and "internal error in fake: RecursionError" in f.detail
    assert outcome.errors


class Flaky(Fake):
    """Its repair fails `fails` times, then holds (a commit that lost a race)."""

    def __init__(self, fails: int):
        super().__init__()
        self.fails = fails

    def execute(self, inspection: Inspection[bool]) -> None:
        self.executed += 1
        if self.executed <= self.fails:
            raise RuntimeFailure("the ruleset changed under the commit (generation 41, now 42)")
        self.fixed = True


def events(caplog_lines: list[dict[str, object]], name: str) -> list[dict[str, object]]:
    return [e for e in caplog_lines if e.get("event") == name]


def test_a_failure_that_the_retry_clears_is_a_warning_one_that_stays_an_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, object]] = []

    class Log:
        def __getattr__(self, level: str):  # type: ignore[no-untyped-def]
            return lambda event, **kw: seen.append({"level": level, "event": event, **kw})

    once = Flaky(1)
    r = reconciler("enforce", once)
    monkeypatch.setattr(r, "log", Log())
    r.run_component(once, repair=True)  # fails: the daemon retries
    found, _, errors = r.run_component(once, repair=True)  # holds
    assert found[0].status == OK and errors == []
    assert [e["level"] for e in events(seen, "repair.failed")] == ["warning"]

    seen.clear()
    stuck = Flaky(5)
    r = reconciler("enforce", stuck)
    monkeypatch.setattr(r, "log", Log())
    for _ in range(4):
        r.run_component(stuck, repair=True)
    levels = [e["level"] for e in events(seen, "repair.failed")]
    assert levels == ["warning", "error"], levels  # then quiet until the reminder or a new error
