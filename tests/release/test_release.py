"""scripts/release: a wheelhouse tarball per target Python that installs offline, with
nothing compiled on the host, and runs; SHA256SUMS; reproducible; a compiled file
newer than the target's glibc refused."""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

from tests import artifacts
from tests.boot.image import PROJECT

SCRIPT = PROJECT / "scripts" / "release"
TARGETS = ("3.8", "3.9", "3.11")
ARCHES = ("x86_64", "aarch64")


def script() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("release_script", str(SCRIPT))
    spec = importlib.util.spec_from_loader("release_script", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def built() -> Path:
    """`scripts/release` with its defaults, once per source state (tests/artifacts.py: the
    booted hosts and the VMs install the same files)."""
    return artifacts.release_dir()


def test_one_tarball_per_target_and_architecture_and_their_sums(built: Path) -> None:
    version = script().version()
    names = sorted(p.name for p in built.glob("*.tar.gz"))
    assert names == sorted(f"ecs-harden-{version}-py{t}-{a}.tar.gz" for t in TARGETS for a in ARCHES)
    sums = {name: digest for digest, name in
            (line.split("  ", 1) for line in (built / "SHA256SUMS").read_text().splitlines())}
    rpms = sorted(p.name for p in built.glob("*-1.amzn2023.*.rpm"))  # release 2 is a test's (rpm_release)
    assert rpms == sorted(f"ecs-harden-{version}-1.amzn2023.{a}.rpm" for a in ARCHES)
    assert sorted(sums) == sorted(names + rpms)
    for name, digest in sums.items():  # the RPM's too
        assert hashlib.sha256((built / name).read_bytes()).hexdigest() == digest
    # sha256sum itself agrees (an operator's check)
    assert subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=built, capture_output=True).returncode == 0


@pytest.mark.parametrize("minor", TARGETS)
def test_each_installs_offline_into_a_fresh_venv_of_its_python_and_runs(
        built: Path, minor: str, tmp_path: Path) -> None:
    (tarball,) = built.glob(f"*-py{minor}-x86_64.tar.gz")
    with tarfile.open(tarball) as tar:
        members = tar.getmembers()
        assert all(m.uid == 0 and m.uname == "root" for m in members)
        tar.extractall(tmp_path)
    (top,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    wheels = sorted(p.name for p in (top / "wheels").iterdir())
    assert all(w.endswith(".whl") for w in wheels), wheels  # no sdist: nothing to compile on the host
    tag = "cp" + minor.replace(".", "")
    assert next(w for w in wheels if w.startswith("python_iptables-")).split("-")[2] == tag
    python = script().pyenv_python(minor)
    venv = tmp_path / "venv"
    subprocess.run([str(python), "-m", "venv", str(venv)], check=True)
    # offline, no compiler: no index, and a PATH without gcc
    cp = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-index", "--find-links",
                         str(top / "wheels"), "ecs-harden"], capture_output=True, text=True,
                        env={"PATH": str(venv / "bin") + ":/usr/bin:/bin", "CC": "/nonexistent"})
    assert cp.returncode == 0, cp.stderr
    said = subprocess.run([str(venv / "bin" / "ecs-harden"), "--version"], capture_output=True, text=True)
    assert said.stdout.strip() == f"ecs-harden {script().version()}"
    facts = subprocess.run([str(venv / "bin" / "ecs-harden"), "facts", "--format", "json"],
                           capture_output=True, text=True)
    assert facts.returncode == 0, facts.stderr
    assert json.loads(facts.stdout)["flavor"]
    # the operator's docs, the policy's JSON Schema and the man page ride in the wheel
    # (`ecs-harden install` copies them to /usr/local/share)
    share = venv / "share"
    assert (share / "man" / "man8" / "ecs-harden.8").read_bytes() == (PROJECT / "docs" / "ecs-harden.8").read_bytes()
    assert json.loads((share / "doc" / "ecs-harden" / "docs" / "policy.schema.json").read_text())["properties"]
    assert (share / "doc" / "ecs-harden" / "README.md").read_text().startswith("# ecs-harden")
    assert (share / "doc" / "ecs-harden" / "LICENSE").read_text().strip().startswith("Apache License")
    info = (top / "BUILD-INFO").read_text()
    assert f"for Python {minor} on x86_64" in info and "compiled: python_iptables" in info


@pytest.mark.parametrize("minor", TARGETS)
def test_the_aarch64_tarball_is_the_x86_64_ones_wheels_made_for_aarch64(built: Path, minor: str, tmp_path: Path) -> None:
    """The same distributions at the same versions; the pure wheels the same bytes; every
    compiled file an aarch64 object within the target's glibc floor (its running is
    tests/vm/test_arm64.py's)."""
    wheels = {}
    for arch in ARCHES:
        (tarball,) = built.glob(f"*-py{minor}-{arch}.tar.gz")
        with tarfile.open(tarball) as tar:
            tar.extractall(tmp_path / arch)
        (top,) = (tmp_path / arch).iterdir()
        wheels[arch] = {p.name: p for p in (top / "wheels").iterdir()}
        info = (top / "BUILD-INFO").read_text()
        assert f"for Python {minor} on {arch}" in info
    versions = {a: sorted(n.lower().split("-")[:2] for n in wheels[a]) for a in ARCHES}
    assert versions["aarch64"] == versions["x86_64"]
    pure = sorted(n for n in wheels["x86_64"] if n.endswith("-none-any.whl"))
    assert pure and all(wheels["aarch64"][n].read_bytes() == wheels["x86_64"][n].read_bytes() for n in pure)
    compiled = sorted(n for n in wheels["aarch64"] if not n.endswith("-any.whl"))
    assert sorted(n.split("-")[0].lower() for n in compiled) == ["psutil", "python_iptables", "pyyaml"]
    assert all("aarch64" in n for n in compiled), compiled
    nodot = minor.replace(".", "")
    helper = next(n for n in compiled if n.startswith("python_iptables-"))
    assert helper.endswith(f"-cp{nodot}-cp{nodot}-linux_aarch64.whl")
    seen = script().check_compiled(wheels["aarch64"][helper].parent, minor, "aarch64")
    assert any(f"libxtwrapper.cpython-{nodot}-aarch64-linux-gnu.so needs glibc 2.17" in s for s in seen), seen


def test_an_object_of_another_architecture_is_refused(built: Path, tmp_path: Path) -> None:
    """An x86_64 helper in the aarch64 wheelhouse (a cross-build gone wrong) is caught."""
    mod = script()
    for arch in ARCHES:
        (tarball,) = built.glob(f"*-py3.11-{arch}.tar.gz")
        with tarfile.open(tarball) as tar:
            tar.extractall(tmp_path / arch)
    (x86,) = (tmp_path / "x86_64").iterdir()
    (arm,) = (tmp_path / "aarch64").iterdir()
    for whl in (arm / "wheels").glob("python_iptables-*.whl"):
        whl.unlink()
    for whl in (x86 / "wheels").glob("python_iptables-*.whl"):
        (arm / "wheels" / whl.name).write_bytes(whl.read_bytes())
    assert mod.check_compiled(x86 / "wheels", "3.11", "x86_64")  # where it belongs, it passes
    with pytest.raises(mod.ReleaseError, match=r"libxtwrapper\.cpython-311-x86_64-linux-gnu\.so is not an ELF object for aarch64"):
        mod.check_compiled(arm / "wheels", "3.11", "aarch64")


def test_the_same_source_builds_the_same_bytes(built: Path, tmp_path: Path) -> None:
    """Both architectures' tarballs and RPMs (the aarch64 wheels are fetched and
    cross-compiled again)."""
    cp = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--target", "3.9"],
                        capture_output=True, text=True, timeout=1800)
    assert cp.returncode == 0, cp.stderr
    again = sorted(tmp_path.glob("*.tar.gz")) + sorted(tmp_path.glob("*.rpm"))
    assert len(again) == 4  # SOURCE_DATE_EPOCH clamps, builds at it, on a fixed build host
    for made in again:
        assert made.read_bytes() == (built / made.name).read_bytes(), made.name


def test_a_compiled_file_newer_than_the_targets_glibc_is_refused(
        built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = script()
    for arch in ARCHES:
        (tarball,) = built.glob(f"*-py3.8-{arch}.tar.gz")
        with tarfile.open(tarball) as tar:
            tar.extractall(tmp_path / arch)
        (top,) = (tmp_path / arch).iterdir()
        assert any("needs glibc" in s for s in mod.check_compiled(top / "wheels", "3.8", arch))
        monkeypatch.setitem(mod.GLIBC_FLOOR, "3.8", (2, 1))  # a host older than anything in there
        with pytest.raises(mod.ReleaseError, match=r"needs glibc 2\.\d+, but the hosts of Python 3\.8 may have 2\.1"):
            mod.check_compiled(top / "wheels", "3.8", arch)
        monkeypatch.undo()


def test_a_missing_interpreter_is_a_clear_error(tmp_path: Path) -> None:
    cp = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--target", "3.9",
                         "--python", "3.9=/nonexistent/python3.9"], capture_output=True, text=True)
    assert cp.returncode == 1
    assert "scripts/release: running /nonexistent/python3.9" in cp.stderr
    assert not list(tmp_path.glob("*.tar.gz"))


def rpm_query(rpm: Path, *args: str) -> str:
    return subprocess.run(["rpm", "-qp", *args, str(rpm)], capture_output=True, text=True, check=True).stdout


def installed_root(built: Path, tmp_path: Path, arch: str = "x86_64") -> tuple[Path, Path]:
    """The RPM laid down by the real rpm into a root of its own (no scriptlets: they
    need the booted host's systemd), and the RPM."""
    (rpm,) = built.glob(f"*-1.amzn2023.{arch}.rpm")  # release 2 is a test's (rpm_release)
    root = tmp_path / "root"
    subprocess.run(["rpm", "--root", str(root), "-i", "--nodeps", "--noscripts", "--nosignature", "--ignorearch", str(rpm)],
                   check=True, capture_output=True)
    return root, rpm


@pytest.mark.parametrize("arch", ARCHES)
def test_the_rpm_is_what_an_al2023_host_installs(built: Path, tmp_path: Path, arch: str) -> None:
    root, rpm = installed_root(built, tmp_path, arch)
    verify = subprocess.run(["rpm", "--root", str(root), "-V", "--nodeps", "ecs-harden"], capture_output=True, text=True)
    assert verify.returncode == 0 and verify.stdout == "", verify.stdout  # every file as packaged
    assert rpm_query(rpm, "--qf", "%{LICENSE} %{ARCH} %{RELEASE}") == f"Apache-2.0 {arch} 1.amzn2023"
    requires = set(rpm_query(rpm, "--requires").split("\n"))
    assert {"/usr/bin/python3.9", "iptables-nft", "systemd", "iptables-services"} <= requires, requires
    # the unit in the vendor path, nothing in the administrator's /etc/systemd
    unit = (root / "usr/lib/systemd/system/ecs-harden.service").read_text()
    assert "ExecStart=/usr/bin/ecs-harden run" in unit and "/usr/local/bin" not in unit
    assert not (root / "etc" / "systemd").exists()
    gate = (root / "usr/lib/systemd/system/ecs.service.d/ecs-harden-gate.conf").read_text()
    assert "ExecStartPre=/usr/bin/ecs-harden gate" in gate and "After=ecs-harden.service" in gate
    assert (root / "usr/lib/systemd/system-preset/80-ecs-harden.preset").read_text() == "enable ecs-harden.service\n"
    flags = dict(line.split(" ", 1)[::-1] for line in rpm_query(
        rpm, "--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\n]").splitlines() if line.strip() and " " in line)
    assert set(flags["/etc/ecs-harden/policy.yaml"]) >= {"c", "n"}  # %config(noreplace)
    assert (root / "etc/ecs-harden/policy.yaml").stat().st_mode & 0o777 == 0o600
    assert (root / "usr/share/licenses/ecs-harden/LICENSE").read_text().strip().startswith("Apache License")
    assert (root / "usr/bin/ecs-harden").readlink() == Path("/opt/ecs-harden/bin/ecs-harden")


def test_the_rpms_venv_runs_with_the_python_at_al2023s_path(built: Path, tmp_path: Path) -> None:
    """/usr/bin/python3.9 (pyenv's 3.9 there, in a mount namespace of the test's own) runs
    the packaged venv: its compiled helper loads, its policy validates; nothing is
    written into /opt (the bytecode is in the package)."""
    root, _ = installed_root(built, tmp_path)
    extra = tmp_path / "python-at-al2023s-path"
    extra.mkdir()
    (extra / "python3.9").symlink_to(script().pyenv_python("3.9"))
    before = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    run = (f"mount -t overlay overlay -o lowerdir={root}/opt:/opt /opt\n"
           f"mount -t overlay overlay -o lowerdir={extra}:{root}/usr/bin:/usr/bin /usr/bin\n"
           "/usr/bin/ecs-harden --version\n"
           "/opt/ecs-harden/bin/python -c 'import sys, iptc, yaml, psutil; print(sys.prefix, sys.version_info[:2])'\n"
           f"/usr/bin/ecs-harden validate {root}/etc/ecs-harden/policy.yaml\n")
    cp = subprocess.run(["unshare", "--mount", "sh", "-ec", run], capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    lines = cp.stdout.splitlines()
    assert lines[0] == f"ecs-harden {script().version()}"
    assert lines[1] == "/opt/ecs-harden (3, 9)"
    assert f"{root}/etc/ecs-harden/policy.yaml: valid" in cp.stdout
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == before
