"""imds.attempts: blocked attempts to reach IMDS in the last hour, by workload.

`warn` while the daemon saw any (naming task family and container, the most active
first), `ok` otherwise: an attempt is never drift, the block worked. The component also
keeps the attempts table (nftlog) as the policy wants it: made anew when missing or not
ours (a repair, said, never a reason for drift). In the daemon the record is the
process's own; `check` reads the daemon's last status file (no daemon, no record: said).
Under mode: report nothing is made, and nothing is logged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ecs_harden import logs
from ecs_harden.attempts import nftlog
from ecs_harden.component import FIREWALL, Base, Inspection
from ecs_harden.report import OK, WARN, Finding

CHECK = "imds.attempts"
log = logs.get("ecs_harden.attempts")
NAMED = 5


@dataclass(frozen=True)
class _Plan:
    rules: tuple[nftlog.Match, ...]


def describe(recent: Sequence[dict[str, Any]]) -> str:
    by: dict[tuple[str, str], int] = {}
    for r in recent:
        key = (str(r.get("task_family") or "-"), str(r.get("container") or "?"))
        by[key] = by.get(key, 0) + int(r.get("count") or 0)
    named = sorted(by.items(), key=lambda kv: -kv[1])
    text = ", ".join(f"{fam}/{name} ({n})" for (fam, name), n in named[:NAMED])
    return text + (f" and {len(named) - NAMED} more" if len(named) > NAMED else "")


class AttemptsComponent(Base):
    name = CHECK
    wakes_on = FIREWALL

    def __init__(self, rules: Sequence[nftlog.Match], record: Callable[[], dict[str, Any] | None], *,
                 enforce: bool):
        self.rules = tuple(rules)
        self.record = record
        self.enforce = enforce
        self._failed = ""  # the last error making the table, said once

    def expected(self) -> str:
        return "no container tried to reach IMDS in the last hour (each attempt blocked and attributed)"

    def inspect(self) -> Inspection[_Plan]:
        problem = ""
        try:
            installed = nftlog.read()
        except OSError as exc:
            installed, problem = None, f"the attempts table cannot be read: {exc}"
        wanted = tuple(nftlog.fingerprint(m) for m in self.rules)
        in_place = installed is not None and installed.fingerprints == wanted
        if not in_place and not problem:
            problem = (f"attempts are not logged: nf_tables table inet {nftlog.TABLE} is "
                       + ("missing" if installed is None else "not as ecs-harden makes it"))
        record = self.record()
        recent = list(record.get("recent") or []) if record else []
        count = int(record.get("last_hour") or 0) if record else 0
        if record is None:
            actual, detail = "no record", "no daemon's record of attempts (is ecs-harden.service running?)"
        elif record.get("error"):
            actual, detail = "not listening", str(record["error"])
        else:
            actual = f"{count} blocked in the last hour"
            detail = (f"blocked attempts to reach IMDS in the last hour: {describe(recent)}"
                      if count else "no container tried to reach IMDS in the last hour")
        status = WARN if count or problem or (record is not None and record.get("error")) else OK
        if problem:
            detail = f"{detail}; {problem}"
        finding = Finding(CHECK, status, self.expected(), actual, detail)
        if in_place or not self.enforce or not self.rules:
            return Inspection((finding,))
        return Inspection((finding,), (f"nft: make table inet {nftlog.TABLE} ({len(self.rules)} rule(s))",),
                          frozenset({CHECK}), _Plan(self.rules))

    def execute(self, inspection: Inspection[_Plan]) -> None:
        """Never a failure of the reconcile: a kernel without what the table needs (or a
        sandbox refusing it) leaves attempts unlogged, which the next look says (`warn`)."""
        if inspection.plan is not None:
            try:
                nftlog.put(inspection.plan.rules)
                self._failed = ""
            except OSError as exc:
                if str(exc) != self._failed:  # said once, not at every firewall change
                    log.warning("attempts.table_failed", table=nftlog.TABLE, error=str(exc))
                self._failed = str(exc)

    def remove(self) -> list[str]:
        return [f"nft delete table inet {nftlog.TABLE}"] if nftlog.delete() else []
