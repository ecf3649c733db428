"""Attempts counted and reported: per (workload, window), never a line per packet.

Packets are kept per (source, interface, family) with their times until their window has
closed and a grace period has passed (Docker's events for that moment have arrived); then
each packet goes to whoever held its source address at its time (workloads.History), and
the window gives one `imds.attempt` event per workload (at most MAX_EVENTS; the rest are
summed in one more). The counters are cumulative for the process's life, as Prometheus
expects of a counter: one series per (task family, container, path), at most MAX_SERIES
(later ones count as `other`); packets the kernel's per-source limit or a lagging listener
did not give us count as container="unattributed", the difference between the attempts
table's packet counters and the packets attributed, so the series sum to what the block
dropped there.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ecs_harden.attempts import own
from ecs_harden.attempts.nflog import Packet
from ecs_harden.attempts.workloads import History, Workload

WINDOW = 60.0
GRACE = 2.0
MAX_EVENTS = 20
MAX_SERIES = 100
MAX_TIMES = 2000  # packet times kept per source and window (the kernel sends at most ~620)
RECENT = 3600.0  # "attempts in the last hour"
PATH = "bridge"  # traffic forwarded from a container interface (raw PREROUTING)
UNATTRIBUTED = ("", "unattributed", PATH)
PROBE = ("", own.NAME, PATH)  # ecs-harden's own probe: counted, never an attempt


@dataclass
class Bucket:
    times: list[float] = field(default_factory=list)
    dropped: int = 0  # times not kept (beyond MAX_TIMES)


@dataclass(frozen=True)
class Attempt:
    """What one workload did in one window: the event's fields."""

    workload: Workload | None
    source: str
    interface: str
    family: int
    count: int
    first: float
    last: float

    def fields(self) -> dict[str, Any]:
        w = self.workload
        return {"task_arn": w.task_arn if w else "", "task_family": w.task_family if w else "",
                "task_revision": w.revision if w else "", "container": w.name if w else "unknown",
                "container_id": w.container_id[:12] if w else "", "source": self.source,
                "interface": self.interface, "ip_version": self.family, "count": self.count,
                "first_seen": iso(self.first), "last_seen": iso(self.last), "path": PATH}


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


class Tally:
    def __init__(self, history: History, clock: Callable[[], float] = time.time, window: float = WINDOW):
        self.history = history
        self.window = window
        self.clock = clock
        self.window_start = clock()
        self.buckets: dict[tuple[str, str, int], Bucket] = {}
        self.late: dict[tuple[str, str, int], Bucket] = {}  # the closed window, in its grace
        self.totals: dict[tuple[str, str, str], int] = {}
        self.attributed = 0
        self.counted = 0  # the attempts table's packets since we started counting
        self.recent: deque[dict[str, Any]] = deque(maxlen=50)

    def add(self, packets: list[Packet], interface: Callable[[int], str]) -> None:
        for p in packets:
            key = (p.source, interface(p.indev), p.family)
            b = self.buckets.setdefault(key, Bucket())
            if len(b.times) < MAX_TIMES:
                b.times.append(p.when)
            else:
                b.dropped += 1

    def deadline(self) -> float:
        if self.late:
            return self.window_start + GRACE
        return self.window_start + self.window

    def due(self, now: float) -> list[Attempt]:
        """Close the window when it ends; attribute it once its grace has passed."""
        out: list[Attempt] = []
        if self.late and now >= self.window_start + GRACE:
            out = self._attribute(self.late)
            self.late = {}
        if now >= self.window_start + self.window:
            self.late, self.buckets = self.buckets, {}
            self.window_start = now
        return out

    def flush(self) -> list[Attempt]:
        """Everything held attributed now (the daemon stopping)."""
        out = self._attribute(self.late) + self._attribute(self.buckets)
        self.late, self.buckets = {}, {}
        return out

    def _attribute(self, buckets: dict[tuple[str, str, int], Bucket]) -> list[Attempt]:
        grouped: dict[tuple[Workload | None, str, str, int], list[float]] = {}
        for (source, iface, family), b in buckets.items():
            for t in b.times:
                if own.ours(source, t):
                    self._add(PROBE, 1)
                    continue
                grouped.setdefault((self.history.at(source, t), source, iface, family), []).append(t)
            if b.dropped:
                grouped.setdefault((None, source, iface, family), []).extend([b.times[-1]] * b.dropped)
        out = []
        for (w, source, iface, family), times in grouped.items():
            a = Attempt(w, source, iface, family, len(times), min(times), max(times))
            out.append(a)
            self._count(a)
        out.sort(key=lambda a: (-a.count, a.source))
        for a in out[:MAX_EVENTS]:
            self.recent.append(a.fields())
        return out

    def _count(self, a: Attempt) -> None:
        w = a.workload
        self._add((w.task_family, w.name, PATH) if w else ("", "unknown", PATH), a.count)

    def _add(self, key: tuple[str, str, str], n: int) -> None:
        if key not in self.totals and len(self.totals) >= MAX_SERIES:
            key = ("other", "other", PATH)
        self.totals[key] = self.totals.get(key, 0) + n
        self.attributed += n

    def counters(self, table_packets: int) -> dict[tuple[str, str, str], int]:
        """Every series, the unattributed one included (never below zero)."""
        self.counted = max(self.counted, table_packets)
        out = dict(self.totals)
        out[UNATTRIBUTED] = max(0, self.counted - self.attributed - self.pending())
        return out

    def pending(self) -> int:
        return sum(len(b.times) + b.dropped for bs in (self.buckets, self.late) for b in bs.values())

    def last_hour(self, now: float) -> list[dict[str, Any]]:
        return [r for r in self.recent if parse_iso(r["last_seen"]) >= now - RECENT]


def parse_iso(text: str) -> float:
    import calendar

    try:
        head, _, frac = text.rstrip("Z").partition(".")
        return calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S")) + (int(frac) / 1000 if frac else 0)
    except ValueError:
        return 0.0
