"""The wheels of another architecture, for scripts/release: an aarch64 (Graviton)
wheelhouse made on this x86_64 machine from the native one, nothing of aarch64 run here.

Each native wheel becomes the target's:
  - a pure wheel (…-none-any) is the same file;
  - python-iptables' is rebuilt: its only compiled file, libxtwrapper (a C helper that
    ctypes loads, no Python API), is cross-compiled from the same release's sdist with
    Debian's aarch64-linux-gnu-gcc, named with the target's extension suffix and tagged
    linux_<arch>; every other byte of the wheel is the native one's;
  - any other compiled wheel (PyYAML, psutil) is PyPI's manylinux build of the same
    version for the target, no newer than the target's glibc floor allows.
scripts/release then checks every compiled file against that floor, as for x86_64.
"""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

CROSS_CC = {"aarch64": "aarch64-linux-gnu-gcc"}
OBJDUMP = {"aarch64": "aarch64-linux-gnu-objdump"}
WHEEL_NAME = re.compile(
    r"^(?P<dist>[^-]+)-(?P<ver>[^-]+)(?:-\d[^-]*)?-(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl$")
COMPILED_HERE = "python_iptables"  # the wheel whose helper is compiled here, not fetched


class CrossError(RuntimeError):
    pass


def _run(argv: list[str], what: str, timeout: int = 600) -> str:
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except OSError as exc:
        raise CrossError(f"{what}: {exc.strerror}: {argv[0]}") from None
    if cp.returncode != 0:
        raise CrossError(f"{what}: {' '.join(argv)} exited {cp.returncode}:\n"
                         f"{cp.stdout[-2000:]}{cp.stderr[-2000:]}")
    return cp.stdout


# The oldest glibc a target Python's hosts have: AL2 2.26, AL2023 2.34, Debian 12 2.36
# (Ubuntu 22.04 has 2.35 with Python 3.10, 24.04 2.39 with 3.12). scripts/release checks
# every compiled file against it; the tags below never ask for a newer one.
GLIBC_FLOOR = {"3.8": (2, 26), "3.9": (2, 34), "3.10": (2, 35), "3.11": (2, 36), "3.12": (2, 39)}
OLDEST_GLIBC = {"x86_64": 5, "aarch64": 17}  # the first manylinux_2_Y of each architecture
LEGACY_ALIASES = {"x86_64": ("manylinux2014", "manylinux2010", "manylinux1"), "aarch64": ("manylinux2014",)}


def platforms(arch: str, floor: tuple[int, int] | None) -> list[str]:
    """The manylinux tags a host of that glibc floor loads, newest first (pip takes a
    --platform as one exact tag)."""
    low = OLDEST_GLIBC[arch]
    top = floor[1] if floor else low
    return [f"manylinux_2_{m}_{arch}" for m in range(top, low - 1, -1)] + [
        f"{alias}_{arch}" for alias in LEGACY_ALIASES[arch]]


def pip_platform_args(minor: str, arch: str) -> list[str]:
    """pip's options (download, install --target) that choose the wheels a CPython minor
    on arch loads, within its glibc floor, whatever this machine is."""
    nodot = minor.replace(".", "")
    argv = ["--only-binary", ":all:", "--python-version", minor, "--implementation", "cp",
            "--abi", f"cp{nodot}", "--abi", "abi3", "--abi", "none"]
    for plat in platforms(arch, GLIBC_FLOOR.get(minor)):
        argv += ["--platform", plat]
    return argv


def _record_line(rel: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{rel},sha256={digest},{len(data)}"


def _write_wheel(files: dict[str, bytes], dest: Path, mtime: int) -> None:
    """A wheel of these members, their RECORD made anew, sorted, every member at mtime."""
    (record,) = [n for n in files if n.endswith(".dist-info/RECORD")]
    body = [_record_line(n, files[n]) for n in sorted(files) if n != record] + [f"{record},,"]
    files = {**files, record: ("\n".join(body) + "\n").encode()}
    stamp = _zip_time(mtime)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as out:
        for name in sorted(files, key=lambda n: (n == record, n)):  # RECORD last, as wheel does
            info = zipfile.ZipInfo(name, date_time=stamp)
            info.external_attr = (0o755 if name.endswith(".so") else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            out.writestr(info, files[name])


def _zip_time(mtime: int) -> tuple[int, int, int, int, int, int]:
    t = time.gmtime(max(mtime, 315532800))  # zip cannot date before 1980
    return (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec)


def _sdist(builder: Path, dist: str, ver: str, work: Path) -> Path:
    _run([str(builder), "-m", "pip", "--disable-pip-version-check", "-q", "download", "--no-deps",
          "--no-binary", ":all:", "-d", str(work), f"{dist}=={ver}"], f"downloading {dist} {ver}'s sdist")
    found = sorted(work.glob("*.tar.gz"))
    if len(found) != 1:
        raise CrossError(f"pip download of {dist} {ver} left {[p.name for p in found]}")
    return found[0]


def iptables_wheel(native: Path, builder: Path, minor: str, arch: str, out: Path, mtime: int) -> Path:
    """python-iptables' wheel for arch: the native wheel with libxtwrapper cross-compiled."""
    m = WHEEL_NAME.match(native.name)
    assert m is not None, native.name
    with zipfile.ZipFile(native) as whl:
        files = {n: whl.read(n) for n in whl.namelist() if not n.endswith("/")}
    helpers = [n for n in files if re.fullmatch(r"libxtwrapper[^/]*\.so", n)]
    if len(helpers) != 1:
        raise CrossError(f"{native.name}: expected one libxtwrapper*.so at the top, found {helpers}")
    nodot = minor.replace(".", "")
    with tempfile.TemporaryDirectory(prefix="ecs-harden-cross-") as tmp:
        work = Path(tmp)
        sdist = _sdist(builder, m["dist"], m["ver"], work)
        with tarfile.open(sdist) as tar:
            (source,) = [n for n in tar.getnames() if n.endswith("libxtwrapper/wrapper.c")]
            data = tar.extractfile(source)
            assert data is not None
            (work / "wrapper.c").write_bytes(data.read())
        so = work / "libxtwrapper.so"
        # no -g: the object holds no build path; the build-id is a hash of the rest
        _run([CROSS_CC[arch], "-O2", "-fPIC", "-shared", "-o", str(so), str(work / "wrapper.c")],
             f"cross-compiling libxtwrapper for {arch}")
        del files[helpers[0]]
        files[f"libxtwrapper.cpython-{nodot}-{arch}-linux-gnu.so"] = so.read_bytes()
    tag = f"cp{nodot}-cp{nodot}-linux_{arch}"
    (wheel_meta,) = [n for n in files if n.endswith(".dist-info/WHEEL")]
    text = files[wheel_meta].decode()
    text = re.sub(r"^Tag: .*$", f"Tag: {tag}", text, count=1, flags=re.M)
    files[wheel_meta] = text.encode()
    dest = out / f"{m['dist']}-{m['ver']}-{tag}.whl"
    _write_wheel(files, dest, mtime)
    return dest


def convert(native_wheels: Path, builder: Path, minor: str, arch: str, out: Path, mtime: int) -> list[Path]:
    """The wheelhouse out for arch from the native one; what was made or fetched."""
    out.mkdir(parents=True, exist_ok=True)
    made = []
    for whl in sorted(native_wheels.glob("*.whl")):
        m = WHEEL_NAME.match(whl.name)
        if m is None:
            raise CrossError(f"{whl.name}: not a wheel's file name")
        if m["plat"] == "any":
            dest = out / whl.name
            dest.write_bytes(whl.read_bytes())
        elif m["dist"].lower() == COMPILED_HERE:
            dest = iptables_wheel(whl, builder, minor, arch, out, mtime)
        else:
            before = set(out.glob("*.whl"))
            _run([str(builder), "-m", "pip", "--disable-pip-version-check", "-q", "download", "--no-deps",
                  *pip_platform_args(minor, arch), "-d", str(out), f"{m['dist']}=={m['ver']}"],
                 f"downloading {m['dist']} {m['ver']} for {arch}")
            new = sorted(set(out.glob("*.whl")) - before)
            if len(new) != 1:
                raise CrossError(f"{m['dist']} {m['ver']}: no single {arch} wheel for Python {minor} "
                                 f"(got {[p.name for p in new]})")
            dest = new[0]
        made.append(dest)
    return made
