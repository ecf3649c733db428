"""imds.persistence.service: states, refusal on breaking rules, enable argv per init."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecs_harden import flavors, proc
from ecs_harden.errors import RuntimeFailure
from ecs_harden.persist import service
from ecs_harden.persist.service import ServiceComponent, sysv_state


def test_services_per_family() -> None:
    assert flavors.by_name("amzn2023").services_for((4, 6)) == ("iptables.service", "ip6tables.service")
    assert flavors.by_name("amzn2023").services_for((4,)) == ("iptables.service",)
    assert flavors.by_name("debian").services_for((4, 6)) == ("netfilter-persistent.service",)


def test_unknown_flavor_is_error() -> None:
    (f,) = ServiceComponent(flavors.Unknown, (4,)).inspect().findings
    assert f.status == "error"


@pytest.fixture
def states(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    table: dict[str, str] = {}
    monkeypatch.setattr(service, "systemd_state", lambda unit: table.get(unit, "not-found"))
    monkeypatch.setattr(ServiceComponent, "breaking_rules", lambda self, **kw: [])
    return table


def test_not_installed_names_install_command(states: dict[str, str]) -> None:
    (f,) = ServiceComponent(flavors.by_name("amzn2"), (4,)).inspect().findings
    assert f.status == "error" and "yum install -y iptables-services" in f.detail


def test_disabled_plans_systemctl_enable_never_start(states: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    states.update({"iptables.service": "disabled", "ip6tables.service": "enabled"})
    c = ServiceComponent(flavors.by_name("rhel"), (4, 6))
    insp = c.inspect()
    assert insp.findings[0].status == "drift"
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(proc, "run", lambda argv, **kw: calls.append(tuple(argv)))
    c.execute(insp)
    assert calls == [("systemctl", "enable", "iptables.service")]


def test_masked_is_not_overridden(states: dict[str, str]) -> None:
    states["netfilter-persistent.service"] = "masked"
    insp = ServiceComponent(flavors.by_name("debian"), (4,)).inspect()
    assert insp.findings[0].status == "drift" and insp.changes == ()


def test_enabled_is_ok(states: dict[str, str]) -> None:
    states["netfilter-persistent.service"] = "enabled"
    assert ServiceComponent(flavors.by_name("debian"), (4, 6)).inspect().findings[0].status == "ok"


def test_amzn1_uses_chkconfig() -> None:
    c = ServiceComponent(flavors.by_name("amzn1"), (4,))
    assert c.enable_argv("iptables") == ("chkconfig", "iptables", "on")


def test_sysv_state_reads_rc_links(tmp_path: Path) -> None:
    assert sysv_state("iptables", str(tmp_path)) == "not-found"
    (tmp_path / "rc.d" / "init.d").mkdir(parents=True)
    (tmp_path / "rc.d" / "init.d" / "iptables").write_text("#!/bin/sh\n")
    assert sysv_state("iptables", str(tmp_path)) == "disabled"
    (tmp_path / "rc.d" / "rc3.d").mkdir()
    (tmp_path / "rc.d" / "rc3.d" / "S08iptables").symlink_to("../init.d/iptables")
    assert sysv_state("iptables", str(tmp_path)) == "enabled"


def test_no_systemctl_is_an_error_finding_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ServiceComponent, "breaking_rules", lambda self, **kw: [])
    monkeypatch.setenv("PATH", "/nonexistent")
    insp = ServiceComponent(flavors.by_name("amzn2023"), (4,)).inspect()
    assert insp.findings[0].status == "error" and "cannot tell" in insp.findings[0].detail
    assert insp.changes == ()


SAMPLES = Path(__file__).resolve().parents[2] / "fixtures" / "iptables-services"


def test_the_sample_is_left_to_its_file_check_but_never_enabled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disabled restore over the untouched sample: planned (imds.ipv4.persisted replaces
    the sample first), but enabling it while the sample is still there is refused; an
    edited file with a catch-all is refused at once, and an enabled one is a warning."""
    rules = tmp_path / "iptables"
    rules.write_bytes((SAMPLES / "iptables").read_bytes())

    class Here(flavors.by_name("amzn2023")):  # type: ignore[misc]
        rules_v4 = str(rules)

    table = {"iptables.service": "disabled"}
    monkeypatch.setattr(service, "systemd_state", lambda unit: table[unit])
    monkeypatch.setattr("ecs_harden.persist.samples.shutil.which", lambda name: None)  # no rpm here
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(proc, "run", lambda argv, **kw: calls.append(tuple(argv)))
    c = ServiceComponent(Here, (4,))
    insp = c.inspect()
    assert insp.findings[0].status == "drift" and insp.plan == (("systemctl", "enable", "iptables.service"),)
    with pytest.raises(RuntimeFailure, match=r"not enabled: at boot it would restore .*REJECT"):
        c.execute(insp)
    assert calls == []
    rules.write_text(rules.read_text().replace("--dport 22", "--dport 2222"))  # the operator's now
    insp = ServiceComponent(Here, (4,)).inspect()
    assert insp.findings[0].status == "drift" and insp.changes == ()
    assert "Remove the catch-all" in insp.findings[0].detail
    rules.write_bytes((SAMPLES / "iptables").read_bytes())
    table["iptables.service"] = "enabled"  # somebody enabled it over the sample
    (f,) = ServiceComponent(Here, (4,)).inspect().findings
    assert f.status == "warn" and "cuts containers off" in f.detail
