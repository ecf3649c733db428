"""Daemon: `ecs-harden run`. Reconcile at start, then on every change it can observe.

Triggers, cheapest first:
- nf_tables hosts: kernel change notifications (NftEvents), coalesced for 50 ms;
- legacy hosts: the firewall checks themselves every `interval` seconds (python-iptables
  reads only the few chains the checks need; measured cheaper than fingerprinting the
  whole table blob, see bench/);
- ecs.config and the persisted rules files: a stat() signature once a second;
- everything: a full reconcile every `resync` seconds, and at once after ENOBUFS;
- a failed reconcile: retried with exponential backoff (1 s .. 60 s).
The status file is rewritten after every reconcile and at least every `interval`.
"""

from __future__ import annotations

import dataclasses
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ecs_harden import facts as facts_mod
from ecs_harden import logs
from ecs_harden import policy as policy_mod
from ecs_harden.component import Component
from ecs_harden.daemon.nftevents import NftEvents, Overflow
from ecs_harden.daemon.notify import Notifier
from ecs_harden.daemon.status import metrics_text, write_metrics, write_status
from ecs_harden.ecsconfig.agent import AgentRestartComponent
from ecs_harden.ecsconfig.component import EcsConfigComponent
from ecs_harden.errors import HardenError, PolicyError
from ecs_harden.facts import iso
from ecs_harden.imds.bridges import BridgesComponent
from ecs_harden.imds.live import LiveBlockComponent
from ecs_harden.lock import DAEMON_TIMEOUT, ReconcileLock
from ecs_harden.persist.files import PersistedFileComponent
from ecs_harden.persist.service import ServiceComponent
from ecs_harden.policy import Policy
from ecs_harden.reconcile import Reconciler, build_components
from ecs_harden.report import DRIFT, ERROR, Finding, Report

FIREWALL, FILES, ECS = "firewall", "files", "ecs"
COALESCE = 0.05
COALESCE_MAX = 0.25
FILE_POLL = 1.0
BACKOFF_MAX = 60.0


def group_of(component: Component) -> str:
    if isinstance(component, (LiveBlockComponent, BridgesComponent)):
        return FIREWALL
    if isinstance(component, (PersistedFileComponent, ServiceComponent)):
        return FILES
    if isinstance(component, (EcsConfigComponent, AgentRestartComponent)):
        return ECS
    return FILES


@dataclass
class Counters:
    started: float = field(default_factory=time.time)
    reconciles: int = 0
    repairs: int = 0
    last_error: str | None = None
    last_reconcile: float = 0.0
    last_duration: float = 0.0


class Daemon:
    def __init__(
        self,
        policy: Policy,
        policy_path: str | None,
        *,
        interval: float | None = None,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.policy_path = policy_path
        self.interval_override = interval
        self.notifier = notifier or Notifier()
        self.clock = clock
        self.log = logs.get("ecs_harden.daemon")
        self.counters = Counters()
        self.findings: dict[int, list[Finding]] = {}
        self.stop_requested = False
        self.reload_requested = False
        self.nft: NftEvents | None = None
        self.polling = False  # legacy iptables: nothing to observe, poll
        self.policy_error: str | None = None  # the last reload that failed, while it stands
        self.policy_loaded = time.time()
        self._configure(policy)

    # -- set-up -----------------------------------------------------------
    def _configure(self, policy: Policy) -> None:
        if self.interval_override is not None:
            policy = dataclasses.replace(policy, interval=self.interval_override)
        self.policy = policy
        self.facts = facts_mod.gather()
        self.components = build_components(policy, self.facts)
        self.reconciler = Reconciler(policy, self.facts.platform(), self.components)
        self.findings = {}
        self.watched = [policy.ecs_config.path] + [
            c.path for c in self.components if isinstance(c, PersistedFileComponent) and c.path
        ]
        self._file_sig = self._signature()

    def _open_watchers(self) -> None:
        self._close_watchers()
        if self.facts.iptables == "nf_tables":
            try:
                self.nft = NftEvents()
            except OSError as exc:
                self.log.warning("nftevents.unavailable", error=str(exc))
        self.polling = self.nft is None

    def _close_watchers(self) -> None:
        if self.nft is not None:
            self.nft.close()
            self.nft = None

    def _signature(self) -> list[tuple[int, int, int] | None]:
        out: list[tuple[int, int, int] | None] = []
        for path in self.watched:
            try:
                st = os.stat(path)
                out.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                out.append(None)
        return out

    # -- reconcile --------------------------------------------------------
    def reconcile(self, groups: tuple[str, ...] = (FIREWALL, FILES, ECS), *, why: str) -> bool:
        """Reconcile the components of the given groups; True when no error."""
        t0 = time.monotonic()
        errors: list[str] = []
        try:
            with ReconcileLock(timeout=DAEMON_TIMEOUT):
                for i, component in enumerate(self.components):
                    if group_of(component) in groups:
                        errors += self._reconcile_one(i, component)
        except HardenError as exc:  # the lock: another ecs-harden holds it too long
            self.log.error("reconcile.lock_failed", error=str(exc))
            errors.append(str(exc))
        self.counters.reconciles += 1
        self.counters.last_duration = time.monotonic() - t0
        self.counters.last_reconcile = time.time()
        self.counters.last_error = errors[-1] if errors else None
        if FILES in groups or ECS in groups:
            self._file_sig = self._signature()
        self.log.debug("reconcile.done", why=why, groups=list(groups),
                       duration=round(self.counters.last_duration, 4), errors=len(errors))
        self.publish()
        return not errors

    def _reconcile_one(self, i: int, component: Component) -> list[str]:
        try:
            found, _, errs = self.reconciler.run_component(component, repair=True)
        except Exception as exc:  # a bug must not kill the daemon
            self.log.exception("reconcile.crashed", component=component.name)
            found, errs = [Finding(component.name, ERROR, detail=str(exc))], [str(exc)]
        self.findings[i] = found
        self.counters.repairs += sum(1 for f in found if f.changed)
        return errs

    def report(self) -> Report:
        found = [f for i in sorted(self.findings) for f in self.findings[i]]
        return Report(self.policy.mode, self.facts.platform(), tuple(found))

    def daemon_fields(self) -> dict[str, Any]:
        c = self.counters
        return {
            "pid": os.getpid(),
            "started": iso(c.started),
            "reconciles": c.reconciles,
            "repairs": c.repairs,
            "last_error": c.last_error,
            "last_reconcile": iso(c.last_reconcile) if c.last_reconcile else None,
            "interval": self.policy.interval,
            "heartbeat": iso(time.time()),
            "policy": {
                "source": self.policy.source,
                "loaded": iso(self.policy_loaded),
                "reload_error": self.policy_error,
            },
        }

    def summary(self, report: Report) -> str:
        bad = [f.check for f in report.findings if f.status in (DRIFT, ERROR)]
        if not bad:
            line = f"compliant: {len(report.findings)} checks hold; {self.counters.repairs} repairs"
        else:
            line = f"NOT compliant: {', '.join(bad)}"
        if self.policy_error:
            line += f"; policy reload failed, running the policy from {self.policy.source}"
        return line

    def publish(self) -> None:
        report = self.report()
        try:
            write_status(self.policy.report.status_file, report, self.daemon_fields())
            if self.policy.report.textfile:
                write_metrics(self.policy.report.textfile, metrics_text(
                    report, repairs=self.counters.repairs, duration=self.counters.last_duration,
                    last=self.counters.last_reconcile,
                ))
        except HardenError as exc:
            self.log.error("status.write_failed", error=str(exc))
        self.notifier.status(self.summary(report))

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
            policy = policy_mod.load(self.policy_path)
        except PolicyError as exc:
            self.log.error("policy.reload_failed", error=str(exc), kept=self.policy.source)
            self.policy_error = str(exc)
            self.publish()
            self.notifier.status(f"policy reload failed, kept the old one: {exc}")
            self.notifier.send("READY=1")
            return
        self.policy_error = None
        self.policy_loaded = time.time()
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
        self.notifier.ready(self.summary(self.report()))
        now = self.clock()
        backoff = 0.0
        retry_at: float | None = None if ok else now + 1.0
        if not ok:
            backoff = 1.0
        next_resync = now + self.policy.resync
        next_poll = now + self.policy.interval
        next_file = now + FILE_POLL
        next_heartbeat = now + self.policy.interval
        next_watchdog = now if self.notifier.watchdog_interval else None
        pending_since: float | None = None
        pending_at: float | None = None
        registered_nft: NftEvents | None = None
        try:
            while not self.stop_requested:
                if registered_nft is not self.nft:
                    if registered_nft is not None:
                        sel.unregister(registered_nft)
                    if self.nft is not None:
                        sel.register(self.nft, selectors.EVENT_READ, "nft")
                    registered_nft = self.nft
                deadlines = [next_resync, next_file, next_heartbeat]
                if self.polling:
                    deadlines.append(next_poll)
                for d in (retry_at, pending_at, next_watchdog):
                    if d is not None:
                        deadlines.append(d)
                timeout = max(0.0, min(deadlines) - self.clock())
                events = sel.select(timeout)
                groups: set[str] = set()
                why: list[str] = []
                for key, _ in events:
                    if key.data == "signal":
                        try:
                            while rsock.recv(64):
                                pass
                        except BlockingIOError:
                            pass
                    elif key.data == "nft" and self.nft is not None:
                        try:
                            self.nft.drain()
                            now = self.clock()
                            pending_since = pending_since or now
                            pending_at = min(now + COALESCE, pending_since + COALESCE_MAX)
                        except Overflow:
                            self.log.warning("nftevents.overflow")
                            groups |= {FIREWALL, FILES, ECS}
                            why.append("enobufs")
                if self.stop_requested:
                    break
                if self.reload_requested:
                    self.reload()
                    now = self.clock()
                    next_resync = now + self.policy.resync
                    continue
                now = self.clock()
                if pending_at is not None and now >= pending_at:
                    groups.add(FIREWALL)
                    why.append("nftables event")
                    pending_at = pending_since = None
                if self.polling and now >= next_poll:
                    next_poll = now + self.policy.interval
                    groups.add(FIREWALL)
                    why.append("poll")
                if now >= next_file:
                    next_file = now + FILE_POLL
                    if self._signature() != self._file_sig:
                        groups |= {FILES, ECS}
                        why.append("file changed")
                if now >= next_resync:
                    next_resync = now + self.policy.resync
                    groups |= {FIREWALL, FILES, ECS}
                    why.append("resync")
                if retry_at is not None and now >= retry_at:
                    groups |= {FIREWALL, FILES, ECS}
                    why.append("retry")
                if groups:
                    ok = self.reconcile(tuple(sorted(groups)), why=", ".join(why))
                    next_heartbeat = self.clock() + self.policy.interval
                    if ok:
                        backoff, retry_at = 0.0, None
                    else:
                        backoff = min(BACKOFF_MAX, max(1.0, backoff * 2))
                        retry_at = self.clock() + backoff
                        self.log.warning("reconcile.retry_scheduled", seconds=backoff)
                if self.clock() >= next_heartbeat:
                    next_heartbeat = self.clock() + self.policy.interval
                    self.publish()
                if next_watchdog is not None and self.clock() >= next_watchdog:
                    self.notifier.watchdog()
                    assert self.notifier.watchdog_interval is not None
                    next_watchdog = self.clock() + self.notifier.watchdog_interval
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
