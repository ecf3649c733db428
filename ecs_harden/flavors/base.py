"""The Flavor base class and the os-release reader every flavor matches against."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar


@dataclass(frozen=True)
class OsRelease:
    fields: Mapping[str, str] = field(default_factory=dict)
    system_release: str = ""

    @classmethod
    def parse(cls, text: str, system_release: str | None = None) -> OsRelease:
        """os-release is shell-quoted KEY=value lines; garbage lines are skipped, not fatal."""
        out: dict[str, str] = {}
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, _, value = line.partition("=")
            try:
                words = shlex.split(value, posix=True)
            except ValueError:
                continue
            out[key.strip()] = " ".join(words)
        return cls(out, (system_release or "").strip())

    @property
    def id(self) -> str:
        return self.fields.get("ID", "").lower()

    @property
    def version_id(self) -> str:
        return self.fields.get("VERSION_ID", "")

    @property
    def id_like(self) -> tuple[str, ...]:
        return tuple(self.fields.get("ID_LIKE", "").lower().split())


class Flavor:
    """A distribution family. Subclasses override only what differs."""

    name: ClassVar[str] = "unknown"
    usual_iptables: ClassVar[str | None] = None
    # Files the boot restore reads, per IP family; None: no known mechanism.
    rules_v4: ClassVar[str | None] = None
    rules_v6: ClassVar[str | None] = None
    # Units (or sysvinit services) that restore those files at boot, v4 then v6.
    restore_services: ClassVar[tuple[str, ...]] = ()
    restore_package: ClassVar[str | None] = None
    install_command: ClassVar[str | None] = None
    # How restore services are enabled for boot: "systemd" (systemctl) or "sysv" (chkconfig).
    service_manager: ClassVar[str] = "systemd"
    # The restore package lays down a sample rules file of its own (persist.samples),
    # which is replaced, not refused.
    ships_sample: ClassVar[bool] = False

    @classmethod
    def matches(cls, osr: OsRelease) -> bool:
        return False

    @classmethod
    def rules_file(cls, family: int) -> str | None:
        return cls.rules_v4 if family == 4 else cls.rules_v6

    @classmethod
    def services_for(cls, families: tuple[int, ...]) -> tuple[str, ...]:
        """The restore services the given IP families need (one per family, or one shared)."""
        if len(cls.restore_services) < 2:
            return cls.restore_services
        return tuple(cls.restore_services[0 if f == 4 else 1] for f in families)


class Unknown(Flavor):
    """Anything we do not recognise: live enforcement only."""
