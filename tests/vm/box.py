"""The test VM's Vagrant box (vm/box/build-box over vm/image's rootfs), cached by the
hash of both recipes."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from pathlib import Path

from tests.boot.image import CACHE, PROJECT, cache_lock, recipe_hash, rootfs

BOX_RECIPE = PROJECT / "vm" / "box"


def box_hash() -> str:
    h = hashlib.sha256(recipe_hash().encode())
    for path in sorted(BOX_RECIPE.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(BOX_RECIPE).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def box() -> tuple[Path, float]:
    """The directory holding ecs-test.box, vmlinuz, initrd.img and id_ed25519, and the
    seconds it took to build (0 when cached)."""
    with cache_lock("box"):
        return _box()


def _box() -> tuple[Path, float]:
    dest = CACHE / f"box-{box_hash()}"
    if (dest / "box.done").exists():
        return dest, 0.0
    t0 = time.monotonic()
    root = rootfs()
    for old in CACHE.glob("box-*"):
        if old != dest:
            shutil.rmtree(old, ignore_errors=True)
    subprocess.run([str(BOX_RECIPE / "build-box"), str(root), str(dest)], check=True)
    elapsed = time.monotonic() - t0
    (dest / "box.done").write_text(f"{elapsed:.0f}\n")
    return dest, elapsed


if __name__ == "__main__":
    where, took = box()
    print(f"{where} ({took:.0f} s)")
