"""Amazon Linux: the 2018.03 AMI (amzn1), Amazon Linux 2 and Amazon Linux 2023."""

from __future__ import annotations

from typing import ClassVar

from ecs_harden.flavors.base import OsRelease
from ecs_harden.flavors.rhel import Rhel


def _is_amazon(osr: OsRelease) -> bool:
    return osr.id == "amzn" or (not osr.fields and "Amazon Linux" in osr.system_release)


class Amzn2023(Rhel):
    name: ClassVar[str] = "amzn2023"
    package_tools: ClassVar[tuple[str, ...]] = ("dnf",)

    @classmethod
    def matches(cls, osr: OsRelease) -> bool:
        return _is_amazon(osr) and osr.version_id.startswith("2023")


class Amzn2(Rhel):
    name: ClassVar[str] = "amzn2"
    usual_iptables: ClassVar[str | None] = "legacy"
    package_tools: ClassVar[tuple[str, ...]] = ("yum",)
    # systemd 219: no `+` for ExecStartPre, ReadWriteDirectories= (not ReadWritePaths=)
    unit_drop_in: ClassVar[str | None] = "al2"
    writable_paths_key: ClassVar[str] = "ReadWriteDirectories"

    @classmethod
    def matches(cls, osr: OsRelease) -> bool:
        return _is_amazon(osr) and osr.version_id == "2"


class Amzn1(Amzn2):
    """sysvinit services `iptables`/`ip6tables`, files in `service iptables save` format."""

    name: ClassVar[str] = "amzn1"
    restore_services: ClassVar[tuple[str, ...]] = ("iptables", "ip6tables")
    restore_package: ClassVar[str | None] = "iptables"
    service_manager: ClassVar[str] = "sysv"
    unit_drop_in: ClassVar[str | None] = None  # no systemd
    writable_paths_key: ClassVar[str] = "ReadWritePaths"
    ships_sample: ClassVar[bool] = False  # the 2018.03 AMI's iptables package has no sample

    @classmethod
    def matches(cls, osr: OsRelease) -> bool:
        if not _is_amazon(osr):
            return False
        if osr.fields:
            return osr.version_id.startswith("201") or osr.version_id == "1"
        return "Amazon Linux AMI" in osr.system_release
