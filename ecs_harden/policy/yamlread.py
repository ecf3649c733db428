"""The policy's YAML reader: a frozen Policy out, or every error of the file at once, each
naming its key path and line. Which keys exist and how each is read is the schema's."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, Union

import yaml

from ecs_harden.errors import PolicyError
from ecs_harden.policy.schema import DEFAULT_SETTINGS, IFACE_RE, KEY_RE, Policy


def parse(data: bytes | str, source: str = "<policy>") -> Policy:
    try:
        loader = yaml.SafeLoader(data)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.reader.ReaderError as exc:  # bytes that are not YAML text at all
        raise PolicyError(f"{source}: line {_reader_line(data, exc)}: not valid YAML: "
                          f"{_reader_problem(exc)}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(f"{source}:{where}: not valid YAML: {problem}") from None
    if node is None:
        return Policy(source=source)
    reader = _Reader(source, loader)
    try:
        result = reader.policy(node)
    except PolicyError as exc:
        reader.errors.append(exc)
    if reader.errors:  # every error of the file at once, not the first only
        if len(reader.errors) == 1:
            raise reader.errors[0]
        lines = [str(e).replace(f"{source}: ", "", 1) for e in reader.errors]
        raise PolicyError(f"{source}: {len(lines)} errors:\n  " + "\n  ".join(lines))
    return result


def _reader_line(data: bytes | str, exc: yaml.reader.ReaderError) -> int:
    """The line of a ReaderError: its position counts bytes for a decoding error, else
    characters."""
    position = int(exc.position)
    if isinstance(data, bytes) and not _decoding(exc):
        data = data.decode("utf-8", errors="replace")
    newline: Any = b"\n" if isinstance(data, bytes) else "\n"
    return int(data[:position].count(newline)) + 1


def _decoding(exc: yaml.reader.ReaderError) -> bool:
    """A byte sequence that does not decode (else a character YAML does not allow)."""
    return exc.encoding not in (None, "unicode")


def _reader_problem(exc: yaml.reader.ReaderError) -> str:
    if _decoding(exc):  # character is the byte
        return f"byte 0x{int(exc.character):02x} is not {str(exc.encoding).upper()} text ({exc.reason})"
    return f"character #x{exc.character:04x} is not allowed ({exc.reason})"


_Scalar = Union[str, int, float, bool, None]


class _Reader:
    """Walks the YAML node tree so that every error can name its key path and line."""

    def __init__(self, source: str, loader: yaml.SafeLoader):
        self.source = source
        self.loader = loader
        self.errors: list[PolicyError] = []
        self.lines: dict[str, int] = {}  # key path -> line, for checks made after reading

    def each(
        self, keys: Mapping[str, yaml.Node], handlers: Mapping[str, Callable[[yaml.Node], Any]]
    ) -> dict[str, Any]:
        """Every key's value; an invalid one is recorded and the others still read."""
        values: dict[str, Any] = {}
        for name, vnode in keys.items():
            try:
                values[name] = handlers[name](vnode)
            except PolicyError as exc:
                self.errors.append(exc)
        return values

    def fail(self, node: yaml.Node, key: str, msg: str) -> PolicyError:
        return PolicyError(f"{self.source}: line {node.start_mark.line + 1}: {key}: {msg}")

    def mapping(
        self, node: yaml.Node, key: str, allowed: tuple[str, ...]
    ) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, key or "policy", "must be a mapping")
        out: dict[str, yaml.Node] = {}
        for knode, vnode in node.value:
            name = self.scalar(knode, key or "policy")
            path = f"{key}.{name}" if key else str(name)
            if not isinstance(name, str):
                raise self.fail(knode, path, "keys must be strings")
            if allowed and name not in allowed:
                raise self.fail(
                    knode, path, f"unknown key (expected one of: {', '.join(allowed)})"
                )
            if name in out:
                raise self.fail(knode, path, "duplicate key")
            out[name] = vnode
        return out

    def scalar(self, node: yaml.Node, key: str) -> _Scalar:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, key, "must be a single value, not a list or mapping")
        value: _Scalar = self.loader.construct_object(node, deep=True)
        if not isinstance(value, (str, int, float, bool, type(None))):
            raise self.fail(node, key, f"unsupported value type {type(value).__name__}")
        return value

    def string(self, node: yaml.Node, key: str, *, nullable: bool = False) -> str | None:
        value = self.scalar(node, key)
        if value is None and nullable:
            return None
        if not isinstance(value, str) or not value:
            raise self.fail(node, key, f"must be a non-empty string, got {value!r}")
        return value

    def choice(self, node: yaml.Node, key: str, choices: tuple[str, ...]) -> str:
        value = self.scalar(node, key)
        if value not in choices:
            raise self.fail(node, key, f"must be one of {', '.join(choices)}, got {value!r}")
        assert isinstance(value, str)
        return value

    def seconds(self, node: yaml.Node, key: str) -> float:
        value = self.scalar(node, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise self.fail(node, key, f"must be a number of seconds > 0, got {value!r}")
        return float(value)

    def count(self, node: yaml.Node, key: str) -> int:
        value = self.scalar(node, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(node, key, f"must be a whole number >= 0, got {value!r}")
        return value

    def abspath(self, node: yaml.Node, key: str, *, nullable: bool = False) -> str | None:
        value = self.string(node, key, nullable=nullable)
        if value is not None and not os.path.isabs(value):
            raise self.fail(node, key, f"must be an absolute path, got {value!r}")
        return value

    def boolean(self, node: yaml.Node, key: str) -> bool:
        value = self.scalar(node, key)
        if not isinstance(value, bool):
            raise self.fail(node, key, f"must be true or false, got {value!r}")
        return value

    def policy(self, node: yaml.Node) -> Policy:
        policy = self.section(node, "", Policy, base=Policy(source=self.source))
        self.overlaps(policy)
        return policy

    def section(self, node: yaml.Node, key: str, cls: type[_T], base: _T | None = None) -> _T:
        """A mapping read into cls by the parsers its fields declare."""
        if key and _is_null(node):
            raise self.fail(node, key, "must be a mapping")
        declared = {f.name: f.metadata["parse"] for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                    if "parse" in f.metadata}
        keys = self.mapping(node, key, tuple(declared))

        def handler(name: str) -> Callable[[yaml.Node], Any]:
            method, args = declared[name]
            path = f"{key}.{name}" if key else name
            return lambda n: getattr(self, method)(n, path, *args)

        values = self.each(keys, {name: handler(name) for name in keys})
        return _replace(base if base is not None else cls(), values)

    def interfaces(self, node: yaml.Node, key: str) -> tuple[str, ...]:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise self.fail(node, key, "must be a non-empty list of interface patterns")
        out: list[str] = []
        errors: list[PolicyError] = []
        for i, item in enumerate(node.value):
            try:
                out.append(self.interface(item, f"{key}[{i}]", out))
            except PolicyError as exc:
                errors.append(exc)
        if errors:  # every bad item is reported, the last one by the caller
            self.errors.extend(errors[:-1])
            raise errors[-1]
        return tuple(out)

    def exceptions(self, node: yaml.Node, key: str) -> tuple[str, ...]:
        """imds.allow_interfaces: like interfaces, but may be empty; checked against
        imds.interfaces once both are read (overlaps())."""
        if _is_null(node) or (isinstance(node, yaml.SequenceNode) and not node.value):
            return ()
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, key, "must be a list of interface names or patterns")
        self.lines[key] = node.start_mark.line + 1
        out = self.interfaces(node, key)
        if "lo" in out:
            raise self.fail(node, key, "'lo' needs no exception: the guard never drops loopback "
                            "traffic (only the host itself sends on lo); remove it")
        return out

    def overlaps(self, policy: Policy) -> None:
        """An exception may not cover an interface the block is for: the policy would say
        both 'blocked' and 'let through' of the same traffic."""
        for allowed in policy.imds.allow_interfaces:
            for blocked in policy.imds.interfaces:
                if patterns_overlap(allowed, blocked):
                    line = self.lines.get("imds.allow_interfaces")
                    where = f" line {line}:" if line else ""
                    self.errors.append(PolicyError(
                        f"{self.source}:{where} imds.allow_interfaces: {allowed!r} overlaps "
                        f"imds.interfaces {blocked!r}: an interface cannot be both blocked and "
                        "a declared exception; remove one of them"))

    def interface(self, item: yaml.Node, key: str, before: list[str]) -> str:
        value = self.string(item, key)
        assert value is not None
        if "*" in value or "?" in value:
            fix = value.rstrip("*?") + "+"
            raise self.fail(item, key, f"{value!r} would match no interface: iptables' wildcard is "
                            f"'+' at the end, not a shell glob; write {fix!r}")
        if not IFACE_RE.match(value):
            raise self.fail(item, key, f"{value!r} is not an iptables interface pattern "
                            "(at most 15 characters, no spaces or '/', '+' only at the end)")
        if value in before:
            raise self.fail(item, key, f"{value!r} is listed twice (item {before.index(value)} already)")
        return value

    def network(self, node: yaml.Node, key: str, version: int, nullable: bool = False) -> Any:
        if nullable and _is_null(node):
            return None  # imds.ipv6: null, no IPv6 rule
        value = self.string(node, key)
        assert value is not None
        try:
            net = ipaddress.ip_network(value, strict=True)
        except ValueError as exc:
            raise self.fail(node, key, f"{value!r} is not an address or network: {exc}") from None
        if net.version != version:
            raise self.fail(node, key, f"{value!r} is not an IPv{version} address")
        return net

    def settings(self, node: yaml.Node, key: str) -> tuple[tuple[str, str | None], ...]:
        """Merged over the defaults: a policy that only adds a key keeps the IMDS flags."""
        if _is_null(node):
            return DEFAULT_SETTINGS
        merged = dict(DEFAULT_SETTINGS)
        for name, vnode in self.mapping(node, key, ()).items():
            path = f"{key}.{name}"
            if not KEY_RE.match(name):
                raise self.fail(vnode, path, "is not a valid environment variable name")
            value = self.scalar(vnode, path)
            if value is not None and not isinstance(value, str):
                raise self.fail(
                    vnode,
                    path,
                    f"must be a quoted string or null, got {type(value).__name__} {value!r}; "
                    f'write {name}: "{_yaml_text(value)}"',
                )
            if value is not None and ("\n" in value or "\r" in value or "\0" in value):
                raise self.fail(vnode, path, "must not contain a line break or NUL")
            if value is not None and value != value.rstrip():
                raise self.fail(
                    vnode, path, "must not end with whitespace (ecs-init trims it off every line)"
                )
            merged[name] = value
        return tuple(merged.items())

    def textfile(self, node: yaml.Node, key: str) -> str | None:
        value = self.abspath(node, key, nullable=True)
        if value is not None and not value.endswith(".prom"):
            raise self.fail(node, key, f"{value!r} does not end in .prom: node_exporter's "
                            "textfile collector reads only *.prom files, so no metric would be seen")
        return value


def patterns_overlap(a: str, b: str) -> bool:
    """Whether some interface name matches both iptables patterns (`+` at the end: prefix)."""
    if a.endswith("+") and b.endswith("+"):
        return a[:-1].startswith(b[:-1]) or b[:-1].startswith(a[:-1])
    if a.endswith("+"):
        return b.startswith(a[:-1])
    if b.endswith("+"):
        return a.startswith(b[:-1])
    return a == b


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _yaml_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_T = TypeVar("_T")


def _replace(obj: _T, values: Mapping[str, Any]) -> _T:
    return dataclasses.replace(obj, **values)  # type: ignore[type-var]

