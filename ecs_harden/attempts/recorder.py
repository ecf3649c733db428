"""The daemon's record of blocked attempts: the listener, Docker's history, the tally and
the attempts table's counters, one per process (the daemon's sources feed it; the status
file, the textfile and the `imds.attempts` finding read it). Nothing here blocks."""

from __future__ import annotations

import socket
import time
from typing import Any

from ecs_harden import logs
from ecs_harden.attempts import nftlog
from ecs_harden.attempts.nflog import Listener
from ecs_harden.attempts.tally import RECENT, Attempt, Tally
from ecs_harden.attempts.workloads import History, Watcher

log = logs.get("ecs_harden.attempts")
SHOWN = 10  # attempts listed in the status file


def interface_name(index: int) -> str:
    try:
        return socket.if_indextoname(index) if index > 0 else "?"
    except OSError:
        return f"if{index}"


def label(value: str) -> str:
    """A Prometheus label value: escaped, cut (workloads choose their names)."""
    return value[:64].replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Recorder:
    def __init__(self) -> None:
        self.history = History()
        self.tally = Tally(self.history)
        self.watcher = Watcher(self.history)
        self.listener: Listener | None = None
        self.error = ""
        self._base: int | None = None  # the table's packets when we started counting
        self._last = 0
        self._offset = 0  # packets of tables made again since

    def listen(self) -> bool:
        if self.listener is None:
            try:
                self.listener = Listener()
                self.error = ""
            except OSError as exc:
                self.error = f"cannot listen on NFLOG group {nftlog.GROUP}: {exc}"
                log.warning("attempts.unavailable", error=self.error)
        return self.listener is not None

    def read(self) -> None:
        if self.listener is not None:
            self.tally.add(self.listener.read(), interface_name)

    def due(self, now: float) -> None:
        self.report(self.tally.due(now))

    def report(self, attempts: list[Attempt]) -> None:
        shown = sorted(attempts, key=lambda a: (-a.count, a.source))
        for a in shown[:20]:
            log.warning("imds.attempt", **a.fields())
        if len(shown) > 20:
            log.warning("imds.attempt.more", workloads=len(shown) - 20,
                        count=sum(a.count for a in shown[20:]))

    def table_packets(self) -> int:
        """The table's packets since we started counting (a table made again adds up)."""
        try:
            installed = nftlog.read()
        except OSError:
            return self._offset + self._last - (self._base or 0)
        raw = sum(installed.packets) if installed else 0
        if self._base is None:
            self._base = raw
        if raw < self._last:
            self._offset += self._last
        self._last = raw
        return self._offset + raw - self._base

    def status(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        hour = self.tally.last_hour(now)
        counters = self.tally.counters(self.table_packets())
        return {"listening": self.listener is not None, "error": self.error or None,
                "last_hour": sum(int(r["count"]) for r in hour), "recent": hour[-SHOWN:],
                "unattributed": counters.get(("", "unattributed", "bridge"), 0),
                "lost_messages": self.listener.lost if self.listener else 0,
                "window_seconds": self.tally.window, "recent_seconds": int(RECENT)}

    def metrics_lines(self) -> list[str]:
        counters = self.tally.counters(self.table_packets())
        lines = ["# HELP ecs_harden_imds_blocked_total Packets to IMDS the block dropped, by the workload "
                 "that sent them (container=\"unattributed\": not logged, past the per-source limit).",
                 "# TYPE ecs_harden_imds_blocked_total counter"]
        for (family, container, path), n in sorted(counters.items()):
            lines.append(f'ecs_harden_imds_blocked_total{{task_family="{label(family)}",'
                         f'container="{label(container)}",path="{label(path)}"}} {n}')
        return lines

    def close(self) -> None:
        self.report(self.tally.flush())
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        self.watcher.close()


RECORDER: Recorder | None = None


def recorder() -> Recorder:
    global RECORDER
    if RECORDER is None:
        RECORDER = Recorder()
    return RECORDER
