"""The path evaluator: what happens to a new TCP connection from a container bridge to IMDS.

Walks FORWARD rule by rule, following jumps, gotos and returns, with three-valued
matching: a rule matches the probe packet surely, surely not, or maybe. A rule
that may match is explored both ways, so the result is the set of every
possible first verdict. The block is effective only when every one of them is a
DROP; a match the evaluator does not understand counts as "may accept".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

from ecs_harden.firewall.rule import Chain, Match, Neg, Network, Rule, network


class Tri(enum.Enum):
    NO = 0
    MAYBE = 1
    YES = 2


def _and(*values: Tri) -> Tri:
    return min(values, key=lambda t: t.value) if values else Tri.YES


def _neg(value: Tri, negated: bool) -> Tri:
    if not negated:
        return value
    return {Tri.YES: Tri.NO, Tri.NO: Tri.YES, Tri.MAYBE: Tri.MAYBE}[value]


@dataclass(frozen=True)
class Probe:
    """A new TCP connection from an interface pattern to an address."""

    in_pattern: str
    dst: Network
    bridges: tuple[str, ...]  # every container-bridge pattern: the packet does not leave by one
    dport: int = 80
    # addressed to the host itself (an address of its own: addrtype LOCAL), not forwarded
    local: bool = False


@dataclass(frozen=True)
class Outcome:
    verdict: str  # "block", "accept", "unknown"
    rule: str  # the deciding rule's text, or "policy FORWARD DROP"


# Targets that let the packet continue to the next rule.
NON_TERMINAL = frozenset(
    {"LOG", "NFLOG", "ULOG", "MARK", "CONNMARK", "TRACE", "AUDIT", "CHECKSUM", "CLASSIFY",
     "DSCP", "TOS", "TCPMSS", "SECMARK", "CONNSECMARK", "IDLETIMER", "LED", "RATEEST", "TEE"}
)
MAX_DEPTH = 32
# The work one probe may cost: a Docker host with 50k rules walks about one rule each.
MAX_STEPS = 200_000
MAX_CHAINS = 256  # each one read is an `iptables -S CHAIN` on nf_tables hosts
DPORT_OPTIONS = ("dport", "dports", "destination-port", "destination-ports")


def iface_covers(wide: str, narrow: str) -> bool:
    """Every name `narrow` matches is matched by `wide` (iptables '+' suffix patterns)."""
    if wide.endswith("+"):
        return narrow.rstrip("+").startswith(wide[:-1]) if narrow.endswith("+") else narrow.startswith(
            wide[:-1]
        )
    return not narrow.endswith("+") and narrow == wide


def iface_disjoint(a: str, b: str) -> bool:
    ap, bp = a.endswith("+"), b.endswith("+")
    a0, b0 = a.rstrip("+") if ap else a, b.rstrip("+") if bp else b
    if ap and bp:
        return not (a0.startswith(b0) or b0.startswith(a0))
    if ap:
        return not b0.startswith(a0)
    if bp:
        return not a0.startswith(b0)
    return a0 != b0


def _in_iface(spec: Neg, probe: Probe) -> Tri:
    if iface_covers(spec.value, probe.in_pattern):
        t = Tri.YES
    elif iface_disjoint(spec.value, probe.in_pattern):
        t = Tri.NO
    else:
        t = Tri.MAYBE
    return _neg(t, spec.negated)


def _out_iface(spec: Neg, probe: Probe) -> Tri:
    # The packet leaves by the uplink, which is no container bridge.
    if any(iface_covers(b, spec.value) for b in probe.bridges):
        return _neg(Tri.NO, spec.negated)
    return Tri.MAYBE


def _dst(spec: Neg, probe: Probe) -> Tri:
    try:
        net = network(spec.value)
    except ValueError:
        return Tri.MAYBE
    if net.version != probe.dst.version:
        t = Tri.NO
    elif probe.dst.subnet_of(net):  # type: ignore[arg-type]
        t = Tri.YES
    elif probe.dst.overlaps(net):
        t = Tri.MAYBE
    else:
        t = Tri.NO
    return _neg(t, spec.negated)


def _src(spec: Neg) -> Tri:
    try:
        everything = network(spec.value).prefixlen == 0
    except ValueError:
        everything = False
    return _neg(Tri.YES, spec.negated) if everything else Tri.MAYBE


def _proto(spec: Neg) -> Tri:
    value = spec.value.lower()
    t = Tri.YES if value in ("tcp", "6", "all", "0") else Tri.NO
    return _neg(t, spec.negated)


def _ports(spec: str, port: int) -> bool:
    for part in spec.split(","):
        lo, _, hi = part.partition(":")
        try:
            low = int(lo) if lo else 0
            high = int(hi) if hi else (65535 if _ else low)
        except ValueError:
            return True  # a service name: cannot tell, so assume it may match
        if low <= port <= high:
            return True
    return False


def _match(m: Match, probe: Probe) -> Tri:
    results: list[Tri] = []
    if m.module == "comment":
        return Tri.YES
    for opt in m.options:
        value = opt.values[0] if opt.values else ""
        if m.module in ("tcp", "multiport") and opt.name in DPORT_OPTIONS:
            results.append(_neg(Tri.YES if _ports(value, probe.dport) else Tri.NO, opt.negated))
        elif m.module == "multiport" and opt.name == "ports":
            results.append(_neg(Tri.YES if _ports(value, probe.dport) else Tri.MAYBE, opt.negated))
        elif (m.module, opt.name) in (("conntrack", "ctstate"), ("state", "state")):
            states = {s.upper() for s in value.split(",")}
            results.append(_neg(Tri.YES if "NEW" in states else Tri.NO, opt.negated))
        elif m.module in ("udp", "icmp", "icmp6", "icmpv6", "sctp", "udplite"):
            results.append(Tri.NO)
        elif m.module == "addrtype" and opt.name == "dst-type" and probe.local:
            types = {s.upper() for s in value.split(",")}
            results.append(_neg(Tri.YES if "LOCAL" in types else Tri.NO, opt.negated))
        else:
            results.append(Tri.MAYBE)
    if m.module in ("udp", "icmp", "icmp6", "icmpv6", "sctp", "udplite"):
        return Tri.NO
    return _and(*results)


def rule_matches(rule: Rule, probe: Probe) -> Tri:
    parts: list[Tri] = []
    if rule.in_iface is not None:
        parts.append(_in_iface(rule.in_iface, probe))
    if rule.out_iface is not None:
        parts.append(_out_iface(rule.out_iface, probe))
    if rule.dst is not None:
        parts.append(_dst(rule.dst, probe))
    if rule.src is not None:
        parts.append(_src(rule.src))
    if rule.proto is not None:
        parts.append(_proto(rule.proto))
    parts.extend(_match(m, probe) for m in rule.matches)
    if rule.unknown:
        parts.append(Tri.MAYBE)
    return _and(*parts)


ChainReader = Callable[[str], Optional[Chain]]  # typing: evaluated at run time on 3.8


Frame = Tuple[Tuple[str, int], ...]  # where each RETURN goes back to: (chain, next index)
State = Tuple[str, int, Frame]


class PathEvaluator:
    """Explores every path a probe can take, iteratively and within a budget.

    No recursion (a deep tree of jumps cannot exhaust Python's stack) and a bounded
    amount of work (rules looked at, distinct chains read, paths pending): whatever
    the budget does not cover is an "unknown" outcome, which is never effective.
    """

    def __init__(
        self,
        read_chain: ChainReader,
        start: str = "FORWARD",
        *,
        max_steps: int = MAX_STEPS,
        max_chains: int = MAX_CHAINS,
    ):
        self.read_chain = read_chain
        self.start = start
        self.max_steps = max_steps
        self.max_chains = max_chains
        self._chains: dict[str, Chain | None] = {}

    def chain(self, name: str) -> Chain | None:
        if name not in self._chains:
            self._chains[name] = self.read_chain(name)
        return self._chains[name]

    def outcomes(self, probe: Probe) -> frozenset[Outcome]:
        found: set[Outcome] = set()
        seen: set[State] = set()
        pending: list[State] = [(self.start, 0, ())]
        steps = 0
        while pending:
            name, index, stack = pending.pop()
            if (name, index, stack) in seen:
                continue  # its outcomes are in found already (or it is a loop)
            seen.add((name, index, stack))
            if len(stack) > MAX_DEPTH:
                found.add(Outcome("unknown", f"jumps nested deeper than {MAX_DEPTH}"))
                continue
            if name not in self._chains and len(self._chains) >= self.max_chains:
                found.add(Outcome("unknown", f"more than {self.max_chains} chains on the path"))
                continue
            chain = self.chain(name)
            if chain is None:
                found.add(Outcome("unknown", f"chain {name} cannot be read"))
                continue
            fell_through = True
            for i in range(index, len(chain.rules)):
                steps += 1
                if steps > self.max_steps:
                    found.add(Outcome("unknown", f"more than {self.max_steps} rule evaluations"))
                    return frozenset(found)
                rule = chain.rules[i]
                m = rule_matches(rule, probe)
                if m is Tri.NO:
                    continue
                taken = self._taken(rule, name, i, stack)
                if taken is None:
                    continue
                if isinstance(taken, Outcome):
                    if m is Tri.MAYBE and taken.verdict == "block":
                        continue  # a DROP that may not apply decides nothing
                    found.add(taken)
                else:
                    pending.append(taken)
                if m is Tri.YES:
                    fell_through = False
                    break
            if fell_through:
                if stack:
                    caller, at = stack[-1]
                    pending.append((caller, at, stack[:-1]))
                else:
                    found.add(self._policy())
        return frozenset(found)

    def _policy(self) -> Outcome:
        start = self.chain(self.start)
        policy = (start.policy if start else None) or "ACCEPT"
        verdict = "block" if policy == "DROP" else "accept"
        return Outcome(verdict, f"policy {self.start} {policy}")

    def _taken(self, rule: Rule, name: str, index: int, stack: Frame) -> Outcome | State | None:
        """Where the packet goes when the rule applies: a verdict, the state it continues
        in (a jump, a goto, a return), or None when the rule only counts or marks."""
        target = rule.target
        if target is None or target in NON_TERMINAL:
            return None
        if rule.unreadable:
            return Outcome("unknown", f"a rule ecs-harden cannot read: {rule.text()}")
        if target == "ACCEPT":
            return Outcome("accept", rule.text())
        if target in ("DROP", "REJECT"):
            return Outcome("block", rule.text())
        if target == "RETURN":
            if not stack:
                return self._policy()
            caller, at = stack[-1]
            return (caller, at, stack[:-1])
        if len(self._chains) >= self.max_chains and target not in self._chains:
            return Outcome("unknown", f"more than {self.max_chains} chains on the path")
        if self.chain(target) is not None:
            if rule.goto:
                return (target, 0, stack)
            return (target, 0, (*stack, (name, index + 1)))
        return Outcome("unknown", rule.text())
