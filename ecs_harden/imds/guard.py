"""The guard of every interface: raw PREROUTING drops forwarded traffic to IMDS whatever
interface it came in on, but for the declared exceptions (imds.allow_interfaces).

The host's own requests to IMDS leave through OUTPUT, and IMDS's answers are addressed to
the host, not to 169.254.169.254: neither passes a PREROUTING rule matching the IMDS
address as destination, so the host keeps IMDS. What does pass it is traffic that arrives
on an interface bound somewhere else: a container's, on any bridge, veth or tunnel. Only
loopback is left alone (only the host itself sends there, to an address of its own).

In raw PREROUTING, in this order, at the top (before any rule that could ACCEPT):
    -d IMDS -i <exception> -m comment --comment "<EXCEPTION_COMMENT>" -j RETURN   (each)
    -d IMDS ! -i lo       -m comment --comment "<GUARD_COMMENT>"     -j DROP
RETURN only ends raw PREROUTING for that traffic: filter FORWARD still judges it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ecs_harden.firewall.rule import Network, Rule, parse_args
from ecs_harden.imds.block import Placed, leading_copies, to_address

GUARD_COMMENT = "ecs-harden: block IMDS from every interface"
EXCEPTION_COMMENT = "ecs-harden: declared IMDS exception"
LOOPBACK = "lo"


@dataclass(frozen=True)
class GuardRule:
    """The guard (interface None: every interface but lo) or one declared exception."""

    address: Network
    interface: str | None = None

    @property
    def is_guard(self) -> bool:
        return self.interface is None

    @property
    def label(self) -> str:
        return "the guard of every interface" if self.is_guard else f"the exception for {self.interface}"

    def args(self) -> tuple[str, ...]:
        if self.interface is None:
            return ("-d", str(self.address), "!", "-i", LOOPBACK,
                    "-m", "comment", "--comment", GUARD_COMMENT, "-j", "DROP")
        return ("-d", str(self.address), "-i", self.interface,
                "-m", "comment", "--comment", EXCEPTION_COMMENT, "-j", "RETURN")

    def rule(self, chain: str) -> Rule:
        return parse_args(chain, self.args())

    def is_copy(self, rule: Rule) -> bool:
        """The guard, with our comment or none; an exception only with ours (a RETURN
        someone else wrote is theirs, never taken for ours or deleted)."""
        target = "DROP" if self.is_guard else "RETURN"
        if rule.target != target or rule.goto or rule.target_args:
            return False
        if rule.src or rule.out_iface or rule.proto or rule.unknown:
            return False
        iface = rule.in_iface
        if iface is None:
            return False
        if self.is_guard and not (iface.negated and iface.value == LOOPBACK):
            return False
        if not self.is_guard and (iface.negated or iface.value != self.interface):
            return False
        if not to_address(rule, self.address) or not all(m.module == "comment" for m in rule.matches):
            return False
        return self.is_guard or rule.has_comment(EXCEPTION_COMMENT)

    def is_ours(self, rule: Rule) -> bool:
        return self.is_copy(rule) and rule.has_comment(GUARD_COMMENT if self.is_guard else EXCEPTION_COMMENT)


def members(address: Network, exceptions: Sequence[str], *, guard: bool) -> tuple[GuardRule, ...]:
    """What raw PREROUTING holds, in order: the exceptions, then the guard; nothing
    without the guard (an exception is a hole in it, and means nothing alone)."""
    if not guard:
        return ()
    return (*(GuardRule(address, i) for i in exceptions), GuardRule(address))


def is_ours(rule: Rule) -> bool:
    """A guard or exception rule ecs-harden wrote (by comment), whatever it now says."""
    return (rule.target == "DROP" and rule.has_comment(GUARD_COMMENT)) or (
        rule.target == "RETURN" and rule.has_comment(EXCEPTION_COMMENT))


def opening_run(rules: Sequence[Rule], blocks: Sequence[Placed], wanted: Sequence[GuardRule]) -> int:
    """How many rules open raw PREROUTING that are ours: copies of a block, the guard's
    members, or a guard rule of ours the policy no longer wants (tidied, not a stranger)."""
    return leading_copies(rules, (*blocks, *wanted), is_ours)


def kept(rules: Sequence[Rule], run: int, wanted: Sequence[GuardRule]) -> dict[GuardRule, int] | None:
    """Where the guard is in force: the index of the copy of each member to keep, in the
    first `run` rules (those opening the chain): the first guard copy with a copy of every
    exception before it. None when it is not in force (then it is inserted afresh at the
    top); {} when nothing is wanted."""
    if not wanted:
        return {}
    guard = wanted[-1]
    exceptions = wanted[:-1]
    first: dict[GuardRule, int] = {}
    for i in range(run):
        for e in exceptions:
            if e not in first and e.is_copy(rules[i]):
                first[e] = i
        if guard.is_copy(rules[i]) and all(e in first for e in exceptions):
            return {**first, guard: i}
    return None


def unwanted(
    rules: Sequence[Rule], wanted: Sequence[GuardRule], keep: dict[GuardRule, int] | None
) -> list[int]:
    """Indexes to delete: every copy of a member but the one kept, and every guard or
    exception of ours no member stands for (a withdrawn exception is a hole that must
    close; a guard the policy turned off). Nothing of members while keep is None (the
    fresh copies are inserted first)."""
    out: list[int] = []
    for i, rule in enumerate(rules):
        member = next((m for m in wanted if m.is_copy(rule)), None)
        if member is None:
            if is_ours(rule):
                out.append(i)
        elif keep is not None and keep.get(member) != i:
            out.append(i)
    return out

