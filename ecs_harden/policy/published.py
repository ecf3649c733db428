"""The schema's published forms, all made from its declarations: the JSON Schema the release
ships, the policy as YAML (what `validate` prints), and the key-by-key reference in docs/."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import yaml

from ecs_harden.policy.schema import IFACE_RE, KEY_RE, Key, Policy, keys, plain, to_json

SCHEMA_ID = "https://github.com/ecs-harden/ecs-harden/policy.schema.json"

_INTERFACE = {"type": "string", "pattern": IFACE_RE.pattern}


def _fragment(key: Key) -> dict[str, Any]:
    """The JSON Schema of one key's value, from the parser it is declared with."""
    nullable = False
    if key.method == "choice":
        out: dict[str, Any] = {"enum": list(key.args[0])}
    elif key.method == "boolean":
        out = {"type": "boolean"}
    elif key.method == "seconds":
        out = {"type": "number", "exclusiveMinimum": 0}
    elif key.method == "count":
        out = {"type": "integer", "minimum": 0}
    elif key.method in ("abspath", "textfile"):
        out = {"type": "string", "pattern": "^/" if key.method == "abspath" else r"^/.*\.prom$"}
        nullable = key.method == "textfile"
    elif key.method == "network":
        out = {"type": "string", "format": f"ipv{key.args[0]} address or network"}
        nullable = len(key.args) > 1 and bool(key.args[1])
    elif key.method == "interfaces":
        out = {"type": "array", "items": _INTERFACE, "minItems": 1, "uniqueItems": True}
    elif key.method == "exceptions":
        out = {"type": "array", "items": _INTERFACE, "uniqueItems": True}
        nullable = True
    elif key.method == "settings":
        out = {"type": "object", "propertyNames": {"pattern": KEY_RE.pattern},
               "additionalProperties": {"type": ["string", "null"], "pattern": r"^[^\n\r\x00]*(?<!\s)$"}}
        nullable = True
    elif key.method == "section":
        out = _object(key.args[0], f"{key.path}.")
    else:  # a parser the schema does not know: fail the build, never publish a guess
        raise ValueError(f"{key.path}: no JSON Schema for the parser {key.method!r}")
    if nullable:
        out = {"anyOf": [out, {"type": "null"}]}
    out["description"] = key.doc
    if key.method != "section":
        out["default"] = plain(key.default)
    return out


def _object(cls: type[Any], prefix: str = "") -> dict[str, Any]:
    own = [k for k in keys(cls, prefix) if "." not in k.path[len(prefix):]]
    return {"type": ["object", "null"] if not prefix else "object", "additionalProperties": False,
            "properties": {k.path[len(prefix):]: _fragment(k) for k in own}}


def json_schema() -> dict[str, Any]:
    out = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
           "title": "ecs-harden policy",
           "description": "/etc/ecs-harden/policy.yaml; every key is optional (docs/policy.md)"}
    out.update(_object(Policy))
    return out


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2) + "\n"


def render(policy: Policy) -> str:
    """The effective policy as a YAML file that would make it."""
    return str(yaml.safe_dump(to_json(policy), sort_keys=False, default_flow_style=False))


def reference() -> str:
    """The key-by-key reference (docs/policy-reference.md)."""
    lines = ["# Policy reference", "",
             "Generated from the declarations in `ecs_harden/policy/schema.py` by",
             "`scripts/gen-docs`; do not edit by hand. The prose, with examples, is",
             "[policy.md](policy.md); the JSON Schema is [policy.schema.json](policy.schema.json).", "",
             "| key | default | meaning |", "|---|---|---|"]
    for key in keys():
        if key.method == "section":
            lines.append(f"| **`{key.path}`** | | {key.doc} |")
            continue
        default = json.dumps(plain(key.default))
        lines.append(f"| `{key.path}` | `{default}` | {_value_words(key)}{key.doc} |")
    return "\n".join(lines) + "\n"


def _value_words(key: Key) -> str:
    if key.method == "choice":
        return "one of " + ", ".join(f"`{c}`" for c in key.args[0]) + ": "
    return {"seconds": "seconds > 0: ", "count": "a whole number >= 0: ", "boolean": "true or false: ",
            "abspath": "an absolute path: "}.get(key.method, "")


# -- the Ansible role's copies: a variable ecs_harden_<key> per key -----------------------

ROLE_MARK = "# -- made by scripts/gen-docs from ecs_harden/policy/schema.py: do not edit below --"
_SPEC_TYPES = {"choice": "str", "boolean": "bool", "seconds": "float", "count": "int", "abspath": "path",
               "textfile": "path", "network": "str", "interfaces": "list", "exceptions": "list",
               "settings": "dict"}


def role_var(key: Key) -> str:
    return "ecs_harden_" + key.path.replace(".", "_")


def _leaves() -> list[Key]:
    return [k for k in keys() if k.method != "section"]


def role_defaults() -> str:
    """The policy part of the role's defaults/main.yml: each key's default."""
    lines = [ROLE_MARK, "# The policy (docs/policy-reference.md), key for key: ecs_harden_<key>, nested keys"
             " joined by \"_\"."]
    for key in _leaves():
        lines.append(f"{role_var(key)}: {json.dumps(plain(key.default))}")
    return "\n".join(lines) + "\n"


def role_argument_specs() -> str:
    """The policy part of the role's meta/argument_specs.yml (main's options)."""
    lines = [f"      {ROLE_MARK}"]
    for key in _leaves():
        if key.method not in _SPEC_TYPES:
            raise ValueError(f"{key.path}: no argument_specs type for the parser {key.method!r}")
        lines += [f"      {role_var(key)}:", f"        type: {_SPEC_TYPES[key.method]}"]
        if _SPEC_TYPES[key.method] == "list":
            lines.append("        elements: str")
        if key.method == "choice":
            lines.append(f"        choices: {json.dumps(list(key.args[0]))}")
        if key.default is not None:
            lines.append(f"        default: {json.dumps(plain(key.default))}")
        words = textwrap.wrap(key.doc[:1].upper() + key.doc[1:] + ".", 90)
        lines += ["        description: >-", *(f"          {w}" for w in words)]
    return "\n".join(lines) + "\n"


def role_template() -> str:
    """The role's templates/policy.yaml.j2: every key from its variable."""
    lines = ["# {{ ansible_managed }}",
             "# ecs-harden policy (docs/policy-reference.md); the role's variables ecs_harden_<key>.",
             "# Made by scripts/gen-docs from ecs_harden/policy/schema.py: do not edit."]
    for key in keys():
        depth = key.path.count(".")
        pad, name, var = "  " * depth, key.path.rsplit(".", 1)[-1], role_var(key)
        if key.method == "section":
            lines.append(f"{pad}{name}:")
        elif key.method == "settings":
            lines += [f"{pad}{name}:",
                      f"{{% for key, value in {var}.items() %}}",
                      f"{pad}  {{{{ key }}}}: {{{{ (value | string if value is not none else none)"
                      " | to_json }}",
                      "{% endfor %}"]
        elif key.method in ("count", "seconds"):  # numbers even when given as text (-e)
            lines.append(f"{pad}{name}: {{{{ {var} | {'int' if key.method == 'count' else 'float'} }}}}")
        else:
            lines.append(f"{pad}{name}: {{{{ {var} | to_json }}}}")
    return "\n".join(lines) + "\n"
