"""The block rule itself and how to recognise copies of it, ours or hand-made."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ecs_harden.firewall.rule import Network, Rule, network, parse_args

COMMENT = "ecs-harden: block IMDS from containers"
FORWARD = "FORWARD"
DOCKER_USER = "DOCKER-USER"
# FORWARD catches traffic whatever Docker does or does not run; DOCKER-USER is the
# chain Docker jumps to first and never rewrites, so the copy there stays in front
# when dockerd restarts and re-inserts its ACCEPT rules at the top of FORWARD.
MANAGED_CHAINS = (DOCKER_USER, FORWARD)
# The guard: the same DROP in raw PREROUTING, which Docker never writes to. While dockerd
# (re)starts it inserts its ACCEPT rules into FORWARD before it puts the jump to DOCKER-USER
# back on top; the guard closes that window. Persisted too, so that a host rebooted
# without the agent is still compliant.
GUARD_TABLE = "raw"
GUARD_CHAIN = "PREROUTING"


@dataclass(frozen=True)
class Block:
    interface: str
    address: Network

    def args(self) -> tuple[str, ...]:
        return ("-d", str(self.address), "-i", self.interface,
                "-m", "comment", "--comment", COMMENT, "-j", "DROP")

    def rule(self, chain: str) -> Rule:
        return parse_args(chain, self.args())

    def is_copy(self, rule: Rule) -> bool:
        """Exactly this DROP, with our comment or with none (the AWS recipe's hand-made rule)."""
        if rule.target != "DROP" or rule.goto or rule.target_args:
            return False
        if rule.src or rule.out_iface or rule.proto or rule.unknown:
            return False
        if rule.in_iface is None or rule.in_iface.negated or rule.in_iface.value != self.interface:
            return False
        return to_address(rule, self.address) and all(m.module == "comment" for m in rule.matches)

    def is_ours(self, rule: Rule) -> bool:
        return self.is_copy(rule) and rule.has_comment(COMMENT)


class Placed(Protocol):
    """A rule ecs-harden keeps at the top of a chain: a Block, or the guard's (imds.guard)."""

    def is_copy(self, rule: Rule) -> bool: ...


def to_address(rule: Rule, address: Network) -> bool:
    """The rule matches exactly this destination (no `!`)."""
    if rule.dst is None or rule.dst.negated:
        return False
    try:
        return network(rule.dst.value) == address
    except ValueError:
        return False


def leading_copies(
    rules: Sequence[Rule], blocks: Sequence[Placed], also: Callable[[Rule], bool] | None = None
) -> int:
    """How many rules open the chain that are copies of some block (or, with also, a rule
    `also(rule)` says is ours), before any other rule."""
    n = 0
    while n < len(rules) and (any(b.is_copy(rules[n]) for b in blocks)
                              or (also is not None and also(rules[n]))):
        n += 1
    return n


def count_problem(what: str, interface: str, chain: str, n: int) -> str | None:
    """The drift in a copy count, worded the same for the live ruleset and the files."""
    if n == 0:
        return f"no {what} for {interface} in {chain}"
    if n > 1:
        return f"{n} copies of the {what} for {interface} in {chain}"
    return None
