"""Flavor detection from real os-release texts."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecs_harden import flavors
from ecs_harden.flavors import OsRelease

FIXTURES = Path(__file__).parent.parent / "fixtures" / "os-release"

EXPECTED = {
    "amzn1": "amzn1",
    "amzn2": "amzn2",
    "amzn2023": "amzn2023",
    "rhel9": "rhel",
    "centos7": "rhel",
    "rocky9": "rhel",
    "alma9": "rhel",
    "fedora40": "rhel",
    "debian12": "debian",
    "ubuntu2204": "debian",
    "alpine": "unknown",
    "garbled": "unknown",
}


@pytest.mark.parametrize("fixture,flavor", sorted(EXPECTED.items()))
def test_detects_flavor_from_os_release(fixture: str, flavor: str) -> None:
    text = (FIXTURES / fixture).read_text(errors="replace")
    assert flavors.detect_from(OsRelease.parse(text)).name == flavor


def test_every_fixture_is_covered() -> None:
    assert sorted(p.name for p in FIXTURES.iterdir()) == sorted(EXPECTED)


def test_missing_os_release_is_unknown(tmp_path: Path) -> None:
    osr = flavors.read_os_release(str(tmp_path / "nope"), str(tmp_path / "nope2"))
    assert flavors.detect_from(osr).name == "unknown"


def test_system_release_alone_identifies_amazon_linux_ami(tmp_path: Path) -> None:
    sr = tmp_path / "system-release"
    sr.write_text("Amazon Linux AMI release 2018.03\n")
    osr = flavors.read_os_release(str(tmp_path / "missing"), str(sr))
    assert flavors.detect_from(osr).name == "amzn1"


@pytest.mark.parametrize("flavor", [*flavors.REGISTRY, flavors.Unknown])
def test_flavor_contract(flavor: type[flavors.Flavor]) -> None:
    """Every flavor either has a complete boot-restore recipe or none at all."""
    assert flavors.by_name(flavor.name) is flavor
    if flavor is flavors.Unknown:
        assert flavor.rules_v4 is None and not flavor.restore_services
        return
    assert flavor.rules_v4 and flavor.rules_v4.startswith("/etc/")
    assert flavor.rules_v6 and flavor.rules_v6.startswith("/etc/")
    command = flavor.install_command()
    assert flavor.restore_services and command
    assert flavor.restore_package and command.endswith(f" install -y {flavor.restore_package}")
    assert flavor.usual_iptables in ("legacy", "nf_tables")


def test_amazon_linux_paths() -> None:
    for name in ("amzn1", "amzn2", "amzn2023"):
        f = flavors.by_name(name)
        assert (f.rules_v4, f.rules_v6) == ("/etc/sysconfig/iptables", "/etc/sysconfig/ip6tables")
    assert flavors.by_name("amzn2023").restore_services == ("iptables.service", "ip6tables.service")
    assert flavors.by_name("amzn1").restore_services == ("iptables", "ip6tables")
    assert flavors.by_name("debian").restore_services == ("netfilter-persistent.service",)
