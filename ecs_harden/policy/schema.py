"""The policy's schema, declared once: each field of these dataclasses carries the parser of
its YAML value and its one-line meaning. The YAML reader, the JSON Schema, the reference in
docs/ and the Ansible role's test all follow from these declarations (`keys()`)."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

DEFAULT_PATH = "/etc/ecs-harden/policy.yaml"
ENV_VAR = "ECS_HARDEN_POLICY"

DEFAULT_SETTINGS: tuple[tuple[str, str | None], ...] = (
    ("ECS_AWSVPC_BLOCK_IMDS", "true"),
    ("ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST", "false"),
)

KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
IFACE_RE = re.compile(r"^[^\s/!:+]{1,15}\+?$|^\+$")

MODES = ("enforce", "report")
HOST_NETWORK_MODES = ("block", "report", "allow")
RESTART_AGENT = ("never", "on-change")
INTROSPECTION_MODES = ("report", "block")

IMDS_V4 = ipaddress.IPv4Network("169.254.169.254/32")
IMDS_V6 = ipaddress.IPv6Network("fd00:ec2::254/128")


# Each key is declared once, here: the parser of its YAML value (the reader's method of that
# name, given the node and the key path, then these arguments) and what it means.
def _key(method: str, *args: Any, doc: str) -> Any:
    return {"parse": (method, args), "doc": doc}


@dataclass(frozen=True)
class ImdsPolicy:
    interfaces: tuple[str, ...] = field(default=("docker+",), metadata=_key(
        "interfaces", doc="iptables interface patterns of the container bridges (`+` at the end "
        "matches a prefix)"))
    ipv4: ipaddress.IPv4Network = field(default=IMDS_V4, metadata=_key(
        "network", 4, doc="IMDS's IPv4 address or network"))
    ipv6: ipaddress.IPv6Network | None = field(default=IMDS_V6, metadata=_key(
        "network", 6, True, doc="IMDS's IPv6 address or network; null: no IPv6 rule"))
    persist: bool = field(default=True, metadata=_key(
        "boolean", doc="persist the block where the distribution restores firewall rules at boot"))
    guard_all_interfaces: bool = field(default=True, metadata=_key(
        "boolean", doc="raw PREROUTING drops forwarded IMDS traffic from every interface but lo"))
    allow_interfaces: tuple[str, ...] = field(default=(), metadata=_key(
        "exceptions", doc="declared exceptions to that guard (names or `+` patterns), always "
        "reported; none may overlap `imds.interfaces`"))
    host_network: str = field(default="report", metadata=_key(
        "choice", HOST_NETWORK_MODES, doc="host-network ECS task containers: block (needs cgroup "
        "v2), report, or allow"))
    probe: bool = field(default=True, metadata=_key(
        "boolean", doc="prove the block with a real connect from each bridge"))
    attempts: bool = field(default=True, metadata=_key(
        "boolean", doc="log blocked attempts to reach IMDS (NFLOG group 5741, a per-source limit) "
        "and attribute them to their container and ECS task"))


@dataclass(frozen=True)
class EcsConfigPolicy:
    path: str = field(default="/etc/ecs/ecs.config", metadata=_key(
        "abspath", doc="the ECS agent's config file"))
    settings: tuple[tuple[str, str | None], ...] = field(default=DEFAULT_SETTINGS, metadata=_key(
        "settings", doc='`KEY: "value"` kept in ecs.config, `KEY: null` kept absent; merged over '
        "the defaults (the two IMDS flags stay managed unless given another value)"))
    restart_agent: str = field(default="never", metadata=_key(
        "choice", RESTART_AGENT, doc="restart the ECS agent when ecs.config changed"))


@dataclass(frozen=True)
class EcsAgentPolicy:
    introspection: str = field(default="report", metadata=_key(
        "choice", INTROSPECTION_MODES, doc="the ECS agent's introspection API (tcp/51678) from "
        "container interfaces: report whether they reach it, or block it (monitoring sidecars "
        "that read it lose it)"))


@dataclass(frozen=True)
class ReportPolicy:
    status_file: str = field(default="/run/ecs-harden/status.json", metadata=_key(
        "abspath", doc="the daemon's status file (`ecs-harden status` reads it)"))
    textfile: str | None = field(default=None, metadata=_key(
        "textfile", doc="a node_exporter textfile collector path ending in .prom; null: none"))
    attempts_window: float = field(default=60.0, metadata=_key(
        "seconds", doc="seconds of one window of blocked IMDS attempts: at most one `imds.attempt` "
        "journal line per workload per window"))


@dataclass(frozen=True)
class Policy:
    mode: str = field(default="enforce", metadata=_key(
        "choice", MODES, doc="enforce repairs; report never changes anything"))
    interval: float = field(default=5.0, metadata=_key(
        "seconds", doc="seconds between polls where no change notification exists, and "
        "between heartbeats"))
    resync: float = field(default=60.0, metadata=_key(
        "seconds", doc="seconds between the daemon's safety-net full reconciles"))
    state_dir: str = field(default="/var/lib/ecs-harden", metadata=_key(
        "abspath", doc="backups and the change journal"))
    backups: int = field(default=10, metadata=_key(
        "count", doc="backups kept per file under state_dir/backups (the newest); 0: none"))
    imds: ImdsPolicy = field(default_factory=ImdsPolicy, metadata=_key(
        "section", ImdsPolicy, doc="the IMDS block and every path to IMDS"))
    ecs_config: EcsConfigPolicy = field(default_factory=EcsConfigPolicy, metadata=_key(
        "section", EcsConfigPolicy, doc="the ECS agent's flags in ecs.config"))
    ecs_agent: EcsAgentPolicy = field(default_factory=EcsAgentPolicy, metadata=_key(
        "section", EcsAgentPolicy, doc="the ECS agent itself, beside its ecs.config"))
    report: ReportPolicy = field(default_factory=ReportPolicy, metadata=_key(
        "section", ReportPolicy, doc="where the daemon reports"))
    source: str = "built-in defaults"  # not a key: where the policy came from

    @property
    def enforce(self) -> bool:
        return self.mode == "enforce"


@dataclass(frozen=True)
class Key:
    """One key of the policy: its dotted path, parser, arguments, meaning and default."""

    path: str
    method: str
    args: tuple[Any, ...]
    doc: str
    default: Any


def keys(cls: type[Any] = Policy, prefix: str = "") -> Iterator[Key]:
    """Every key, sections first then their keys, in declaration order."""
    instance = cls()
    for f in dataclasses.fields(cls):
        if "parse" not in f.metadata:
            continue
        method, args = f.metadata["parse"]
        path = f"{prefix}{f.name}"
        yield Key(path, method, tuple(args), f.metadata["doc"], getattr(instance, f.name))
        if method == "section":
            yield from keys(args[0], f"{path}.")


def plain(value: Any) -> Any:
    """A policy value as JSON/YAML has it: networks as text, settings as a mapping."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k.path.rsplit(".", 1)[-1]: plain(getattr(value, k.path.rsplit(".", 1)[-1]))
                for k in keys(type(value)) if "." not in k.path}
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return str(value)
    if isinstance(value, tuple) and value and all(isinstance(v, tuple) for v in value):
        return dict(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def to_json(policy: Policy) -> dict[str, Any]:
    """The effective policy, every key, as the file would say it."""
    out: dict[str, Any] = plain(policy)
    return out
