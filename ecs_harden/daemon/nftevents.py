"""NftEvents: nf_tables change notifications from the kernel (NETLINK_NETFILTER, NFNLGRP_NFTABLES).

Any nf_tables change in this network namespace (a rule added or deleted by Docker,
an operator, or ourselves) makes the socket readable within milliseconds. Legacy
iptables sends nothing: on such hosts the daemon polls (see daemon.loop).
"""

from __future__ import annotations

import errno
import socket

NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
RCVBUF = 4 << 20


class Overflow(Exception):
    """The kernel dropped notifications (ENOBUFS): a full reconcile is needed."""


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

    def drain(self) -> int:
        """Read every pending message; return how many. Raises Overflow on ENOBUFS."""
        n = 0
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return n
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    raise Overflow() from None
                raise
            if not data:
                return n
            n += 1

    def close(self) -> None:
        self.sock.close()
