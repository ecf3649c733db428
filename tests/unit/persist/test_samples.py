"""The iptables-services sample told from an operator's file: by rpm -V where rpm owns
the file (a stand-in `rpm` printing what the real one prints), else by its rule lines."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ecs_harden.persist.samples import is_untouched_sample, looks_like_sample, rpm_verdict, rule_lines

SAMPLES = Path(__file__).resolve().parents[2] / "fixtures" / "iptables-services"
V4 = (SAMPLES / "iptables").read_bytes()
V6 = (SAMPLES / "ip6tables").read_bytes()
PATH = "/etc/sysconfig/iptables"


def test_the_samples_as_the_package_ships_them() -> None:
    assert looks_like_sample(V4, 4) and looks_like_sample(V6, 6)
    assert not looks_like_sample(V4, 6) and not looks_like_sample(V6, 4)


def test_comments_blank_lines_counters_and_spacing_do_not_matter() -> None:
    text = V4.decode().replace("# sample configuration for iptables service\n", "")
    text = text.replace(":FORWARD ACCEPT [0:0]", ":FORWARD ACCEPT [1234:56789]")
    text = text.replace("-A INPUT -i lo -j ACCEPT", "\n[7:420] -A INPUT  -i lo   -j ACCEPT  ")
    text = "# saved by somebody\n" + text.replace("\n", "\r\n")
    assert looks_like_sample(text.encode(), 4)
    assert rule_lines(text.encode()) == rule_lines(V4)


@pytest.mark.parametrize("edit", [
    lambda t: t.replace("--dport 22", "--dport 2222"),
    lambda t: t.replace("COMMIT", "-A INPUT -p tcp --dport 443 -j ACCEPT\nCOMMIT"),
    lambda t: t.replace("-A INPUT -p icmp -j ACCEPT\n", ""),
    lambda t: t + "*raw\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n",
    lambda t: t.replace(":FORWARD ACCEPT", ":FORWARD DROP"),
])
def test_any_rule_edit_makes_it_the_operators(edit) -> None:  # type: ignore[no-untyped-def]
    assert not looks_like_sample(edit(V4.decode()).encode(), 4)


def fake_rpm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, owner: str, verify: str, rc: int = 0) -> None:
    """An `rpm` that answers -qf and -V the way rpm 4 does."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "rpm"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = -qf ]; then printf "%s\\n" "{owner}"; [ "{owner}" != "" ] || exit 1; exit 0; fi\n'
        f'if [ "$1" = -V ]; then printf "%b" "{verify}"; exit {rc}; fi\n'
        "exit 2\n"
    )
    os.chmod(script, 0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")


def test_rpm_as_shipped_is_the_authority(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # another file of the package changed (exit 1), ours is not listed: as shipped
    fake_rpm(tmp_path, monkeypatch, owner="iptables-services",
             verify="S.5....T.  c /etc/sysconfig/ip6tables\\n", rc=1)
    assert rpm_verdict("iptables-services", PATH) is True
    # as shipped even where its lines are not the sample's we know (a newer release)
    odd = b"*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j REJECT\nCOMMIT\n"
    assert is_untouched_sample(odd, 4, PATH, "iptables-services") == (
        True, "rpm -V iptables-services: as shipped")


@pytest.mark.parametrize("flags", ["S.5....T.", "..5......", "?........"])
def test_rpm_changed_is_the_operators_even_with_the_samples_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: str
) -> None:
    fake_rpm(tmp_path, monkeypatch, owner="iptables-services", verify=f"{flags}  c {PATH}\\n", rc=1)
    assert rpm_verdict("iptables-services", PATH) is False
    assert is_untouched_sample(V4, 4, PATH, "iptables-services")[0] is False


def test_rpm_mtime_or_mode_only_is_still_as_shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_rpm(tmp_path, monkeypatch, owner="iptables-services", verify=f".M.....T.  c {PATH}\\n", rc=1)
    assert rpm_verdict("iptables-services", PATH) is True


def test_without_an_owning_package_the_lines_decide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_rpm(tmp_path, monkeypatch, owner="", verify="")
    assert rpm_verdict("iptables-services", PATH) is None
    assert is_untouched_sample(V4, 4, PATH, "iptables-services") == (
        True, "its rule lines are those of the sample")
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))  # no rpm at all (Debian)
    assert rpm_verdict("iptables-services", PATH) is None
    assert is_untouched_sample(V4 + b"-A INPUT -j ACCEPT\n", 4, PATH, "iptables-services")[0] is False
