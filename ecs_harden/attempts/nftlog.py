"""Blocked attempts to reach IMDS, seen by the kernel: a table of ecs-harden's own.

`inet ecs_harden_attempts`, one base chain `pre` on the prerouting hook at priority -301,
just before the raw table (-300) whose guard drops the traffic; iptables (either variant)
and Docker never touch it. Per IP family one rule matches exactly what the IMDS block
drops there: IMDS as destination, from every interface but lo and the declared exceptions
(imds.guard_all_interfaces), or from the container patterns (the guard off). It counts the
packet, then updates the source address in a set whose elements each carry a limit (10
packets a second, a burst of 20, forgotten after 60 s idle): only within that per-source
limit does it log the packet to NFLOG group 5741 (its first 128 bytes), so a flooding
container never hides another's single attempt. Its verdict is none: the packet goes on to
the raw table and is dropped there, never delayed by more than these few expressions.

Live only: never in a boot file (iptables-save does not know it), made again whole (one
batch: the table deleted and added) whenever it is not as wanted, deleted by `remove`.
The packet counter of each rule is the number of packets the block dropped there, logged
or not: what the logging limit (or a listener that lagged) did not attribute is that
count less the packets attributed.

Under imds.host_network: block (cgroup v2) a second base chain, `out`, on the output hook
at the same priority sees what filter OUTPUT's rule drops: traffic to IMDS from a socket
in ecstasks.slice (`socket cgroupv2` at the slice's level, compared with its cgroup id).
Per family it counts the packet, jumps to the regular chain `tasks`, and logs what comes
back (a task process outside any container's scope, or one started before its rule) with
the prefix HOST_PREFIX. `tasks` has, per task container scope (ecstasks-<task>.slice/
docker-<id>.scope), a rule logging with HOST_PREFIX and the container's id (within a limit
of its own: one noisy container never hides another) and one accepting, so the packet is
logged once. A socket's cgroup is the one its process was in when it made it, known at the
packet's time: nothing is looked up later. `tasks` alone is replaced (flushed and filled
in one transaction) as task containers come and go; the counters stay.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from ecs_harden.firewall.netlink import (
    NFNL_SUBSYS_NFTABLES,
    NLM_F_REQUEST,
    attribute_list,
    attributes,
    commit,
    dump,
    encode_attr,
    message,
    open_socket,
)
from ecs_harden.firewall.rule import Network

TABLE = "ecs_harden_attempts"
CHAIN = "pre"
GROUP = 5741
SNAPLEN = 128
PRIORITY = -301  # NF_IP_PRI_RAW - 1: before the raw table's guard
RATE, BURST, FORGET_MS = 10, 20, 60_000
PREFIX = "ecs-harden imds"
HOST_PREFIX = "ecs-harden host"
OUT_CHAIN, TASKS_CHAIN = "out", "tasks"

NFPROTO_INET, NFPROTO = 1, {4: 2, 6: 10}
NESTED = 0x8000
NLM_F_ACK, NLM_F_CREATE, NLM_F_APPEND = 4, 0x400, 0x800
BATCH_BEGIN, BATCH_END = 16, 17
NEWTABLE, DELTABLE, NEWCHAIN, NEWRULE, GETRULE, DELRULE, NEWSET = 0, 2, 3, 6, 7, 8, 9
META_IIFNAME, META_NFPROTO = 6, 15
USERDATA = 7  # NFTA_RULE_USERDATA
CMP_EQ, CMP_NEQ = 0, 1
KEY_TYPE = {4: 7, 6: 8}  # ipv4_addr, ipv6_addr (what `nft list` shows)
SET_TIMEOUT_EVAL = 0x10 | 0x20
HOOK_PREROUTING, HOOK_OUTPUT, NF_ACCEPT, NFT_JUMP = 0, 3, 1, -3
SOCKET_CGROUPV2 = 3  # NFT_SOCKET_CGROUPV2: the id of the socket's cgroup's ancestor at a level
# where the addresses are in each family's header: (daddr offset, saddr offset, length)
HEADER = {4: (16, 12, 4), 6: (24, 8, 16)}


def _attr(atype: int, value: bytes) -> bytes:
    return encode_attr(atype, value)


def _nest(atype: int, *parts: bytes) -> bytes:
    return encode_attr(atype | NESTED, b"".join(parts))


def _str(text: str) -> bytes:
    return text.encode() + b"\0"


def _u32(value: int) -> bytes:
    return struct.pack(">I", value & 0xFFFFFFFF)


def _u64(value: int) -> bytes:
    return struct.pack(">Q", value)


def _expr(name: str, *data: bytes) -> bytes:
    return _nest(1, _attr(1, _str(name)), _nest(2, *data))


def _meta(key: int) -> bytes:
    return _expr("meta", _attr(1, _u32(1)), _attr(2, _u32(key)))


def _cmp(op: int, data: bytes) -> bytes:
    return _expr("cmp", _attr(1, _u32(1)), _attr(2, _u32(op)), _nest(3, _attr(1, data)))


def _payload(offset: int, length: int) -> bytes:
    return _expr("payload", _attr(1, _u32(1)), _attr(2, _u32(1)), _attr(3, _u32(offset)),
                 _attr(4, _u32(length)))


def _bitwise(mask: bytes) -> bytes:
    zero = bytes(len(mask))
    return _expr("bitwise", _attr(1, _u32(1)), _attr(2, _u32(1)), _attr(3, _u32(len(mask))),
                 _nest(4, _attr(1, mask)), _nest(5, _attr(1, zero)))


def _limit() -> bytes:
    return _attr(1, _u64(RATE)) + _attr(2, _u64(1)) + _attr(3, _u32(BURST)) + _attr(4, _u32(0))


def _counter() -> bytes:
    return _expr("counter", _attr(1, _u64(0)), _attr(2, _u64(0)))


def _log(prefix: str) -> bytes:
    return _expr("log", _attr(1, struct.pack(">H", GROUP)), _attr(2, _str(prefix)), _attr(3, _u32(SNAPLEN)))


def _to_imds(family: int, net: Network) -> list[bytes]:
    match = [_meta(META_NFPROTO), _cmp(CMP_EQ, bytes([NFPROTO[family]])), _payload(HEADER[family][0],
                                                                                  HEADER[family][2])]
    if net.prefixlen != net.max_prefixlen:
        match.append(_bitwise(net.netmask.packed))
    match.append(_cmp(CMP_EQ, net.network_address.packed))
    return match


def _in_cgroup(level: int, cgroup_id: int) -> bytes:
    """The socket's cgroup's ancestor at `level` is this one (its id, host byte order)."""
    return (_expr("socket", _attr(1, _u32(SOCKET_CGROUPV2)), _attr(2, _u32(1)), _attr(3, _u32(level)))
            + _cmp(CMP_EQ, struct.pack("=Q", cgroup_id)))


def _verdict(code: int, chain: str = "") -> bytes:
    verdict = _attr(1, _u32(code)) + (_attr(2, _str(chain)) if chain else b"")
    return _expr("immediate", _attr(1, _u32(0)), _nest(2, _nest(2, verdict)))


def iface_bytes(pattern: str) -> bytes:
    """An iptables interface pattern as nf_tables compares it: `docker+` the prefix, a
    name with its NUL (what `iifname "docker*"` and `iifname "eth0"` compile to)."""
    return pattern[:-1].encode() if pattern.endswith("+") else _str(pattern)


@dataclass(frozen=True)
class Match:
    """What one family's rule matches: IMDS's network, from every interface but lo and
    `unless` (the guard on), or only from `only` (the guard off)."""

    family: int
    imds: Network
    unless: tuple[str, ...] = ()
    only: str | None = None

    def expressions(self, set_id: int) -> bytes:
        _, saddr, length = HEADER[self.family]
        match = _to_imds(self.family, self.imds)
        match.append(_meta(META_IIFNAME))
        if self.only is not None:
            match.append(_cmp(CMP_EQ, iface_bytes(self.only)))
        else:
            match += [_cmp(CMP_NEQ, iface_bytes(i)) for i in ("lo", *self.unless)]
        match += [
            _counter(),
            _payload(saddr, length),
            _expr("dynset", _attr(1, _str(set_name(self.family))), _attr(2, _u32(set_id)), _attr(3, _u32(1)),
                  _attr(4, _u32(1)), _attr(6, _u64(FORGET_MS)),
                  _nest(7, _attr(1, _str("limit")), _nest(2, _limit()))),
            _log(PREFIX),
        ]
        return b"".join(match)


@dataclass(frozen=True)
class Scope:
    """A task container's cgroup (docker-<id>.scope): its id and level in the hierarchy."""

    container: str
    cgroup: int
    level: int


@dataclass(frozen=True)
class HostMatch:
    """What filter OUTPUT's rule drops under imds.host_network: block: traffic to IMDS from
    ecstasks.slice (its cgroup id and level), and the task container scopes in it now."""

    imds: tuple[tuple[int, Network], ...]
    slice_id: int
    level: int
    scopes: tuple[Scope, ...] = ()

    def out_rules(self) -> list[bytes]:
        out = []
        for family, net in self.imds:
            base = b"".join(_to_imds(family, net)) + _in_cgroup(self.level, self.slice_id)
            out += [base + _counter(), base + _verdict(NFT_JUMP, TASKS_CHAIN),
                    base + _expr("limit", _limit()) + _log(HOST_PREFIX)]
        return out

    def task_rules(self) -> list[bytes]:
        out = []
        for s in self.scopes:
            mine = _in_cgroup(s.level, s.cgroup)
            out += [mine + _expr("limit", _limit()) + _log(f"{HOST_PREFIX} {s.container}"),
                    mine + _verdict(NF_ACCEPT)]
        return out


def set_name(family: int) -> str:
    return f"src{family}"


def matches(imds: dict[int, Network], exceptions: Sequence[str], interfaces: Sequence[str], *,
            guard: bool) -> list[Match]:
    """One rule per family (the guard on), else one per container pattern and family."""
    if guard:
        return [Match(f, net, tuple(exceptions)) for f, net in sorted(imds.items())]
    return [Match(f, net, only=i) for f, net in sorted(imds.items()) for i in interfaces]


def _batch(parts: list[tuple[int, int, bytes]]) -> None:
    """One nf_tables transaction: all of it, or nothing (an error names the message)."""
    seq = 1
    out = [message(BATCH_BEGIN, NLM_F_REQUEST, seq, 0, b"", res_id=NFNL_SUBSYS_NFTABLES)]
    for mtype, flags, body in parts:
        seq += 1
        out.append(message((NFNL_SUBSYS_NFTABLES << 8) | mtype, NLM_F_REQUEST | NLM_F_ACK | flags, seq,
                           NFPROTO_INET, body))
    out.append(message(BATCH_END, NLM_F_REQUEST, seq + 1, 0, b"", res_id=NFNL_SUBSYS_NFTABLES))
    commit(b"".join(out), len(parts), f"nf_tables table {TABLE}")


def set_ids(rules: Sequence[Match]) -> dict[int, int]:
    """Each family's set, numbered within the transaction that makes it."""
    return {family: i + 1 for i, family in enumerate(sorted({m.family for m in rules}))}


def planned(rules: Sequence[Match], host: HostMatch | None) -> list[tuple[str, bytes, bytes]]:
    """Every rule of the table: (chain, expressions, fingerprint). What put() makes and
    what wanted() compares come from here, so the two cannot disagree."""
    ids = set_ids(rules)
    out = [(CHAIN, m.expressions(ids[m.family]), fingerprint(m)) for m in rules]
    if host is not None:
        out += [(OUT_CHAIN, e, fingerprint(e)) for e in host.out_rules()]
        out += [(TASKS_CHAIN, e, fingerprint(e)) for e in host.task_rules()]
    return out


def _rule(table: bytes, chain: str, expressions: bytes, print_: bytes) -> tuple[int, int, bytes]:
    return (NEWRULE, NLM_F_CREATE | NLM_F_APPEND, table + _attr(2, _str(chain)) + _nest(4, expressions)
            + _attr(USERDATA, print_))


def put(rules: Sequence[Match], host: HostMatch | None = None) -> None:
    """The table made anew, whole, in one transaction (an old one deleted in it)."""
    table = _attr(1, _str(TABLE))
    parts: list[tuple[int, int, bytes]] = [(NEWTABLE, NLM_F_CREATE, table), (DELTABLE, 0, table),
                                           (NEWTABLE, NLM_F_CREATE, table)]
    for family, set_id in set_ids(rules).items():
        length = HEADER[family][2]
        parts.append((NEWSET, NLM_F_CREATE, table + _attr(2, _str(set_name(family)))
                      + _attr(3, _u32(SET_TIMEOUT_EVAL)) + _attr(4, _u32(KEY_TYPE[family]))
                      + _attr(5, _u32(length)) + _attr(10, _u32(set_id)) + _attr(11, _u64(FORGET_MS))))
    parts.append(_base_chain(table, CHAIN, HOOK_PREROUTING))
    if host is not None:
        parts.append((NEWCHAIN, NLM_F_CREATE, table + _attr(3, _str(TASKS_CHAIN))))
        parts.append(_base_chain(table, OUT_CHAIN, HOOK_OUTPUT))
    parts += [_rule(table, chain, e, fp) for chain, e, fp in planned(rules, host)]
    _batch(parts)


def _base_chain(table: bytes, name: str, hook: int) -> tuple[int, int, bytes]:
    return (NEWCHAIN, NLM_F_CREATE, table + _attr(3, _str(name))
            + _nest(4, _attr(1, _u32(hook)), _attr(2, _u32(PRIORITY))) + _attr(5, _u32(NF_ACCEPT))
            + _attr(7, _str("filter")))


def put_tasks(host: HostMatch) -> None:
    """Only the `tasks` chain's rules replaced (flushed and filled in one transaction):
    the counters in `pre` and `out` go on."""
    table = _attr(1, _str(TABLE))
    _batch([(DELRULE, 0, table + _attr(2, _str(TASKS_CHAIN)))]
           + [_rule(table, chain, e, fp) for chain, e, fp in planned((), host) if chain == TASKS_CHAIN])


def delete() -> bool:
    """The table deleted; False when there was none."""
    try:
        _batch([(DELTABLE, 0, _attr(1, _str(TABLE)))])
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


@dataclass(frozen=True)
class Installed:
    """The table as the kernel has it, by chain: each rule's fingerprint (its user data,
    which the kernel keeps as given) and the packets its counters counted."""

    prints: dict[str, tuple[bytes, ...]]
    packets: dict[str, int]

    def total(self) -> int:
        return sum(self.packets.values())


def fingerprint(rule: Match | bytes) -> bytes:
    """What a rule carries as user data: a digest of what it was made from."""
    expressions = rule.expressions(0) if isinstance(rule, Match) else rule
    return hashlib.sha256(b"ecs-harden attempts 1|" + expressions).digest()[:16]


def wanted(rules: Sequence[Match], host: HostMatch | None) -> dict[str, tuple[bytes, ...]]:
    """The fingerprints each chain should hold."""
    out: dict[str, list[bytes]] = {CHAIN: []}
    if host is not None:
        out.update({OUT_CHAIN: [], TASKS_CHAIN: []})
    for chain, _, fp in planned(rules, host):
        out[chain].append(fp)
    return {c: tuple(fps) for c, fps in out.items()}


def read() -> Installed | None:
    """Our chains' rules, or None when the table is not there."""
    with open_socket() as sock:
        answers = dump(sock, GETRULE, NFPROTO_INET, _attr(1, _str(TABLE)), missing=True)
    prints: dict[str, list[bytes]] = {}
    packets: dict[str, int] = {}
    for _, rbody in answers:
        attrs = attributes(rbody)
        if attrs.get(1, b"").rstrip(b"\0") != TABLE.encode():
            continue
        chain = attrs.get(2, b"").rstrip(b"\0").decode("ascii", "replace")
        prints.setdefault(chain, []).append(attrs.get(USERDATA, b""))
        packets[chain] = packets.get(chain, 0) + _count(attrs.get(4, b""))
    if not prints:
        return None
    return Installed({c: tuple(p) for c, p in prints.items()}, packets)


def _count(expressions: bytes) -> int:
    for _, elem in attribute_list(expressions):
        parts = attributes(elem)
        if parts.get(1, b"").rstrip(b"\0") == b"counter":
            value = attributes(parts.get(2, b"")).get(2, b"")
            return int(struct.unpack(">Q", value)[0]) if len(value) == 8 else 0
    return 0


def address(family: int, packed: bytes) -> str:
    return str(ipaddress.ip_address(packed)) if len(packed) == HEADER[family][2] else "?"
