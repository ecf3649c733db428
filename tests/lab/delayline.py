"""TEST FIXTURE: a delay line for the lab (this kernel has no sch_netem): two TUN devices,
and what enters one leaves the other DELAY seconds later, both ways, in order.

    python -m tests.lab.delayline NAME_HERE NAME_THERE NETNS DELAY

NAME_THERE is moved into the network namespace NETNS; both devices live as long as this
process (TUN devices without IFF_TUN_PERSIST go with their last descriptor), so killing
it takes them and their routes away. Prints "ready" once both exist."""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import os
import select
import struct
import subprocess
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def main() -> int:
    here, there, netns, delay = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    a, b = tun(here), tun(there)
    subprocess.run(["ip", "link", "set", there, "netns", netns], check=True)
    print("ready", flush=True)
    other = {a: b, b: a}
    queue: list[tuple[float, int, int, bytes]] = []  # (when, sequence, to, packet)
    sequence = 0
    while True:
        timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else None
        ready, _, _ = select.select([a, b], [], [], timeout)
        now = time.monotonic()
        for fd in ready:
            try:
                packet = os.read(fd, 65535)
            except OSError:  # a device deleted (`ip link del`): the line is cut
                return 0
            heapq.heappush(queue, (now + delay, sequence, other[fd], packet))
            sequence += 1
        while queue and queue[0][0] <= time.monotonic():
            _, _, to, packet = heapq.heappop(queue)
            with contextlib.suppress(OSError):  # the device down for a moment: lost, as on a wire
                os.write(to, packet)


if __name__ == "__main__":
    sys.exit(main())
