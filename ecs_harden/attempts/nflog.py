"""The NFLOG listener: the packets our attempts table logs, read over netlink
(NETLINK_NETFILTER, the ULOG subsystem), never blocking.

Bound to group nftlog.GROUP in copy-packet mode (the first nftlog.SNAPLEN bytes). Each
message gives the packet's family, input and output interfaces (indexes), link-layer
source address, the kernel's timestamp when there is one, the logging rule's prefix
(which path; a host task's container), and its network header: the source address is
read from there. A message that is not what the kernel sends is skipped, never trusted
further than its own length. A full socket buffer (ENOBUFS) loses messages: counted, and
the rule counters say how many packets went unattributed.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from dataclasses import dataclass

from ecs_harden.attempts.nftlog import GROUP, HEADER, SNAPLEN, address
from ecs_harden.firewall.netlink import (
    NETLINK_NETFILTER,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    attributes,
    encode_attr,
    error_code,
    message,
    messages,
)

SUBSYS_ULOG = 4
MSG_PACKET, MSG_CONFIG = 0, 1
CFG_CMD, CFG_MODE = 1, 2
CMD_BIND = 1
COPY_PACKET = 2
ATTR_INDEV, ATTR_OUTDEV, ATTR_TIMESTAMP, ATTR_HWADDR, ATTR_PAYLOAD, ATTR_PREFIX = 4, 5, 3, 8, 9, 10
AF_FAMILY: dict[int, int] = {int(socket.AF_INET): 4, int(socket.AF_INET6): 6}
RCVBUF = 1 << 20
MAX_PER_READ = 4096  # messages taken per readable(): the loop is never held long


@dataclass(frozen=True)
class Packet:
    when: float  # wall clock, seconds
    family: int  # 4 or 6
    source: str
    indev: int  # interface index, 0 when unknown
    mac: str  # the link-layer source, "" when none
    prefix: str = ""  # the logging rule's prefix: which chain, and for a host task its container
    outdev: int = 0  # the output interface's index (the host path), 0 when none


def _index(value: bytes) -> int:
    return int(struct.unpack(">I", value)[0]) if len(value) == 4 else 0


def parse(body: bytes, now: float) -> Packet | None:
    """One NFULNL_MSG_PACKET (after the netlink header); None when it is not one we read."""
    if len(body) < 4:
        return None
    family = AF_FAMILY.get(body[0])
    if family is None:
        return None
    attrs = attributes(body[4:])
    payload = attrs.get(ATTR_PAYLOAD, b"")
    _, saddr, length = HEADER[family]
    version = payload[0] >> 4 if payload else 0
    if version != family or len(payload) < saddr + length:
        return None
    indev = attrs.get(ATTR_INDEV, b"")
    stamp = attrs.get(ATTR_TIMESTAMP, b"")
    when = now
    if len(stamp) == 16:
        sec, usec = struct.unpack(">QQ", stamp)
        when = sec + usec / 1e6
    hw = attrs.get(ATTR_HWADDR, b"")
    mac = ""
    if len(hw) >= 4:
        n = min(struct.unpack(">H", hw[:2])[0], len(hw) - 4, 8)
        mac = ":".join(f"{b:02x}" for b in hw[4:4 + n])
    prefix = attrs.get(ATTR_PREFIX, b"")[:128].split(b"\0", 1)[0].decode("ascii", "replace")
    return Packet(when, family, address(family, payload[saddr:saddr + length]), _index(indev), mac,
                  prefix, _index(attrs.get(ATTR_OUTDEV, b"")))


class Listener:
    """A non-blocking socket bound to our group; read() takes what is there."""

    def __init__(self, group: int = GROUP):
        self.group = group
        self.lost = 0  # messages the kernel could not queue (ENOBUFS), since start
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            self.sock.bind((0, 0))
            self.sock.settimeout(2.0)
            self._config(socket.AF_INET, encode_attr(CFG_CMD, bytes([CMD_BIND, 0, 0, 0])))
            self._config(socket.AF_INET, encode_attr(CFG_MODE, struct.pack(">IBB", SNAPLEN, COPY_PACKET, 0)
                                                     + b"\0\0"))
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise

    def _config(self, family: int, body: bytes) -> None:
        mtype = (SUBSYS_ULOG << 8) | MSG_CONFIG
        self.sock.send(message(mtype, NLM_F_REQUEST | 4, 1, family, body, res_id=self.group))
        for rtype, rbody in messages(self.sock.recv(65536)):
            if rtype == NLMSG_ERROR and error_code(rbody):
                code = error_code(rbody)
                raise OSError(code, f"NFLOG group {self.group}: {errno.errorcode.get(code, code)}")

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> list[Packet]:
        out: list[Packet] = []
        for _ in range(MAX_PER_READ):
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.lost += 1
                    continue
                raise
            now = time.time()
            for rtype, rbody in messages(data):
                if rtype == (SUBSYS_ULOG << 8) | MSG_PACKET:
                    packet = parse(rbody, now)
                    if packet is not None:
                        out.append(packet)
        return out

    def close(self) -> None:
        self.sock.close()
