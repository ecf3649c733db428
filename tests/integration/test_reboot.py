"""Reboot in the lab: apply in one sandbox, then a fresh sandbox with the same disk (/etc)
and an empty ruleset restores the files as the flavor's boot service does, starts
Docker, and the block holds without ecs-harden running."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import require_lab
from tests.lab.flavors import USUAL_VARIANTS, boot_restore
from tests.lab.host import CREDS, IMDS_V4, IMDS_V6, EcsHost

FILES = {
    "debian": ("/etc/iptables/rules.v4", "/etc/iptables/rules.v6"),
    **{f: ("/etc/sysconfig/iptables", "/etc/sysconfig/ip6tables") for f in ("amzn1", "amzn2", "amzn2023", "rhel")},
}
CASES = [(f, v) for f, v in USUAL_VARIANTS.items()] + [("debian", "legacy")]


@pytest.fixture
def disk() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="ecs-harden-disk-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("flavor,variant", CASES, ids=[f"{f}-{v}" for f, v in CASES])
def test_block_survives_reboot(flavor: str, variant: str, disk: Path) -> None:
    require_lab()
    with EcsHost(variant, flavor=flavor).start(docker=False) as first:
        first.policy()
        facts = first.harden("facts", "--format", "json").stdout
        assert f'"flavor": "{flavor}"' in facts
        code, report = first.report("apply")
        assert code == 0, report
        persisted = {f["check"]: f for f in report["findings"]}
        assert persisted["imds.ipv4.persisted"]["status"] == "ok"
        assert persisted["imds.persistence.service"]["status"] == "ok"
        assert persisted["imds.persistence.service"]["changed"] is True
        for path in FILES[flavor]:
            text = (first.sandbox.etc / path[5:]).read_text()
            assert "DOCKER-ISOLATION" not in text and ":DOCKER " not in text  # nothing of Docker frozen
            assert oct((first.sandbox.etc / path[5:]).stat().st_mode & 0o777) == "0o600"
        shutil.copytree(first.sandbox.etc, disk / "etc", symlinks=True)
        shutil.copy(first.dir / "policy.yaml", disk / "policy.yaml")

    after = EcsHost(variant, flavor=flavor, etc_from=disk / "etc").start(docker=False)
    try:
        assert after.sandbox.rules("FORWARD") == []  # the ruleset is empty after the "reboot"
        restored = boot_restore(after.sandbox, flavor)
        assert sorted(restored) == sorted(FILES[flavor])
        assert IMDS_V4 in after.sandbox.iptables("-t", "raw", "-S", "PREROUTING")  # the guard too
        after.start_docker()
        after.import_image()
        assert not after.reaches(IMDS_V4)
        assert not after.reaches(IMDS_V6)
        assert after.reaches(CREDS)
        after.restart_docker()
        assert not after.reaches(IMDS_V4)
        after.policy()
        code, report = after.report("check")
        assert code == 0, [f for f in report["findings"] if f["status"] != "ok"]
    finally:
        after.stop()


def test_operator_rules_survive_byte_for_byte_outside_our_lines() -> None:
    require_lab()
    original = (
        "# operator's firewall, keep this comment\n"
        "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n"
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        "-A INPUT -s 192.0.2.0/24 -p tcp -m tcp --dport 22 -j ACCEPT\n"
        "-A FORWARD -s 198.51.100.0/24 -j DROP\n"
        "COMMIT\n# trailing comment\n"
    )
    with EcsHost("nft", flavor="rhel").start(docker=False) as h:
        (h.sandbox.etc / "sysconfig").mkdir(exist_ok=True)
        path = h.sandbox.etc / "sysconfig" / "iptables"
        path.write_text(original)
        os.chmod(path, 0o640)
        h.policy("imds:\n  ipv6: null\n")
        assert h.report("apply")[0] == 0
        merged = path.read_text()
        ours = [ln for ln in merged.splitlines(keepends=True) if "ecs-harden" in ln or ln == ":DOCKER-USER - [0:0]\n"]
        assert len(ours) == 4  # the declaration, DOCKER-USER, FORWARD, and the raw guard
        skeleton = "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
        assert "".join(ln for ln in merged.splitlines(keepends=True) if ln not in ours) == original + skeleton
        assert path.stat().st_mode & 0o777 == 0o640
        # remove takes out our lines and what it added around them: the file is the operator's again.
        assert h.harden("remove", "--yes").returncode == 0
        assert path.read_text() == original
        assert h.report("apply")[0] == 0


STOCK_RHEL = """# sample configuration for iptables service
# you can edit this manually or use system-config-firewall
# please do not ask us to add additional ports/services to this default configuration
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p icmp -j ACCEPT
-A INPUT -i lo -j ACCEPT
-A INPUT -p tcp -m state --state NEW -m tcp --dport 22 -j ACCEPT
-A INPUT -j REJECT --reject-with icmp-host-prohibited
-A FORWARD -j REJECT --reject-with icmp-host-prohibited
COMMIT
"""


def test_stock_reject_file_is_detected_and_the_service_not_enabled() -> None:
    require_lab()
    with EcsHost("nft", flavor="rhel").start(docker=False) as h:
        (h.sandbox.etc / "sysconfig").mkdir(exist_ok=True)
        (h.sandbox.etc / "sysconfig" / "iptables").write_text(STOCK_RHEL)
        h.policy("imds:\n  ipv6: null\n")
        code, report = h.report("apply")
        assert code == 3
        f = {x["check"]: x for x in report["findings"]}["imds.persistence.service"]
        assert f["status"] == "drift" and "-A FORWARD -j REJECT --reject-with icmp-host-prohibited" in f["detail"]
        assert "Remove the catch-all" in f["detail"]
        wants = h.sandbox.etc / "systemd" / "system" / "multi-user.target.wants" / "iptables.service"
        assert not wants.exists() and not wants.is_symlink()


def test_missing_restore_package_names_the_install_command() -> None:
    require_lab()
    with EcsHost("nft", flavor="amzn2023", install_restore=False).start(docker=False) as h:
        h.policy()
        code, report = h.report("apply")
        assert code == 3
        f = {x["check"]: x for x in report["findings"]}["imds.persistence.service"]
        assert f["status"] == "error" and "dnf install -y iptables-services" in f["detail"]


def test_corrupt_file_is_reported_and_left_untouched() -> None:
    require_lab()
    with EcsHost("nft", flavor="debian").start(docker=False) as h:
        (h.sandbox.etc / "iptables").mkdir()
        path = h.sandbox.etc / "iptables" / "rules.v4"
        garbage = "*filter\n-A FORWARD --bogus-option -j DROP\nCOMMIT\n"
        path.write_text(garbage)
        h.policy()
        code, report = h.report("apply")
        assert code == 3
        f = {x["check"]: x for x in report["findings"]}["imds.ipv4.persisted"]
        assert f["status"] == "error" and "left untouched" in f["detail"]
        assert path.read_text() == garbage
        # The live block is enforced all the same.
        assert {x["check"]: x for x in report["findings"]}["imds.ipv4.live"]["status"] == "ok"


def test_unknown_flavor_persisted_is_error_but_live_works() -> None:
    require_lab()
    with EcsHost("nft", flavor="debian").start(docker=False) as h:
        osr = h.sandbox.etc / "os-release"
        osr.write_text('ID=alpine\nVERSION_ID=3.19\n')
        h.policy()
        code, report = h.report("apply")
        f = {x["check"]: x for x in report["findings"]}
        assert code == 3
        assert f["imds.ipv4.persisted"]["status"] == "error"
        assert f["imds.persistence.service"]["status"] == "error"
        assert f["imds.ipv4.live"]["status"] == "ok"
        h.policy("imds:\n  persist: false\n")
        code, report = h.report("check")
        assert code == 0
        assert not any(x["check"].endswith(".persisted") for x in report["findings"])


def test_symlinked_rules_files_stay_links_and_dangling_is_an_error() -> None:
    require_lab()
    with EcsHost("nft", flavor="debian").start(docker=False) as h:
        etc = h.sandbox.etc
        (etc / "iptables").mkdir()
        (etc / "cm").mkdir()
        operator = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s 192.0.2.9/32 -j DROP\nCOMMIT\n"
        (etc / "cm" / "rules.v4").write_text(operator)
        os.chmod(etc / "cm" / "rules.v4", 0o644)
        (etc / "iptables" / "rules.v4").symlink_to("/etc/cm/rules.v4")
        (etc / "iptables" / "rules.v6").symlink_to("/etc/cm/missing.v6")  # dangling
        h.policy()
        code, report = h.report("apply")
        f = {x["check"]: x for x in report["findings"]}
        assert code == 3
        assert f["imds.ipv4.persisted"]["status"] == "ok" and f["imds.ipv4.persisted"]["changed"] is True
        assert (etc / "iptables" / "rules.v4").is_symlink()
        merged = (etc / "cm" / "rules.v4").read_text()
        assert "-A INPUT -s 192.0.2.9/32 -j DROP" in merged and IMDS_V4 in merged
        assert oct((etc / "cm" / "rules.v4").stat().st_mode & 0o777) == "0o644"
        v6 = f["imds.ipv6.persisted"]
        assert v6["status"] == "error" and "/etc/iptables/rules.v6" in v6["detail"] and "/etc/cm/missing.v6" in v6["detail"]
        assert (etc / "iptables" / "rules.v6").is_symlink() and not (etc / "cm" / "missing.v6").exists()
        assert f["imds.ipv6.live"]["status"] == "ok"  # the live block does not depend on it
