"""Reboot in the lab: apply in one sandbox, then a fresh sandbox with the same disk (/etc)
and an empty ruleset restores the files as the flavor's boot service does, starts
Docker, and the block holds without ecs-harden running."""

from __future__ import annotations

import json
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
        assert len(ours) == 5  # the declaration, DOCKER-USER, FORWARD, and the raw guards (docker+, every)
        skeleton = "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
        assert "".join(ln for ln in merged.splitlines(keepends=True) if ln not in ours) == original + skeleton
        assert path.stat().st_mode & 0o777 == 0o640
        # remove takes out our lines and what it added around them: the file is the operator's again.
        assert h.harden("remove", "--yes").returncode == 0
        assert path.read_text() == original
        assert h.report("apply")[0] == 0


SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "iptables-services"


@pytest.mark.parametrize(("variant", "flavor"), [("nft", "amzn2023"), ("legacy", "amzn2")])
def test_the_untouched_iptables_services_sample_is_replaced_by_the_block(variant: str, flavor: str) -> None:
    """A fresh AL host: iptables-services laid down its sample (the lab's dress does what
    the package does). The first apply replaces it, keeps a backup, enables the restore."""
    require_lab()
    with EcsHost(variant, flavor=flavor).start(docker=False) as h:
        sysconfig = h.sandbox.etc / "sysconfig"
        assert (sysconfig / "iptables").read_bytes() == (SAMPLES / "iptables").read_bytes()
        h.policy()
        out = h.harden("apply", "--format", "text")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "changed: replace the iptables-services sample (catch-all REJECT) in /etc/sysconfig/iptables" \
            in out.stdout
        assert "replaced the iptables-services sample (catch-all REJECT)" in out.stdout
        for tool in ("iptables", "ip6tables"):
            now = (sysconfig / tool).read_text()
            assert "REJECT" not in now and "ecs-harden" in now
            assert (sysconfig / tool).stat().st_mode & 0o777 == 0o600
            wants = h.sandbox.etc / "systemd" / "system" / "multi-user.target.wants" / f"{tool}.service"
            assert wants.is_symlink()
        backups = list((h.dir / "state" / "backups").iterdir())
        kept = {p.read_bytes() for p in backups}
        assert {(SAMPLES / t).read_bytes() for t in ("iptables", "ip6tables")} <= kept
        journal = [json.loads(x) for x in (h.dir / "state" / "changes.jsonl").read_text().splitlines()]
        assert [j["changes"] for j in journal if j["path"] == "/etc/sysconfig/iptables"] == [
            ["replaced the iptables-services sample (catch-all REJECT) in /etc/sysconfig/iptables with the block"]]
        code, report = h.report("check")
        assert code == 0, report
        # What boot restores now blocks IMDS (the lab's boot does what the enabled units do).
        assert boot_restore(h.sandbox, flavor) == ["/etc/sysconfig/iptables", "/etc/sysconfig/ip6tables"]
        # remove: the restore it enabled is disabled first, then the samples are back, byte for byte.
        out = h.harden("remove", "--yes")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "removed: iptables.service (enabled for boot by ecs-harden): disabled" in out.stdout
        for tool in ("iptables", "ip6tables"):
            assert (sysconfig / tool).read_bytes() == (SAMPLES / tool).read_bytes()
            wants = h.sandbox.etc / "systemd" / "system" / "multi-user.target.wants" / f"{tool}.service"
            assert not wants.is_symlink()
        assert boot_restore(h.sandbox, flavor) == []
        # and a second apply replaces the sample again
        assert h.harden("apply").returncode == 0
        assert "REJECT" not in (sysconfig / "iptables").read_text()


@pytest.mark.parametrize("edit", ["a rule added", "a comment changed and a rule added"])
def test_an_edited_sample_with_a_catch_all_is_refused_and_left_as_it_is(edit: str) -> None:
    require_lab()
    with EcsHost("nft", flavor="rhel").start(docker=False) as h:
        path = h.sandbox.etc / "sysconfig" / "iptables"
        text = path.read_text().replace("-A INPUT -i lo -j ACCEPT\n",
                                        "-A INPUT -i lo -j ACCEPT\n-A INPUT -p tcp --dport 443 -j ACCEPT\n")
        if "comment" in edit:
            text = "# ours now\n" + text
        path.write_text(text)
        h.policy("imds:\n  ipv6: null\n")
        code, report = h.report("apply")
        assert code == 3
        f = {x["check"]: x for x in report["findings"]}["imds.persistence.service"]
        assert f["status"] == "drift" and "-A FORWARD -j REJECT --reject-with icmp-host-prohibited" in f["detail"]
        assert "Remove the catch-all" in f["detail"]
        wants = h.sandbox.etc / "systemd" / "system" / "multi-user.target.wants" / "iptables.service"
        assert not wants.exists() and not wants.is_symlink()
        merged = path.read_text()  # the block is merged in, every line of the operator's kept
        ours = [ln for ln in merged.splitlines(keepends=True) if "ecs-harden" in ln or ln == ":DOCKER-USER - [0:0]\n"]
        skeleton = "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
        assert "".join(ln for ln in merged.splitlines(keepends=True) if ln not in ours) == text + skeleton


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
