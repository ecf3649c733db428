"""LegacyProbe: a cheap fingerprint of a legacy (x_tables) table.

Legacy iptables sends no change notifications. Instead of decoding the table with
python-iptables at every poll, this asks the kernel for the raw table blob
(IPT_SO_GET_ENTRIES, one getsockopt) and hashes it with the packet and byte
counters masked out, so traffic does not look like a change, but any rule added,
deleted or moved does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import operator
import socket
import struct
from collections.abc import Callable

SO_GET_INFO = 64
SO_GET_ENTRIES = 65


class _Layout:
    def __init__(self, family: int):
        self.family = family
        if family == 4:
            self.domain, self.level = socket.AF_INET, socket.IPPROTO_IP
            self.ip_size = 84  # struct ipt_ip
        else:
            self.domain, self.level = socket.AF_INET6, socket.IPPROTO_IPV6
            self.ip_size = 136  # struct ip6t_ip6, padded
        self.next_offset_at = self.ip_size + 6  # after nfcache (4) and target_offset (2)
        self.comefrom_at = self.ip_size + 8
        self.counters_at = (self.ip_size + 12 + 7) // 8 * 8


class ProbeUnavailable(Exception):
    pass


class LegacyProbe:
    def __init__(self, family: int, table: str = "filter"):
        self.layout = _Layout(family)
        self.table = table.encode()
        libc_name = ctypes.util.find_library("c") or "libc.so.6"
        self.libc = ctypes.CDLL(libc_name, use_errno=True)
        self._info: tuple[int, ...] | None = None
        self._getter: Callable[[bytes], tuple[bytes, ...]] | None = None
        try:
            self.sock = socket.socket(self.layout.domain, socket.SOCK_RAW, socket.IPPROTO_RAW)
        except OSError as exc:
            raise ProbeUnavailable(f"raw socket: {exc}") from None

    def _getsockopt(self, opt: int, buf: ctypes.Array[ctypes.c_char]) -> None:
        size = ctypes.c_uint32(len(buf))
        rc = self.libc.getsockopt(
            self.sock.fileno(), self.layout.level, opt, buf, ctypes.byref(size)
        )
        if rc != 0:
            err = ctypes.get_errno()
            raise ProbeUnavailable(f"getsockopt({opt}): errno {err}")

    def info(self) -> tuple[int, ...]:
        # struct ipt_getinfo: name[32], valid_hooks, hook_entry[5], underflow[5], num_entries, size
        buf = ctypes.create_string_buffer(self.table, 32 + 4 * 13)
        self._getsockopt(SO_GET_INFO, buf)
        return struct.unpack_from("=13I", buf.raw, 32)

    def _segments(self, blob: bytes, size: int) -> Callable[[bytes], tuple[bytes, ...]]:
        """A getter for every entry's bytes except its counters (and comefrom)."""
        lay = self.layout
        slices: list[slice] = []
        pos = 0
        while pos < size:
            (next_offset,) = struct.unpack_from("=H", blob, pos + lay.next_offset_at)
            if next_offset == 0:
                break
            slices.append(slice(pos, pos + lay.comefrom_at))
            slices.append(slice(pos + lay.counters_at + 16, pos + next_offset))
            pos += next_offset
        getter = operator.itemgetter(*slices) if len(slices) > 1 else (lambda b: (b[slices[0]],))
        return getter

    def fingerprint(self) -> str:
        info = self.info()
        size = info[-1]
        head = 40  # struct ipt_get_entries: name[32], size, padding to 8
        buf = ctypes.create_string_buffer(head + size)
        struct.pack_into("=32sI", buf, 0, self.table, size)
        self._getsockopt(SO_GET_ENTRIES, buf)
        blob = buf.raw[head: head + size]
        # The entry layout is the same while the table's shape is: walk it only when that
        # changes, then slice in C. A walk against a stale layout only ever causes one
        # needless reconcile, after which the layout is walked again.
        if info != self._info or self._getter is None:
            self._getter = self._segments(blob, size) if size else (lambda b: ())
            self._info = info
        h = hashlib.sha1(repr(info).encode())
        h.update(b"".join(self._getter(blob)))
        return h.hexdigest()

    def relayout(self) -> None:
        """Forget the cached layout (after our own change, or a suspected one)."""
        self._getter = None

    def close(self) -> None:
        self.sock.close()
