"""Host flavors: which distribution family this is, and how it restores firewall rules at boot.

One module per family; the first registered flavor whose `matches` accepts the
os-release wins, `Unknown` catches the rest.
"""

from __future__ import annotations

from ecs_harden.flavors.amazon import Amzn1, Amzn2, Amzn2023
from ecs_harden.flavors.base import Flavor, OsRelease, Unknown
from ecs_harden.flavors.debian import Debian
from ecs_harden.flavors.rhel import Rhel

REGISTRY: tuple[type[Flavor], ...] = (Amzn1, Amzn2, Amzn2023, Rhel, Debian)

OS_RELEASE = "/etc/os-release"
SYSTEM_RELEASE = "/etc/system-release"


def detect_from(osr: OsRelease) -> type[Flavor]:
    for flavor in REGISTRY:
        if flavor.matches(osr):
            return flavor
    return Unknown


def read_os_release(os_release: str = OS_RELEASE, system_release: str = SYSTEM_RELEASE) -> OsRelease:
    def read(path: str) -> str | None:
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except OSError:
            return None

    return OsRelease.parse(read(os_release) or "", read(system_release))


def detect() -> type[Flavor]:
    return detect_from(read_os_release())


def by_name(name: str) -> type[Flavor]:
    candidates: tuple[type[Flavor], ...] = (*REGISTRY, Unknown)
    for flavor in candidates:
        if flavor.name == name:
            return flavor
    raise KeyError(name)


__all__ = ["REGISTRY", "Flavor", "OsRelease", "Unknown", "by_name", "detect", "detect_from"]
