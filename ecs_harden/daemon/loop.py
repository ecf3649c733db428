"""Daemon: `ecs-harden run`. Reconcile at start, then on every change it can observe.

What it can observe, and when, is the wake sources' business (daemon.sources:
kernel events, the legacy table probe, the file watch) and the schedule's
(daemon.wakeups: resync, retry, heartbeat, watchdog); this module runs the loop
over them, reconciles what they wake, publishes (daemon.publisher) and handles
signals.
"""

from __future__ import annotations

import dataclasses
import os
import selectors
import signal
import socket
import time
import typing
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Optional

from ecs_harden import __version__, logs
from ecs_harden import facts as facts_mod
from ecs_harden import policy as policy_mod
from ecs_harden.assembly import daemon_components
from ecs_harden.assembly import families as families_of
from ecs_harden.component import AnyComponent
from ecs_harden.daemon.background import SlowChecks
from ecs_harden.daemon.notify import Notifier
from ecs_harden.daemon.publisher import PolicyState, StatusPublisher
from ecs_harden.daemon.sources import open_sources
from ecs_harden.daemon.wakeups import ALL, BOTH, Schedule, Wake, WakeSource
from ecs_harden.errors import HardenError, PolicyError
from ecs_harden.facts import Facts, iso
from ecs_harden.findinglog import FindingLog
from ecs_harden.lock import DAEMON_TIMEOUT, ReconcileLock
from ecs_harden.policy import Policy
from ecs_harden.reconcile import Reconciler, failed_finding
from ecs_harden.report import ERROR, STALE, Finding, Report, stale_finding
from ecs_harden.statusfile import Counters

Clock = typing.Callable[[], float]
OpenSources = typing.Callable[
    [Facts, Policy, typing.Collection[int], typing.Sequence[str], Clock], typing.Sequence[WakeSource]
]


def daemon_lock() -> AbstractContextManager[object]:
    return ReconcileLock(timeout=DAEMON_TIMEOUT)


@dataclass(frozen=True)
class Parts:
    """What the daemon takes from outside, so that unit tests can hand it fakes: the
    host's facts, the components a policy makes, the policy loader, the reconcile lock,
    and the wake sources (from the facts, the policy, its IP families, the watched
    paths and the clock)."""

    gather: Callable[[], Facts] = facts_mod.gather
    build: Callable[[Policy, Facts], Sequence[AnyComponent]] = daemon_components
    load: Callable[[Optional[str]], Policy] = policy_mod.load
    lock: Callable[[], AbstractContextManager[object]] = daemon_lock
    sources: OpenSources = open_sources


class Daemon:
    def __init__(
        self,
        policy: Policy,
        policy_path: str | None,
        *,
        interval: float | None = None,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.monotonic,
        parts: Parts | None = None,
    ):
        self.policy_path = policy_path
        self.interval_override = interval
        self.notifier = notifier or Notifier()
        self.clock = clock
        self.parts = parts or Parts()
        self.publisher = StatusPublisher(self.notifier)
        self.log = logs.get("ecs_harden.daemon")
        self.counters = Counters()
        self.findings: dict[int, list[Finding]] = {}
        self.observed: dict[int, float] = {}  # component -> when its findings were looked at (wall)
        self.unseen: dict[int, float] = {}  # component -> a change it has not been looked at since
        self.generation = 0
        self.slow: SlowChecks[tuple[list[Finding], list[str]]] | None = None
        self._published_stale: frozenset[int] | None = None
        self.stop_requested = False
        self.reload_requested = False
        self.sources: list[WakeSource] = []
        self.finding_log = FindingLog()
        self.policy_state = PolicyState()
        self._configure(policy)

    # -- set-up -----------------------------------------------------------
    def _configure(self, policy: Policy) -> None:
        if self.interval_override is not None:
            policy = dataclasses.replace(policy, interval=self.interval_override)
        self.policy = policy
        self.facts = self.parts.gather()
        self.components = list(self.parts.build(policy, self.facts))
        self.reconciler = Reconciler(policy, self.facts.platform(), self.components, self.finding_log)
        self.findings = {}
        self.observed = {}
        self.unseen = {}
        self.generation += 1
        self.watched = list(dict.fromkeys(path for c in self.components for path in c.watches()))

    def _open_sources(self) -> None:
        self._close_sources()
        self.sources = list(self.parts.sources(
            self.facts, self.policy, families_of(self.policy), self.watched, self.clock))

    def _close_sources(self) -> None:
        for source in self.sources:
            source.close()
        self.sources = []

    # -- reconcile --------------------------------------------------------
    def reconcile(
        self, groups: Collection[str] = ALL, *, why: str, families: Collection[int] = BOTH,
        inline: bool = False,
    ) -> bool:
        """Reconcile the components of the given groups (live checks: of the given IP
        families); True when no error. The slow checks go to the worker thread unless
        inline (`run --once`: its exit code says what every check found). READY never
        waits for them: the block is in place when it is sent; the slow checks' findings
        are `stale`, not looked at yet, until they have looked."""
        t0 = time.monotonic()
        errors: list[str] = []
        for source in self.sources:
            source.before(groups, families)
        chosen = [(i, c) for i, c in enumerate(self.components) if c.wakes_on in groups
                  and (c.family is None or c.family in families)]
        background = self.slow is not None and not inline
        try:
            with self.parts.lock():
                again: set[str] = set()
                for i, component in chosen:
                    before = self.counters.repairs
                    errors += self._look(i, component, background=background, changed=False)
                    if self.counters.repairs > before:
                        again |= component.after_repair
                # What a repair says must be looked at again (after a firewall repair: the
                # paths): the quick checks now, the slow ones beside the loop (a repair
                # never waits for them).
                for i, component in enumerate(self.components):
                    if component.wakes_on in again - set(groups):
                        errors += self._look(i, component, background=background, changed=True)
        except HardenError as exc:  # the lock: held too long, or refused
            self.log.error("reconcile.lock_failed", error=str(exc))
            errors.append(str(exc))
            for i, component in chosen:  # not looked at: nothing may say it holds
                self.findings[i] = [
                    failed_finding(f, f"not reconciled: {exc}")
                    for f in self.findings.get(i) or [Finding(component.name, ERROR)]
                ]
        self.counters.reconciles += 1
        self.counters.last_duration = time.monotonic() - t0
        self.counters.last_reconcile = time.time()
        self.counters.last_error = errors[-1] if errors else None
        self.counters.errors += 1 if errors else 0
        for source in self.sources:
            source.after(groups, not errors, self.clock())
        self.log.debug("reconcile.done", why=why, groups=list(groups),
                       duration=round(self.counters.last_duration, 4), errors=len(errors))
        self.publish()
        return not errors

    def _look(self, i: int, component: AnyComponent, *, background: bool, changed: bool) -> list[str]:
        """Reconcile one component now, or a slow one beside the loop (changed: a change
        it has not seen is known, so its findings are stale until it has looked)."""
        if background and component.slow:
            self._submit(i, component, changed=changed)
            return []
        return self._reconcile_one(i, component)

    def _reconcile_one(self, i: int, component: AnyComponent) -> list[str]:
        # A crash of the component is an error finding already (Reconciler.run_component).
        started = time.time()
        found, _, errs = self.reconciler.run_component(component, repair=True)
        self._record(i, found, started)
        return errs

    def _record(self, i: int, found: list[Finding], started: float, looked: float | None = None) -> None:
        """looked: when a slow check had looked (it may take seconds; `status` ages it from there)."""
        self.findings[i] = found
        self.observed[i] = looked if looked is not None else started
        if self.unseen.get(i, float("inf")) <= started:
            del self.unseen[i]
        for f in found:
            if f.changed:
                self.counters.repairs += 1
                self.counters.repairs_by_check[f.check] = self.counters.repairs_by_check.get(f.check, 0) + 1

    def _submit(self, i: int, component: AnyComponent, *, changed: bool) -> None:
        assert self.slow is not None
        if changed:
            self.unseen.setdefault(i, time.time())
        if i not in self.findings:  # never looked at: shown, and stale, until it has
            self.findings[i] = [Finding(component.name, STALE)]
            self.unseen.setdefault(i, 0.0)

        def run() -> tuple[list[Finding], list[str]]:
            found, _, errs = self.reconciler.run_component(component, repair=True)
            return found, errs

        self.slow.submit(self.generation, i, run)

    def _collect(self) -> None:
        """Record what the slow checks found (of this configuration), and publish it."""
        assert self.slow is not None
        done = [d for d in self.slow.collect() if d.generation == self.generation]
        for d in done:
            found, errs = d.result
            self._record(d.index, found, d.started, d.finished)
            if errs:
                self.counters.last_error = errs[-1]
                self.counters.errors += 1
        if done:
            self.publish()

    def stale(self) -> dict[int, str]:
        """Components whose findings predate a change the daemon knows of: why."""
        out = {i: "a firewall repair" if since else "the daemon started (it runs beside the loop)"
               for i, since in self.unseen.items()}
        held = set().union(*(s.pending() for s in self.sources)) if self.sources else set()
        for i, component in enumerate(self.components):
            if component.wakes_on in held and i not in out:
                out[i] = f"a change to what {component.wakes_on} checks read (not yet looked at)"
        return out

    def report(self) -> Report:
        stale = self.stale()
        found = []
        for i in sorted(self.findings):
            seen = iso(self.observed[i]) if i in self.observed else None
            for f in self.findings[i]:
                f = dataclasses.replace(f, observed=seen)
                found.append(stale_finding(f, stale[i]) if i in stale else f)
        return Report(self.policy.mode, self.facts.platform(), tuple(found))

    def publish(self, *, heartbeat: bool = False) -> None:
        stale = frozenset(self.stale())
        fresh = not heartbeat or not self.publisher.published or stale != self._published_stale
        self._published_stale = stale
        self.publisher.publish(self.report() if fresh else None, self.policy, self.counters,
                               self.policy_state)

    def summary(self) -> str:
        return self.publisher.summary(self.report(), self.policy, self.counters, self.policy_state)

    # -- main loop --------------------------------------------------------
    def _signals(self, sel: selectors.BaseSelector) -> socket.socket:
        rsock, wsock = socket.socketpair()
        rsock.setblocking(False)
        wsock.setblocking(False)
        signal.set_wakeup_fd(wsock.fileno(), warn_on_full_buffer=False)

        def on_stop(signum: int, frame: object) -> None:
            self.stop_requested = True

        def on_hup(signum: int, frame: object) -> None:
            self.reload_requested = True

        self._handlers = {sig: signal.signal(sig, handler) for sig, handler in
                          ((signal.SIGTERM, on_stop), (signal.SIGINT, on_stop), (signal.SIGHUP, on_hup))}
        sel.register(rsock, selectors.EVENT_READ, None)
        self._wsock = wsock
        return rsock

    def reload(self) -> None:
        self.reload_requested = False
        self.notifier.reloading()
        try:
            policy = self.parts.load(self.policy_path)
        except PolicyError as exc:
            self.log.error("policy.reload_failed", error=str(exc), kept=self.policy.source)
            self.policy_state.reload_error = str(exc)
            self.publish()
            self.notifier.status(f"policy reload failed, kept the old one: {exc}")
            self.notifier.send("READY=1")
            return
        self.policy_state = PolicyState()
        self._configure(policy)
        self._open_sources()
        self.log.info("policy.reloaded", source=policy.source)
        self.reconcile(why="reload")
        self.notifier.send("READY=1")

    def run(self, *, once: bool = False) -> int:
        self.log.info("daemon.started", version=__version__, pid=os.getpid(), mode=self.policy.mode,
                      iptables=self.facts.iptables, flavor=self.facts.flavor,
                      interval=self.policy.interval, resync=self.policy.resync)
        if once:
            ok = self.reconcile(why="once", inline=True)
            return 1 if not ok else (0 if self.report().compliant else 3)
        self._open_sources()
        sel = selectors.DefaultSelector()
        rsock = self._signals(sel)  # before READY: a stop right after it must be handled
        self.slow = SlowChecks(time.time)
        sel.register(self.slow.fileno(), selectors.EVENT_READ, self.slow)
        ok = self.reconcile(why="start")
        self.notifier.ready(self.summary())
        sched = self._schedule()
        sched.reconciled(ok, self.clock())
        registered: dict[int, WakeSource] = {}
        try:
            while not self.stop_requested:
                registered = self._register(sel, registered)
                if self._idle(sel, sched):
                    continue
                events = sel.select(max(0.0, sched.earliest(self.sources) - self.clock()))
                now = self.clock()
                wake = Wake()
                for key, _ in events:
                    if key.data is None:
                        self._drain(rsock)
                    elif key.data is self.slow:
                        self._collect()
                    else:
                        key.data.readable(now, wake)
                if self.stop_requested:
                    break
                if self.reload_requested:
                    self.reload()
                    sched = self._schedule()
                    continue
                self._due(sched, wake, now)
                if wake:
                    ok = self.reconcile(wake.groups, why=", ".join(wake.why), families=wake.families)
                    complete = wake.groups >= ALL and wake.families >= BOTH
                    backoff = sched.reconciled(ok, self.clock(), complete=complete)
                    if backoff is not None:
                        self.log.warning("reconcile.retry_scheduled", seconds=backoff)
                heartbeat, watchdog = sched.beats(self.clock())
                if heartbeat:
                    self.publish(heartbeat=True)
                if watchdog:
                    self.notifier.watchdog()
        finally:
            signal.set_wakeup_fd(-1)
            for sig, handler in self._handlers.items():
                signal.signal(sig, handler)
            sel.close()
            rsock.close()
            self._wsock.close()
            self._close_sources()
            if self.slow is not None:
                self.slow.close()
                self.slow = None
        self.notifier.stopping()
        self.publisher.stopped(self.policy, self.counters)  # the textfile: nobody watches any more
        self.log.info("daemon.stopped", reconciles=self.counters.reconciles,
                      repairs=self.counters.repairs, rules="left in place")
        return 0

    def _schedule(self) -> Schedule:
        return Schedule(self.clock(), interval=self.policy.interval, resync=self.policy.resync,
                        watchdog=self.notifier.watchdog_interval)

    def _register(
        self, sel: selectors.BaseSelector, registered: dict[int, WakeSource]
    ) -> dict[int, WakeSource]:
        """Select on the sources' descriptors (they change on reload and when a source
        gives up its descriptor)."""
        wanted = {fd: s for s in self.sources if (fd := s.fileno()) >= 0}
        if wanted != registered:
            for fd in registered:
                sel.unregister(fd)
            for fd, source in wanted.items():
                sel.register(fd, selectors.EVENT_READ, source)
        return wanted

    def _idle(self, sel: selectors.BaseSelector, sched: Schedule) -> bool:
        """Let a source that carries the timers tick on its own until something else is due."""
        def select(timeout: float) -> bool:
            return bool(sel.select(timeout))

        def interrupted() -> bool:
            return self.stop_requested or self.reload_requested

        return any(s.idle(select, sched.others(s, self.sources), interrupted)
                   for s in self.sources if s.carries_timers)

    @staticmethod
    def _drain(rsock: socket.socket) -> None:
        try:
            while rsock.recv(64):
                pass
        except BlockingIOError:
            pass

    def _due(self, sched: Schedule, wake: Wake, now: float) -> None:
        """Add to wake what the timers and the sources say is due, without what a
        source holds back (a file still being written)."""
        sched.due(wake, now)
        for source in self.sources:
            source.due(now, wake)
        for source in self.sources:
            source.hold(wake, now)
