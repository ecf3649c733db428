"""FindingLog: which drift to log, so that a fleet's logs say what changed, not what stands.

A finding is logged when it appears, when its status or detail changes, and when it
clears; one that persists unchanged is reminded of at most once per `remind` seconds
(the status file and the metrics still show it every time). A one-shot command
starts with an empty memory, so `check` and `apply` log every drift they see.
"""

from __future__ import annotations

import time
from collections.abc import Callable

REMIND = 3600.0


class FindingLog:
    def __init__(self, remind: float = REMIND, clock: Callable[[], float] = time.monotonic):
        self.remind = remind
        self.clock = clock
        self.logged: dict[str, tuple[str, float]] = {}  # key -> (state last logged, when)

    def should_log(self, key: str, state: str) -> str | None:
        """None, or why to log now: 'new', 'changed' or 'reminder'."""
        now = self.clock()
        last = self.logged.get(key)
        if last is not None and last[0] == state and now - last[1] < self.remind:
            return None
        self.logged[key] = (state, now)
        if last is None:
            return "new"
        return "reminder" if last[0] == state else "changed"

    def clear(self, key: str) -> bool:
        """Forget key; True when it had been logged (so its clearing is news)."""
        return self.logged.pop(key, None) is not None
