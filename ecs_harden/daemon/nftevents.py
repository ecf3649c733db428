"""NftEvents: nf_tables change notifications from the kernel (NETLINK_NETFILTER, NFNLGRP_NFTABLES).

Any nf_tables change in this network namespace (a rule added or deleted by Docker,
an operator, or ourselves) makes the socket readable within milliseconds. Legacy
iptables sends nothing: on such hosts the daemon probes the tables (daemon.legacyprobe).

Each message says which family's table changed (iptables-nft writes `ip` and `ip6`
tables), so a change to IPv4 rules wakes only the IPv4 checks; and the NEWGEN message
that closes every transaction names the process that committed it, so the daemon can
tell its own changes (their echo) from everybody else's.
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass, field

NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
RCVBUF = 4 << 20

NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN = 15
NFT_MSG_GETGEN = 16
NFTA_GEN_ID = 1
NFTA_GEN_PROC_PID = 2
NLM_F_REQUEST = 1
NFPROTO = {2: 4, 10: 6}  # NFPROTO_IPV4, NFPROTO_IPV6 -> our family numbers
NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
NFGENMSG = 4  # family u8, version u8, res_id be16


class Overflow(Exception):
    """The kernel dropped notifications (ENOBUFS): a full reconcile is needed."""


@dataclass
class Batch:
    """What one drain of the socket saw."""

    messages: int = 0
    families: set[int] = field(default_factory=set)  # 4 and/or 6
    writers: set[int] = field(default_factory=set)  # pids that committed (NEWGEN)
    other: bool = False  # a change we cannot attribute to ip/ip6 (inet, bridge, ...)


def parse(data: bytes, batch: Batch) -> None:
    """Add the netlink messages in data to batch."""
    offset = 0
    while offset + NLMSG_HDR.size <= len(data):
        length, mtype, _flags, _seq, _pid = NLMSG_HDR.unpack_from(data, offset)
        if length < NLMSG_HDR.size:
            break
        body = data[offset + NLMSG_HDR.size:offset + length]
        batch.messages += 1
        if mtype >> 8 == NFNL_SUBSYS_NFTABLES and len(body) >= NFGENMSG:
            msg = mtype & 0xFF
            if msg == NFT_MSG_NEWGEN:
                pid = _gen_pid(body[NFGENMSG:])
                if pid is not None:
                    batch.writers.add(pid)
            elif body[0] in NFPROTO:
                batch.families.add(NFPROTO[body[0]])
            else:
                batch.other = True
        offset += (length + 3) & ~3


def _gen_attr(attrs: bytes, wanted: int) -> int | None:
    offset = 0
    while offset + 4 <= len(attrs):
        alen, atype = struct.unpack_from("=HH", attrs, offset)
        if alen < 4:
            return None
        if atype & 0x3FFF == wanted and alen >= 8:
            return int(struct.unpack_from(">I", attrs, offset + 4)[0])
        offset += (alen + 3) & ~3
    return None


def _gen_pid(attrs: bytes) -> int | None:
    return _gen_attr(attrs, NFTA_GEN_PROC_PID)


def generation() -> int:
    """The ruleset generation of this network namespace: every nf_tables commit bumps it,
    so an unchanged generation means an unchanged ruleset (NFT_MSG_GETGEN, microseconds)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.settimeout(2.0)
        sock.bind((0, 0))
        mtype = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN
        msg = NLMSG_HDR.pack(NLMSG_HDR.size + NFGENMSG, mtype, NLM_F_REQUEST, 1, 0) + bytes(NFGENMSG)
        sock.send(msg)
        data = sock.recv(65536)
    length, rtype, _flags, _seq, _pid = NLMSG_HDR.unpack_from(data, 0)
    if rtype & 0xFF != NFT_MSG_NEWGEN:
        raise OSError(f"unexpected answer to NFT_MSG_GETGEN (type {rtype})")
    gen = _gen_attr(data[NLMSG_HDR.size + NFGENMSG:length], NFTA_GEN_ID)
    if gen is None:
        raise OSError("no NFTA_GEN_ID in the answer to NFT_MSG_GETGEN")
    return gen


class NftEvents:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            self.sock.bind((0, 0))
            self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> Batch:
        """Read every pending message. Raises Overflow on ENOBUFS."""
        batch = Batch()
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return batch
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    raise Overflow() from None
                raise
            if not data:
                return batch
            parse(data, batch)

    def close(self) -> None:
        self.sock.close()
