"""aarch64 (Graviton), proven on an aarch64 machine: an arm64 guest under QEMU's software
emulation (tests/vm/arm64.py) installs the 3.11 aarch64 tarball offline with its own
installer, applies on both iptables variants and a real packet from a container's
namespace on a bridge to a fake IMDS is blocked, then removes; then the AL2023 aarch64
RPM's venv (laid down by the real rpm) runs with a real aarch64 Python 3.9 and does the
same. One boot (about 2.5 minutes here), its results read from the console."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests import artifacts
from tests.require import require
from tests.vm import arm64

GUEST_SCRIPT = Path(__file__).resolve().parent / "files" / "arm64-guest.sh"
NEEDED = ("qemu-system-aarch64", "debootstrap", "dpkg-deb", "depmod", "rpm", "tar")
RUNS = {"tarball-nft": "nf_tables", "tarball-legacy": "legacy", "rpm-nft": "nf_tables"}


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The guest's results ("RESULT name value" lines), once per module."""
    missing = [tool for tool in NEEDED if shutil.which(tool) is None]
    require(f"missing: {', '.join(missing)} (./run-tests installs them)" if missing else None)
    work = tmp_path_factory.mktemp("arm64")
    kernel, base = arm64.base()
    extra = work / "extra"
    (extra / "payload").mkdir(parents=True)
    tarball, _ = artifacts.artifact("3.11", "aarch64")
    shutil.copyfile(tarball, extra / "payload" / tarball.name)
    shutil.copyfile(GUEST_SCRIPT, extra / "guest.sh")
    rpm = artifacts.rpm("aarch64")
    # the real rpm lays the package down into a root of its own (--ignorearch: this
    # machine is x86_64; --noscripts: they need AL2023's systemd, tests/boot/test_rpm.py)
    subprocess.run(["rpm", "--root", str(extra / "rpmroot"), "-i", "--nodeps", "--noscripts", "--nosignature",
                    "--ignorearch", str(rpm)], check=True, capture_output=True)
    verify = subprocess.run(["rpm", "--root", str(extra / "rpmroot"), "-V", "--nodeps", "ecs-harden"],
                            capture_output=True, text=True)
    assert verify.returncode == 0 and verify.stdout == "", verify.stdout
    console = arm64.boot(kernel, base, extra, work, f"/payload/{tarball.name} /rpmroot")
    (work / "console.txt").write_text(console)
    assert "ARM64-DONE rc=0" in console, console[-4000:]
    results = {m[1]: m[2] for m in re.finditer(r"^RESULT (\S+) ?(.*?)\r?$", console, re.M)}
    results["console"] = console
    return results


def test_the_guest_is_aarch64_and_the_tarball_installs_offline(guest: dict[str, str]) -> None:
    assert guest["arch"] == "aarch64"
    assert guest["python"].endswith(" aarch64")
    assert guest["install_rc"] == "0", guest["console"]
    assert guest["version"] == f"ecs-harden {artifacts.artifact('3.11', 'aarch64')[0].name.split('-')[2]}"
    # the cross-compiled helper and PyPI's aarch64 builds load: libyaml's C parser is in use
    assert guest["helper"] == "True True", guest["helper"]


@pytest.mark.parametrize("run", sorted(RUNS))
def test_a_real_packet_to_imds_is_blocked_then_free_again_after_remove(guest: dict[str, str], run: str) -> None:
    assert RUNS[run] in guest[f"{run}.variant"]
    if run.startswith("rpm-"):
        assert guest["rpm.python"].startswith("3.9.") and guest["rpm.python"].endswith(" aarch64")
        assert guest["rpm.version"] == guest["version"]
    assert guest[f"{run}.before"] == "reached"  # the fake IMDS answers the container: the probe can tell
    assert guest[f"{run}.apply_rc"] == "0", guest["console"]
    assert guest[f"{run}.after"] == "blocked"
    assert int(guest[f"{run}.dropped"]) >= 1  # blocked by our DROP rules, not by something else
    assert guest[f"{run}.check_rc"] == "0" and guest[f"{run}.live"] == "ok,ok"
    assert guest[f"{run}.remove_rc"] == "0", guest["console"]
    assert guest[f"{run}.removed"] == "reached" and guest[f"{run}.left"] == "0"
