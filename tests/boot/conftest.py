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
from tests.lab.flavors import FIXTURES, IPTABLES_SERVICE, LAB_FILES, OS_RELEASE, SAMPLES
from tests.require import require

SCRIPTS = Path(__file__).resolve().parent / "scripts"  # run in the image before its first boot
NEEDED = ("systemd-nspawn", "debootstrap", "nsenter", "unshare")


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
        shutil.copy(SAMPLES / tool, dress / tool)
    shutil.copy(LAB_FILES / "iptables.init", dress / "iptables.init")
    steps = [*(["legacy"] if variant == "legacy" else []), *(["amzn2023"] if flavor == "amzn2023" else []), "install"]
    script = "".join((SCRIPTS / step).read_text() for step in steps)
    with BootedHost(image.rootfs()) as host:
        host.variant, host.flavor = variant, flavor
        host.offline(script, binds=[f"{wheels}:/wheelhouse", f"{image.PROJECT}:/src", f"{dress}:/dress"])
        yield host
