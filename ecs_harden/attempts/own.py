"""ecs-harden's own attempts: the probe's connects to IMDS (imds.probe) are blocked like
any container's and logged like them; they are counted as container="ecs-harden-probe",
never reported as an attempt. The probe says which addresses it may use, from when to
when (it picks addresses no container has, proven by ARP); a packet from one of them in
that time is ours. Its connects from the task cgroup (ecstasks.slice/ecs-harden-probe, a
directory made for each run: no rule of the attempts table names it) reach the host
path's catch-all rule: one logged there while the probe runs there (CGROUP) is ours.
Thread-safe: the probe runs beside the daemon's loop."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Iterator

NAME = "ecs-harden-probe"
CGROUP = "cgroup:" + NAME  # the probe's run in the task cgroup
KEEP = 600.0
SLACK = 1.0

_lock = threading.Lock()


class _Run:
    def __init__(self, addresses: frozenset[str]):
        self.start = time.time() - SLACK
        self.end: float | None = None
        self.addresses = addresses


_runs: list[_Run] = []


@contextlib.contextmanager
def probing(addresses: Iterable[str]) -> Iterator[None]:
    run = _Run(frozenset(addresses))
    with _lock:
        now = time.time()
        _runs[:] = [r for r in _runs if r.end is None or now - r.end < KEEP]
        _runs.append(run)
    try:
        yield
    finally:
        with _lock:
            run.end = time.time() + SLACK


def ours(address: str, when: float) -> bool:
    with _lock:
        return any(address in r.addresses and r.start <= when and (r.end is None or when <= r.end)
                   for r in _runs)
