"""The daemon's core driven with fakes (no root, no netfilter): report mode never repairs,
a failed reconcile (lock, crash, commit) is an error finding, a broken policy on reload
keeps the old one, heartbeats rewrite the status file from the last report."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import threading
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import pytest

from ecs_harden.component import ECS, FIREWALL, PATHS, Base, Inspection
from ecs_harden.daemon.loop import Daemon, Parts
from ecs_harden.daemon.notify import Notifier
from ecs_harden.daemon.wakeups import Wake, WakeSource
from ecs_harden.errors import PolicyError, RuntimeFailure
from ecs_harden.facts import Facts, Process
from ecs_harden.lock import LockTimeout
from ecs_harden.policy import Policy, ReportPolicy
from ecs_harden.report import DRIFT, OK, Finding

FACTS = Facts("debian", "systemd", None, Process(False), Process(False))


class Drifting(Base):
    """Drifts until repaired; can fail in inspect or execute on demand."""

    wakes_on = ECS

    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.fixed = False
        self.executed = 0
        self.fail_inspect: Exception | None = None
        self.fail_execute: Exception | None = None

    def inspect(self) -> Inspection[bool]:
        if self.fail_inspect is not None:
            raise self.fail_inspect
        if self.fixed:
            return Inspection((Finding(f"{self.name}.check", OK, "x", "x", "holds"),))
        return Inspection((Finding(f"{self.name}.check", DRIFT, "x", "y", "y is not x"),), ("fix",),
                          frozenset({f"{self.name}.check"}), True)

    def execute(self, inspection: Inspection[bool]) -> None:
        self.executed += 1
        if self.fail_execute is not None:
            raise self.fail_execute
        self.fixed = True


class Silent(Notifier):
    """The real notifier, remembering what it would have told systemd instead of sending."""

    def __init__(self) -> None:
        super().__init__(env={})
        self.sent: list[str] = []

    def send(self, *fields: str) -> bool:
        self.sent.append("\n".join(fields))
        return True


@dataclasses.dataclass
class Lock:
    """The reconcile lock, or a lock somebody else holds (fail set)."""

    fail: bool = False
    taken: int = 0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        if self.fail:
            raise LockTimeout("another process (pid 4242 (sleep, uid 65534)) has held it")
        self.taken += 1
        yield


@dataclasses.dataclass
class Rig:
    daemon: Daemon
    component: Drifting
    lock: Lock
    notifier: Silent
    status_file: Path
    loads: list[Any]

    def status(self) -> dict[str, Any]:
        return json.loads(self.status_file.read_text())  # type: ignore[no-any-return]

    def statuses(self) -> dict[str, str]:
        return {f["check"]: f["status"] for f in self.status()["findings"]}


def rig(tmp_path: Path, mode: str = "enforce") -> Rig:
    status = tmp_path / "status.json"
    policy = Policy(mode=mode, state_dir=str(tmp_path / "state"), source=str(tmp_path / "p.yaml"),
                    report=ReportPolicy(status_file=str(status)))
    component, lock, notifier = Drifting(), Lock(), Silent()
    loads: list[Any] = []

    def load(path: str | None) -> Policy:
        item = loads.pop(0)
        if isinstance(item, Exception):
            raise item
        return item  # type: ignore[no-any-return]

    parts = Parts(gather=lambda: FACTS, build=lambda p, f: [component], load=load, lock=lock, sources=lambda *a: [])
    daemon = Daemon(policy, str(tmp_path / "p.yaml"), notifier=notifier, parts=parts)
    return Rig(daemon, component, lock, notifier, status, loads)


def test_report_mode_never_repairs(tmp_path: Path) -> None:
    r = rig(tmp_path, "report")
    for _ in range(5):
        assert r.daemon.reconcile(why="test") is True
    assert r.component.executed == 0
    assert r.statuses() == {"fake.check": "drift"} and r.status()["mode"] == "report"
    assert r.status()["daemon"]["repairs"] == 0
    assert r.daemon.run(once=True) == 3


def test_enforce_mode_repairs_once(tmp_path: Path) -> None:
    r = rig(tmp_path)
    assert r.daemon.reconcile(why="test")
    assert r.component.executed == 1 and r.statuses() == {"fake.check": "ok"}
    assert r.status()["daemon"]["repairs"] == 1 and r.status()["compliant"] is True
    assert r.daemon.reconcile(why="again") and r.component.executed == 1
    assert r.lock.taken == 2


def test_a_lock_it_cannot_get_turns_what_was_ok_into_error(tmp_path: Path) -> None:
    r = rig(tmp_path)
    assert r.daemon.reconcile(why="test") and r.status()["compliant"] is True
    r.lock.fail = True
    assert r.daemon.reconcile(why="test") is False
    status = r.status()
    assert status["compliant"] is False and r.statuses() == {"fake.check": "error"}
    (finding,) = status["findings"]
    assert "not reconciled: another process (pid 4242" in finding["detail"]
    assert "last seen: ok: holds" in finding["detail"]
    assert "has held it" in status["daemon"]["last_error"]
    assert r.daemon.run(once=True) == 1
    r.lock.fail = False
    assert r.daemon.reconcile(why="test") and r.status()["compliant"] is True
    assert r.status()["daemon"]["last_error"] is None


@pytest.mark.parametrize("where", ["inspect", "execute"])
def test_a_crash_or_a_failed_commit_is_an_error_and_the_daemon_goes_on(tmp_path: Path, where: str) -> None:
    r = rig(tmp_path)
    error = RecursionError("deep") if where == "inspect" else RuntimeFailure("iptables-restore: line 2 failed")
    setattr(r.component, f"fail_{where}", error)
    assert r.daemon.reconcile(why="test") is False
    assert r.statuses() == {"fake.check" if where == "execute" else "fake": "error"}
    assert r.status()["compliant"] is False and r.status()["daemon"]["last_error"]
    setattr(r.component, f"fail_{where}", None)
    assert r.daemon.reconcile(why="retry") and r.status()["compliant"] is True


def test_a_broken_policy_on_reload_keeps_the_old_one(tmp_path: Path) -> None:
    r = rig(tmp_path)
    r.daemon.reconcile(why="start")
    old = r.daemon.policy
    r.loads.append(PolicyError("p.yaml: line 1: mode: must be one of enforce, report"))
    r.daemon.reload()
    assert r.daemon.policy is old
    status = r.status()
    assert status["daemon"]["policy"]["reload_error"].endswith("must be one of enforce, report")
    assert any(m.startswith("RELOADING=1") for m in r.notifier.sent)
    assert r.notifier.sent[-1].startswith("READY=1")  # systemd waits for it after RELOADING
    r.loads.append(dataclasses.replace(old, mode="report"))
    r.daemon.reload()
    assert r.daemon.policy.mode == "report" and r.status()["daemon"]["policy"]["reload_error"] is None


def test_a_heartbeat_rewrites_the_status_from_the_last_report(tmp_path: Path) -> None:
    r = rig(tmp_path)
    r.daemon.reconcile(why="start")
    before = r.status()
    r.component.fixed = False  # drifts again, but nobody reconciled
    r.daemon.publish(heartbeat=True)
    after = r.status()
    assert after["findings"] == before["findings"] and after["daemon"]["heartbeat"] >= before["daemon"]["heartbeat"]


def test_a_heartbeat_before_any_reconcile_publishes_the_real_report(tmp_path: Path) -> None:
    r = rig(tmp_path)
    r.daemon.publish(heartbeat=True)
    assert r.statuses() == {} and r.status()["compliant"] is True  # nothing reconciled: no findings
    assert r.status()["platform"] == FACTS.platform()


class Pipe(WakeSource):
    """A source behind a real descriptor: readable when the test writes to it, waking ECS."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        self.held: list[float] = []
        self.closed = False

    def fileno(self) -> int:
        return self.r

    def readable(self, now: float, wake: Wake) -> None:
        os.read(self.r, 64)
        wake.add({ECS}, "pipe")

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)
        self.closed = True


class Ticks(WakeSource):
    """A timer source: due every 10 ms; after `stop_after` ticks it stops the daemon."""

    def __init__(self, daemon: Daemon, stop_after: int, wakes: bool) -> None:
        self.daemon, self.left, self.wakes = daemon, stop_after, wakes
        self.next = daemon.clock() + 0.01
        self.ticks = 0
        self.seen: list[tuple[frozenset[str], bool]] = []

    def deadline(self) -> float | None:
        return self.next

    def due(self, now: float, wake: Wake) -> None:
        if now < self.next:
            return
        self.next = now + 0.01
        self.ticks += 1
        if self.wakes:
            wake.add({ECS}, "tick")
        if self.ticks >= self.left:
            self.daemon.stop_requested = True

    def after(self, groups: Collection[str], ok: bool, now: float) -> None:
        self.seen.append((frozenset(groups), ok))


def looping(tmp_path: Path, make: Callable[[Daemon], list[WakeSource]], mode: str = "enforce") -> Rig:
    r = rig(tmp_path, mode)
    sources: list[list[WakeSource]] = []

    def open_sources(*args: object) -> list[WakeSource]:
        sources.append(make(r.daemon))
        return sources[-1]

    r.daemon.parts = dataclasses.replace(r.daemon.parts, sources=open_sources)
    return r


def test_the_loop_reconciles_what_a_source_wakes_and_tells_every_source(tmp_path: Path) -> None:
    made: list[WakeSource] = []

    def make(daemon: Daemon) -> list[WakeSource]:
        pipe, ticks = Pipe(), Ticks(daemon, stop_after=5, wakes=False)
        os.write(pipe.w, b"x")  # readable from the start
        made[:] = [pipe, ticks]
        return made

    r = looping(tmp_path, make)
    r.component.fixed = True
    assert r.daemon.run() == 0
    pipe, ticks = made
    assert isinstance(ticks, Ticks) and ticks.ticks == 5
    # the start, then the pipe's wake (the ticks wake nothing): each source told of both
    assert [g for g, _ in ticks.seen] == [frozenset({"firewall", "files", "ecs", "paths"}), frozenset({ECS})]
    assert r.daemon.counters.reconciles == 2 and r.component.executed == 0
    # closed when the daemon stopped (its number may already be another descriptor's)
    assert isinstance(pipe, Pipe) and pipe.closed


def test_a_source_that_holds_back_its_group_delays_that_reconcile(tmp_path: Path) -> None:
    class Holding(Ticks):
        def hold(self, wake: Wake, now: float) -> None:
            if self.ticks < 3:
                wake.groups.discard(ECS)

    made: list[Ticks] = []

    def make(daemon: Daemon) -> list[WakeSource]:
        made[:] = [Holding(daemon, stop_after=4, wakes=True)]
        return list(made)

    r = looping(tmp_path, make, mode="report")
    assert r.daemon.run() == 0
    # ticks 1 and 2 were held back; 3 and 4 reconciled; report mode never repaired
    assert r.daemon.counters.reconciles == 3 and r.component.executed == 0
    assert r.statuses() == {"fake.check": "drift"}


class Firewall(Drifting):
    wakes_on = FIREWALL
    after_repair = frozenset({PATHS})


class SlowPaths(Base):
    """A slow check (the probe): each look blocks until the test lets it finish."""

    wakes_on = PATHS
    slow = True
    name = "slow"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.looks = 0

    def inspect(self) -> Inspection[bool]:
        self.looks += 1
        if self.looks > 1:  # the first look is the start's, inline
            assert self.release.wait(10)
        return Inspection((Finding("slow.check", OK, "x", "x", f"look {self.looks}"),))

    def execute(self, inspection: Inspection[bool]) -> None:
        pass


def test_a_repair_never_waits_for_a_slow_check_and_its_old_finding_is_stale_meanwhile(tmp_path: Path) -> None:
    """The probe (0.6 s a look) ran inline after every firewall repair: a deletion landing
    during it waited for it. Now it runs beside the loop; what it found before the repair
    is not shown as ok until it has looked again."""
    r = rig(tmp_path)
    fw, slow = Firewall("fw"), SlowPaths()
    r.daemon.parts = dataclasses.replace(r.daemon.parts, build=lambda p, f: [fw, slow])
    r.daemon._configure(r.daemon.policy)
    pipe = Pipe()
    events: list[str] = []

    class Watch(Ticks):
        def due(self, now: float, wake: Wake) -> None:
            if now < self.next:
                return
            self.next = now + 0.01
            self.ticks += 1
            if self.ticks == 2:
                fw.fixed = False
                wake.add({FIREWALL}, "deleted")  # first drift: repaired, slow look queued
            elif self.ticks == 5:
                events.append(f"status during the slow look: {r.statuses()}")
                fw.fixed = False
                wake.add({FIREWALL}, "deleted again")  # must be repaired while the look blocks
            elif self.ticks == 8:
                events.append(f"repairs while it blocked: {fw.executed}")
                slow.release.set()
            elif self.ticks >= 40:
                self.daemon.stop_requested = True

    r.daemon.parts = dataclasses.replace(
        r.daemon.parts, sources=lambda *a: [pipe, Watch(r.daemon, stop_after=10**6, wakes=False)])
    fw.fixed = True
    assert r.daemon.run() == 0
    during, repairs = events
    assert "'slow.check': 'stale'" in during and "'fw.check': 'ok'" in during
    assert repairs == "repairs while it blocked: 2"
    assert r.statuses() == {"fw.check": "ok", "slow.check": "ok"}
    observed = {f["check"]: f["observed"] for f in r.status()["findings"]}
    assert all(observed.values())


def test_a_change_a_source_holds_back_makes_its_group_stale_until_looked_at(tmp_path: Path) -> None:
    class Holding(Ticks):
        def pending(self) -> set[str]:
            return {ECS} if self.ticks < 3 else set()

    r = rig(tmp_path)
    r.component.fixed = True
    r.daemon.reconcile(why="start")
    assert r.statuses() == {"fake.check": "ok"}
    r.daemon.sources = [Holding(r.daemon, stop_after=99, wakes=False)]
    r.daemon.publish(heartbeat=True)
    assert r.statuses() == {"fake.check": "stale"} and r.status()["compliant"] is False
    assert "last seen ok at 20" in r.status()["findings"][0]["detail"]
    r.daemon.sources[0].ticks = 3  # type: ignore[attr-defined]
    r.daemon.publish(heartbeat=True)
    assert r.statuses() == {"fake.check": "ok"}
