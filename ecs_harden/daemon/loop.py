"""Daemon: `ecs-harden run`. Reconcile at start, then on every change it can observe.

When it wakes is daemon.wakeups' business (kernel events, the legacy table probe,
file signatures, timers); this module reconciles, publishes the status file and
metrics, speaks the systemd notify protocol and handles signals.
"""

from __future__ import annotations

import dataclasses
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Optional

from ecs_harden import facts as facts_mod
from ecs_harden import logs, proc
from ecs_harden import policy as policy_mod
from ecs_harden.atomic import Identity, file_identity
from ecs_harden.component import ECS, FILES, FIREWALL, Component
from ecs_harden.daemon.filewatch import FileWatch
from ecs_harden.daemon.legacyprobe import TableProbe
from ecs_harden.daemon.nftevents import NftEvents, Overflow
from ecs_harden.daemon.notify import Notifier
from ecs_harden.daemon.publisher import Counters, PolicyState, StatusPublisher
from ecs_harden.daemon.wakeups import (
    ALL,
    BOTH,
    LEGACY_FULL,
    PROBE_MIN,
    PROBES_PER_INTERVAL,
    SETTLE,
    Schedule,
    Wake,
)
from ecs_harden.errors import HardenError, PolicyError
from ecs_harden.facts import Facts
from ecs_harden.findinglog import FindingLog
from ecs_harden.firewall.netlink import generation as nf_generation
from ecs_harden.lock import DAEMON_TIMEOUT, ReconcileLock
from ecs_harden.policy import Policy
from ecs_harden.reconcile import Reconciler, build_components, failed_finding
from ecs_harden.reconcile import families as families_of
from ecs_harden.report import ERROR, Finding, Report


def daemon_lock() -> AbstractContextManager[object]:
    return ReconcileLock(timeout=DAEMON_TIMEOUT)


@dataclass(frozen=True)
class Parts:
    """What the daemon takes from outside, so that unit tests can hand it fakes: the
    host's facts, the components a policy makes, the policy loader, the reconcile lock,
    and whether to open the kernel's and the file system's change sources."""

    gather: Callable[[], Facts] = facts_mod.gather
    build: Callable[[Policy, Facts], Sequence[Component]] = build_components
    load: Callable[[Optional[str]], Policy] = policy_mod.load
    lock: Callable[[], AbstractContextManager[object]] = daemon_lock
    sources: bool = True


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
        self.stop_requested = False
        self.reload_requested = False
        self.nft: NftEvents | None = None
        self.probe: TableProbe | None = None  # legacy iptables: no events, probe the tables
        self.files: FileWatch | None = None
        self.baseline: tuple[bytes, ...] = ()
        self.finding_log = FindingLog()
        self.fw_generation: int | None = None  # nf_tables generation of the last full firewall check
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
        self.watched = list(dict.fromkeys(path for c in self.components for path in c.watches()))
        self._file_sig = self._signature()

    def _open_watchers(self) -> None:
        self._close_watchers()
        if not self.parts.sources:
            return
        if self.facts.iptables == "nf_tables":
            try:
                self.nft = NftEvents()
            except OSError as exc:
                self.log.warning("nftevents.unavailable", error=str(exc))
        else:
            try:
                self.probe = TableProbe(families_of(self.policy))
            except OSError as exc:
                self.log.warning("tableprobe.unavailable", error=str(exc))
        try:
            self.files = FileWatch(self.watched)
        except OSError as exc:
            self.log.warning("filewatch.unavailable", error=str(exc))

    def _close_watchers(self) -> None:
        if self.files is not None:
            self.files.close()
            self.files = None
        if self.nft is not None:
            self.nft.close()
            self.nft = None
        if self.probe is not None:
            self.probe.close()
            self.probe = None

    def _probe_changed(self) -> set[int]:
        """The families whose legacy tables changed since the baseline."""
        assert self.probe is not None
        try:
            now = self.probe.signature()
        except OSError as exc:
            self.log.warning("tableprobe.failed", error=str(exc))
            self.probe.close()
            self.probe = None
            return set(BOTH)
        return self.probe.changed(self.baseline, now)

    def _signature(self) -> list[Identity]:
        return [file_identity(path) for path in self.watched]

    def _settling(self) -> float:
        """Seconds until every watched file is SETTLE old (its last change, ctime: not
        settable by `touch -d`); 0 when all are. A change dated more than a second in
        the future (the clock went back) counts as settled, or the daemon would wait for
        it; the clock is read after the stat, which may see a change made just now."""
        settle = int(SETTLE * 1e9)
        wait = 0
        for path in self.watched:
            try:
                ctime = os.stat(path).st_ctime_ns
            except OSError:
                continue
            age = time.time_ns() - ctime
            if -1_000_000_000 < age < settle:
                wait = max(wait, settle - max(age, 0))
        return wait / 1e9

    # -- reconcile --------------------------------------------------------
    def reconcile(
        self, groups: Collection[str] = ALL, *, why: str, families: Collection[int] = BOTH
    ) -> bool:
        """Reconcile the components of the given groups (live checks: of the given IP
        families); True when no error."""
        t0 = time.monotonic()
        errors: list[str] = []
        if self.probe is not None and FIREWALL in groups:
            # Taken before reading: a change made while we reconcile shows at the next probe.
            try:
                self.baseline = self.probe.signature()
            except OSError:
                self.baseline = ()
        generation = None
        if self.nft is not None and FIREWALL in groups and set(families) >= set(families_of(self.policy)):
            generation = self._generation()  # before reading, as the probe's baseline
        chosen = [(i, c) for i, c in enumerate(self.components) if c.wakes_on in groups
                  and not (c.wakes_on == FIREWALL and c.family is not None and c.family not in families)]
        try:
            with self.parts.lock():
                for i, component in chosen:
                    errors += self._reconcile_one(i, component)
        except HardenError as exc:  # the lock: held too long, or refused
            self.log.error("reconcile.lock_failed", error=str(exc))
            errors.append(str(exc))
            for i, component in chosen:  # not looked at: nothing may say it holds
                self.findings[i] = [
                    failed_finding(f, f"not reconciled: {exc}")
                    for f in self.findings.get(i) or [Finding(component.name, ERROR)]
                ]
        if FIREWALL in groups:
            self.fw_generation = generation if not errors else None
        self.counters.reconciles += 1
        self.counters.last_duration = time.monotonic() - t0
        self.counters.last_reconcile = time.time()
        self.counters.last_error = errors[-1] if errors else None
        if FILES in groups or ECS in groups:
            self._file_sig = self._signature()
            if self.files is not None:
                try:
                    self.files.rewatch()
                except OSError as exc:
                    self.log.warning("filewatch.failed", error=str(exc))
        self.log.debug("reconcile.done", why=why, groups=list(groups),
                       duration=round(self.counters.last_duration, 4), errors=len(errors))
        self.publish()
        return not errors

    def _reconcile_one(self, i: int, component: Component) -> list[str]:
        # A crash of the component is an error finding already (Reconciler.run_component).
        found, _, errs = self.reconciler.run_component(component, repair=True)
        self.findings[i] = found
        self.counters.repairs += sum(1 for f in found if f.changed)
        return errs

    def report(self) -> Report:
        found = [f for i in sorted(self.findings) for f in self.findings[i]]
        return Report(self.policy.mode, self.facts.platform(), tuple(found))

    def publish(self, *, heartbeat: bool = False) -> None:
        report = None if heartbeat and self.publisher.published else self.report()
        self.publisher.publish(report, self.policy, self.counters, self.policy_state)

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

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)
        sel.register(rsock, selectors.EVENT_READ, "signal")
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
        self._open_watchers()
        self.log.info("policy.reloaded", source=policy.source)
        self.reconcile(why="reload")
        self.notifier.send("READY=1")

    def run(self, *, once: bool = False) -> int:
        self.log.info("daemon.started", pid=os.getpid(), mode=self.policy.mode,
                      iptables=self.facts.iptables, flavor=self.facts.flavor,
                      interval=self.policy.interval, resync=self.policy.resync)
        self._open_watchers()
        if once:
            ok = self.reconcile(why="once")
            self._close_watchers()
            return 1 if not ok else (0 if self.report().compliant else 3)
        sel = selectors.DefaultSelector()
        rsock = self._signals(sel)  # before READY: a stop right after it must be handled
        ok = self.reconcile(why="start")
        self.notifier.ready(self.summary())
        sched = self._schedule()
        sched.reconciled(ok, self.clock())
        registered: list[Any] = []
        try:
            while not self.stop_requested:
                watchers = [w for w in (self.nft, self.files) if w is not None]
                if watchers != registered:
                    for w in registered:
                        sel.unregister(w)
                    for w in watchers:
                        sel.register(w, selectors.EVENT_READ, "nft" if w is self.nft else "files")
                    registered = watchers
                if self.probe is not None and self._quiet_ticks(sel, sched):
                    continue
                events = sel.select(max(0.0, sched.earliest() - self.clock()))
                now = self.clock()
                wake = Wake()
                for key, _ in events:
                    if key.data == "signal":
                        self._drain(rsock)
                    elif key.data == "nft" and self.nft is not None:
                        self._on_nft(sched, wake, now)
                    elif key.data == "files" and self.files is not None and self.files.drain() \
                            and self._signature() != self._file_sig:
                        wake.add({FILES, ECS}, "file changed")
                if self.stop_requested:
                    break
                if self.reload_requested:
                    self.reload()
                    sched = self._schedule()
                    continue
                self._due(sched, wake, now)
                if wake.groups & {FILES, ECS}:
                    sched.defer_files(wake, now, self._settling())
                if wake:
                    ok = self.reconcile(wake.groups, why=", ".join(wake.why), families=wake.families)
                    backoff = sched.reconciled(ok, self.clock())
                    if backoff is not None:
                        self.log.warning("reconcile.retry_scheduled", seconds=backoff)
                now = self.clock()
                if now >= sched.heartbeat:
                    sched.heartbeat = now + self.policy.interval
                    self.publish(heartbeat=True)
                    if sched.watchdog_every and sched.watchdog_every > self.policy.interval:
                        self.notifier.watchdog()
                        sched.watchdog = now + sched.watchdog_every
                if sched.watchdog is not None and sched.watchdog_every and now >= sched.watchdog:
                    self.notifier.watchdog()
                    sched.watchdog = now + sched.watchdog_every
        finally:
            signal.set_wakeup_fd(-1)
            sel.close()
            rsock.close()
            self._wsock.close()
            self._close_watchers()
        self.notifier.stopping()
        self.log.info("daemon.stopped", reconciles=self.counters.reconciles,
                      repairs=self.counters.repairs, rules="left in place")
        return 0

    def _schedule(self) -> Schedule:
        return Schedule(self.clock(), interval=self.policy.interval, resync=self.policy.resync,
                        probe_every=self._probe_every(), polling_files=self.files is None,
                        watchdog=self.notifier.watchdog_interval)

    def _quiet_ticks(self, sel: selectors.BaseSelector, sched: Schedule) -> bool:
        """Legacy idle: probe tick after probe tick while nothing else is due, touching as
        little as possible (a wakeup is most of an idle daemon's cost). False when the
        general loop has something to do: an event, a changed table, another timer."""
        assert self.probe is not None and sched.probe is not None and sched.probe_every is not None
        others = min(d for d in (sched.resync, sched.heartbeat, sched.file, sched.watchdog,
                                 sched.retry, sched.pending_at, sched.settle) if d is not None)
        clock, probe, baseline, every = self.clock, self.probe, self.baseline, sched.probe_every
        ticked = False
        while True:
            now = clock()
            if now >= others or self.stop_requested or self.reload_requested:
                return ticked
            if now < sched.probe:
                if sel.select(min(sched.probe, others) - now):
                    return ticked
                continue
            sched.probe = now + every
            try:
                if probe.signature() != baseline:
                    sched.probe = now  # let the general loop see it at once
                    return ticked
            except OSError:
                sched.probe = now
                return ticked
            ticked = True

    def _probe_every(self) -> float | None:
        """How often to look at the firewall without being told: the legacy probe's
        period, every interval when there is neither events nor probe, else never."""
        if self.probe is not None:
            return max(PROBE_MIN, self.policy.interval / PROBES_PER_INTERVAL)
        return self.policy.interval if self.nft is None else None

    @staticmethod
    def _drain(rsock: socket.socket) -> None:
        try:
            while rsock.recv(64):
                pass
        except BlockingIOError:
            pass

    def _on_nft(self, sched: Schedule, wake: Wake, now: float) -> None:
        assert self.nft is not None
        try:
            batch = self.nft.drain()
        except Overflow:
            self.log.warning("nftevents.overflow")
            wake.add(ALL, "enobufs")
            return
        if not batch.messages:
            return
        ours = set(proc.recent_pids)
        if batch.writers and batch.writers <= ours and not batch.other:
            return  # the echo of our own commit
        fams = set(batch.families) if batch.families and not batch.other else set(BOTH)
        sched.event(wake, now, fams, "nftables event")

    def _generation(self) -> int | None:
        try:
            return nf_generation()
        except OSError as exc:
            self.log.debug("nftables.generation_failed", error=str(exc))
            return None

    def _due(self, sched: Schedule, wake: Wake, now: float) -> None:
        sched.due(wake, now)
        # nf_tables numbers every commit: the same generation is the same ruleset, so on
        # a resync the firewall checks would find what they found last time.
        if wake.why == ["resync"] and self.fw_generation is not None \
                and self._generation() == self.fw_generation:
            wake.groups.discard(FIREWALL)
        # Legacy: the probe sees every insert, delete and flush at once; what it cannot
        # see (a same-size replacement) waits for a full check every LEGACY_FULL resyncs.
        if wake.why == ["resync"] and self.probe is not None:
            if now < sched.full_firewall:
                wake.groups.discard(FIREWALL)
            else:
                sched.full_firewall = now + LEGACY_FULL * self.policy.resync
        if sched.probe is not None and sched.probe_every is not None and now >= sched.probe:
            sched.probe = now + sched.probe_every
            if self.probe is None:  # no events and no probe: the checks themselves
                sched.probe_every = self.policy.interval
                wake.add({FIREWALL}, "poll")
            elif changed := self._probe_changed():
                wake.add({FIREWALL}, "legacy table changed", changed)
        if sched.file is not None and sched.file_every is not None and now >= sched.file:
            sched.file = now + sched.file_every
            if self._signature() != self._file_sig:
                wake.add({FILES, ECS}, "file changed")
