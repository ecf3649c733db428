"""The inside of an imds.probe: the address choice and the connects a bridge's namespace
thread makes (probe_netns), and, run as a script, the task cgroup's child: it says
`ready`, reads one JSON line (where to connect), opens every TCP connection at once
(nothing is sent: a connect only), prints one JSON line of outcomes, and exits."""

from __future__ import annotations

import json
import select
import socket
import struct
import sys
import time
from typing import Any

# IMDS and the credentials endpoint answer a connect in milliseconds; a dropped SYN never.
CONNECT_TIMEOUT = 0.5
# An ARP probe is answered in well under a millisecond on a bridge; a busy host's
# container may take longer, so wait this long for any answer to any of them.
ARP_WAIT = 0.15
ETH_P_ARP = 0x0806


def arp_answered(iface: str, addresses: list[str], wait: float = ARP_WAIT) -> set[str]:
    """The addresses somebody answers an ARP probe for (RFC 5227: sender address
    0.0.0.0, so no neighbour table learns ours), all asked at once."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
        s.bind((iface, 0))
        mac = s.getsockname()[4]
        for address in addresses:
            who_has = socket.inet_aton(address)
            arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + bytes(4) + bytes(6) + who_has
            s.send(b"\xff" * 6 + mac + struct.pack("!H", ETH_P_ARP) + arp)
        wanted = {socket.inet_aton(a): a for a in addresses}
        answered: set[str] = set()
        deadline = time.monotonic() + wait
        while len(answered) < len(addresses):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([s], [], [], left)[0]:
                break
            frame = s.recv(128)
            if len(frame) >= 42 and frame[12:14] == b"\x08\x06" and frame[20:22] == b"\x00\x02":
                sender = frame[28:32]
                if sender in wanted:
                    answered.add(wanted[sender])
    return answered


def choose(iface: str, net: dict[str, Any], v6: bool) -> str:
    """The first candidate nobody answers for (IPv4: ARP probes; IPv6: the first, added
    without DAD, which would take a second)."""
    candidates = [str(c) for c in net["candidates"]]
    if v6:
        return candidates[0]
    taken = arp_answered(iface, [c.split("/")[0] for c in candidates])
    free = [c for c in candidates if c.split("/")[0] not in taken]
    if not free:
        raise OSError(f"every candidate address is answered for on the bridge: {', '.join(candidates)}")
    return free[0]


def connect_all(targets: list[list[Any]], timeout: float = CONNECT_TIMEOUT) -> dict[str, str]:
    """Each [address, port] -> "connected", "refused", "timeout" or the error."""
    pending: dict[socket.socket, str] = {}
    out: dict[str, str] = {}
    for address, port in targets:
        key = f"{address}:{port}"
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex((address, int(port)))
        if err in (0,):
            out[key] = "connected"
            s.close()
        elif err in (115, 114):  # EINPROGRESS, EALREADY
            pending[s] = key
        else:
            out[key] = f"error {err}"
            s.close()
    deadline = time.monotonic() + timeout
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        _, writable, _ = select.select([], list(pending), [], left)
        for s in writable:
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            out[pending.pop(s)] = "connected" if err == 0 else ("refused" if err == 111 else f"error {err}")
            s.close()
    for s, key in pending.items():
        out[key] = "timeout"
        s.close()
    return out


def main() -> int:
    print("ready", flush=True)
    line = sys.stdin.readline()
    if not line:
        return 1
    cfg = json.loads(line)
    print(json.dumps({"outcomes": connect_all(cfg["targets"])}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
