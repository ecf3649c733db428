"""LegacyProbe: a cheap fingerprint of a legacy (x_tables) filter table.

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
import socket
import struct

SO_GET_INFO = 64
SO_GET_ENTRIES = 65
TABLE = b"filter"


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
    def __init__(self, family: int):
        self.layout = _Layout(family)
        libc_name = ctypes.util.find_library("c") or "libc.so.6"
        self.libc = ctypes.CDLL(libc_name, use_errno=True)
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
        buf = ctypes.create_string_buffer(TABLE, 32 + 4 * 13)
        self._getsockopt(SO_GET_INFO, buf)
        return struct.unpack_from("=13I", buf.raw, 32)

    def fingerprint(self) -> str:
        info = self.info()
        size = info[-1]
        head = 40  # struct ipt_get_entries: name[32], size, padding to 8
        buf = ctypes.create_string_buffer(head + size)
        struct.pack_into("=32sI", buf, 0, TABLE, size)
        self._getsockopt(SO_GET_ENTRIES, buf)
        blob = memoryview(buf.raw)[head: head + size]
        h = hashlib.blake2b(repr(info).encode(), digest_size=16)
        lay = self.layout
        pos = 0
        while pos < size:
            (next_offset,) = struct.unpack_from("=H", blob, pos + lay.next_offset_at)
            if next_offset == 0:
                break
            h.update(blob[pos: pos + lay.comefrom_at])
            h.update(blob[pos + lay.counters_at + 16: pos + next_offset])
            pos += next_offset
        return h.hexdigest()

    def close(self) -> None:
        self.sock.close()
