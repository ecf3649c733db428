"""Debian and Ubuntu (ECS Anywhere): iptables-persistent / netfilter-persistent."""

from __future__ import annotations

from typing import ClassVar

from ecs_harden.flavors.base import Flavor, OsRelease


class Debian(Flavor):
    name: ClassVar[str] = "debian"
    usual_iptables: ClassVar[str | None] = "nf_tables"
    rules_v4: ClassVar[str | None] = "/etc/iptables/rules.v4"
    rules_v6: ClassVar[str | None] = "/etc/iptables/rules.v6"
    restore_services: ClassVar[tuple[str, ...]] = ("netfilter-persistent.service",)
    restore_package: ClassVar[str | None] = "iptables-persistent"
    install_command: ClassVar[str | None] = (
        "DEBIAN_FRONTEND=noninteractive apt-get install -y iptables-persistent"
    )

    @classmethod
    def matches(cls, osr: OsRelease) -> bool:
        return osr.id in ("debian", "ubuntu") or any(x in ("debian", "ubuntu") for x in osr.id_like)
