"""Choose the backend: python-iptables only where `iptables -V` says legacy."""

from __future__ import annotations

from ecs_harden.errors import RuntimeFailure
from ecs_harden.firewall.backend import Backend
from ecs_harden.firewall.libiptc import Libiptc
from ecs_harden.firewall.xtables_cli import XtablesCli


def backend_for(variant: str | None, family: int) -> Backend:
    """legacy: python-iptables; nf_tables: the iptables CLI. python-iptables on an
    nf_tables host would write tables nobody reads and fail open, so anything but
    a clear 'legacy' gets the CLI, and no iptables at all is an error."""
    if variant == "legacy":
        return Libiptc(family)
    if variant == "nf_tables":
        return XtablesCli(family)
    raise RuntimeFailure("iptables is not installed (no `iptables -V`): cannot enforce the IMDS block")
