"""NftEvents in a real network namespace: events arrive, ENOBUFS is reported as Overflow."""

from __future__ import annotations

import sys

from tests.integration.conftest import require_lab
from tests.lab.host import PROJECT
from tests.lab.sandbox import Sandbox

SCRIPT = r"""
import select, socket, subprocess, sys
from ecs_harden.daemon.nftevents import NftEvents, Overflow
ev = NftEvents()
subprocess.run(["iptables-nft", "-w", "-A", "FORWARD", "-j", "ACCEPT"], check=True)
ready, _, _ = select.select([ev], [], [], 2)
b = ev.drain()
print("event", bool(ready), b.messages > 0, b.families == {4}, bool(b.writers))
ev.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
rules = "*filter\n" + "".join(f"-A FORWARD -s 10.9.{i // 250}.{i % 250}/32 -j ACCEPT\nCOMMIT\n*filter\n" for i in range(1500)) + "COMMIT\n"
subprocess.run(["iptables-nft-restore", "--noflush"], input=rules.encode(), check=True)
try:
    ev.drain()
    print("overflow False")
except Overflow:
    print("overflow True")
"""


def test_events_and_overflow() -> None:
    require_lab()
    with Sandbox("nft") as sb:
        out = sb.run([sys.executable, "-c", SCRIPT], env={"PYTHONPATH": str(PROJECT)}).stdout
    assert "event True True True True" in out
    assert "overflow True" in out
