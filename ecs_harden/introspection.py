"""ecs_agent.introspection: whether containers reach the ECS agent's introspection API.

The agent serves it (the container instance's ARN, its cluster, its tasks) on tcp/51678 of
every address of the host. ecs-init drops it in filter INPUT from every interface but lo,
and since 2025-05 (amazon-ecs-agent PR #4706) ACCEPTs it from docker0 before that drop, at
every start of the agent: bridge-network containers read it. ECScape (2025) starts there,
reading the container instance's ARN to pose as the agent. Monitoring sidecars read it too,
so blocking it is the policy's choice (ecs_agent.introspection):

- report (the default): `warn` while a new TCP connection from a container interface
  (imds.interfaces) to an address of the host's own, port 51678, can be accepted: raw
  PREROUTING, then filter INPUT, evaluated as the IMDS block is (firewall.evaluate; what
  the evaluator cannot tell counts as reachable); `ok` when every path drops it.
- block: raw PREROUTING drops it, one rule per container interface pattern
      -i IFACE -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 51678 -j DROP
  right after the IMDS guard's rules. ecs-init writes only filter INPUT and nat, so the
  ACCEPT it puts back at each start never comes before ours. Live only, never in a boot
  file: the daemon starts before the agent (the gate), and a rule of ours that a boot
  restore could fail on would cost the IMDS block.

Host-network containers reach it through lo, as the agent's own tools do: not judged here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ecs_harden.component import FIREWALL, Base, Inspection
from ecs_harden.firewall.backend import Backend, DeleteAt, Insert, Op, binary, describe
from ecs_harden.firewall.evaluate import ChainReader, Outcome, PathEvaluator, Probe
from ecs_harden.firewall.rule import Rule
from ecs_harden.imds import guard as guards_
from ecs_harden.imds.block import COMMENT as BLOCK_COMMENT
from ecs_harden.imds.block import GUARD_CHAIN, GUARD_TABLE
from ecs_harden.report import DRIFT, OK, WARN, Finding

CHECK = "ecs_agent.introspection"
PORT = 51678
COMMENT = "ecs-harden: block ECS agent introspection from containers"
ANYWHERE = {4: ipaddress.ip_network("0.0.0.0/0"), 6: ipaddress.ip_network("::/0")}
WHY = ("ECScape read the container instance's ARN there to pose as the agent; "
       "ecs_agent.introspection: block drops it (a monitoring sidecar reading it loses it)")


@dataclass(frozen=True)
class PortBlock:
    interface: str

    def args(self) -> tuple[str, ...]:
        return ("-i", self.interface, "-p", "tcp", "-m", "addrtype", "--dst-type", "LOCAL",
                "-m", "tcp", "--dport", str(PORT), "-m", "comment", "--comment", COMMENT, "-j", "DROP")

    def is_copy(self, rule: Rule) -> bool:
        iface = rule.in_iface
        return is_ours(rule) and iface is not None and not iface.negated and iface.value == self.interface


def is_ours(rule: Rule) -> bool:
    return rule.target == "DROP" and rule.has_comment(COMMENT)


def imds_run(rules: Sequence[Rule]) -> int:
    """How many rules of the IMDS block's open raw PREROUTING (ours go right after them)."""
    n = 0
    while n < len(rules) and (guards_.is_ours(rules[n]) or
                              (rules[n].target == "DROP" and rules[n].has_comment(BLOCK_COMMENT))):
        n += 1
    return n


def leak(raw: ChainReader, filter_: ChainReader, interface: str, interfaces: Sequence[str],
         family: int) -> Outcome | None:
    """The first way a new connection from interface to tcp/51678 of the host may be
    accepted (None: every path drops it). raw PREROUTING first: a DROP there is final; an
    ACCEPT, a RETURN or its end hands the packet on, and filter INPUT decides."""
    probe = Probe(interface, ANYWHERE[family], tuple(interfaces), dport=PORT, local=True)
    first = PathEvaluator(raw, GUARD_CHAIN).outcomes(probe)
    unknown = sorted((o for o in first if o.verdict == "unknown"), key=lambda o: o.rule)
    if unknown:
        return unknown[0]
    if first and all(o.verdict == "block" for o in first):
        return None
    leaks = sorted((o for o in PathEvaluator(filter_, "INPUT").outcomes(probe) if o.verdict != "block"),
                   key=lambda o: o.rule)
    return leaks[0] if leaks else None


@dataclass(frozen=True)
class _Plan:
    inserts: dict[int, tuple[Op, ...]]


class IntrospectionComponent(Base):
    name = CHECK
    wakes_on = FIREWALL

    def __init__(self, mode: str, interfaces: Sequence[str], backends: Mapping[int, Callable[[], Backend]]):
        self.mode = mode
        self.interfaces = tuple(interfaces)
        self.blocks = tuple(PortBlock(i) for i in interfaces)
        self._factories = backends
        self._backends: dict[int, Backend] = {}

    def backend(self, family: int) -> Backend:
        if family not in self._backends:
            self._backends[family] = self._factories[family]()
        return self._backends[family]

    def expected(self) -> str:
        pats = ", ".join(self.interfaces)
        if self.mode == "block":
            return f"raw {GUARD_CHAIN} drops tcp/{PORT} to the host from {pats}, effective"
        return f"no container interface ({pats}) reaches the ECS agent's introspection API (tcp/{PORT})"

    def inspect(self) -> Inspection[_Plan]:
        leaks: list[str] = []
        extra: list[str] = []
        inserts: dict[int, list[Op]] = {}
        for family in sorted(self._factories):
            backend = self.backend(family)
            raw, filter_ = backend.snapshot(GUARD_TABLE), backend.snapshot()
            chain = raw(GUARD_CHAIN)
            rules = chain.rules if chain else ()
            at = imds_run(rules) + 1
            for block in self.blocks:
                found = leak(raw, filter_, block.interface, self.interfaces, family)
                if found is not None:
                    how = "accepted" if found.verdict == "accept" else "may be accepted"
                    via = f"by `{found.rule}`" if found.rule.startswith("-A") else f"({found.rule})"
                    leaks.append(f"IPv{family} from {block.interface}: {how} {via}")
                    if self.mode == "block":
                        op = Insert(GUARD_CHAIN, at, block.args(), GUARD_TABLE)
                        inserts.setdefault(family, []).append(op)
            extra += [f"IPv{family} `{op.rule.text()}`" for op in self._tidy(family, rules)]
        plan = _Plan({f: tuple(ops) for f, ops in inserts.items()}) if inserts or extra else None
        finding = self._judge(leaks, extra)
        if plan is None:
            return Inspection((finding,))
        changes = tuple(f"{binary(f)} {describe(op)}" for f, ops in inserts.items() for op in ops)
        changes += tuple(f"delete {e}" for e in extra)
        return Inspection((finding,), changes, frozenset({self.name}), plan)

    def _judge(self, leaks: Sequence[str], extra: Sequence[str]) -> Finding:
        reach = "; ".join(leaks)
        if self.mode == "block":
            problems = ([f"containers reach the ECS agent's introspection API: {reach}"] if leaks else [])
            problems += [f"a rule of ours more than needed: {e}" for e in extra]
            if problems:
                return Finding(CHECK, DRIFT, self.expected(), "reachable" if leaks else "effective",
                               "; ".join(problems))
            return Finding(CHECK, OK, self.expected(), "effective",
                           f"{self._dropped()} in raw {GUARD_CHAIN}")
        if extra:
            return Finding(CHECK, DRIFT, self.expected(), "reachable" if leaks else "not reachable",
                           "ecs_agent.introspection is report, and rules of ours from a block are still "
                           "there: " + "; ".join(extra))
        if leaks:
            return Finding(CHECK, WARN, self.expected(), "reachable",
                           f"containers reach the ECS agent's introspection API (tcp/{PORT}): {reach}. {WHY}")
        return Finding(CHECK, OK, self.expected(), "not reachable", self._dropped())

    def _dropped(self) -> str:
        return f"every new connection from {', '.join(self.interfaces)} to tcp/{PORT} of the host is dropped"

    def _tidy(self, family: int, rules: Sequence[Rule]) -> list[DeleteAt]:
        """Rules of ours not wanted: every one under report; under block, each copy after
        the first for its interface, and those of an interface no longer in the policy."""
        seen: set[PortBlock] = set()
        out: list[DeleteAt] = []
        for i, rule in enumerate(rules):
            if not is_ours(rule):
                continue
            block = next((b for b in self.blocks if b.is_copy(rule)), None) if self.mode == "block" else None
            if block is None or block in seen:
                out.append(DeleteAt(GUARD_CHAIN, i + 1, rule, GUARD_TABLE))
            else:
                seen.add(block)
        return out

    def execute(self, inspection: Inspection[_Plan]) -> None:
        """The inserts first, in a commit of their own; then, from a fresh read, the
        deletes (positions checked at the commit)."""
        planned = inspection.plan
        if planned is None:
            return
        for family, ops in planned.inserts.items():
            self.backend(family).commit(ops)
        for family in sorted(self._factories):
            deletes = self._tidy(family, self._rules(family))
            if deletes:
                self.backend(family).commit(deletes)

    def _rules(self, family: int) -> tuple[Rule, ...]:
        chain = self.backend(family).snapshot(GUARD_TABLE)(GUARD_CHAIN)
        return chain.rules if chain else ()

    def remove(self) -> list[str]:
        said: list[str] = []
        for family in sorted(self._factories):
            ops = [DeleteAt(GUARD_CHAIN, i + 1, r, GUARD_TABLE)
                   for i, r in enumerate(self._rules(family)) if is_ours(r)]
            if ops:
                self.backend(family).commit(ops)
                said += [f"{binary(family)} {describe(op)}" for op in ops]
        return said
