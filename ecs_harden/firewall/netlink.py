"""nf_tables over netlink, the parts both the daemon's events and the firewall need: the
socket family and message layout, and the ruleset generation (NFT_MSG_GETGEN)."""

from __future__ import annotations

import errno
import socket
import struct

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN = 15
NFT_MSG_GETGEN = 16
NFTA_GEN_ID = 1
NFTA_GEN_PROC_PID = 2
NLM_F_REQUEST = 1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
NFGENMSG = 4  # family u8, version u8, res_id be16


def encode_attr(atype: int, value: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(value), atype) + value
    return data + bytes(-len(data) % 4)


def message(mtype: int, flags: int, seq: int, family: int, body: bytes, res_id: int = 0) -> bytes:
    """One nfnetlink request: the netlink header, nfgenmsg, then body."""
    payload = struct.pack("=BBH", family, 0, socket.htons(res_id)) + body
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(payload), mtype, flags, seq, 0) + payload


def attribute_list(data: bytes) -> list[tuple[int, bytes]]:
    """Attributes in order, the nested flag masked off; a short or broken one ends the list."""
    out: list[tuple[int, bytes]] = []
    offset = 0
    while offset + 4 <= len(data):
        alen, atype = struct.unpack_from("=HH", data, offset)
        if alen < 4:
            break
        out.append((atype & 0x3FFF, data[offset + 4:offset + alen]))
        offset += (alen + 3) & ~3
    return out


def attributes(data: bytes) -> dict[int, bytes]:
    return dict(attribute_list(data))


def messages(data: bytes) -> list[tuple[int, bytes]]:
    """(type, body after the netlink header) of each message in a datagram."""
    out = []
    offset = 0
    while offset + NLMSG_HDR.size <= len(data):
        length, mtype, _flags, _seq, _pid = NLMSG_HDR.unpack_from(data, offset)
        if length < NLMSG_HDR.size:
            break
        out.append((mtype, data[offset + NLMSG_HDR.size:offset + length]))
        offset += (length + 3) & ~3
    return out


def open_socket(timeout: float = 5.0) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.settimeout(timeout)
    sock.bind((0, 0))
    return sock


def error_code(body: bytes) -> int:
    """The errno of an NLMSG_ERROR (0: an acknowledgement)."""
    return -int(struct.unpack_from("=i", body, 0)[0])


def dump(sock: socket.socket, mtype: int, family: int, body: bytes, *,
         missing: bool = False) -> list[tuple[int, bytes]]:
    """The answers to an nf_tables dump request: (type, body after nfgenmsg) each. An
    error is OSError naming it; with missing=True, ENOENT (no such table or chain) is an
    empty dump."""
    sock.send(message((NFNL_SUBSYS_NFTABLES << 8) | mtype, NLM_F_REQUEST | NLM_F_DUMP, 1, family, body))
    out: list[tuple[int, bytes]] = []
    while True:
        for rtype, rbody in messages(sock.recv(1 << 20)):
            if rtype == NLMSG_DONE:
                return out
            if rtype == NLMSG_ERROR:
                code = error_code(rbody)
                if code == errno.ENOENT and missing:
                    return []
                if code:
                    raise OSError(code, f"nf_tables dump: {errno.errorcode.get(code, code)}")
                continue
            out.append((rtype, rbody[4:]))


def gen_attr(attrs: bytes, wanted: int) -> int | None:
    """A 32-bit attribute of a generation message (NFTA_GEN_ID, NFTA_GEN_PROC_PID)."""
    offset = 0
    while offset + 4 <= len(attrs):
        alen, atype = struct.unpack_from("=HH", attrs, offset)
        if alen < 4:
            return None
        if atype & 0x3FFF == wanted and alen >= 8:
            return int(struct.unpack_from(">I", attrs, offset + 4)[0])
        offset += (alen + 3) & ~3
    return None


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
    gen = gen_attr(data[NLMSG_HDR.size + NFGENMSG:length], NFTA_GEN_ID)
    if gen is None:
        raise OSError("no NFTA_GEN_ID in the answer to NFT_MSG_GETGEN")
    return gen


def commit(datagram: bytes, acks: int, what: str) -> None:
    """Send an nf_tables batch (BEGIN, messages asking for acks, END) and wait for the
    acks: all of it committed, or OSError with the kernel's errno naming `what`."""
    got = 0
    with open_socket() as sock:
        sock.send(datagram)
        while got < acks:
            try:
                data = sock.recv(65536)
            except socket.timeout:
                raise OSError(errno.ETIMEDOUT, "no answer from nf_tables") from None
            for rtype, rbody in messages(data):
                if rtype != NLMSG_ERROR:
                    continue
                code = error_code(rbody)
                if code:
                    raise OSError(code, f"{what}: {errno.errorcode.get(code, code)}")
                got += 1
