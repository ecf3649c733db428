"""imds.attempts: blocked attempts to reach IMDS in the last hour, by workload.

`warn` while the daemon saw any (naming task family and container, the most active
first), `ok` otherwise: an attempt is never drift, the block worked. The component also
keeps the attempts table (nftlog) as the policy wants it: made anew when missing or not
ours (a repair, said, never a reason for drift). In the daemon the record is the
process's own; `check` reads the daemon's last status file (no daemon, no record: said).
Under mode: report nothing is made, and nothing is logged. Under imds.host_network: block
the table has the host path too (nftlog's `out` and `tasks` chains): its task containers
are named again as they come and go (a host-network container's start wakes the firewall's
components), which is routine, not a repair.
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
    host: nftlog.HostMatch | None
    whole: bool  # the table made anew; else only the host chain's task containers


def describe(recent: Sequence[dict[str, Any]]) -> str:
    by: dict[tuple[str, str], int] = {}
    for r in recent:
        key = (str(r.get("task_family") or "-"), str(r.get("container") or "?"))
        by[key] = by.get(key, 0) + int(r.get("count") or 0)
    named = sorted(by.items(), key=lambda kv: -kv[1])
    text = ", ".join(f"{fam}/{name} ({n})" for (fam, name), n in named[:NAMED])
    return text + (f" and {len(named) - NAMED} more" if len(named) > NAMED else "")


def _printable(value: object, cut: int = 64) -> str:
    """A workload's own words for a terminal: control characters shown as `?`, cut."""
    return "".join(c if c.isprintable() else "?" for c in str(value)[:cut])


def status_lines(record: dict[str, Any] | None, shown: int = 10) -> list[str]:
    """`status`'s text: the attempts in the last hour, the latest first (the status file's
    `daemon.attempts`)."""
    if not isinstance(record, dict):
        return []
    if record.get("error"):
        return [f"attempts: not listening ({_printable(record['error'], 300)})"]
    count = int(record.get("last_hour") or 0)
    lost = int(record.get("unattributed") or 0)
    head = f"attempts: {count} blocked in the last hour" + (f", {lost} packets unattributed" if lost else "")
    recent = [r for r in record.get("recent") or [] if isinstance(r, dict)]
    if not recent:
        return [head]
    lines = [head + ", the latest:"]
    for r in reversed(recent[-shown:]):
        task = r.get("task_arn") or ""
        who = f"{_printable(r.get('task_family') or '-')}/{_printable(r.get('container') or '?')}"
        lines.append(f"  {_printable(r.get('last_seen'), 24)}  {who}"
                     + (f" (task {_printable(str(task).rsplit('/', 1)[-1])})" if task else "")
                     + f" from {_printable(r.get('source'), 40)} on {_printable(r.get('interface'), 16)}"
                     + f" [{_printable(r.get('path'), 8)}]: {int(r.get('count') or 0)}")
    return lines


class AttemptsComponent(Base):
    name = CHECK
    wakes_on = FIREWALL

    def __init__(self, rules: Sequence[nftlog.Match], record: Callable[[], dict[str, Any] | None], *,
                 enforce: bool, host: Callable[[], nftlog.HostMatch | None] = lambda: None):
        self.rules = tuple(rules)
        self.record = record
        self.enforce = enforce
        self.host = host  # imds.host_network: block's slice and task containers, now
        self._failed = ""  # the last error making the table, said once
        self._host_failed = False  # the kernel refused the host chain: the bridge path alone

    def expected(self) -> str:
        return "no container tried to reach IMDS in the last hour (each attempt blocked and attributed)"

    def inspect(self) -> Inspection[_Plan]:
        problem = ""
        try:
            installed = nftlog.read()
        except OSError as exc:
            installed, problem = None, f"the attempts table cannot be read: {exc}"
        host = None if self._host_failed else self.host()
        wanted = nftlog.wanted(self.rules, host)
        have = installed.prints if installed is not None else {}
        in_place = installed is not None and all(have.get(c, ()) == wanted.get(c, ())
                                                 for c in (nftlog.CHAIN, nftlog.OUT_CHAIN))
        tasks_in_place = have.get(nftlog.TASKS_CHAIN, ()) == wanted.get(nftlog.TASKS_CHAIN, ())
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
        if not self.enforce or not self.rules or (in_place and tasks_in_place):
            return Inspection((finding,))
        if in_place and host is not None:  # a host-network task container came or went: not drift
            return Inspection((finding,), (f"nft: name {len(host.scopes)} host-network task container(s) in "
                                           f"table inet {nftlog.TABLE}",), frozenset(),
                              _Plan(self.rules, host, whole=False))
        count = len(self.rules) + (len(host.out_rules()) if host else 0)
        return Inspection((finding,), (f"nft: make table inet {nftlog.TABLE} ({count} rule(s))",),
                          frozenset({CHECK}), _Plan(self.rules, host, whole=True))

    def execute(self, inspection: Inspection[_Plan]) -> None:
        """Never a failure of the reconcile: a kernel without what the table needs (or a
        sandbox refusing it) leaves attempts unlogged, which the next look says (`warn`).
        A kernel refusing only the host chain (`socket cgroupv2`: Linux 5.13) keeps the
        bridge path's logging, said once."""
        plan = inspection.plan
        if plan is None:
            return
        try:
            if not plan.whole and plan.host is not None:
                nftlog.put_tasks(plan.host)
            else:
                try:
                    nftlog.put(plan.rules, plan.host)
                except OSError as exc:
                    if plan.host is None:
                        raise
                    nftlog.put(plan.rules)
                    self._host_failed = True
                    log.warning("attempts.host_chain_failed", table=nftlog.TABLE, error=str(exc))
            self._failed = ""
        except OSError as exc:
            if str(exc) != self._failed:  # said once, not at every firewall change
                log.warning("attempts.table_failed", table=nftlog.TABLE, error=str(exc))
            self._failed = str(exc)

    def remove(self) -> list[str]:
        return [f"nft delete table inet {nftlog.TABLE}"] if nftlog.delete() else []
