"""Dress a sandbox's private /etc as one flavor, and boot-restore it the way that flavor does."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests.lab.sandbox import Sandbox

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "os-release"
# What iptables-services lays down besides its units: the sample rules files, 0600.
SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "iptables-services"
LAB_FILES = Path(__file__).resolve().parent / "files"  # stand-ins for what Debian lacks
OS_RELEASE = {"amzn1": "amzn1", "amzn2": "amzn2", "amzn2023": "amzn2023", "rhel": "rhel9", "debian": "debian12"}
USUAL_VARIANTS = {"amzn1": "legacy", "amzn2": "legacy", "amzn2023": "nft", "rhel": "nft", "debian": "nft"}

# The units as the distributions ship them (iptables-services; Debian's netfilter-persistent).
IPTABLES_SERVICE = """[Unit]
Description={v} firewall with {tool}
AssertPathExists=/etc/sysconfig/{tool}
Before=network-pre.target
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/libexec/iptables/{tool}.init start
ExecReload=/usr/libexec/iptables/{tool}.init reload
ExecStop=/usr/libexec/iptables/{tool}.init stop
Environment=BOOTUP=serial
Environment=CONSOLETYPE=serial

[Install]
WantedBy=multi-user.target
"""
NETFILTER_PERSISTENT = """[Unit]
Description=netfilter persistent configuration
DefaultDependencies=no
Wants=network-pre.target systemd-modules-load.service local-fs.target
Before=network-pre.target shutdown.target
After=systemd-modules-load.service local-fs.target
Conflicts=shutdown.target
Documentation=man:netfilter-persistent(8)

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/netfilter-persistent start
ExecStop=/usr/sbin/netfilter-persistent stop

[Install]
WantedBy=multi-user.target
"""
def dress(sandbox: Sandbox, flavor: str, *, install_restore: bool = True) -> None:
    etc = sandbox.etc
    osr = etc / "os-release"
    if osr.is_symlink() or osr.exists():
        osr.unlink()
    osr.write_text((FIXTURES / OS_RELEASE[flavor]).read_text())
    if flavor.startswith("amzn"):
        (etc / "system-release").write_text(
            "Amazon Linux AMI release 2018.03\n" if flavor == "amzn1" else "Amazon Linux release 2\n"
        )
    if not install_restore:
        return
    units = etc / "systemd" / "system"
    if flavor == "debian":
        (units / "netfilter-persistent.service").write_text(NETFILTER_PERSISTENT)
    elif flavor == "amzn1":
        init = etc / "rc.d" / "init.d"
        init.mkdir(parents=True, exist_ok=True)
        for tool in ("iptables", "ip6tables"):
            shutil.copy(LAB_FILES / "sysv-iptables", init / tool)
            os.chmod(init / tool, 0o755)
        bindir = sandbox.dir / "bin"
        bindir.mkdir(exist_ok=True)
        shutil.copy(LAB_FILES / "chkconfig", bindir / "chkconfig")
        os.chmod(bindir / "chkconfig", 0o755)
    else:
        sysconfig = etc / "sysconfig"
        sysconfig.mkdir(exist_ok=True)
        for tool, v in (("iptables", "IPv4"), ("ip6tables", "IPv6")):
            (units / f"{tool}.service").write_text(IPTABLES_SERVICE.format(tool=tool, v=v))
            (sysconfig / tool).write_bytes((SAMPLES / tool).read_bytes())
            os.chmod(sysconfig / tool, 0o600)


def _enabled_unit(etc: Path, unit: str) -> bool:
    """Follow the [Install] symlink the way systemd does at boot."""
    link = etc / "systemd" / "system" / "multi-user.target.wants" / unit
    if not link.is_symlink():
        return False
    target = os.readlink(link)
    resolved = Path(target.replace("/etc/", f"{etc}/", 1)) if target.startswith("/etc/") else link.parent / target
    return resolved.exists()


def _enabled_sysv(etc: Path, service: str) -> bool:
    return any((etc / "rc.d" / "rc3.d").glob(f"S??{service}"))


def boot_restore(sandbox: Sandbox, flavor: str) -> list[str]:
    """Do what the flavor's enabled boot service does; return the files restored."""
    etc = sandbox.etc
    restored: list[str] = []
    if flavor == "debian":
        if _enabled_unit(etc, "netfilter-persistent.service"):
            for tool, name in (("iptables", "rules.v4"), ("ip6tables", "rules.v6")):
                if (etc / "iptables" / name).exists():
                    sandbox.sh(f"{tool}-restore < /etc/iptables/{name}")
                    restored.append(f"/etc/iptables/{name}")
        return restored
    for tool in ("iptables", "ip6tables"):
        on = _enabled_sysv(etc, tool) if flavor == "amzn1" else _enabled_unit(etc, f"{tool}.service")
        if on and (etc / "sysconfig" / tool).exists():
            sandbox.sh(f"{tool}-restore /etc/sysconfig/{tool}")
            restored.append(f"/etc/sysconfig/{tool}")
    return restored
