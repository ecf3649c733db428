"""The Flavor base class and the os-release reader every flavor matches against."""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Optional


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


@dataclass(frozen=True)
class Step:
    """One command of a package install, as the flavor's package manager wants it."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    input: Optional[str] = None  # typing: evaluated at run time on 3.8
    must_succeed: bool = True
    timeout: float = 1200


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
    # The package tools of the family, the first found on the host used (RHEL 7: yum only).
    package_tools: ClassVar[tuple[str, ...]] = ()
    # How restore services are enabled for boot: "systemd" (systemctl) or "sysv" (chkconfig).
    service_manager: ClassVar[str] = "systemd"
    # The restore package lays down a sample rules file of its own (persist.samples),
    # which is replaced, not refused.
    ships_sample: ClassVar[bool] = False
    # Its systemd: the packaged unit drop-in it needs (ecs_harden/systemd/<name>/), and how
    # a unit names the paths it may write under ProtectSystem= (systemd 231 renamed it).
    unit_drop_in: ClassVar[str | None] = None
    writable_paths_key: ClassVar[str] = "ReadWritePaths"

    @classmethod
    def matches(cls, osr: OsRelease) -> bool:
        return False

    @classmethod
    def rules_file(cls, family: int) -> str | None:
        return cls.rules_v4 if family == 4 else cls.rules_v6

    @classmethod
    def install_command(cls) -> str | None:
        """What an operator types to install the boot restore (the findings say it)."""
        if cls.restore_package is None or not cls.package_tools:
            return None
        return f"{cls.package_tools[0]} install -y {cls.restore_package}"

    @classmethod
    def install_steps(cls, package: str,
                      which: Callable[[str], str | None] = shutil.which) -> list[Step] | None:
        """How this host installs a package: the family's tool that is on it; None: none is."""
        for tool in cls.package_tools:
            if which(tool):
                return [Step((tool, "install", "-y", "-q", package))]
        return None

    @classmethod
    def services_for(cls, families: tuple[int, ...]) -> tuple[str, ...]:
        """The restore services the given IP families need (one per family, or one shared)."""
        if len(cls.restore_services) < 2:
            return cls.restore_services
        return tuple(cls.restore_services[0 if f == 4 else 1] for f in families)


class Unknown(Flavor):
    """Anything we do not recognise: live enforcement only."""
