"""Debian and Ubuntu (ECS Anywhere): iptables-persistent / netfilter-persistent."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import ClassVar

from ecs_harden.flavors.base import Flavor, OsRelease, Step

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
# iptables-persistent asks whether to save the current rules: no (a dump would freeze
# Docker's chains into the boot file; ecs-harden merges its own lines instead).
PRESEED = "".join(f"iptables-persistent iptables-persistent/autosave_v{v} boolean false\n" for v in (4, 6))


class Debian(Flavor):
    name: ClassVar[str] = "debian"
    usual_iptables: ClassVar[str | None] = "nf_tables"
    rules_v4: ClassVar[str | None] = "/etc/iptables/rules.v4"
    rules_v6: ClassVar[str | None] = "/etc/iptables/rules.v6"
    restore_services: ClassVar[tuple[str, ...]] = ("netfilter-persistent.service",)
    restore_package: ClassVar[str | None] = "iptables-persistent"
    package_tools: ClassVar[tuple[str, ...]] = ("apt-get",)

    @classmethod
    def install_command(cls) -> str | None:
        return f"DEBIAN_FRONTEND=noninteractive {super().install_command()}"

    @classmethod
    def install_steps(cls, package: str,
                      which: Callable[[str], str | None] = shutil.which) -> list[Step] | None:
        (apt,) = cls.package_tools
        if not which(apt):
            return None
        return [Step(("debconf-set-selections",), input=PRESEED, timeout=60),
                Step((apt, "update", "-q"), APT_ENV, must_succeed=False, timeout=600),
                Step((apt, "install", "-y", "-q", package), APT_ENV)]

    @classmethod
    def matches(cls, osr: OsRelease) -> bool:
        return osr.id in ("debian", "ubuntu") or any(x in ("debian", "ubuntu") for x in osr.id_like)
