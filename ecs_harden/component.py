"""The Component protocol: one thing ecs-harden keeps true, over its whole life.

A component inspects (pure reads: findings and a typed plan), executes its plan,
removes what it put on the host (`remove --yes`), and says what the daemon needs to
know about it: what wakes it, which IP family it checks, which files it watches, the
transaction its inspect-execute-inspect runs in, and which groups must be looked at
again after it repaired. Adding a check is one class and one line in the assembly
(ecs_harden.assembly); neither the daemon nor the CLI changes.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Generic, Optional, Protocol, TypeVar

from ecs_harden.report import Finding

# What makes the daemon look at a component again. PATHS: what no event announces (an
# interface, a container's namespace, the probe, IMDS itself): the daemon's resync and
# the reconcile after a firewall repair (a component's `after_repair`).
FIREWALL, FILES, ECS, PATHS = "firewall", "files", "ecs", "paths"

Plan = TypeVar("Plan")


@dataclass(frozen=True)
class Inspection(Generic[Plan]):
    findings: tuple[Finding, ...]
    # What executing the plan would do, one line each, for reports and logs (no secrets).
    changes: tuple[str, ...] = ()
    # The check ids the plan repairs.
    repairs: frozenset[str] = frozenset()
    # The component's own plan (None: nothing to do); only its execute() reads it.
    plan: Optional[Plan] = field(default=None, compare=False)  # typing: evaluated at run time on 3.8


class Component(Protocol[Plan]):
    """One thing ecs-harden keeps true. inspect() never changes the host."""

    name: str
    # FIREWALL (netfilter changes), FILES (the persisted rules files and the restore
    # service), ECS (ecs.config) or PATHS (what no event announces).
    wakes_on: str
    # The groups the daemon looks at again once this component repaired something (a
    # firewall repair: the paths, whose verdicts read the ruleset).
    after_repair: frozenset[str]
    # May take long (connects that time out, a scan of every namespace): the daemon runs
    # it beside its loop, never in the way of a repair. Only a check that changes no
    # netfilter rule may be slow (it runs in another thread than the firewall's).
    slow: bool

    @property
    def family(self) -> Optional[int]:  # typing: evaluated at run time on 3.8
        """The IP family a FIREWALL component checks (a change to the other one does not
        wake it), None for the rest."""
        ...

    def watches(self) -> tuple[str, ...]:
        """The files whose change wakes it (the daemon watches their directories)."""
        ...

    def transaction(self) -> AbstractContextManager[None]:
        """What inspect, execute and the second inspect of a repair run inside (legacy
        iptables: the xtables lock, so the commit needs no second read)."""
        ...

    def inspect(self) -> Inspection[Plan]: ...

    def execute(self, inspection: Inspection[Plan]) -> None: ...

    def remove(self) -> list[str]:
        """Take away what it put on the host, one line said per thing removed (what it
        never owned, such as ecs.config's flags, stays: nothing to say)."""
        ...


# What the assembly, the reconciler and the daemon hold: components of any plan.
AnyComponent = Component[Any]


class Base:
    """The defaults: no family, no files, no transaction of its own, nothing to look at
    after a repair, nothing to remove."""

    family: Optional[int] = None
    slow = False
    after_repair: frozenset[str] = frozenset()

    def watches(self) -> tuple[str, ...]:
        return ()

    def transaction(self) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    def remove(self) -> list[str]:
        return []
