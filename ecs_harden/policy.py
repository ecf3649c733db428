"""The policy file: YAML in, a frozen Policy out, or an error naming the key and the line."""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, Union

import yaml

from ecs_harden.errors import PolicyError

DEFAULT_PATH = "/etc/ecs-harden/policy.yaml"
ENV_VAR = "ECS_HARDEN_POLICY"

DEFAULT_SETTINGS: tuple[tuple[str, str | None], ...] = (
    ("ECS_AWSVPC_BLOCK_IMDS", "true"),
    ("ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST", "false"),
)

_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_IFACE_RE = re.compile(r"^[^\s/!:+]{1,15}\+?$|^\+$")


HOST_NETWORK_MODES = ("block", "report", "allow")

IMDS_V4 = ipaddress.IPv4Network("169.254.169.254/32")
IMDS_V6 = ipaddress.IPv6Network("fd00:ec2::254/128")


# Each field is declared once, here, with the parser of its YAML value (_Reader's method
# of that name, given the node and the key path): the allowed keys, the types and the
# error's line all follow from these declarations.
def _parsed_by(method: str, *args: Any) -> Any:
    return {"parse": (method, args)}


@dataclass(frozen=True)
class ImdsPolicy:
    interfaces: tuple[str, ...] = field(default=("docker+",), metadata=_parsed_by("interfaces"))
    ipv4: ipaddress.IPv4Network = field(default=IMDS_V4, metadata=_parsed_by("network", 4))
    ipv6: ipaddress.IPv6Network | None = field(default=IMDS_V6, metadata=_parsed_by("network", 6, True))
    persist: bool = field(default=True, metadata=_parsed_by("boolean"))
    # Paths (SPEC "Paths"): the raw PREROUTING guard of forwarded traffic from any
    # interface, the exceptions to it, host-network task containers, the active probe.
    guard_all_interfaces: bool = field(default=True, metadata=_parsed_by("boolean"))
    allow_interfaces: tuple[str, ...] = field(default=(), metadata=_parsed_by("exceptions"))
    host_network: str = field(default="report", metadata=_parsed_by("choice", HOST_NETWORK_MODES))
    probe: bool = field(default=True, metadata=_parsed_by("boolean"))


@dataclass(frozen=True)
class EcsConfigPolicy:
    path: str = field(default="/etc/ecs/ecs.config", metadata=_parsed_by("abspath"))
    settings: tuple[tuple[str, str | None], ...] = field(
        default=DEFAULT_SETTINGS, metadata=_parsed_by("settings"))
    restart_agent: str = field(default="never", metadata=_parsed_by("choice", ("never", "on-change")))


@dataclass(frozen=True)
class ReportPolicy:
    status_file: str = field(default="/run/ecs-harden/status.json", metadata=_parsed_by("abspath"))
    textfile: str | None = field(default=None, metadata=_parsed_by("textfile"))


@dataclass(frozen=True)
class Policy:
    mode: str = field(default="enforce", metadata=_parsed_by("choice", ("enforce", "report")))
    interval: float = field(default=5.0, metadata=_parsed_by("seconds"))
    resync: float = field(default=60.0, metadata=_parsed_by("seconds"))
    state_dir: str = field(default="/var/lib/ecs-harden", metadata=_parsed_by("abspath"))
    # backups kept per file under state_dir/backups
    backups: int = field(default=10, metadata=_parsed_by("count"))
    imds: ImdsPolicy = field(default_factory=ImdsPolicy, metadata=_parsed_by("section", ImdsPolicy))
    ecs_config: EcsConfigPolicy = field(default_factory=EcsConfigPolicy,
                                        metadata=_parsed_by("section", EcsConfigPolicy))
    report: ReportPolicy = field(default_factory=ReportPolicy, metadata=_parsed_by("section", ReportPolicy))
    source: str = "built-in defaults"  # not a key: where the policy came from

    @property
    def enforce(self) -> bool:
        return self.mode == "enforce"


def resolve_path(cli_path: str | None) -> tuple[str, bool]:
    """The policy path and whether it was named explicitly (then it must exist)."""
    if cli_path:
        return cli_path, True
    env = os.environ.get(ENV_VAR)
    if env:
        return env, True
    return DEFAULT_PATH, False


class UntrustedPolicy(PolicyError):
    """A policy file ecs-harden refuses to read at all (not root's, writable by others,
    a symlink): nothing in it is used, not even where the status file is."""


def load(cli_path: str | None = None) -> Policy:
    path, explicit = resolve_path(cli_path)
    data = read_trusted(path, explicit=explicit)
    return Policy() if data is None else parse(data, source=path)


def read_trusted(path: str, *, explicit: bool = True) -> bytes | None:
    """The policy's bytes, read from a descriptor opened with O_NOFOLLOW and checked with
    fstat (no gap between check and read), below directories that only root can change;
    None for a missing default file."""
    from ecs_harden.trust import untrusted_directories

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        if explicit:
            raise PolicyError(f"{path}: policy file not found") from None
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UntrustedPolicy(
                f"{path}: refusing a policy that is a symlink; install the file itself there"
            ) from None
        raise PolicyError(f"{path}: cannot read policy: {exc.strerror}") from None
    try:
        _check_ownership(path, os.fstat(fd))
        why = untrusted_directories(path)
        if why:
            raise UntrustedPolicy(f"{path}: refusing the policy: {why}")
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read policy: {exc.strerror}") from None
    finally:
        os.close(fd)


def salvage_status_file(cli_path: str | None = None) -> str:
    """Where the daemon writes its status, from a policy that does not load: its
    report.status_file if the YAML still says so plainly, else the default. Only from a
    file that passed the ownership checks (read_trusted): never from a refused one."""
    path, _ = resolve_path(cli_path)
    try:
        data = read_trusted(path)
        value = yaml.safe_load(data or b"")["report"]["status_file"]
    except Exception:  # any way of being broken means: fall back to the default
        return ReportPolicy.status_file
    return value if isinstance(value, str) and os.path.isabs(value) else ReportPolicy.status_file


def _check_ownership(path: str, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise UntrustedPolicy(f"{path}: policy is not a regular file")
    if st.st_uid != 0:
        raise UntrustedPolicy(
            f"{path}: refusing a policy owned by uid {st.st_uid}; it must be owned by root"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UntrustedPolicy(
            f"{path}: refusing a policy writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run chmod go-w {path}"
        )


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
        if not _IFACE_RE.match(value):
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
            if not _KEY_RE.match(name):
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

