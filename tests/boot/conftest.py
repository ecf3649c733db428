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

NEEDED = ("systemd-nspawn", "debootstrap", "nsenter", "unshare")

INSTALL = """
python3 -m venv /opt/ecs-harden
/opt/ecs-harden/bin/pip install -q --no-index --find-links /wheelhouse ecs-harden
ln -sf /opt/ecs-harden/bin/ecs-harden /usr/local/bin/ecs-harden
install -m 0644 /src/systemd/ecs-harden.service /etc/systemd/system/ecs-harden.service
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


def require_boot() -> None:
    why = None
    if os.geteuid() != 0:
        why = "booting a container needs root"
    elif missing := [t for t in NEEDED if shutil.which(t) is None]:
        why = "needs " + ", ".join(missing)
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_boot()
    return image.wheelhouse(tmp_path_factory.mktemp("wheelhouse"))


@pytest.fixture(scope="module", params=["nft", "legacy"])
def installed(request: pytest.FixtureRequest, wheels: Path) -> Iterator[BootedHost]:
    """A host with ecs-harden installed and its unit enabled, not booted yet."""
    require_boot()
    with BootedHost(image.rootfs()) as host:
        host.variant = request.param
        host.offline(INSTALL + (LEGACY if request.param == "legacy" else ""),
                     binds=[f"{wheels}:/wheelhouse", f"{image.PROJECT}:/src"])
        yield host
