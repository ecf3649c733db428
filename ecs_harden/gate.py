"""`ecs-harden gate`: the ECS agent's ExecStartPre verdict. It guards the block, not the
policy's opinions: exit 3 (EXIT_DRIFT) only when, under `mode: enforce`, the live block
is not in force in a family the policy enables or a managed ecs.config flag is not as
the policy wants; 0 otherwise, with one line saying what is missing. No probe, no
namespace scan, no write, no lock: a local user, a host-network task, a declared
exception or a warning can never keep the agent down. A policy that does not load does
not hold the agent by itself: the block is judged by the defaults, the line says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ecs_harden import policy as policy_mod
from ecs_harden import proc
from ecs_harden.errors import EXIT_DRIFT, EXIT_OK, HardenError, PolicyError
from ecs_harden.facts import iptables_variant
from ecs_harden.firewall.xtables_cli import XtablesCli
from ecs_harden.imds.block import GUARD_CHAIN, GUARD_TABLE, MANAGED_CHAINS
from ecs_harden.imds.live import LiveBlockComponent, for_policy, ipv6_available
from ecs_harden.policy import Policy
from ecs_harden.report import DRIFT, ERROR


@dataclass(frozen=True)
class Verdict:
    code: int
    line: str


def in_force(component: LiveBlockComponent) -> str | None:
    """None when every path from the container interfaces to IMDS ends in a DROP (and the
    guard of every interface is in force where the policy has it); else why not."""
    if component.family == 6 and not ipv6_available():
        return None
    _, states, places = component.observe()
    leaks = [st for st in states if not st.effective]
    if leaks:
        st = leaks[0]
        leak = st.first_leak()
        how = f" ({leak.rule})" if leak is not None else ""
        return f"traffic from {st.block.interface} to {component.address} is not dropped{how}"
    if component.guard and component.guard_kept(places) is None:
        return f"the guard of every interface is not in force in raw PREROUTING (to {component.address})"
    return None


def preloaded(policy: Policy) -> Callable[[int], XtablesCli]:
    """Readers of each family with the chains the block is judged by already listed, all
    at once (each listing of a 10k-rule nf_tables table costs its process ~30 ms of
    fetching the whole table: one after the other they were most of the gate's time)."""
    families = [4] + ([6] if policy.imds.ipv6 is not None and ipv6_available() else [])
    readers = {f: XtablesCli(f) for f in families}
    places = (("filter", MANAGED_CHAINS), (GUARD_TABLE, (GUARD_CHAIN,)))
    wanted = [(f, table, name) for f in families for table, names in places for name in names]
    for (f, table, name), done in zip(wanted, proc.run_many([readers[f].argv(n, t) for f, t, n in wanted])):
        readers[f].preload(table, name, done)
    return lambda family: readers[family] if family in readers else XtablesCli(family)


def missing(policy: Policy, *, flags: bool = True) -> list[str]:
    """What the gate holds the agent for, one phrase each."""
    from ecs_harden.ecsconfig.component import EcsConfigComponent

    out: list[str] = []
    variant = iptables_variant()
    try:
        if variant is None:  # no iptables at all: nothing can be in force
            from ecs_harden.firewall.detect import backend_for

            backend_for(variant, 4)  # raises, with the one message for it
        # Read through the iptables CLI on both variants (contract-tested on both): it
        # never commits here, and saves python-iptables' import (~0.1 s) on legacy.
        for component in for_policy(policy, variant, preloaded(policy)):
            why = in_force(component)
            if why:
                out.append(f"{component.name}: {why}")
    except HardenError as exc:
        out.append(f"imds: the live block cannot be read: {exc}")
    if flags:
        for f in EcsConfigComponent(policy).inspect().findings:
            if f.status in (DRIFT, ERROR):
                out.append(f"{f.check}: {f.detail or f.actual}")
    return out


def verdict(policy_path: str | None) -> Verdict:
    broken: str | None = None
    try:
        policy = policy_mod.load(policy_path)
    except PolicyError as exc:
        broken, policy = str(exc), Policy()
    found = missing(policy, flags=broken is None)
    note = f"; the policy is broken ({broken}): the block judged by the defaults" if broken else ""
    if not found:
        return Verdict(EXIT_OK, f"ecs-harden gate: the IMDS block is in force{note}")
    what = "; ".join(found)
    if broken is None and policy.mode != "enforce":
        return Verdict(EXIT_OK, f"ecs-harden gate: not holding the agent (mode: {policy.mode}); "
                                f"missing: {what}")
    return Verdict(EXIT_DRIFT, f"ecs-harden gate: holding the ECS agent: {what}{note}")


def main(policy_path: str | None) -> int:
    try:
        v = verdict(policy_path)
    except Exception as exc:  # a bug of ours: cannot tell the block holds, so it is not proven
        v = Verdict(EXIT_DRIFT, f"ecs-harden gate: holding the ECS agent: cannot tell whether the block "
                                f"is in force (internal error: {type(exc).__name__}: {exc})")
    print(v.line, flush=True)
    return v.code
