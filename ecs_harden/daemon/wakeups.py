"""Wakeups: what the daemon must reconcile now, from kernel events, probes and timers.

- nf_tables: a notification from somebody else is acted on at once, for the IP
  family whose table changed; notifications of our own commits (the committing
  pid is one we started) are ignored. What arrives within QUIET of the end of a
  reconcile is coalesced (COALESCE after the last event, at most COALESCE_MAX),
  so a burst of Docker changes costs one or two reconciles, never a loop.
- legacy iptables: no notifications; the table probe runs PROBES_PER_INTERVAL
  times per `interval` and a changed table wakes its family's checks at once. What
  the probe cannot see (a same-size replacement) waits for the full firewall check,
  every LEGACY_FULL resyncs.
- files (ecs.config, the rules files): inotify on their directories (daemon.filewatch);
  without inotify, a stat() signature every FILE_POLL seconds. A file changed less
  than SETTLE ago is left alone until it is SETTLE old: a writer that truncates,
  then writes (`cat >`, `echo >`) must not have its half-written file read and
  replaced, which would send its bytes to an unlinked inode.
- idle costs wakeups (about 0.15 ms of CPU each here, the interpreter's caches being
  cold after a sleep), so timers share wakeups: where the probe ticks, the other
  timers are looked at on its ticks only, and the watchdog is fed with the heartbeat.
- everything: every `resync` seconds, at once after lost notifications (ENOBUFS),
  and after a failed reconcile with exponential backoff.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ecs_harden.component import ECS, FILES, FIREWALL

ALL = frozenset({FIREWALL, FILES, ECS})
BOTH = frozenset({4, 6})
QUIET = 0.1
COALESCE = 0.02
COALESCE_MAX = 0.25
PROBES_PER_INTERVAL = 22
LEGACY_FULL = 5  # legacy: full firewall check every LEGACY_FULL resyncs (the probe covers the rest)
PROBE_MIN = 0.02
FILE_POLL = 1.0
SETTLE = 0.25
SETTLE_MAX = 3.0  # a file rewritten without pause is looked at anyway after this long
BACKOFF_MAX = 60.0


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


class Schedule:
    """Deadlines on a monotonic clock; the daemon sleeps until the earliest."""

    def __init__(
        self, now: float, *, interval: float, resync: float, probe_every: float | None,
        polling_files: bool, watchdog: float | None,
    ):
        self.interval = interval
        self.resync_every = resync
        self.probe_every = probe_every
        self.watchdog_every = watchdog
        self.resync = now + resync
        self.full_firewall = now + LEGACY_FULL * resync
        self.file_every: float | None = FILE_POLL if polling_files else None
        self.file = now + FILE_POLL if polling_files else None
        self.heartbeat = now + interval
        self.probe = now + self.probe_every if self.probe_every else None
        self.watchdog = now if watchdog else None
        self.retry: float | None = None
        self.backoff = 0.0
        self.pending: Wake | None = None
        self.pending_since = 0.0
        self.pending_at: float | None = None
        self.settle: float | None = None
        self.settle_since: float | None = None
        self.last_reconcile_end = -1e9

    def earliest(self) -> float:
        timers: list[float | None] = [self.probe] if self.probe is not None else [
            self.resync, self.file, self.heartbeat, self.watchdog]
        return min(d for d in (*timers, self.retry, self.pending_at, self.settle) if d is not None)

    def event(self, wake: Wake, now: float, families: set[int], why: str) -> None:
        """A change by somebody else: act now, or coalesce right after a reconcile."""
        if self.pending is None and now - self.last_reconcile_end >= QUIET:
            wake.add({FIREWALL}, why, families)
            return
        if self.pending is None:
            self.pending = Wake()
            self.pending_since = now
        self.pending.add({FIREWALL}, why, families)
        self.pending_at = min(now + COALESCE, self.pending_since + COALESCE_MAX)

    def due(self, wake: Wake, now: float) -> None:
        """Add what the timers say is due to wake."""
        if self.pending is not None and self.pending_at is not None and now >= self.pending_at:
            wake.merge(self.pending)
            self.pending, self.pending_at = None, None
        if now >= self.resync:
            self.resync = now + self.resync_every
            wake.add(ALL, "resync")
        if self.retry is not None and now >= self.retry:
            wake.add(ALL, "retry")
        if self.settle is not None and now >= self.settle:
            self.settle = None
            wake.add({FILES, ECS}, "file settled")

    def defer_files(self, wake: Wake, now: float, wait: float) -> None:
        """Take the files out of this wake and look at them again in `wait` seconds; a
        wake deferred for SETTLE_MAX already is left as it is."""
        if not wake.groups & {FILES, ECS}:
            return
        if wait <= 0 or (self.settle_since is not None and now - self.settle_since >= SETTLE_MAX):
            self.settle, self.settle_since = None, None
            return
        if self.settle_since is None:
            self.settle_since = now
        wake.groups -= {FILES, ECS}
        self.settle = now + wait if self.settle is None else min(self.settle, now + wait)

    def reconciled(self, ok: bool, now: float) -> float | None:
        """After a reconcile: the backoff before the next try, or None when it went well."""
        self.last_reconcile_end = now
        self.heartbeat = now + self.interval
        if ok:
            self.backoff, self.retry = 0.0, None
            return None
        self.backoff = min(BACKOFF_MAX, max(1.0, self.backoff * 2))
        self.retry = now + self.backoff
        return self.backoff
