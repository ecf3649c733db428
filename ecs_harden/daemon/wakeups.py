"""Wakeups: what the daemon must reconcile now, and the one schedule of deadlines.

The sources of change (nf_tables events, the legacy table probe, the file watch:
daemon.sources) each say their own deadline and what they wake; the Schedule holds
the daemon's own timers and finds the earliest deadline of all:

- everything: every `resync` seconds, at once after lost notifications (ENOBUFS),
  and after a failed reconcile with exponential backoff (at most BACKOFF_MAX);
- the heartbeat (the status file rewritten every `interval`) and the systemd watchdog.

Idle costs wakeups (about 0.15 ms of CPU each here, the interpreter's caches being
cold after a sleep), so timers share them: where a source ticks often (the legacy
probe), the schedule's timers are looked at on its ticks only, and the watchdog is
fed with the heartbeat when that is often enough.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ecs_harden.component import ECS, FILES, FIREWALL, PATHS

ALL = frozenset({FIREWALL, FILES, ECS, PATHS})
BOTH = frozenset({4, 6})
QUIET = 0.1
COALESCE = 0.02
COALESCE_MAX = 0.25
PROBES_PER_INTERVAL = 22
PROBES_UNLOCKED = 5  # with inotify on the xtables lock: for writers that take none
LOCK_BURST = 0.2  # changes found again and again (Docker starting containers): then act this often
LOCK_BURST_TICKS = 5  # ... after this many at once
PROBE_MIN = 0.02
FILE_POLL = 1.0
SETTLE = 0.25
SETTLE_MAX = 3.0  # a file rewritten without pause is looked at anyway after this long
BACKOFF_MAX = 60.0


Select = typing.Callable[[float], bool]  # sleep at most that long; True when a descriptor is ready

@dataclass
class Wake:
    groups: set[str] = field(default_factory=set)
    families: set[int] = field(default_factory=set)
    why: list[str] = field(default_factory=list)

    def add(
        self, groups: frozenset[str] | set[str], why: str, families: frozenset[int] | set[int] = BOTH
    ) -> None:
        self.groups |= groups
        self.families |= families
        self.why.append(why)

    def merge(self, other: Wake) -> None:
        self.groups |= other.groups
        self.families |= other.families
        self.why += other.why

    def __bool__(self) -> bool:
        return bool(self.groups)


class WakeSource:
    """The protocol, with do-nothing defaults: a source overrides what it uses."""

    name = "source"
    # Ticks often enough (well under `interval`) that the schedule's own timers are
    # looked at on its ticks only, which saves wakeups.
    carries_timers = False

    def fileno(self) -> int:
        """A descriptor to select on; -1 for none."""
        return -1

    def deadline(self) -> float | None:
        """When it next needs to be called (`due`), on the daemon's clock."""
        return None

    def readable(self, now: float, wake: Wake) -> None:
        """Its descriptor is ready: add to `wake` what the change wakes."""

    def due(self, now: float, wake: Wake) -> None:
        """Called on every pass of the loop; acts when its deadline has come."""

    def hold(self, wake: Wake, now: float) -> None:
        """Take out of `wake` what may not be looked at yet (and come back for it)."""

    def pending(self) -> set[str]:
        """The groups with a change it saw and has not had looked at yet (coalesced,
        held back): their findings are stale meanwhile."""
        return set()

    def before(self, groups: Collection[str], families: Collection[int]) -> None:
        """A reconcile of these groups is about to read the host."""

    def after(self, groups: Collection[str], ok: bool, now: float) -> None:
        """That reconcile ended."""

    def idle(self, select: Select, until: float, interrupted: Callable[[], bool]) -> bool:
        """Tick on its own, as cheaply as it can, while nothing else is due before
        `until`; True when it ticked. Only a source that carries the timers has use for it."""
        return False

    def close(self) -> None:
        pass


class Source(Protocol):
    """What the schedule asks of a wake source (daemon.sources.WakeSource)."""

    @property
    def carries_timers(self) -> bool: ...

    def deadline(self) -> float | None: ...


class Schedule:
    """The daemon's own deadlines on a monotonic clock, and the earliest of all."""

    def __init__(self, now: float, *, interval: float, resync: float, watchdog: float | None):
        self.interval = interval
        self.resync_every = resync
        self.watchdog_every = watchdog
        self.resync = now + resync
        self.heartbeat = now + interval
        self.watchdog = now if watchdog else None
        self.retry: float | None = None
        self.backoff = 0.0

    def timers(self) -> list[float]:
        return [d for d in (self.resync, self.heartbeat, self.watchdog, self.retry) if d is not None]

    def earliest(self, sources: Sequence[Source]) -> float:
        """When the daemon must next wake: the sources' deadlines and the timers; where
        a source carries the timers, the resync, heartbeat and watchdog wait for its
        tick (the retry after a failure does not)."""
        carried = any(s.carries_timers for s in sources)
        found = [d for s in sources if (d := s.deadline()) is not None]
        if not carried:
            found += self.timers()
        elif self.retry is not None:
            found.append(self.retry)
        return min(found) if found else float("inf")

    def others(self, source: Source, sources: Sequence[Source]) -> float:
        """The earliest deadline that is not `source`'s own: how long it may idle."""
        found = self.timers() + [d for s in sources if s is not source and (d := s.deadline()) is not None]
        return min(found) if found else float("inf")

    def due(self, wake: Wake, now: float) -> None:
        """Add what the timers say is due to wake."""
        if now >= self.resync:
            self.resync = now + self.resync_every
            wake.add(ALL, "resync")
        if self.retry is not None and now >= self.retry:
            wake.add(ALL, "retry")

    def beats(self, now: float) -> tuple[bool, bool]:
        """(publish a heartbeat, feed the watchdog) now; each moves its deadline on."""
        heartbeat = watchdog = False
        if now >= self.heartbeat:
            self.heartbeat = now + self.interval
            heartbeat = True
            if self.watchdog_every and self.watchdog_every > self.interval:
                watchdog = True  # fed with the heartbeat, which is often enough
                self.watchdog = now + self.watchdog_every
        if self.watchdog is not None and self.watchdog_every and now >= self.watchdog:
            watchdog = True
            self.watchdog = now + self.watchdog_every
        return heartbeat, watchdog

    def reconciled(self, ok: bool, now: float, *, complete: bool = True) -> float | None:
        """After a reconcile: the backoff before the next try, or None when it went well.
        complete: it looked at every group and family. A successful partial one (one
        family the legacy probe saw change) leaves a pending retry of a failed full one
        in place: what failed has not been looked at again (found: after a held lock the
        block of the other family stayed deleted for good)."""
        self.heartbeat = now + self.interval
        if ok:
            if complete or self.retry is None:
                self.backoff, self.retry = 0.0, None
            return None
        self.backoff = min(BACKOFF_MAX, max(1.0, self.backoff * 2))
        self.retry = now + self.backoff
        return self.backoff
