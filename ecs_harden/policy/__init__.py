"""The policy file: YAML in, a frozen Policy out, or an error naming the key and the line.

`schema` declares every key once; `yamlread` reads the YAML by those declarations;
`trusted` finds and reads the file as only root can have written it; `published` makes the
JSON Schema, the YAML and the docs reference from the same declarations."""

from ecs_harden.policy.schema import (
    DEFAULT_PATH,
    DEFAULT_SETTINGS,
    ENV_VAR,
    HOST_NETWORK_MODES,
    IMDS_V4,
    IMDS_V6,
    EcsConfigPolicy,
    ImdsPolicy,
    Policy,
    ReportPolicy,
    to_json,
)
from ecs_harden.policy.trusted import (
    UntrustedPolicy,
    load,
    read_plain,
    read_trusted,
    resolve_path,
    salvage_status_file,
)
from ecs_harden.policy.yamlread import parse, patterns_overlap

__all__ = [
    "DEFAULT_PATH", "DEFAULT_SETTINGS", "ENV_VAR", "HOST_NETWORK_MODES", "IMDS_V4", "IMDS_V6",
    "EcsConfigPolicy", "ImdsPolicy", "Policy", "ReportPolicy", "UntrustedPolicy", "load",
    "parse", "patterns_overlap", "read_plain", "read_trusted", "resolve_path",
    "salvage_status_file", "to_json",
]
