"""imds.bridges: every container bridge on the host is covered by an interface pattern."""

from __future__ import annotations

import os

from ecs_harden.component import FIREWALL, Base, Inspection
from ecs_harden.firewall.evaluate import iface_covers
from ecs_harden.report import OK, WARN, Finding

SYS_NET = "/sys/class/net"
CHECK = "imds.bridges"


def list_bridges(sys_net: str = SYS_NET) -> list[str]:
    try:
        names = sorted(os.listdir(sys_net))
    except OSError:
        return []
    return [n for n in names if os.path.isdir(os.path.join(sys_net, n, "bridge"))]


def judge(bridges: list[str], patterns: tuple[str, ...]) -> Finding:
    expected = "every bridge matches " + ", ".join(patterns)
    uncovered = [b for b in bridges if not any(iface_covers(p, b) for p in patterns)]
    actual = ", ".join(bridges) if bridges else "no bridges"
    if uncovered:
        hint = " or ".join(sorted({"br-+" if b.startswith("br-") else b for b in uncovered}))
        return Finding(
            CHECK, WARN, expected, actual,
            f"bridge(s) {', '.join(uncovered)} match no interface pattern: containers on them can "
            f"reach IMDS; add {hint} to imds.interfaces",
        )
    return Finding(CHECK, OK, expected, actual, "every bridge is covered" if bridges else "no bridges yet")


class BridgesComponent(Base):
    wakes_on = FIREWALL
    name = "imds.bridges"
    checks = (CHECK,)

    def __init__(self, patterns: tuple[str, ...], sys_net: str = SYS_NET):
        self.patterns = patterns
        self.sys_net = sys_net

    def inspect(self) -> Inspection:
        return Inspection((judge(list_bridges(self.sys_net), self.patterns),))

    def execute(self, inspection: Inspection) -> None:
        return None
