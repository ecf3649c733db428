"""The Component protocol: inspect (pure reads, findings and a plan), then execute the plan."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ecs_harden.report import Finding


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
    # What makes the daemon look at it again: "firewall" (netfilter changes), "files"
    # (the persisted rules files and the restore service), "ecs" (ecs.config).
    wakes_on: str

    def inspect(self) -> Inspection: ...

    def execute(self, inspection: Inspection) -> None: ...
