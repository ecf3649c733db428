"""The one assembly: the ordered components a policy asks for on this host.

Every command and the daemon take their components from here. The order is the order
of a reconcile (the live block first: nothing waits in front of it; the paths and the
probe after it, then the boot files, ecs.config and the agent); `remove` walks it in
reverse (the restore service ecs-harden enabled before the files it restores, so a
sample put back is never restored). A new check is a component and one line here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ecs_harden import flavors
from ecs_harden.attempts import nftlog
from ecs_harden.attempts.component import AttemptsComponent
from ecs_harden.attempts.hostscopes import host_match
from ecs_harden.attempts.recorder import recorder
from ecs_harden.component import AnyComponent
from ecs_harden.ecsconfig.agent import AgentRestartComponent
from ecs_harden.ecsconfig.component import EcsConfigComponent
from ecs_harden.facts import Facts
from ecs_harden.firewall.detect import backend_for
from ecs_harden.firewall.rule import Network
from ecs_harden.imds import probe as probe_mod
from ecs_harden.imds.block import Block
from ecs_harden.imds.hostnet import HostNetworkComponent
from ecs_harden.imds.live import LiveBlockComponent, for_policy, guard_of, ipv6_available
from ecs_harden.imds.paths import PathsComponent
from ecs_harden.imds.probe import ProbeComponent, daemon_probe, task_cgroup_probed
from ecs_harden.imds.v1 import ImdsV1Component
from ecs_harden.introspection import IntrospectionComponent
from ecs_harden.journal import ChangeJournal
from ecs_harden.persist.files import PersistedFileComponent
from ecs_harden.persist.service import ServiceComponent
from ecs_harden.policy import Policy
from ecs_harden.statusfile import age_limit, read_status


def live_blocks(policy: Policy, facts: Facts) -> list[LiveBlockComponent]:
    return for_policy(policy, facts.iptables)


def host_network(policy: Policy, facts: Facts) -> HostNetworkComponent:
    addresses: dict[int, Network] = {4: policy.imds.ipv4}
    if policy.imds.ipv6 is not None and ipv6_available():
        addresses[6] = policy.imds.ipv6
    backends = {f: functools.partial(backend_for, facts.iptables, f) for f in addresses}
    return HostNetworkComponent(policy.imds.host_network, backends, addresses, policy.state_dir)


def introspection(policy: Policy, facts: Facts) -> IntrospectionComponent:
    with_v6 = (4, 6) if policy.imds.ipv6 is not None and ipv6_available() else (4,)
    backends = {f: functools.partial(backend_for, facts.iptables, f) for f in with_v6}
    return IntrospectionComponent(policy.ecs_agent.introspection, policy.imds.interfaces, backends)


def daemon_attempts(status_file: str) -> dict[str, Any] | None:
    """The daemon's last record of attempts, from its status file (`check`)."""
    try:
        data, _ = read_status(status_file)
    except (OSError, ValueError):
        return None
    daemon = data.get("daemon")
    found = daemon.get("attempts") if isinstance(daemon, dict) else None
    return found if isinstance(found, dict) else None


def attempts(policy: Policy, record: Callable[[], dict[str, Any] | None] | None = None) -> list[AnyComponent]:
    imds = policy.imds
    if not imds.attempts:
        return []
    nets: dict[int, Network] = {4: imds.ipv4}
    if imds.ipv6 is not None and ipv6_available():
        nets[6] = imds.ipv6
    rules = nftlog.matches(nets, imds.allow_interfaces, imds.interfaces, guard=imds.guard_all_interfaces)
    reader = record or functools.partial(daemon_attempts, policy.report.status_file)
    host = functools.partial(host_match, nets) if imds.host_network == "block" else (lambda: None)
    return [AttemptsComponent(rules, reader, enforce=policy.enforce, host=host)]


def probes(policy: Policy, *, fresh: bool = True, probe_every: float = 0.0) -> list[AnyComponent]:
    """The active checks: the probe (imds.probe) and IMDSv1 (imds.v1). fresh=False: the
    running daemon's probe is taken when it is recent (`check`); probe_every: the
    daemon's, kept that long while the bridges stay the same."""
    imds = policy.imds
    v4 = str(imds.ipv4.network_address)
    out: list[AnyComponent] = [ImdsV1Component(v4)]
    if imds.probe:
        addresses = {4: v4, **({6: str(imds.ipv6.network_address)} if imds.ipv6 is not None else {})}
        out.insert(0, ProbeComponent(addresses, task_cgroup=lambda: task_cgroup_probed(imds.host_network),
                                    exceptions=imds.allow_interfaces,
                                    every=probe_every,
                                    recent=None if fresh else functools.partial(
                                        daemon_probe, policy.report.status_file,
                                        within=age_limit(policy.resync, policy.interval))))
    return out


def families(policy: Policy) -> tuple[int, ...]:
    return (4, 6) if policy.imds.ipv6 is not None else (4,)


def persisted_files(policy: Policy, facts: Facts) -> list[PersistedFileComponent]:
    if not policy.imds.persist:
        return []
    flavor = flavors.by_name(facts.flavor)
    journal = ChangeJournal(policy.state_dir, policy.backups)
    out = []
    for family in families(policy):
        address = policy.imds.ipv4 if family == 4 else policy.imds.ipv6
        assert address is not None
        blocks = [Block(i, address) for i in policy.imds.interfaces]
        out.append(PersistedFileComponent(
            family, flavor.rules_file(family), flavor.name, blocks, policy.imds.interfaces, journal,
            sample_package=flavor.restore_package if flavor.ships_sample else None,
            guard=guard_of(policy, address),
        ))
    return out


def restore_service(policy: Policy, facts: Facts) -> ServiceComponent | None:
    if not policy.imds.persist:
        return None
    journal = ChangeJournal(policy.state_dir, policy.backups)
    return ServiceComponent(flavors.by_name(facts.flavor), families(policy), journal=journal)


def build(policy: Policy, facts: Facts, *, fresh: bool = True, probe_every: float = 0.0,
          record: Callable[[], dict[str, Any] | None] | None = None) -> list[AnyComponent]:
    persistence: list[AnyComponent] = [*persisted_files(policy, facts)]
    service = restore_service(policy, facts)
    if service is not None:
        persistence.append(service)
    return [
        *live_blocks(policy, facts),
        PathsComponent(policy.imds.interfaces, policy.imds.allow_interfaces,
                       policy.imds.guard_all_interfaces, policy.state_dir,
                       str(policy.imds.ipv4.network_address)),
        host_network(policy, facts),
        introspection(policy, facts),
        *attempts(policy, record),
        *probes(policy, fresh=fresh, probe_every=probe_every),
        *persistence,
        EcsConfigComponent(policy),
        AgentRestartComponent(policy, facts.init),
    ]


def daemon_components(policy: Policy, facts: Facts) -> list[AnyComponent]:
    """The daemon's: its probe kept while the bridges stay the same (probe.EVERY), and
    its own record of attempts."""
    return build(policy, facts, probe_every=probe_mod.EVERY, record=recorder().status)
