"""The Component protocol: inspect (pure reads, findings and a plan), then execute the plan.

A component also says what the daemon needs to know about it, so that adding a check
is one class and one line where components are built (reconcile.build_components),
and nothing in the daemon changes: what wakes it, which IP family it checks, which
files it watches, and the transaction its inspect-execute-inspect runs in.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Optional, Protocol

from ecs_harden.report import Finding

# What makes the daemon look at a component again. PATHS: what no event announces (an
# interface, a container's namespace, the probe, IMDS itself): the daemon's resync and
# the reconcile after a firewall repair.
FIREWALL, FILES, ECS, PATHS = "firewall", "files", "ecs", "paths"


@dataclass(frozen=True)
class Inspection:
    findings: tuple[Finding, ...]
    # What executing the plan would do, one line each, for reports and logs (no secrets).
    changes: tuple[str, ...] = ()
    # The check ids the plan repairs.
    repairs: frozenset[str] = frozenset()
    plan: object = field(default=None, compare=False)


class Component(Protocol):
    """One thing ecs-harden keeps true. inspect() never changes the host."""

    name: str
    # FIREWALL (netfilter changes), FILES (the persisted rules files and the restore
    # service) or ECS (ecs.config).
    wakes_on: str
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

    def inspect(self) -> Inspection: ...

    def execute(self, inspection: Inspection) -> None: ...


class Base:
    """The defaults: no family, no files, no transaction of its own."""

    family: Optional[int] = None
    slow = False

    def watches(self) -> tuple[str, ...]:
        return ()

    def transaction(self) -> AbstractContextManager[None]:
        return contextlib.nullcontext()
