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
from typing import Any, Tuple

from ecs_harden.attempts import own
from ecs_harden.attempts.nflog import Packet
from ecs_harden.attempts.nftlog import HOST_PREFIX
from ecs_harden.attempts.workloads import History, Workload

WINDOW = 60.0
GRACE = 2.0
MAX_EVENTS = 20
MAX_SERIES = 100
MAX_TIMES = 2000  # packet times kept per source and window (the kernel sends at most ~620)
RECENT = 3600.0  # "attempts in the last hour"
PATH = "bridge"  # traffic forwarded from a container interface (raw PREROUTING)
HOST = "host"  # a host-network task's socket, in ecstasks.slice (filter OUTPUT)
PATHS = (PATH, HOST)
UNATTRIBUTED = ("", "unattributed", PATH)
PROBE = ("", own.NAME, PATH)  # ecs-harden's own probe: counted, never an attempt

# (source, interface, IP version, path, container id: the host path's, from the log prefix)
Key = Tuple[str, str, int, str, str]  # typing: evaluated at run time on 3.8


def unattributed(path: str) -> tuple[str, str, str]:
    return ("", "unattributed", path)


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
    path: str = PATH

    def fields(self) -> dict[str, Any]:
        w = self.workload
        return {"task_arn": w.task_arn if w else "", "task_family": w.task_family if w else "",
                "task_revision": w.revision if w else "", "container": w.name if w else "unknown",
                "container_id": w.container_id[:12] if w else "", "source": self.source,
                "interface": self.interface, "ip_version": self.family, "count": self.count,
                "first_seen": iso(self.first), "last_seen": iso(self.last), "path": self.path}


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


class Tally:
    def __init__(self, history: History, clock: Callable[[], float] = time.time, window: float = WINDOW):
        self.history = history
        self.window = window
        self.clock = clock
        self.window_start = clock()
        self.buckets: dict[Key, Bucket] = {}
        self.late: dict[Key, Bucket] = {}  # the closed window, in its grace
        self.totals: dict[tuple[str, str, str], int] = {}
        self.attributed = dict.fromkeys(PATHS, 0)
        self.counted = dict.fromkeys(PATHS, 0)  # the attempts table's packets since we started counting
        self.recent: deque[dict[str, Any]] = deque(maxlen=50)

    def add(self, packets: list[Packet], interface: Callable[[int], str]) -> None:
        for p in packets:
            if p.prefix.startswith(HOST_PREFIX):
                who = p.prefix[len(HOST_PREFIX):].strip()[:64]
                key: Key = (p.source, interface(p.outdev), p.family, HOST, who)
            else:
                key = (p.source, interface(p.indev), p.family, PATH, "")
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

    def _who(self, source: str, path: str, container: str, t: float) -> Workload | None:
        if path == HOST:  # the socket's cgroup said which container, at the packet's time
            if not container:
                return None
            return self.history.container(container) or Workload(container, container[:12])
        return self.history.at(source, t)

    def _attribute(self, buckets: dict[Key, Bucket]) -> list[Attempt]:
        grouped: dict[tuple[Workload | None, str, str, int, str], list[float]] = {}
        for (source, iface, family, path, container), b in buckets.items():
            for t in b.times:
                if own.ours(own.CGROUP if path == HOST and not container else source, t):
                    self._add(("", own.NAME, path), 1, path)
                    continue
                grouped.setdefault((self._who(source, path, container, t), source, iface, family, path),
                                   []).append(t)
            if b.dropped:
                who = self._who(source, path, container, b.times[-1]) if path == HOST else None
                grouped.setdefault((who, source, iface, family, path), []).extend([b.times[-1]] * b.dropped)
        out = []
        for (w, source, iface, family, path), times in grouped.items():
            a = Attempt(w, source, iface, family, len(times), min(times), max(times), path)
            out.append(a)
            self._count(a)
        out.sort(key=lambda a: (-a.count, a.source))
        for a in out[:MAX_EVENTS]:
            self.recent.append(a.fields())
        return out

    def _count(self, a: Attempt) -> None:
        w = a.workload
        self._add((w.task_family, w.name, a.path) if w else ("", "unknown", a.path), a.count, a.path)

    def _add(self, key: tuple[str, str, str], n: int, path: str) -> None:
        if key not in self.totals and len(self.totals) >= MAX_SERIES:
            key = ("other", "other", path)
        self.totals[key] = self.totals.get(key, 0) + n
        self.attributed[path] += n

    def counters(self, table_packets: dict[str, int]) -> dict[tuple[str, str, str], int]:
        """Every series, each path's unattributed one included (never below zero; the host
        path's only once it has counted anything)."""
        out = dict(self.totals)
        for path in PATHS:
            self.counted[path] = max(self.counted[path], table_packets.get(path, 0))
            if path == PATH or self.counted[path]:
                left = self.counted[path] - self.attributed[path] - self.pending(path)
                out[unattributed(path)] = max(0, left)
        return out

    def pending(self, path: str) -> int:
        return sum(len(b.times) + b.dropped for bs in (self.buckets, self.late) for k, b in bs.items()
                   if k[3] == path)

    def last_hour(self, now: float) -> list[dict[str, Any]]:
        return [r for r in self.recent if parse_iso(r["last_seen"]) >= now - RECENT]


def parse_iso(text: str) -> float:
    import calendar

    try:
        head, _, frac = text.rstrip("Z").partition(".")
        return calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S")) + (int(frac) / 1000 if frac else 0)
    except ValueError:
        return 0.0
