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
from ecs_harden.attempts.tally import (
    HOST,
    MAX_EVENTS,
    PATH,
    PATHS,
    RECENT,
    WINDOW,
    Attempt,
    Tally,
    unattributed,
)
from ecs_harden.attempts.workloads import History, Watcher
from ecs_harden.statusfile import label

log = logs.get("ecs_harden.attempts")
SHOWN = 10  # attempts listed in the status file
RETRY = 30.0  # seconds between tries to listen again


def interface_name(index: int) -> str:
    try:
        return socket.if_indextoname(index) if index > 0 else "?"
    except OSError:
        return f"if{index}"


class Recorder:
    def __init__(self, window: float = WINDOW) -> None:
        self.history = History()
        self.tally = Tally(self.history, window=window)
        self.watcher = Watcher(self.history)
        self.listener: Listener | None = None
        self.error = ""
        self._base: dict[str, int] | None = None  # the table's packets (by path) when we started counting
        self._last: dict[str, int] = {}
        self._offset: dict[str, int] = {}  # packets of tables made again since
        self.counters: dict[tuple[str, str, str], int] = {}  # at the last refresh()
        self.retry_at = 0.0  # when to bind to the group again, while not listening

    def configure(self, window: float) -> None:
        self.tally.window = window

    def listen(self, now: float | None = None) -> bool:
        """Bound to the group, or the next try scheduled (RETRY seconds on): what is
        dropped meanwhile is counted by the table and shows as unattributed."""
        if self.listener is None:
            try:
                self.listener = Listener()
                if self.error:
                    log.info("attempts.listening", group=nftlog.GROUP)
                self.error = ""
            except OSError as exc:
                error = f"cannot listen on NFLOG group {nftlog.GROUP}: {exc}"
                if error != self.error:
                    log.warning("attempts.unavailable", error=error)
                self.error = error
                self.retry_at = (time.time() if now is None else now) + RETRY
        return self.listener is not None

    def read(self) -> None:
        if self.listener is None:
            return
        try:
            packets = self.listener.read()
        except OSError as exc:  # the socket broke: never the daemon's loop with it
            self.listener.close()
            self.listener = None
            self.error = f"lost NFLOG group {nftlog.GROUP}: {exc}"
            self.retry_at = time.time() + RETRY
            log.warning("attempts.listener_lost", error=self.error, retry_in=RETRY)
            return
        self.tally.add(packets, interface_name)

    def due(self, now: float) -> None:
        self.report(self.tally.due(now))

    def report(self, attempts: list[Attempt]) -> None:
        shown = sorted(attempts, key=lambda a: (-a.count, a.source))
        for a in shown[:MAX_EVENTS]:
            log.warning("imds.attempt", **a.fields())
        if len(shown) > MAX_EVENTS:
            log.warning("imds.attempt.more", workloads=len(shown) - MAX_EVENTS,
                        count=sum(a.count for a in shown[MAX_EVENTS:]))

    def table_packets(self) -> dict[str, int]:
        """The table's packets by path since we started counting (a table made again adds
        up): the bridge path's chain (pre) and the host path's (out)."""
        try:
            installed = nftlog.read()
        except OSError:
            raw = dict(self._last)
        else:
            packets = installed.packets if installed else {}
            raw = {PATH: packets.get(nftlog.CHAIN, 0), HOST: packets.get(nftlog.OUT_CHAIN, 0)}
        if self._base is None:
            self._base = dict(raw)
        out = {}
        for path, n in raw.items():
            if n < self._last.get(path, 0):
                self._offset[path] = self._offset.get(path, 0) + self._last[path]
            self._last[path] = n
            out[path] = self._offset.get(path, 0) + n - self._base.get(path, 0)
        return out

    def refresh(self) -> None:
        """The table's counters read once, for the status and the textfile both."""
        self.counters = self.tally.counters(self.table_packets())

    def status(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        hour = self.tally.last_hour(now)
        return {"listening": self.listener is not None, "error": self.error or None,
                "last_hour": sum(int(r["count"]) for r in hour), "recent": hour[-SHOWN:],
                "unattributed": sum(self.counters.get(unattributed(p), 0) for p in PATHS),
                "lost_messages": self.listener.lost if self.listener else 0,
                "window_seconds": self.tally.window, "recent_seconds": int(RECENT)}

    def metrics_lines(self) -> list[str]:
        lines = ["# HELP ecs_harden_imds_blocked_total Packets to IMDS the block dropped, by the workload "
                 "that sent them (container=\"unattributed\": not logged, past the per-source limit).",
                 "# TYPE ecs_harden_imds_blocked_total counter"]
        for (family, container, path), n in sorted(self.counters.items()):
            lines.append(f'ecs_harden_imds_blocked_total{{task_family="{label(family[:64])}",'
                         f'container="{label(container[:64])}",path="{label(path)}"}} {n}')
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
