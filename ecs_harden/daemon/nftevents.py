"""NftEvents: nf_tables change notifications from the kernel (NETLINK_NETFILTER, NFNLGRP_NFTABLES).

Any nf_tables change in this network namespace (a rule added or deleted by Docker,
an operator, or ourselves) makes the socket readable within milliseconds. Legacy
iptables sends nothing: on such hosts the daemon probes the tables (firewall.tableinfo).

Each message says which family's table changed (iptables-nft writes `ip` and `ip6`
tables), so a change to IPv4 rules wakes only the IPv4 checks; and the NEWGEN message
that closes every transaction names the process that committed it, so the daemon can
tell its own changes (their echo) from everybody else's.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass, field

from ecs_harden.firewall.netlink import (
    NETLINK_NETFILTER,
    NFGENMSG,
    NFNL_SUBSYS_NFTABLES,
    NFT_MSG_NEWGEN,
    NFTA_GEN_PROC_PID,
    NLMSG_HDR,
    gen_attr,
)

NFNLGRP_NFTABLES = 7
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
RCVBUF = 4 << 20
NFPROTO = {2: 4, 10: 6}  # NFPROTO_IPV4, NFPROTO_IPV6 -> our family numbers


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
                pid = gen_attr(body[NFGENMSG:], NFTA_GEN_PROC_PID)
                if pid is not None:
                    batch.writers.add(pid)
            elif body[0] in NFPROTO:
                batch.families.add(NFPROTO[body[0]])
            else:
                batch.other = True
        offset += (length + 3) & ~3


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
