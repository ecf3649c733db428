"""SlowChecks: the checks that may take long (the probe's connects, the namespace scan,
asking IMDS) run in one worker thread beside the daemon's loop, so that a firewall
repair never waits for them. A finished check is handed back through a pipe the loop
selects on; the loop alone records findings and publishes.

One thread, for the life of the process: the probe's children die with the thread that
started them (PR_SET_PDEATHSIG follows the thread), so it must outlive them.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

R = TypeVar("R")
NICE = 10


@dataclass(frozen=True)
class Done(Generic[R]):
    generation: int  # the daemon's configuration it was run for (a reload starts a new one)
    index: int  # the component's index
    started: float  # wall clock, when the check began looking
    result: R
    finished: float  # wall clock, when it had looked: its findings' `observed`


class SlowChecks(Generic[R]):
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._jobs: queue.Queue[tuple[int, int, Callable[[], R]] | None] = queue.Queue()
        self._done: list[Done[R]] = []
        self._lock = threading.Lock()
        self._wanted: dict[tuple[int, int], Callable[[], R]] = {}  # queued or to run again
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="ecs-harden-slow-checks", daemon=True)
        self._thread.start()

    def fileno(self) -> int:
        return self._r

    def submit(self, generation: int, index: int, run: Callable[[], R]) -> None:
        """Look at the component (again): a look queued already is not queued twice; one
        running now is run again when it ends (it may have begun before the change)."""
        key = (generation, index)
        with self._lock:
            queued = key in self._wanted
            self._wanted[key] = run
        if not queued:
            self._jobs.put((generation, index, run))

    def collect(self) -> list[Done[R]]:
        """What finished since the last call (drains the pipe)."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self._r, 512):
                pass
        with self._lock:
            done, self._done = self._done, []
        return done

    def _work(self) -> None:
        # Below the loop in the scheduler's eyes, and so is every child it starts (the
        # probe's Python, `ip`, `nsenter`): on a busy host a repair still gets the CPU
        # first. Linux sets a nice value per thread; children inherit it.
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        while True:
            job = self._jobs.get()
            if job is None:
                return
            generation, index, _ = job
            key = (generation, index)
            with self._lock:
                run = self._wanted.pop(key, None)
            if run is None:
                continue
            started = self.clock()
            result = run()
            with self._lock:
                if self._closed:
                    return
                self._done.append(Done(generation, index, started, result, self.clock()))
                if key in self._wanted:
                    self._jobs.put((generation, index, self._wanted[key]))
                with contextlib.suppress(BlockingIOError):  # full: a wakeup is pending already
                    os.write(self._w, b"!")

    def close(self) -> None:
        """Stop taking work; a check under way finishes in its thread, unrecorded, and is
        not waited for (under the lock: the thread never writes to a closed descriptor)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._jobs.put(None)
            os.close(self._r)
            os.close(self._w)
