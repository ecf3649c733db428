"""What AWS itself would refuse in an SSM request, judged by botocore's own service model
of SSM (the model the AWS CLI sends by): required members, types, enums, lengths and
patterns. botocore's client-side validation checks only some of these (not enums, not
maximum lengths, not patterns); the service checks them all."""

from __future__ import annotations

import datetime
import re
from typing import Any

import botocore.session  # type: ignore[import-untyped]
from botocore.model import ListShape, MapShape, Shape, StructureShape  # type: ignore[import-untyped]


def operation_input(name: str) -> StructureShape:
    model = botocore.session.get_session().get_service_model("ssm")
    shape = model.operation_model(name).input_shape
    assert isinstance(shape, StructureShape)
    return shape


def violations(shape: Shape, value: Any, where: str = "") -> list[str]:
    """Every way value breaks shape, each naming where ("Items[0].Severity: ...")."""
    found: list[str] = []
    meta = shape.metadata
    if isinstance(shape, StructureShape):
        if not isinstance(value, dict):
            return [f"{where or 'input'}: not a structure"]
        for name in shape.required_members:
            if name not in value:
                found.append(f"{where}{'.' if where else ''}{name}: required, missing")
        for name, member in value.items():
            if name not in shape.members:
                found.append(f"{where}{'.' if where else ''}{name}: not a member")
                continue
            found += violations(shape.members[name], member, f"{where}{'.' if where else ''}{name}")
        return found
    if isinstance(shape, ListShape):
        if not isinstance(value, list):
            return [f"{where}: not a list"]
        found += _length(meta, len(value), where)
        for i, member in enumerate(value):
            found += violations(shape.member, member, f"{where}[{i}]")
        return found
    if isinstance(shape, MapShape):
        if not isinstance(value, dict):
            return [f"{where}: not a map"]
        found += _length(meta, len(value), where)
        for key, member in value.items():
            found += violations(shape.key, key, f"{where} key {key!r}")
            found += violations(shape.value, member, f"{where}[{key!r}]")
        return found
    if shape.type_name == "string":
        if not isinstance(value, str):
            return [f"{where}: not a string"]
        found += _length(meta, len(value), where)
        if shape.enum and value not in shape.enum:
            found.append(f"{where}: {value!r} is not one of {shape.enum}")
        if "pattern" in meta and not re.search(meta["pattern"], value):
            found.append(f"{where}: {value!r} does not match {meta['pattern']}")
        return found
    if shape.type_name == "timestamp":
        if isinstance(value, (int, float)):
            return found
        try:
            datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            found.append(f"{where}: {value!r} is not a timestamp")
        return found
    return found


def _length(meta: dict[str, Any], n: int, where: str) -> list[str]:
    out = []
    if "min" in meta and n < meta["min"]:
        out.append(f"{where}: length {n} < {meta['min']}")
    if "max" in meta and n > meta["max"]:
        out.append(f"{where}: length {n} > {meta['max']}")
    return out
