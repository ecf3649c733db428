"""Libiptc: python-iptables (libiptc in-process), for legacy-iptables hosts (AL1, AL2).

python-iptables takes no xtables lock and commits whole tables, so every
read-modify-commit holds /run/xtables.lock the way `iptables -w` does: a rule
Docker adds concurrently is never lost. It writes only the legacy tables, so it
must never be chosen on an nf_tables host (see firewall.detect).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import sys
import sysconfig
import types
from collections.abc import Iterator, Sequence
from typing import Any

from ecs_harden.errors import RuntimeFailure
from ecs_harden.firewall import tableinfo
from ecs_harden.firewall.backend import DeleteAt, Insert, NewChain, Op, separate
from ecs_harden.firewall.evaluate import ChainReader
from ecs_harden.firewall.rule import Chain, Rule, parse_args, unreadable
from ecs_harden.lock import flock_within

LOCK_PATH = os.environ.get("XTABLES_LOCKFILE", "/run/xtables.lock")
LOCK_TIMEOUT = 10.0


@contextlib.contextmanager
def xtables_lock(path: str = LOCK_PATH, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        if not flock_within(fd, timeout, first=0.01, most=0.01):
            raise RuntimeFailure(f"{path}: xtables lock held for over {timeout:.0f}s")
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _iptc() -> Any:
    """Import python-iptables without what its import drags in.

    iptc.util does `from distutils.sysconfig import get_python_lib` only to look for its
    own C helper in site-packages; in a venv `distutils` is setuptools' shim, which
    imports setuptools and pkg_resources: measured +21 MiB RSS and +110 ms per process.
    A stand-in answering that one question is in place during the import only.
    """
    if "iptc" in sys.modules:
        return sys.modules["iptc"]
    saved = {name: sys.modules.get(name) for name in ("distutils", "distutils.sysconfig")}
    if saved["distutils.sysconfig"] is None:
        pkg = types.ModuleType("distutils")
        pkg.__path__ = []
        shim = types.ModuleType("distutils.sysconfig")
        shim.get_python_lib = lambda *a, **k: sysconfig.get_path("purelib")  # type: ignore[attr-defined]
        pkg.sysconfig = shim  # type: ignore[attr-defined]
        sys.modules.update({"distutils": pkg, "distutils.sysconfig": shim})
    try:
        import iptc
    except Exception as exc:  # pragma: no cover - depends on the host's libxtables
        raise RuntimeFailure(f"python-iptables cannot load libiptc: {exc}") from None
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return iptc


def _address(value: str, flag: str) -> list[str]:
    neg = value.startswith("!")
    net = ipaddress.ip_network(value.lstrip("!"), strict=False)
    if net.prefixlen == 0 and not neg:
        return []
    return (["!"] if neg else []) + [flag, str(net)]


def _iface(value: str | None, flag: str) -> list[str]:
    if not value:
        return []
    neg = value.startswith("!")
    return (["!"] if neg else []) + [flag, value.lstrip("!")]


def _params(params: dict[str, list[str]]) -> list[str]:
    out: list[str] = []
    for key, values in params.items():
        if values and values[0] == "!":
            out += ["!", f"--{key}", *values[1:]]
        else:
            out += [f"--{key}", *values]
    return out


def rule_args(r: Any) -> list[str]:
    """An iptc.Rule as the tokens `iptables -S` would print for it."""
    args = _address(r.src, "-s") + _address(r.dst, "-d")
    args += _iface(r.in_interface, "-i") + _iface(r.out_interface, "-o")
    proto = r.protocol or ""
    if proto.lstrip("!") not in ("", "ip", "all", "ipv6", "0"):
        args += (["!"] if proto.startswith("!") else []) + ["-p", proto.lstrip("!")]
    for m in r.matches:
        args += ["-m", m.name, *_params(m.get_all_parameters())]
    target = r.target
    if target is not None and target.name:
        args += ["-g" if getattr(target, "goto", False) else "-j", target.name]
        args += _params(target.get_all_parameters())
    return args


def _parsed(chain: str, r: Any) -> Rule:
    """A rule as data; one python-iptables cannot decode is unreadable(), not a crash."""
    try:
        return parse_args(chain, rule_args(r))
    except Exception as exc:  # python-iptables shlex-splits what the extension saved
        return unreadable(chain, f"-A {chain} (python-iptables cannot decode it: {exc})")


def _interface_masks_as_ip6tables(r: Any) -> None:
    """python-iptables 1.x gives an IPv6 rule's -i/-o a mask of 0x01 per byte (its IPv4
    rule has 0xff): the kernel then compares one bit of each character, so `-i docker+`
    also matches names that are not docker-anything, `ip6tables -S` prints the rule
    unchanged and `ip6tables -D` of that line cannot find it (measured). Make the masks
    ip6tables' own: 0xff over the bytes the name (without '+') or, exact, its NUL span."""
    ipv6 = r.entry.ipv6
    for mask in ("iniface_mask", "outiface_mask"):
        span = len(bytes(getattr(ipv6, mask)).rstrip(b"\x00"))  # ctypes: up to the first NUL
        if span:
            setattr(ipv6, mask, b"\xff" * span)


class Libiptc:
    name = "python-iptables"

    def __init__(self, family: int):
        self.family = family
        # Inside transaction(): the xtables lock is held and these tables were read
        # under it, so a commit applies to them as they are, without reading again.
        self._locked = False
        self._fresh: set[str] = set()
        iptc = _iptc()
        self._iptc = iptc
        self._table_cls = iptc.Table if family == 4 else iptc.Table6
        self.rule_cls = iptc.Rule if family == 4 else iptc.Rule6

    def table(self, name: str) -> Any:
        return self._table_cls(name, autocommit=False)

    def _read(self, table: Any, name: str) -> Chain | None:
        if not table.is_chain(name):
            return None
        chain = self._iptc.Chain(table, name)
        policy = chain.get_policy().name if chain.is_builtin() else None
        rules = tuple(_parsed(name, r) for r in chain.rules)
        return Chain(name, policy, rules)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with xtables_lock():
            self._locked = True
            try:
                yield
            finally:
                self._locked = False
                self._fresh = set()

    def snapshot(self, table: str = "filter") -> ChainReader:
        t = self.table(table)
        tableinfo.note(self.family, table)  # before the read: a change during it shows as a change
        try:
            t.refresh()
        except Exception as exc:
            raise RuntimeFailure(f"python-iptables: cannot read the {table} table: {exc}") from None
        if self._locked:
            self._fresh.add(table)
        return lambda name: self._read(t, name)

    def _build(self, rule: Rule) -> Any:
        r = self.rule_cls()
        if rule.src:
            r.src = ("!" if rule.src.negated else "") + rule.src.value
        if rule.dst:
            r.dst = ("!" if rule.dst.negated else "") + rule.dst.value
        if rule.in_iface:
            r.in_interface = ("!" if rule.in_iface.negated else "") + rule.in_iface.value
        if rule.out_iface:
            r.out_interface = ("!" if rule.out_iface.negated else "") + rule.out_iface.value
        if self.family == 6:
            _interface_masks_as_ip6tables(r)
        if rule.proto:
            r.protocol = ("!" if rule.proto.negated else "") + rule.proto.value
        for m in rule.matches:
            match = r.create_match(m.module)
            for opt in m.options:
                value = " ".join(opt.values)
                match.set_parameter(opt.name, ("!" + value) if opt.negated else value)
        if rule.target:
            r.target = self._iptc.Target(r, rule.target, goto=rule.goto or None)
        return r

    def _delete_at(self, table: Any, op: DeleteAt) -> None:
        """Under the xtables lock, on the table as read under it: the rule at the position
        must still be the one planned; libiptc then deletes it by number."""
        rules = list(self._iptc.Chain(table, op.chain).rules)
        at = op.position - 1
        if not (0 <= at < len(rules)) or _parsed(op.chain, rules[at]) != op.rule:
            raise RuntimeFailure(
                f"{op.chain}: rule {op.position} is no longer {op.rule.text()}; nothing deleted, will retry"
            )
        if table._iptc.iptc_delete_num_entry(op.chain.encode(), at, table._handle) != 1:
            raise RuntimeFailure(f"{op.chain}: cannot delete rule {op.position}: {table.strerror()}")

    def commit(self, ops: Sequence[Op]) -> None:
        separate(ops)
        if not ops:
            return
        iptc = self._iptc
        tables = {name: self.table(name) for name in dict.fromkeys(op.table for op in ops)}
        try:
            with contextlib.nullcontext() if self._locked else xtables_lock():
                for name, table in tables.items():
                    if name not in self._fresh:
                        table.refresh()
                for op in ops:
                    table = tables[op.table]
                    if isinstance(op, NewChain):
                        if not table.is_chain(op.chain):
                            table.create_chain(op.chain)
                    elif isinstance(op, Insert):
                        chain = iptc.Chain(table, op.chain)
                        chain.insert_rule(self._build(parse_args(op.chain, op.args)), op.position - 1)
                # Positions from the last, so that each delete leaves the others' in place.
                for op in sorted((o for o in ops if isinstance(o, DeleteAt)), key=lambda o: -o.position):
                    self._delete_at(tables[op.table], op)
                for name, table in tables.items():
                    table.commit()
                    self._fresh.discard(name)  # committed: the next read must read again
                    tableinfo.note(self.family, name)  # as committed: still under the lock
        except RuntimeFailure:
            for table in tables.values():
                table.refresh()
            raise
        except Exception as exc:
            for table in tables.values():
                table.refresh()
            raise RuntimeFailure(f"python-iptables: commit failed: {exc}") from None
