"""A bridge's probe in a network namespace of one thread of our own process: no
interpreter, no helper process, no namespace left behind.

The thread unshares its network namespace (CLONE_NEWNET is per thread: the rest of
the process stays in the host's), makes the veth pair from inside it with the host
end pushed into our process's namespace (`ip link add PEER type veth peer name HOST
netns PID`: one request, so no half-made pair ever sits in the host's namespace),
and waits while the host end is put on the bridge. Then it chooses its address (ARP
probes, probe_child.choose), sets it and the default routes, and opens its connects.
Every `ip` it runs is forked from this thread and so works in its namespace. When the
thread ends, or the process is killed, the kernel takes the namespace and the pair.
"""

from __future__ import annotations

import ctypes
import os
import threading
from typing import Any

from ecs_harden import proc
from ecs_harden.errors import RuntimeFailure
from ecs_harden.imds import probe_child

CLONE_NEWNET = 0x40000000
STEP_TIMEOUT = 10.0


def ip_batch(lines: list[str], *, force: bool = False) -> proc.Completed:
    """Several `ip` commands in one process (`ip -batch -`); raises on the first failure
    unless force (then every line is tried)."""
    argv = ["ip", *(["-force"] if force else []), "-batch", "-"]
    return proc.run(argv, input="".join(line + "\n" for line in lines), check=not force, timeout=STEP_TIMEOUT)


def unshare_net() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")


class NetnsProbe(threading.Thread):
    """One bridge's probe: made() once its pair exists, go() to connect, result when done."""

    def __init__(self, host: str, peer: str, cfg: dict[str, Any]):
        super().__init__(name=f"ecs-harden-probe-{host}", daemon=True)
        self.host, self.peer, self.cfg = host, peer, cfg
        self.result: dict[str, Any] = {"error": "the probe did not finish"}
        self._made = threading.Event()
        self._go = threading.Event()
        self.ok = False  # the pair was made

    def made(self, timeout: float = STEP_TIMEOUT) -> bool:
        self._made.wait(timeout)
        return self.ok

    def go(self) -> None:
        self._go.set()

    def run(self) -> None:
        try:
            unshare_net()
            ip_batch([f"link add {self.peer} up type veth peer name {self.host} netns {os.getpid()}",
                      "link set lo up"])
            self.ok = True
            self._made.set()
            if not self._go.wait(STEP_TIMEOUT):
                raise OSError("the probe was not started")
            chosen = self._addresses()
            self.result = {"outcomes": probe_child.connect_all(self.cfg["targets"]), "addresses": chosen}
        except (OSError, RuntimeFailure) as exc:
            self.result = {"error": f"setting up the probe's namespace failed: {exc}"}
        finally:
            self._made.set()

    def _addresses(self) -> dict[str, str]:
        chosen: dict[str, str] = {}
        lines: list[str] = []
        for family in ("v4", "v6"):
            net = self.cfg.get(family)
            if net:
                v6 = family == "v6"
                chosen[family] = address = probe_child.choose(self.peer, net, v6)
                lines += [f"addr add {address} dev {self.peer}{' nodad' if v6 else ''}",
                          f"route add default via {net['gateway']}"]
        ip_batch(lines)
        return chosen
