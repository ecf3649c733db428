"""RHEL and its rebuilds (CentOS, Rocky, Alma, Oracle) and Fedora: iptables-services."""

from __future__ import annotations

from typing import ClassVar

from ecs_harden.flavors.base import Flavor, OsRelease

RHEL_IDS = ("rhel", "centos", "rocky", "almalinux", "fedora", "ol", "scientific")


class Rhel(Flavor):
    name: ClassVar[str] = "rhel"
    usual_iptables: ClassVar[str | None] = "nf_tables"
    rules_v4: ClassVar[str | None] = "/etc/sysconfig/iptables"
    rules_v6: ClassVar[str | None] = "/etc/sysconfig/ip6tables"
    restore_services: ClassVar[tuple[str, ...]] = ("iptables.service", "ip6tables.service")
    restore_package: ClassVar[str | None] = "iptables-services"
    package_tools: ClassVar[tuple[str, ...]] = ("dnf", "yum")
    ships_sample: ClassVar[bool] = True

    @classmethod
    def matches(cls, osr: OsRelease) -> bool:
        return osr.id in RHEL_IDS or any(x in ("rhel", "fedora", "centos") for x in osr.id_like)
