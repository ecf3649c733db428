"""TableProbe: a near-free change probe for legacy iptables, which sends no notifications.

`getsockopt(IPT_SO_GET_INFO)` on a raw socket returns a table's hooks, entry count
and blob size without its rules: microseconds per table even at 50k rules. Any
insert, delete or flush changes the count or the size, so probing filter and raw
often finds such a change long before a full check would. A same-size replacement
or a changed policy does not show: the periodic full check still covers those.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
from collections.abc import Sequence

SOL_IP = 0
SOL_IPV6 = 41
SO_GET_INFO = 64  # IPT_SO_GET_INFO and IP6T_SO_GET_INFO
INFO_SIZE = 84  # name[32], valid_hooks, hook_entry[5], underflow[5], num_entries, size
TABLES = ("filter", "raw")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.getsockopt.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                             ctypes.POINTER(ctypes.c_uint32)]


class TableProbe:
    """Signatures of the legacy filter and raw tables of the given IP families."""

    def __init__(self, families: Sequence[int]):
        self.families = tuple(families)
        self.targets: list[tuple[socket.socket, int, bytes]] = []
        self.buf = ctypes.create_string_buffer(INFO_SIZE)
        self.size = ctypes.c_uint32()
        try:
            for family in families:
                af, level = (socket.AF_INET, SOL_IP) if family == 4 else (socket.AF_INET6, SOL_IPV6)
                sock = socket.socket(af, socket.SOCK_RAW, socket.IPPROTO_RAW)
                self.targets += [(sock, level, t.encode()) for t in TABLES]
            self.signature()  # fail here, not in the loop, when the kernel has no legacy tables
        except OSError:
            self.close()
            raise

    def _info(self, sock: socket.socket, level: int, table: bytes) -> bytes:
        ctypes.memset(self.buf, 0, INFO_SIZE)
        self.buf.value = table
        self.size.value = INFO_SIZE
        if _libc.getsockopt(sock.fileno(), level, SO_GET_INFO, self.buf, ctypes.byref(self.size)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"IPT_SO_GET_INFO {table.decode()}: {os.strerror(err)}")
        return self.buf.raw[32:INFO_SIZE]

    def signature(self) -> tuple[bytes, ...]:
        return tuple(self._info(s, level, t) for s, level, t in self.targets)

    def changed(self, old: tuple[bytes, ...], new: tuple[bytes, ...]) -> set[int]:
        """The families with a table whose signature differs between old and new."""
        n = len(TABLES)
        return {fam for i, fam in enumerate(self.families)
                if old[i * n:(i + 1) * n] != new[i * n:(i + 1) * n]}

    def close(self) -> None:
        for sock, _, _ in self.targets:
            sock.close()
        self.targets = []
