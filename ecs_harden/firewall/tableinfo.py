"""Legacy tables' signatures: a near-free change signal (legacy iptables sends no
notifications), and the record of what this process last read of each table.

`getsockopt(IPT_SO_GET_INFO)` on a raw socket returns a table's hooks, entry count
and blob size without its rules: microseconds per table even at 50k rules. Any
insert, delete or flush changes the count or the size, so probing filter and raw
often finds such a change long before a full check would. A same-size replacement
or a changed policy does not show: the periodic full check covers those.

A signature is only worth comparing against the state a judgement was made on.
Comparing against one taken before a reconcile of ours misses a change that undoes
our own repair before the next probe (it restores the old signature: measured, a
deletion ~0.5 s after a repair was never seen again). So while the daemon records
(`recording`), the legacy backend notes each table's signature when it reads it and
right after it commits (under the xtables lock: nobody else's change in between); the
daemon's baseline is what was noted, and a table seen in two states in one pass is
looked at again.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
from collections.abc import Iterator, Sequence

SOL_IP = 0
SOL_IPV6 = 41
SO_GET_INFO = 64  # IPT_SO_GET_INFO and IP6T_SO_GET_INFO
INFO_SIZE = 84  # name[32], valid_hooks, hook_entry[5], underflow[5], num_entries, size
TABLES = ("filter", "raw")

# The interpreter's own libc (find_library would run `ldconfig -p`: a process, ~10 ms).
_libc = ctypes.CDLL(None, use_errno=True)
_libc.getsockopt.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                             ctypes.POINTER(ctypes.c_uint32)]



class TableProbe:
    """Signatures of the legacy filter and raw tables of the given IP families, in the
    order of `slots`."""

    def __init__(self, families: Sequence[int]):
        self.slots: list[tuple[int, str]] = []
        self.targets: list[tuple[socket.socket, int, bytes]] = []
        self.buf = ctypes.create_string_buffer(INFO_SIZE)
        self.size = ctypes.c_uint32()
        self.looks: dict[tuple[int, str], set[bytes]] | None = None
        try:
            for family in families:
                af, level = (socket.AF_INET, SOL_IP) if family == 4 else (socket.AF_INET6, SOL_IPV6)
                sock = socket.socket(af, socket.SOCK_RAW, socket.IPPROTO_RAW)
                self.targets += [(sock, level, t.encode()) for t in TABLES]
                self.slots += [(family, t) for t in TABLES]
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

    def signature(self) -> tuple[bytes | None, ...]:
        return tuple(self._info(s, level, t) for s, level, t in self.targets)

    def changed(self, old: Sequence[bytes | None], new: Sequence[bytes | None]) -> set[int]:
        """The families with a table whose signature differs between old and new (an
        unknown one, None, always differs)."""
        return {fam for (fam, _), a, b in zip(self.slots, old, new) if a is None or a != b}

    # -- what this process read ---------------------------------------------
    def note(self, family: int, table: str) -> None:
        """The table as this process reads it now, or as it just committed it."""
        if self.looks is None or (family, table) not in self.slots:
            return
        i = self.slots.index((family, table))
        sock, level, name = self.targets[i]
        try:
            self.looks.setdefault((family, table), set()).add(self._info(sock, level, name))
        except OSError:
            self.looks[(family, table)] = {b"", b"?"}  # two states: unknown, look again

    @contextlib.contextmanager
    def recording(self) -> Iterator[dict[tuple[int, str], set[bytes]]]:
        """Note every read and commit of the legacy backend while inside; the dict it
        yields holds, per table, the signatures seen (complete on exit)."""
        global _recorder
        self.looks = {}
        looks = self.looks
        _recorder = self
        try:
            yield looks
        finally:
            _recorder = None
            self.looks = None

    def close(self) -> None:
        for sock, _, _ in self.targets:
            sock.close()
        self.targets = []


_recorder: TableProbe | None = None


def note(family: int, table: str) -> None:
    """Called by the legacy backend at each read (before it) and after each commit
    (under the xtables lock); free when nobody records."""
    if _recorder is not None:
        _recorder.note(family, table)
