"""The Amazon Linux 2023 RPM, for scripts/release: built from the py3.9 release tarball's
wheels with this machine's rpmbuild (Debian's rpm 4.18).

The payload is made here, not on the host: pip installs the wheels (no index) into
/opt/ecs-harden under a staging root, with the target's own Python (pyenv's 3.9), and
the result is made into the venv AL2023's /usr/bin/python3.9 runs: pyvenv.cfg's home is
/usr/bin, bin/python links to /usr/bin/python3.9, the scripts' first line names
/opt/ecs-harden/bin/python, and the bytecode is compiled with unchecked-hash pycs for
the paths it will have (no build path, no timestamp). The unit goes to the vendor path
(/usr/lib/systemd/system, ExecStart /usr/bin/ecs-harden), with its preset and the ECS
agent's gate drop-in; the policy is %config(noreplace).

Reproducible from the same tarball: SOURCE_DATE_EPOCH clamps every mtime and is the
build time, the build host is a constant, and the payload is gzip (what every rpm reads).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import crosswheels  # scripts/crosswheels.py, beside this module

HERE = Path(__file__).resolve().parent
SPEC = HERE / "rpm" / "ecs-harden.spec.in"
PREFIX = "/opt/ecs-harden"
PYTHON = "/usr/bin/python3.9"  # AL2023's python3
MINOR = "3.9"
ARCHES = {"x86_64": "x86_64", "aarch64": "aarch64"}
POLICY = """\
# ecs-harden's policy (man 8 ecs-harden; /usr/share/doc/ecs-harden). Every key is
# optional: without one, its default holds (`ecs-harden validate` prints them all).
# Kept on upgrade (%config(noreplace)); `systemctl reload ecs-harden` applies a change.
"""
GATE = """\
# The ECS agent starts only once the IMDS block is in force (ecs-harden's package).
[Unit]
After=ecs-harden.service
[Service]
ExecStartPre=/usr/bin/ecs-harden gate
"""
PRESET = "enable ecs-harden.service\n"


class RpmError(RuntimeError):
    pass


def _run(argv: list[str], what: str, **kw: object) -> str:
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    except OSError as exc:
        raise RpmError(f"{what}: {exc.strerror}: {argv[0]}") from None
    if cp.returncode != 0:
        raise RpmError(f"{what}: {' '.join(map(str, argv))} exited {cp.returncode}:\n"
                       f"{cp.stdout[-3000:]}{cp.stderr[-3000:]}")
    return str(cp.stdout)


def file_name(version: str, arch: str, release: int = 1) -> str:
    return f"ecs-harden-{version}-{release}.amzn2023.{arch}.rpm"


def _venv(builder: Path, wheels: Path, root: Path, version: str, arch: str) -> None:
    """The venv at root/opt/ecs-harden, laid out for /usr/bin/python3.9 on arch: pip
    installs the wheels for that platform (this machine's or not) into its site-packages."""
    venv = root / PREFIX.lstrip("/")
    site = venv / "lib" / f"python{MINOR}" / "site-packages"
    # linux_<arch>: python-iptables' wheel, built (or cross-compiled) by scripts/release
    _run([str(builder), "-m", "pip", "--disable-pip-version-check", "-q", "install", "--no-index",
          "--find-links", str(wheels), "--target", str(site), "--no-compile", "--platform", f"linux_{arch}",
          *crosswheels.pip_platform_args(MINOR, arch), f"ecs-harden=={version}"],
         "installing the wheels into the RPM's venv", timeout=900)
    for top in ("bin", "share"):  # --target puts the scripts and data files in site-packages
        (site / top).rename(venv / top)
    (venv / "pyvenv.cfg").write_text(f"home = {os.path.dirname(PYTHON)}\n"
                                     "include-system-site-packages = false\n"
                                     f"version = {MINOR}\n")
    bindir = venv / "bin"
    for name in ("python", "python3", f"python{MINOR}"):
        (bindir / name).unlink(missing_ok=True)
    (bindir / "python").symlink_to(PYTHON)
    (bindir / "python3").symlink_to("python")
    (bindir / f"python{MINOR}").symlink_to("python")
    for script in bindir.iterdir():
        if script.is_symlink() or not script.is_file():
            continue
        text = script.read_bytes()
        if text.startswith(b"#!"):
            script.write_bytes(f"#!{PREFIX}/bin/python\n".encode() + text.split(b"\n", 1)[1])
    _run([str(builder), "-m", "compileall", "-q", "--invalidation-mode", "unchecked-hash",
          "-d", f"{PREFIX}/lib/python{MINOR}/site-packages", str(site)], "compiling the venv's bytecode",
         env={**os.environ, "PYTHONHASHSEED": "0"})  # a frozenset's order in a pyc follows the seed


def _stage(builder: Path, wheels: Path, root: Path, version: str, arch: str, unit: str, readme: Path,
           license_file: Path) -> None:
    _venv(builder, wheels, root, version, arch)
    share = root / PREFIX.lstrip("/") / "share"
    files = {
        "usr/lib/systemd/system/ecs-harden.service":
            unit.replace("/usr/local/bin/", "/usr/bin/").replace("/usr/local/share/", "/usr/share/"),
        "usr/lib/systemd/system/ecs.service.d/ecs-harden-gate.conf": GATE,
        "usr/lib/systemd/system-preset/80-ecs-harden.preset": PRESET,
        "etc/ecs-harden/policy.yaml": POLICY,
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    for src, rel in ((share / "man" / "man8" / "ecs-harden.8", "usr/share/man/man8/ecs-harden.8"),
                     (readme, "usr/share/doc/ecs-harden/README.md"),
                     (license_file, "usr/share/licenses/ecs-harden/LICENSE")):
        if not src.is_file():
            raise RpmError(f"{src}: missing (the wheel or the checkout should have it)")
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, root / rel)
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    (root / "usr/bin/ecs-harden").symlink_to(f"{PREFIX}/bin/ecs-harden")
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644)


def build(tarball: Path, builder: Path, out: Path, mtime: int, *, version: str, arch: str,
          unit: str, readme: Path, license_file: Path, release: int = 1) -> Path:
    """The RPM from the py3.9 tarball (its wheels), with builder, a Python 3.9 with pip;
    release: the package's own (a rebuild of the same version; tests build a second one to
    upgrade to)."""
    if arch not in ARCHES:
        raise RpmError(f"no RPM for {arch} (only {', '.join(ARCHES)})")
    if shutil.which("rpmbuild") is None:
        raise RpmError("rpmbuild is missing (Debian: apt-get install rpm)")
    with tempfile.TemporaryDirectory(prefix="ecs-harden-rpm-") as tmp:
        work = Path(tmp)
        with tarfile.open(tarball) as tar:
            tar.extractall(work / "tarball")  # our own build's tarball
        (top,) = list((work / "tarball").iterdir())
        root = work / "root"
        _stage(builder, top / "wheels", root, version, arch, unit, readme, license_file)
        spec = work / "ecs-harden.spec"
        spec.write_text(SPEC.read_text().replace("@VERSION@", version)
                        .replace("@RELEASE@", str(release)).replace("@STAGE@", str(root)))
        top_dir = work / "rpmbuild"
        _run(["rpmbuild", "-bb", "--target", ARCHES[arch], str(spec),
              "--define", f"_topdir {top_dir}",
              "--define", "_buildhost reproducible",
              "--define", "source_date_epoch_from_changelog 0",
              "--define", "clamp_mtime_to_source_date_epoch 1",
              "--define", "use_source_date_epoch_as_buildtime 1",
              "--define", "_binary_payload w9.gzdio",
              "--define", "_rpmfilename %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm"],
             "rpmbuild", timeout=900, env={**os.environ, "SOURCE_DATE_EPOCH": str(mtime), "TZ": "UTC"})
        made = top_dir / "RPMS" / file_name(version, ARCHES[arch], release)
        if not made.is_file():
            raise RpmError(f"rpmbuild made no {made.name}")
        dest = out / made.name
        shutil.copyfile(made, dest)
    return dest
