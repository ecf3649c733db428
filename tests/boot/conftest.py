"""Fixtures for booted hosts: the test image under systemd-nspawn, ecs-harden installed
from a wheelhouse as user-data would install it, the unit installed as shipped."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.boot import image
from tests.boot.nspawn import BootedHost
from tests.lab.flavors import FIXTURES, IPTABLES_SERVICE, OS_RELEASE
from tests.require import require

NEEDED = ("systemd-nspawn", "debootstrap", "nsenter", "unshare")

INSTALL = """
python3 -m venv /opt/ecs-harden
/opt/ecs-harden/bin/pip install -q --no-index --find-links /wheelhouse ecs-harden
ln -sf /opt/ecs-harden/bin/ecs-harden /usr/local/bin/ecs-harden
install -m 0644 /src/ecs_harden/systemd/ecs-harden.service /etc/systemd/system/ecs-harden.service
systemctl enable ecs-harden.service
# Docker needs more than nspawn gives it here (the test VM runs it); the unit is the subject.
systemctl disable docker.service containerd.service docker.socket >/dev/null 2>&1
# A fresh host: nothing ecs-harden writes exists yet.
rm -rf /etc/ecs /etc/iptables /etc/ecs-harden /var/lib/ecs-harden
"""

LEGACY = """
update-alternatives --quiet --set iptables /usr/sbin/iptables-legacy
update-alternatives --quiet --set ip6tables /usr/sbin/ip6tables-legacy
"""

# Dressed as Amazon Linux 2023 with iptables-services: its os-release, its two units
# (the package's text) and an init script reduced to what boot does. Debian has no
# /etc/sysconfig, so `prepare` must create it, as on a host where nothing wrote it yet.
AMZN2023 = """
cp /dress/os-release /etc/os-release
echo 'Amazon Linux release 2023 (Amazon Linux)' > /etc/system-release
mkdir -p /usr/libexec/iptables
for tool in iptables ip6tables; do
    cp /dress/$tool.service /usr/lib/systemd/system/$tool.service
    printf '#!/bin/sh\n[ "$1" = start ] && exec /usr/sbin/%s-restore /etc/sysconfig/%s\nexit 0\n' $tool $tool \
        > /usr/libexec/iptables/$tool.init
    chmod 755 /usr/libexec/iptables/$tool.init
done
rm -rf /etc/sysconfig
"""

# (flavor, iptables variant): the usual pairs, plus Debian on legacy.
CASES = [("debian", "nft"), ("debian", "legacy"), ("amzn2023", "nft")]


def require_boot() -> None:
    why = None
    if os.geteuid() != 0:
        why = "booting a container needs root"
    elif missing := [t for t in NEEDED if shutil.which(t) is None]:
        why = "needs " + ", ".join(missing)
    require(why)


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_boot()
    return image.wheelhouse(tmp_path_factory.mktemp("wheelhouse"))


@pytest.fixture(scope="module", params=CASES, ids=[f"{f}-{v}" for f, v in CASES])
def installed(
    request: pytest.FixtureRequest, wheels: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BootedHost]:
    """A host with ecs-harden installed and its unit enabled, not booted yet."""
    require_boot()
    flavor, variant = request.param
    dress = tmp_path_factory.mktemp("dress")
    (dress / "os-release").write_text((FIXTURES / OS_RELEASE[flavor]).read_text())
    for tool, v in (("iptables", "IPv4"), ("ip6tables", "IPv6")):
        (dress / f"{tool}.service").write_text(IPTABLES_SERVICE.format(tool=tool, v=v))
    script = INSTALL + (LEGACY if variant == "legacy" else "") + (AMZN2023 if flavor == "amzn2023" else "")
    with BootedHost(image.rootfs()) as host:
        host.variant, host.flavor = variant, flavor
        host.offline(script, binds=[f"{wheels}:/wheelhouse", f"{image.PROJECT}:/src", f"{dress}:/dress"])
        yield host
