"""imds.ipv4.live / imds.ipv6.live: the live ruleset drops container traffic to IMDS, effectively.

Effective means every path a new TCP connection from each interface pattern to
the IMDS address can take through FORWARD ends in a DROP (see firewall.evaluate),
and the block is there exactly once in each managed chain.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Dict, Tuple

from ecs_harden.component import FIREWALL, PATHS, Base, Inspection
from ecs_harden.firewall.backend import Backend, DeleteAt, Insert, NewChain, Op, binary, describe
from ecs_harden.firewall.evaluate import Outcome, PathEvaluator, Probe
from ecs_harden.firewall.rule import Chain, Network, Rule
from ecs_harden.imds import guard as guards_
from ecs_harden.imds.block import (
    COMMENT,
    DOCKER_USER,
    GUARD_CHAIN,
    GUARD_TABLE,
    MANAGED_CHAINS,
    Block,
    count_problem,
    leading_copies,
)
from ecs_harden.policy import Policy
from ecs_harden.report import DRIFT, OK, Finding

Places = Dict[Tuple[str, str], Tuple[Rule, ...]]  # (table, chain) -> its rules


def ipv6_available() -> bool:
    return os.path.isdir("/proc/sys/net/ipv6")


@dataclass(frozen=True)
class BlockState:
    block: Block
    copies: dict[str, list[Rule]]  # chain -> copies found there
    outcomes: frozenset[Outcome]
    guards: list[Rule]  # copies in raw PREROUTING
    guard_on_top: bool  # the guards open the chain, before any other rule
    on_top: dict[str, bool] = field(default_factory=dict)  # chain -> a copy opens it

    @property
    def effective(self) -> bool:
        return bool(self.outcomes) and all(o.verdict == "block" for o in self.outcomes)

    def first_leak(self) -> Outcome | None:
        leaks = sorted((o for o in self.outcomes if o.verdict != "block"), key=lambda o: o.rule)
        return leaks[0] if leaks else None


class LiveBlockComponent(Base):
    wakes_on = FIREWALL
    after_repair = frozenset({PATHS})  # a verdict of the paths reads the ruleset this repaired
    family: int

    def __init__(
        self,
        family: int,
        backend: Callable[[], Backend],
        interfaces: Sequence[str],
        address: Network,
        guard: Sequence[guards_.GuardRule] = (),
    ):
        self.family = family
        # imds.guard: the exceptions and the guard of every interface, in raw PREROUTING
        self.guard = tuple(guard)
        self.name = f"imds.ipv{family}.live"
        self._backend_factory = backend
        self._backend: Backend | None = None
        self.blocks = tuple(Block(i, address) for i in interfaces)
        self.interfaces = tuple(interfaces)
        self.address = address

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = self._backend_factory()
        return self._backend

    def transaction(self) -> AbstractContextManager[None]:
        """Inspect and execute as one: see Backend.transaction."""
        if self.family == 6 and not ipv6_available():
            return contextlib.nullcontext()
        return self.backend.transaction()

    def expected(self) -> str:
        pats = ", ".join(self.interfaces)
        every = ""
        if self.guard:
            allowed = [g.interface for g in self.guard if g.interface]
            every = (f"; raw {GUARD_CHAIN} drops forwarded traffic to {self.address} from every interface"
                     + (f" but {', '.join(allowed)} (declared)" if allowed else ""))
        return (f"DROP -i {pats} -d {self.address} once in {' and '.join(MANAGED_CHAINS)} and raw "
                f"{GUARD_CHAIN}, effective{every}")

    def observe(self) -> tuple[dict[str, Chain | None], list[BlockState], Places]:
        reader = self.backend.snapshot()
        evaluator = PathEvaluator(reader)
        chains = {name: evaluator.chain(name) for name in MANAGED_CHAINS}
        raw = self.backend.snapshot(GUARD_TABLE)(GUARD_CHAIN)
        places: Places = {("filter", name): chain.rules if chain else () for name, chain in chains.items()}
        places[(GUARD_TABLE, GUARD_CHAIN)] = raw.rules if raw else ()
        # The copies (of any block) that open each place, before any other rule.
        openers = {place: rules[:self.run(place, rules)] for place, rules in places.items()}
        guard = (GUARD_TABLE, GUARD_CHAIN)
        states = []
        for block in self.blocks:
            copies = {n: [r for r in places[("filter", n)] if block.is_copy(r)] for n in MANAGED_CHAINS}
            on_top = {n: any(block.is_copy(r) for r in openers[("filter", n)]) for n in MANAGED_CHAINS}
            guards = [r for r in places[guard] if block.is_copy(r)]
            guard_on_top = any(block.is_copy(r) for r in openers[guard])
            probe = Probe(block.interface, self.address, self.interfaces)
            states.append(BlockState(block, copies, evaluator.outcomes(probe), guards, guard_on_top, on_top))
        return chains, states, places

    def run(self, place: tuple[str, str], rules: Sequence[Rule]) -> int:
        """How many rules of ours open the place (in raw PREROUTING the guard's count too)."""
        return opening_run(place, rules, self.blocks, self.guard)

    def guard_kept(self, places: Places) -> dict[guards_.GuardRule, int] | None:
        rules = places[(GUARD_TABLE, GUARD_CHAIN)]
        return guards_.kept(rules, self.run((GUARD_TABLE, GUARD_CHAIN), rules), self.guard)

    def read_places(self) -> Places:
        """The rules of every place the block goes, as they are now, without evaluating anything."""
        places: Places = {}
        for table, names in (("filter", MANAGED_CHAINS), (GUARD_TABLE, (GUARD_CHAIN,))):
            reader = self.backend.snapshot(table)
            for name in names:
                chain = reader(name)
                places[(table, name)] = chain.rules if chain else ()
        return places

    def inspect(self) -> Inspection[_Plan]:
        if self.family == 6 and not ipv6_available():
            return Inspection((Finding(
                self.name, OK, self.expected(), "no IPv6",
                "this kernel has no IPv6 (/proc/sys/net/ipv6 is missing): there is no IPv6 path to IMDS",
            ),))
        chains, states, places = self.observe()
        effective = frozenset(st.block for st in states if st.effective)
        keep = self.guard_kept(places)
        ops = plan(chains, states, self.guard if keep is None else ())
        ops += tidy(places, self.blocks, effective, self.guard)
        finding = self.judge(chains, states, places, keep)
        if not ops:
            return Inspection((finding,))
        return Inspection(
            (finding,),
            tuple(f"{binary(self.family)} {describe(op)}" for op in ops),
            frozenset({self.name}),
            _Plan(tuple(ops), effective),
        )

    def judge(self, chains: dict[str, Chain | None], states: list[BlockState],
              places: Places | None = None, keep: dict[guards_.GuardRule, int] | None = None) -> Finding:
        problems: list[str] = []
        counts: list[str] = []
        if places is not None:
            self._judge_guard(places[(GUARD_TABLE, GUARD_CHAIN)], keep, problems, counts)
        for name, chain in chains.items():
            if chain is None:
                problems.append(f"chain {name} does not exist")
        for st in states:
            for name in MANAGED_CHAINS:
                n = len(st.copies[name])
                counts.append(f"{name} {st.block.interface}: {n}")
                problem = count_problem("DROP", st.block.interface, name, n)
                if chains[name] is not None and problem:
                    problems.append(problem)
            g = len(st.guards)
            counts.append(f"raw {GUARD_CHAIN} {st.block.interface}: {g}")
            problem = count_problem("guard", st.block.interface, f"raw {GUARD_CHAIN}", g)
            why = " (it closes the window while dockerd restarts)" if g == 0 else ""
            if problem:
                problems.append(problem + why)
            elif not st.guard_on_top:
                problems.append(f"the guard for {st.block.interface} is not at the top of raw {GUARD_CHAIN}")
            leak = st.first_leak()
            if leak is not None:
                what = "accepted" if leak.verdict == "accept" else "may be accepted"
                via = f"by `{leak.rule}`" if leak.rule.startswith("-A") else f"({leak.rule})"
                problems.append(f"traffic from {st.block.interface} to {self.address} is {what} {via}"
                                + (": the block is shadowed" if leak.rule.startswith("-A") else ""))
        actual = "; ".join(counts)
        if all(st.effective for st in states):
            actual += "; effective"
        if problems:
            return Finding(self.name, DRIFT, self.expected(), actual, "; ".join(problems))
        return Finding(
            self.name, OK, self.expected(), actual,
            f"every new connection from {', '.join(self.interfaces)} to {self.address} is dropped",
        )

    def _judge_guard(self, raw: Sequence[Rule], keep: dict[guards_.GuardRule, int] | None,
                     problems: list[str], counts: list[str]) -> None:
        for member in self.guard:
            n = sum(1 for r in raw if member.is_copy(r))
            which = "every interface" if member.is_guard else member.interface
            counts.append(f"raw {GUARD_CHAIN} {which}: {n}")
            if n == 0:
                why = ": traffic from any other interface reaches IMDS" if member.is_guard else ""
                problems.append(f"{member.label} is missing from raw {GUARD_CHAIN}{why}")
            elif n > 1:
                problems.append(f"{n} copies of {member.label} in raw {GUARD_CHAIN}")
        if self.guard and keep is None and all(any(m.is_copy(r) for r in raw) for m in self.guard):
            problems.append(f"{self.guard[-1].label} is not in force: it must open raw {GUARD_CHAIN}, "
                            "after the declared exceptions")
        for rule in raw:
            if guards_.is_ours(rule) and not any(m.is_copy(rule) for m in self.guard):
                what = ("a withdrawn exception" if rule.target == "RETURN"
                        else "the guard of every interface (imds.guard_all_interfaces is false)")
                problems.append(f"{what} is still in raw {GUARD_CHAIN}: `{rule.text()}`")

    def execute(self, inspection: Inspection[_Plan]) -> None:
        """First the inserts that make the block effective, in a commit of their own that
        depends on nothing else on the host; then, from a fresh read, the tidying (copies
        that are not the one on top), deleted by position checked at the commit. A tidy
        that fails leaves an effective block and says why."""
        planned = inspection.plan
        if planned is None:
            return
        inserts = [op for op in planned.ops if not isinstance(op, DeleteAt)]
        if inserts:
            self.backend.commit(inserts)
        deletes = tidy(self.read_places(), self.blocks, planned.effective, self.guard)
        if deletes:
            self.backend.commit(deletes)

    def removal_ops(self) -> list[Op]:
        """Every rule this agent added (ours by comment), in every managed chain."""
        if self.family == 6 and not ipv6_available():
            return []
        return [
            DeleteAt(name, i + 1, rule, table)
            for (table, name), rules in self.read_places().items()
            for i, rule in enumerate(rules)
            if (rule.target == "DROP" and rule.has_comment(COMMENT)) or guards_.is_ours(rule)
        ]

    def remove(self) -> list[str]:
        ops = self.removal_ops()
        self.backend.commit(ops)
        return [f"{binary(self.family)} {describe(op)}" for op in ops]


def opening_run(place: tuple[str, str], rules: Sequence[Rule], blocks: Sequence[Block],
                guard: Sequence[guards_.GuardRule]) -> int:
    """How many rules of ours open the place (in raw PREROUTING the guard's count too)."""
    if place == (GUARD_TABLE, GUARD_CHAIN):
        return guards_.opening_run(rules, blocks, guard)
    return leading_copies(rules, blocks)


@dataclass(frozen=True)
class _Plan:
    ops: tuple[Op, ...]
    effective: frozenset[Block]  # blocks that were effective where they stood


def tidy(
    places: Places,
    blocks: Sequence[Block],
    effective: frozenset[Block],
    guard: Sequence[guards_.GuardRule] = (),
) -> list[Op]:
    """Delete every copy of a block but one: the first of those opening its chain, else (an
    effective block that Docker's jump or rules now precede) its first copy. Nothing in a
    chain where some block has no copy to keep yet (the insert comes first). In raw
    PREROUTING likewise the guard's copies but the one in force, and guard rules of ours
    the policy no longer wants (imds.guard.unwanted)."""
    ops: list[Op] = []
    for (table, name), rules in places.items():
        top = opening_run((table, name), rules, blocks, guard)
        doomed: set[int] = set()
        if (table, name) == (GUARD_TABLE, GUARD_CHAIN):
            doomed.update(guards_.unwanted(rules, guard, guards_.kept(rules, top, guard)))
        keep: dict[Block, int] = {}
        for block in blocks:
            at = [i for i, r in enumerate(rules) if block.is_copy(r)]
            on_top = [i for i in at if i < top]
            if on_top:
                keep[block] = on_top[0]
            elif at and block in effective and table == "filter":
                keep[block] = at[0]
        if len(keep) == len(blocks):
            for i, rule in enumerate(rules):
                copy_of = next((b for b in blocks if b.is_copy(rule)), None)
                if copy_of is not None and keep[copy_of] != i:
                    doomed.add(i)
        ops.extend(DeleteAt(name, i + 1, rules[i], table) for i in sorted(doomed))
    return ops


def plan(
    chains: dict[str, Chain | None], states: list[BlockState], guard: Sequence[guards_.GuardRule] = ()
) -> list[Op]:
    """The inserts that make each block effective: a copy at the top of each managed chain
    and of raw PREROUTING wherever none opens it. A copy opening FORWARD drops the traffic
    before any other rule can accept it, so this needs no evaluation and no delete; the
    copies it leaves below are tidied afterwards (tidy)."""
    ops: list[Op] = []
    if chains.get(DOCKER_USER) is None:
        ops.append(NewChain(DOCKER_USER))
    for st in states:
        for name in MANAGED_CHAINS:
            # Docker puts its jump (and, restarting, its rules) above our copy in FORWARD;
            # where that copy still decides, it stays. Unknown is never effective.
            if not st.on_top.get(name) and not (st.effective and st.copies.get(name)):
                ops.append(Insert(name, 1, st.block.args()))
        if not st.guard_on_top:
            ops.append(Insert(GUARD_CHAIN, 1, st.block.args(), GUARD_TABLE))
    # The guard not in force: all of it afresh at the top (the exceptions before it);
    # what was there is tidied afterwards.
    for member in reversed(guard):
        ops.append(Insert(GUARD_CHAIN, 1, member.args(), GUARD_TABLE))
    return ops


def guard_of(policy: Policy, address: Network) -> tuple[guards_.GuardRule, ...]:
    imds = policy.imds
    return guards_.members(address, imds.allow_interfaces, guard=imds.guard_all_interfaces)


def for_policy(
    policy: Policy, variant: str | None, backend: Callable[[int], Backend] | None = None
) -> list[LiveBlockComponent]:
    """The live checks a policy makes, one per IP family it enables, on the backend of
    the host's iptables variant (or the one given: a reader that never commits)."""
    from ecs_harden.firewall.detect import backend_for

    def make(family: int) -> Callable[[], Backend]:
        return (lambda: backend(family)) if backend is not None else (lambda: backend_for(variant, family))

    imds = policy.imds
    out = [LiveBlockComponent(4, make(4), imds.interfaces, imds.ipv4, guard_of(policy, imds.ipv4))]
    if imds.ipv6 is not None:
        out.append(LiveBlockComponent(6, make(6), imds.interfaces, imds.ipv6, guard_of(policy, imds.ipv6)))
    return out
