"""deploy/cloudformation/ecs-harden-fleet.yaml read as CloudFormation reads it (cfn-lint's
decoder: the short tags), and its launch template's UserData resolved with a stack's
parameter values: the exact text an instance of that stack receives. Shared by the
template's unit tests and the hosts that boot that text."""

from __future__ import annotations

from typing import Any

import pytest

from tests.boot.image import PROJECT

TEMPLATE = PROJECT / "deploy" / "cloudformation" / "ecs-harden-fleet.yaml"


def template() -> Any:
    # the project's .venv has it (the test extras); the hosts' older Pythons' runs do not
    decode = pytest.importorskip("cfnlint.decode").decode
    found, errors = decode(str(TEMPLATE))
    assert not errors, errors
    return found


def resolve(value: Any, values: dict[str, str]) -> str:
    """Fn::Join/Ref/Fn::Sub with the stack's parameter values (all this UserData uses);
    a parameter not given takes its Default, as CloudFormation does."""
    if isinstance(value, str):
        return value
    if "Ref" in value:
        return values[value["Ref"]]
    if "Fn::Sub" in value:
        text = value["Fn::Sub"]
        for name, val in values.items():
            text = text.replace("${" + name + "}", val)
        assert "${" not in text, text
        return str(text)
    if "Fn::Join" in value:
        sep, parts = value["Fn::Join"]
        return str(sep).join(resolve(p, values) for p in parts)
    raise AssertionError(f"unexpected {value}")


def stack_values(given: dict[str, str]) -> dict[str, str]:
    """The parameters' values of a stack created with given: the Defaults for the rest; a
    value each AllowedPattern and MaxLength accept (as CloudFormation checks them)."""
    import re

    params = template()["Parameters"]
    values = {name: str(p["Default"]) for name, p in params.items() if "Default" in p}
    values.update(given)
    for name, value in given.items():
        p = params[name]
        assert re.fullmatch(p.get("AllowedPattern", "[\\s\\S]*"), value), f"{name}: {value!r}"
        assert len(value) <= int(p.get("MaxLength", 4096)), name
    return values


def user_data(given: dict[str, str]) -> str:
    """The UserData (before EC2's base64) an instance of a stack created with given gets."""
    data = template()["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
    return resolve(data["UserData"]["Fn::Base64"], stack_values(given))
