"""The arm64 guest: a Debian bookworm arm64 kernel and userland booted by QEMU's software
emulation (qemu-system-aarch64, no KVM), nothing of arm64 run on this machine (no binfmt).

The userland is debootstrap's first stage (it downloads and resolves, runs nothing of
the target) with every downloaded package then unpacked here with dpkg-deb; no
maintainer script runs anywhere, so what they would make (the iptables alternatives) the
guest's script makes itself. Python 3.9 for the AL2023 RPM's venv comes from bullseye's
arm64 packages the same way. The kernel is the package's, booted directly
(`-kernel`), with the root filesystem as an initramfs: the cached base (the userland, the
netfilter/bridge/veth modules with their modules.dep) with a small archive per boot
appended (its /init, the guest's script, the release files), which the kernel unpacks
over the first. The guest powers itself off; its console is the test's record.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from tests.boot.image import CACHE, cache_lock

MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
# the guest's userland: Python 3.11 with venv (the 3.11 tarball's installer), both
# iptables variants, iproute2, busybox (httpd and nc), kmod (the kernel's modprobe)
PACKAGES = ("python3.11-venv", "iptables", "iproute2", "busybox-static", "kmod", "linux-image-arm64")
# Python 3.9 from bullseye (AL2023's python3 is 3.9; bookworm has none): the interpreter,
# its standard library, and the two libraries whose sonames bookworm no longer has
PY39 = ("python3.9-minimal", "libpython3.9-stdlib")
PY39_TAKEN = ("python3.9-minimal_", "libpython3.9-minimal_", "libpython3.9-stdlib_", "libssl1.1_", "libffi7_")
# the kernel modules the guest's netfilter, bridges and veths need (the rest stays out)
MODULE_DIRS = ("kernel/net", "kernel/lib", "kernel/crypto", "kernel/drivers/net/veth.ko")
# what no test reads: left out of the initramfs
PRUNED = ("usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info", "usr/share/zoneinfo",
          "usr/share/i18n", "var/cache/apt/archives", "debootstrap", "usr/lib/aarch64-linux-gnu/gconv")

INIT = """#!/bin/sh
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /run/netns /run/lock
ldconfig
echo "ARM64-START $(uname -m) $(uname -r)"
/bin/bash /guest.sh {args}
echo "ARM64-DONE rc=$?"
sync
busybox poweroff -f
"""


def _recipe() -> str:
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(MIRROR.encode())
    return h.hexdigest()[:12]


def base() -> tuple[Path, Path]:
    """The kernel and the base initramfs, built once per version of this file (about a
    minute: two debootstrap first stages and the unpacking)."""
    with cache_lock("arm64"):
        dest = CACHE / f"arm64-{_recipe()}"
        done = dest / "done"
        if not done.exists():
            for old in CACHE.glob("arm64-*"):
                shutil.rmtree(old, ignore_errors=True)
            dest.mkdir(parents=True)
            _build(dest)
            done.write_text("ok\n")
        return dest / "vmlinuz", dest / "base.cpio"


def _first_stage(suite: str, include: Iterable[str], root: Path) -> Path:
    subprocess.run(["debootstrap", "--foreign", "--arch", "arm64", "--variant=minbase",
                    f"--include={','.join(include)}", suite, str(root), MIRROR],
                   check=True, capture_output=True, timeout=1200)
    return root / "var" / "cache" / "apt" / "archives"


def _unpack(deb: Path, root: Path) -> None:
    """What dpkg would unpack (its data), into a merged-/usr root, no script run."""
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "--keep-directory-symlink", "-C", str(root)], input=data, check=True)


def _build(dest: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="ecs-harden-arm64-", dir=CACHE) as tmp:
        work = Path(tmp)
        root = work / "root"
        archives = _first_stage("bookworm", PACKAGES, root)
        kernel = work / "kernel"
        kernel.mkdir()
        for deb in sorted(archives.glob("*.deb")):
            if deb.name.startswith("linux-image-"):  # the kernel's own package, not the metapackage
                if deb.name[len("linux-image-")].isdigit():
                    _unpack(deb, kernel)
            else:
                _unpack(deb, root)
        old = _first_stage("bullseye", PY39, work / "bullseye")
        for deb in sorted(old.glob("*.deb")):
            if deb.name.startswith(PY39_TAKEN):
                _unpack(deb, root)
        (vmlinuz,) = (kernel / "boot").glob("vmlinuz-*")
        shutil.copyfile(vmlinuz, dest / "vmlinuz")
        (modules,) = (kernel / "lib" / "modules").iterdir()
        into = root / "usr" / "lib" / "modules" / modules.name
        for rel in MODULE_DIRS:
            src = modules / rel
            (into / rel).parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if src.is_dir() else shutil.copyfile)(src, into / rel)
        for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
            shutil.copyfile(modules / name, into / name)
        subprocess.run(["depmod", "-b", str(root), modules.name], check=True, capture_output=True)
        _what_scripts_would_make(root)
        for rel in PRUNED:
            shutil.rmtree(root / rel, ignore_errors=True)
        with (dest / "base.cpio").open("wb") as out:
            write_cpio(out, root, trailer=False)


def _what_scripts_would_make(root: Path) -> None:
    """What the second stage's package scripts make and a test needs: a real /proc (the
    first stage leaves a link there), /usr/local's directories (base-files), the users
    (base-passwd). The shared library cache is the guest's own /init's `ldconfig`."""
    proc = root / "proc"
    if proc.is_symlink():
        proc.unlink()
    proc.mkdir(exist_ok=True)
    for rel in ("usr/local/bin", "usr/local/sbin", "usr/local/lib", "usr/local/share"):
        (root / rel).mkdir(parents=True, exist_ok=True)
    for name in ("passwd", "group"):
        if not (root / "etc" / name).exists():
            shutil.copyfile(root / "usr/share/base-passwd" / f"{name}.master", root / "etc" / name)


def _header(out: BinaryIO, name: str, mode: int, size: int, ino: int) -> None:
    encoded = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, len(encoded), 0]
    head = b"070701" + b"".join(b"%08X" % f for f in fields) + encoded
    out.write(head + b"\0" * (-len(head) % 4))


def write_cpio(out: BinaryIO, root: Path, trailer: bool = True, start_ino: int = 1) -> int:
    """root's tree as a newc archive the kernel unpacks (owner root, parents first);
    device nodes are left out (the guest mounts devtmpfs). The next inode number."""
    ino = start_ino
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        here = Path(dirpath)
        for name in [*dirnames, *sorted(filenames)]:
            path = here / name
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                data = os.readlink(path).encode()
            elif stat.S_ISREG(st.st_mode):
                data = path.read_bytes()
            elif stat.S_ISDIR(st.st_mode):
                data = b""
            else:
                continue
            _header(out, rel, st.st_mode, len(data), ino)
            out.write(data + b"\0" * (-len(data) % 4))
            ino += 1
    if trailer:
        _header(out, "TRAILER!!!", 0, 0, 0)
    return ino


def boot(kernel: Path, base_cpio: Path, extra: Path, work: Path, args: str, timeout: int = 900) -> str:
    """One boot: base_cpio with extra's tree over it (its /guest.sh run with args), the
    console's text when the guest has powered itself off."""
    (extra / "init").write_text(INIT.format(args=args))
    (extra / "init").chmod(0o755)
    initrd = work / "initrd.cpio"
    with initrd.open("wb") as out:
        with base_cpio.open("rb") as src:
            shutil.copyfileobj(src, out)
        write_cpio(out, extra, start_ino=10_000_000)
    console = work / "console.log"
    cp = subprocess.run(
        ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", "2", "-m", "2048",
         "-display", "none", "-monitor", "none", "-no-reboot", "-nic", "none",
         "-serial", f"file:{console}", "-kernel", str(kernel), "-initrd", str(initrd),
         "-append", "console=ttyAMA0 rdinit=/init panic=-1 loglevel=4"],
        capture_output=True, text=True, timeout=timeout, check=False)
    initrd.unlink()
    text = console.read_text(errors="replace") if console.exists() else ""
    if cp.returncode != 0:
        raise RuntimeError(f"qemu-system-aarch64 exited {cp.returncode}: {cp.stderr[-2000:]}\n{text[-3000:]}")
    return text
