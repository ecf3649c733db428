"""The daemon's two sources for attempts: the NFLOG socket and Docker's event stream.
An attempt never wakes a reconcile (it is not drift); they feed the recorder, whose
windows close on their deadlines. A host-network container started or gone wakes the
firewall's components: the attempts table's host chain names each one's cgroup."""

from __future__ import annotations

import time
from collections.abc import Callable

from ecs_harden.attempts.recorder import Recorder
from ecs_harden.component import FIREWALL
from ecs_harden.daemon.wakeups import Wake, WakeSource


class NflogSource(WakeSource):
    name = "attempts"

    def __init__(self, recorder: Recorder, clock: Callable[[], float]):
        self.recorder = recorder
        self.clock = clock

    def fileno(self) -> int:
        return self.recorder.listener.fileno() if self.recorder.listener is not None else -1

    def deadline(self) -> float | None:
        due = self.recorder.tally.deadline()
        if self.recorder.listener is None:
            due = min(due, self.recorder.retry_at)
        return self.clock() + max(0.0, due - time.time())

    def readable(self, now: float, wake: Wake) -> None:
        self.recorder.read()

    def due(self, now: float, wake: Wake) -> None:
        wall = time.time()
        if self.recorder.listener is None and wall >= self.recorder.retry_at:
            self.recorder.listen(wall)
        self.recorder.due(wall)

    def close(self) -> None:
        self.recorder.close()


class DockerSource(WakeSource):
    name = "docker-events"

    def __init__(self, recorder: Recorder, clock: Callable[[], float]):
        self.watcher = recorder.watcher
        self.clock = clock
        self.watcher.ensure()

    def fileno(self) -> int:
        return self.watcher.fileno()

    def deadline(self) -> float | None:
        if self.watcher.fileno() >= 0:
            return None
        return self.clock() + max(0.0, self.watcher.retry_at - time.time())

    def readable(self, now: float, wake: Wake) -> None:
        if self.watcher.readable():  # the host chain names each host-network task container
            wake.add({FIREWALL}, "host-network containers changed")

    def due(self, now: float, wake: Wake) -> None:
        self.watcher.ensure()


def attempt_sources(recorder: Recorder, clock: Callable[[], float], window: float) -> list[WakeSource]:
    recorder.configure(window)
    recorder.listen()  # not listening (yet): tried again every RETRY seconds
    return [NflogSource(recorder, clock), DockerSource(recorder, clock)]
