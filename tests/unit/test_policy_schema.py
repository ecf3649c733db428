"""One schema: the policy's keys are declared once (ecs_harden/policy/schema.py); the JSON
Schema, the docs reference and the man page are made from the code and checked in current;
the Ansible role's defaults, argument_specs and template say the same keys and defaults."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ecs_harden import policy
from ecs_harden.policy.published import json_schema
from ecs_harden.policy.schema import Key, Policy, keys, plain, to_json

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "ansible" / "roles" / "ecs_harden"
# The role's own variables: where ecs-harden comes from and how it runs, not policy keys.
ROLE_ONLY = {"ecs_harden_from", "ecs_harden_sha256", "ecs_harden_s3_endpoint", "ecs_harden_prefix",
             "ecs_harden_python", "ecs_harden_service_enabled", "ecs_harden_gate_agent"}
# argument_specs' type for each parser of the schema
SPEC_TYPES = {"choice": "str", "boolean": "bool", "seconds": "float", "count": "int", "abspath": "path",
              "textfile": "path", "network": "str", "interfaces": "list", "exceptions": "list",
              "settings": "dict"}


def leaves() -> list[Key]:
    return [k for k in keys() if k.method != "section"]


def var(key: Key) -> str:
    return "ecs_harden_" + key.path.replace(".", "_")


def test_every_key_is_in_the_json_schema_with_its_default_and_nothing_else() -> None:
    schema = json_schema()
    seen = []

    def walk(node: dict[str, Any], prefix: str) -> None:
        assert node["additionalProperties"] is False
        for name, sub in node["properties"].items():
            if "properties" in sub:
                walk(sub, f"{prefix}{name}.")
            else:
                seen.append((f"{prefix}{name}", sub["default"]))

    walk(schema, "")
    assert seen == [(k.path, plain(k.default)) for k in leaves()]
    assert json.loads(json.dumps(schema)) == schema


def test_the_defaults_render_to_a_file_that_reads_back_as_the_defaults() -> None:
    from ecs_harden.policy.published import render

    again = policy.parse(render(Policy()), source="x")
    assert to_json(again) == to_json(Policy())


def test_what_is_made_from_the_code_is_current() -> None:
    """docs/policy.schema.json, docs/policy-reference.md and docs/ecs-harden.8."""
    if not (Path(sys.executable).parent / "argparse-manpage").exists():
        pytest.skip("argparse-manpage is in the project's venv only")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-docs"), "--check"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr


# -- the Ansible role ----------------------------------------------------------

def role_defaults() -> dict[str, Any]:
    return dict(yaml.safe_load((ROLE / "defaults" / "main.yml").read_text()))


def role_specs() -> dict[str, Any]:
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())
    return dict(specs["argument_specs"]["main"]["options"])


def disagreements(defaults: dict[str, Any], specs: dict[str, Any]) -> list[str]:
    """Every way the role's defaults and argument_specs differ from the Policy's keys."""
    out = []
    wanted = {var(k): k for k in leaves()}
    for name in sorted(set(defaults) - ROLE_ONLY - set(wanted)):
        out.append(f"defaults/main.yml: {name} is no policy key")
    for name in sorted(set(specs) - ROLE_ONLY - set(wanted)):
        out.append(f"argument_specs.yml: {name} is no policy key")
    for name, key in wanted.items():
        want = plain(key.default)
        if name not in defaults:
            out.append(f"defaults/main.yml: {name} missing (policy key {key.path})")
        elif defaults[name] != want:
            out.append(f"defaults/main.yml: {name} is {defaults[name]!r}, the policy's default is {want!r}")
        spec = specs.get(name)
        if spec is None:
            out.append(f"argument_specs.yml: {name} missing (policy key {key.path})")
            continue
        if spec.get("type") != SPEC_TYPES[key.method]:
            out.append(f"argument_specs.yml: {name} has type {spec.get('type')}, want {SPEC_TYPES[key.method]}")
        if spec.get("default") != (None if want is None else want):
            out.append(f"argument_specs.yml: {name} default {spec.get('default')!r}, want {want!r}")
        if key.method == "choice" and spec.get("choices") != list(key.args[0]):
            out.append(f"argument_specs.yml: {name} choices {spec.get('choices')}, want {list(key.args[0])}")
    return out


def test_the_roles_defaults_and_argument_specs_are_the_policys_keys() -> None:
    assert disagreements(role_defaults(), role_specs()) == []


def test_a_role_default_that_is_no_policy_key_is_named() -> None:
    defaults = {**role_defaults(), "ecs_harden_imds_probe_every": 30}
    assert disagreements(defaults, role_specs()) == [
        "defaults/main.yml: ecs_harden_imds_probe_every is no policy key"]


def other_value(key: Key) -> Any:
    """A valid value other than the default, per parser."""
    default = plain(key.default)
    simple = {"textfile": "/var/lib/node_exporter/ecs-harden.prom", "interfaces": ["br-+", "docker0"],
              "exceptions": ["eni+"], "settings": {"ECS_CLUSTER": "prod", "ECS_AWSVPC_BLOCK_IMDS": None}}
    if key.method in simple:
        return simple[key.method]
    if key.method == "choice":
        return next(c for c in key.args[0] if c != default)
    if key.method == "boolean":
        return not default
    if key.method in ("seconds", "count"):
        return default + 3
    if key.method == "abspath":
        return f"/srv/other/{key.path.replace('.', '-')}"
    assert key.method == "network", key
    return "169.254.169.253/32" if key.args[0] == 4 else None


def render_template(values: dict[str, Any]) -> str:
    jinja2 = pytest.importorskip("jinja2")
    env = jinja2.Environment(keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters["to_json"] = json.dumps
    template = env.from_string((ROLE / "templates" / "policy.yaml.j2").read_text())
    return str(template.render(ansible_managed="managed", **values))


@pytest.mark.parametrize("changed", [None, *[k.path for k in leaves()]])
def test_the_template_writes_each_variable_to_its_key(changed: str | None) -> None:
    """With the defaults, the file reads back as Policy(); with one variable changed, that
    key and no other changes."""
    values = {**role_defaults()}
    want = to_json(Policy())
    for key in leaves():
        if key.path == changed:
            values[var(key)] = other_value(key)
            section = want
            *parents, last = key.path.split(".")
            for p in parents:
                section = section[p]
            merged = other_value(key)
            if key.method == "settings":  # merged over the defaults
                merged = {**dict(policy.DEFAULT_SETTINGS), **merged}
            section[last] = merged
    got = to_json(policy.parse(render_template(values), source="role"))
    assert got == want
