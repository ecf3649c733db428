"""Wake sources: each one watches one thing, says when it next needs the clock (its
deadline) and what a change it sees wakes. The daemon's loop selects on their
descriptors, sleeps until the earliest deadline of theirs and of the schedule's
timers (daemon.wakeups), and knows nothing of what is behind them: a new way of
noticing drift is one class here and one line in `open_sources`.

- NftSource: nf_tables notifications, coalesced after our own reconciles.
- ProbeSource: legacy iptables has none; probe the tables' signatures instead (at once
  when a writer closes the xtables lock).
- PollSource: neither works: run the firewall checks every interval.
- FileSource: inotify on the kept files' directories, or a stat() poll; holds back
  a file that is still being written.
- SliceSource: inotify on the cgroup root, for ecstasks.slice made or removed
  (imds.host_network: block binds its rule to the slice).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Collection, Sequence

from ecs_harden import logs, proc
from ecs_harden.atomic import Identity, file_identity
from ecs_harden.component import ECS, FILES, FIREWALL, PATHS
from ecs_harden.daemon.filewatch import CLOSES, FileWatch
from ecs_harden.daemon.nftevents import NftEvents, Overflow
from ecs_harden.daemon.wakeups import (
    ALL,
    BOTH,
    COALESCE,
    COALESCE_MAX,
    FILE_POLL,
    LOCK_BURST,
    LOCK_BURST_TICKS,
    PROBE_MIN,
    PROBES_PER_INTERVAL,
    PROBES_UNLOCKED,
    QUIET,
    SETTLE,
    SETTLE_MAX,
    Select,
    Wake,
    WakeSource,
)
from ecs_harden.facts import Facts
from ecs_harden.firewall.libiptc import LOCK_PATH as XTABLES_LOCK
from ecs_harden.firewall.tableinfo import TableProbe
from ecs_harden.imds.hostnet import CGROUP_ROOT, TASK_SLICE, cgroup_v2
from ecs_harden.policy import Policy

log = logs.get("ecs_harden.daemon")


class NftSource(WakeSource):
    """nf_tables notifications. Somebody else's change is acted on at once, for the IP
    family whose table changed; the echo of our own commits (the committing pid is one
    we started) is ignored. What arrives within QUIET of the end of a reconcile is
    coalesced (COALESCE after the last event, at most COALESCE_MAX), so a burst of
    Docker changes costs one or two reconciles, never a loop. The resync reads the
    firewall in full whatever the events said (a lost event is never a blind spot)."""

    name = "nftables"

    def __init__(
        self, events: NftEvents, *, ours: Callable[[], set[int]] = lambda: set(proc.recent_pids),
    ):
        self.events = events
        self.ours = ours
        self.coalesced: Wake | None = None
        self.pending_since = 0.0
        self.pending_at: float | None = None
        self.last_end = -1e9

    def fileno(self) -> int:
        return self.events.fileno()

    def deadline(self) -> float | None:
        return self.pending_at

    def readable(self, now: float, wake: Wake) -> None:
        try:
            batch = self.events.drain()
        except Overflow:
            log.warning("nftevents.overflow")
            wake.add(ALL, "enobufs")
            return
        if not batch.messages:
            return
        if batch.writers and batch.writers <= self.ours() and not batch.other:
            return  # the echo of our own commit
        fams = set(batch.families) if batch.families and not batch.other else set(BOTH)
        self.event(wake, now, fams, "nftables event")

    def event(self, wake: Wake, now: float, families: set[int], why: str) -> None:
        """A change by somebody else: act now, or coalesce right after a reconcile."""
        if self.coalesced is None and now - self.last_end >= QUIET:
            wake.add({FIREWALL}, why, families)
            return
        if self.coalesced is None:
            self.coalesced = Wake()
            self.pending_since = now
        self.coalesced.add({FIREWALL}, why, families)
        self.pending_at = min(now + COALESCE, self.pending_since + COALESCE_MAX)

    def pending(self) -> set[str]:
        return set(self.coalesced.groups) if self.coalesced is not None else set()

    def due(self, now: float, wake: Wake) -> None:
        if self.coalesced is not None and self.pending_at is not None and now >= self.pending_at:
            wake.merge(self.coalesced)
            self.coalesced, self.pending_at = None, None

    def after(self, groups: Collection[str], ok: bool, now: float) -> None:
        self.last_end = now

    def close(self) -> None:
        self.events.close()


class ProbeSource(WakeSource):
    """Legacy iptables: no notifications; the tables' signatures are probed and a
    changed table wakes its family's checks at once. Every legacy iptables command
    takes the xtables lock and closes it when done, after its commit: with inotify on
    the lock (`lock`), a close is probed at once (a burst of changes is acted on at
    most LOCK_BURST_TICKS at once, then one every LOCK_BURST) and the timer only covers
    writers that take no lock
    (PROBES_UNLOCKED per interval); without it, the timer probes PROBES_PER_INTERVAL
    times per interval. The baseline is what the reconcile itself read and committed
    (firewall.tableinfo: noted by the legacy backend, under the xtables lock), never a
    signature taken before or after other work; a table seen in two states in one
    reconcile is looked at again at the next tick. What the signature cannot show (a
    same-size replacement) waits for the resync, which reads everything. A probe that
    fails turns into polling: the firewall checks every interval."""

    name = "legacy probe"

    def __init__(self, probe: TableProbe, *, interval: float, now: float,
                 clock: Callable[[], float] = time.monotonic, lock: FileWatch | None = None):
        self.probe: TableProbe | None = probe
        self.clock = clock
        self.interval = interval
        self.lock = lock
        ticks = PROBES_PER_INTERVAL if lock is None else PROBES_UNLOCKED
        self.every = max(PROBE_MIN, interval / ticks)
        self.next = now + self.every
        # A token bucket for someone's changes found: LOCK_BURST_TICKS at once (both
        # families changed one after the other), then one every LOCK_BURST (Docker
        # starting containers rewrites the tables again and again).
        self.tokens, self.tokens_at = float(LOCK_BURST_TICKS), now
        self.baseline: tuple[bytes | None, ...] = tuple(None for _ in probe.slots)
        self._pre: tuple[bytes | None, ...] = self.baseline
        self._families: set[int] = set()
        self._recording: contextlib.ExitStack | None = None
        self._looks: dict[tuple[int, str], set[bytes]] = {}

    @property
    def carries_timers(self) -> bool:  # type: ignore[override]
        return self.probe is not None

    def deadline(self) -> float | None:
        return self.next

    def fileno(self) -> int:
        return self.lock.fileno() if self.lock is not None and self.probe is not None else -1

    def readable(self, now: float, wake: Wake) -> None:
        """A writer closed the xtables lock: probe now, or, once a burst has used the
        bucket up, when it has a token again."""
        if self.lock is not None and self.lock.drain():
            self._refill(now)
            self.next = min(self.next, now + max(0.0, 1 - self.tokens) * LOCK_BURST)

    def _refill(self, now: float) -> None:
        self.tokens = min(float(LOCK_BURST_TICKS), self.tokens + max(0.0, now - self.tokens_at) / LOCK_BURST)
        self.tokens_at = now

    def _give_up(self, exc: OSError) -> None:
        log.warning("tableprobe.failed", error=str(exc))
        if self.probe is not None:
            self.probe.close()
        self.probe = None
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    def due(self, now: float, wake: Wake) -> None:
        if now < self.next:
            return
        if self.probe is None:
            self.next = now + self.interval
            wake.add({FIREWALL}, "poll")
            return
        self.next = now + self.every
        try:
            sig = self.probe.signature()
        except OSError as exc:
            self._give_up(exc)
            wake.add({FIREWALL}, "legacy table changed", BOTH)
            return
        changed = self.probe.changed(self.baseline, sig)
        if changed:
            if any(old is not None and old != new for old, new in zip(self.baseline, sig)):
                self._refill(now)  # someone's change (not our own look again): it takes a token
                self.tokens = max(0.0, self.tokens - 1)
            wake.add({FIREWALL}, "legacy table changed", changed)

    def before(self, groups: Collection[str], families: Collection[int]) -> None:
        if self.probe is None:
            return
        self._families = set(families) if FIREWALL in groups else set()
        try:
            self._pre = self.probe.signature()
        except OSError:
            self._pre = tuple(None for _ in self.probe.slots)
        stack = contextlib.ExitStack()
        self._looks = stack.enter_context(self.probe.recording())
        self._recording = stack

    def after(self, groups: Collection[str], ok: bool, now: float) -> None:
        if self._recording is None or self.probe is None:
            return
        self._recording.close()
        self._recording = None
        baseline = list(self.baseline)
        for i, slot in enumerate(self.probe.slots):
            seen = self._looks.get(slot)
            if seen:
                # One state: the one judged. Two: something changed between our reads (or
                # our commit changed it): look again at the next tick.
                baseline[i] = next(iter(seen)) if len(seen) == 1 else None
            elif slot[0] in self._families:
                # Not read (the reconcile failed before it): the retry covers what came
                # before the reconcile; a change after it must still show.
                baseline[i] = self._pre[i]
        self.baseline = tuple(baseline)

    def idle(self, select: Select, until: float, interrupted: Callable[[], bool]) -> bool:
        """Probe tick after probe tick touching as little as possible (a wakeup is most
        of an idle daemon's cost, about 0.15 ms of CPU here). Returns when anything else
        is due, a descriptor is ready, or a table changed (then it is due at once)."""
        probe, baseline, every, clock = self.probe, self.baseline, self.every, self.clock
        if probe is None:
            return False
        ticked = False
        while True:
            now = clock()
            if now >= until or interrupted():
                return ticked
            if now < self.next:
                if select(min(self.next, until) - now):
                    return ticked
                continue
            self.next = now + every
            try:
                if probe.signature() != baseline:
                    self.next = now  # let the loop see it (and its time) at once
                    return ticked
            except OSError:
                self.next = now
                return ticked
            ticked = True

    def close(self) -> None:
        if self._recording is not None:
            self._recording.close()
            self._recording = None
        if self.probe is not None:
            self.probe.close()
            self.probe = None
        if self.lock is not None:
            self.lock.close()
            self.lock = None


class PollSource(WakeSource):
    """Neither notifications nor a probe: the firewall checks themselves, every interval."""

    name = "firewall poll"

    def __init__(self, interval: float, now: float):
        self.interval = interval
        self.next = now + interval

    def deadline(self) -> float | None:
        return self.next

    def due(self, now: float, wake: Wake) -> None:
        if now >= self.next:
            self.next = now + self.interval
            wake.add({FIREWALL}, "poll")


class FileSource(WakeSource):
    """The files the components keep (ecs.config, the rules files): inotify on their
    directories (daemon.filewatch), or without inotify a stat() signature every
    FILE_POLL seconds. An event only says "look": the files wake their checks when
    their signature changed. A file changed less than SETTLE ago is held back until it
    is SETTLE old: a writer that truncates, then writes (`cat >`, `echo >`) must not
    have its half-written file read and replaced, which would send its bytes to an
    unlinked inode. A file rewritten without pause is looked at after SETTLE_MAX."""

    name = "files"

    def __init__(self, paths: Sequence[str], watch: FileWatch | None, now: float, *,
                 wall_ns: Callable[[], int] = time.time_ns):
        self.paths = list(paths)
        self.watch = watch
        self.wall_ns = wall_ns
        self.sig = self.signature()
        self.poll_at = now + FILE_POLL if watch is None else None
        self.settle_at: float | None = None
        self.settle_since: float | None = None

    def signature(self) -> list[Identity]:
        return [file_identity(path) for path in self.paths]

    def fileno(self) -> int:
        return self.watch.fileno() if self.watch is not None else -1

    def deadline(self) -> float | None:
        found = [d for d in (self.poll_at, self.settle_at) if d is not None]
        return min(found) if found else None

    def readable(self, now: float, wake: Wake) -> None:
        if self.watch is not None and self.watch.drain() and self.signature() != self.sig:
            wake.add({FILES, ECS}, "file changed")

    def due(self, now: float, wake: Wake) -> None:
        if self.settle_at is not None and now >= self.settle_at:
            self.settle_at = None
            wake.add({FILES, ECS}, "file settled")
        if self.poll_at is not None and now >= self.poll_at:
            self.poll_at = now + FILE_POLL
            if self.signature() != self.sig:
                wake.add({FILES, ECS}, "file changed")

    def settling(self) -> float:
        """Seconds until every file is SETTLE old (its last change, ctime: not settable
        by `touch -d`); 0 when all are. A change dated more than a second in the future
        (the clock went back) counts as settled, or the daemon would wait for it; the
        clock is read after the stat, which may see a change made just now."""
        settle = int(SETTLE * 1e9)
        wait = 0
        for path in self.paths:
            try:
                ctime = os.stat(path).st_ctime_ns
            except OSError:
                continue
            age = self.wall_ns() - ctime
            if -1_000_000_000 < age < settle:
                wait = max(wait, settle - max(age, 0))
        return wait / 1e9

    def pending(self) -> set[str]:
        return {FILES, ECS} if self.settle_at is not None else set()

    def hold(self, wake: Wake, now: float) -> None:
        if not wake.groups & {FILES, ECS}:
            return
        wait = self.settling()
        if wait <= 0 or (self.settle_since is not None and now - self.settle_since >= SETTLE_MAX):
            self.settle_at, self.settle_since = None, None
            return
        if self.settle_since is None:
            self.settle_since = now
        wake.groups -= {FILES, ECS}
        self.settle_at = now + wait if self.settle_at is None else min(self.settle_at, now + wait)

    def after(self, groups: Collection[str], ok: bool, now: float) -> None:
        if FILES not in groups and ECS not in groups:
            return
        self.sig = self.signature()
        if self.watch is not None:
            try:
                self.watch.rewatch()  # directories that appeared, links that moved
            except OSError as exc:
                log.warning("filewatch.failed", error=str(exc))

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()
            self.watch = None


class SliceSource(WakeSource):
    """ecstasks.slice made or removed (inotify on the cgroup root: mkdir and rmdir there
    are the only events it sees, a few per day): imds.host_network: block's rule holds
    on to the slice it was inserted against, so a slice made afresh is bound again, and
    one removed is made again, at once rather than at the next resync."""

    name = "task slice"

    def __init__(self, watch: FileWatch):
        self.watch = watch

    def fileno(self) -> int:
        return self.watch.fileno()

    def readable(self, now: float, wake: Wake) -> None:
        if self.watch.drain():
            wake.add({PATHS}, "task slice made or removed")

    def close(self) -> None:
        self.watch.close()


def slice_source(policy: Policy, root: str = CGROUP_ROOT) -> WakeSource | None:
    if policy.imds.host_network != "block" or not cgroup_v2(root):
        return None
    try:
        return SliceSource(FileWatch([os.path.join(root, TASK_SLICE)]))
    except OSError as exc:
        log.warning("slicewatch.unavailable", error=str(exc))
        return None


def _firewall_source(
    facts: Facts, policy: Policy, families: Collection[int], now: float, clock: Callable[[], float]
) -> WakeSource:
    if facts.iptables == "nf_tables":
        try:
            return NftSource(NftEvents())
        except OSError as exc:
            log.warning("nftevents.unavailable", error=str(exc))
    else:
        try:
            probe = TableProbe(list(families))
        except OSError as exc:
            log.warning("tableprobe.unavailable", error=str(exc))
        else:
            return ProbeSource(probe, interval=policy.interval, now=now, clock=clock, lock=_lock_watch())
    return PollSource(policy.interval, now)


def _lock_watch() -> FileWatch | None:
    try:
        return FileWatch([XTABLES_LOCK], mask=CLOSES)
    except OSError as exc:
        log.warning("xtableslock.unwatched", error=str(exc), path=XTABLES_LOCK)
        return None


def open_sources(
    facts: Facts, policy: Policy, families: Collection[int], watched: Sequence[str],
    clock: Callable[[], float],
) -> list[WakeSource]:
    """The host's sources: one for the firewall (events, else a probe, else polling),
    one for the files, and under imds.host_network: block one for the task slice."""
    try:
        watch: FileWatch | None = FileWatch(watched)
    except OSError as exc:
        log.warning("filewatch.unavailable", error=str(exc))
        watch = None
    now = clock()
    sources = [_firewall_source(facts, policy, families, now, clock), FileSource(watched, watch, now)]
    slices = slice_source(policy)
    if slices is not None:
        sources.append(slices)
    if policy.imds.attempts:
        from ecs_harden.attempts.recorder import recorder
        from ecs_harden.attempts.source import attempt_sources

        sources += attempt_sources(recorder(), clock, policy.report.attempts_window)
    return sources
