"""The test image (vm/image/build-rootfs), cached by the hash of its recipe, and a
wheelhouse of ecs-harden and its dependencies for installing into it offline."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
RECIPE = PROJECT / "vm" / "image"
CACHE = Path(os.environ.get("ECS_HARDEN_CACHE", PROJECT / ".cache"))


def recipe_hash() -> str:
    h = hashlib.sha256()
    for path in sorted(RECIPE.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(RECIPE).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


@contextlib.contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """Held while a cached thing is looked for and built: ./run-tests runs two pytest
    processes at once (TESTING.md), and both may want the same image or tarball."""
    CACHE.mkdir(exist_ok=True)
    with open(CACHE / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def rootfs() -> Path:
    """The image's root filesystem, built once per recipe version (a few minutes)."""
    with cache_lock("image"):
        return _rootfs()


def _rootfs() -> Path:
    dest = CACHE / f"image-{recipe_hash()}"
    done = dest / "rootfs.done"
    if not done.exists():
        for old in CACHE.glob("image-*"):
            if old != dest:
                shutil.rmtree(old, ignore_errors=True)
        subprocess.run([str(RECIPE / "build-rootfs"), str(dest)], check=True)
        done.write_text("ok\n")
    return dest / "rootfs"


def wheelhouse(dest: Path) -> Path:
    """ecs-harden's wheel and its dependencies' wheels, as user-data would fetch them."""
    dest.mkdir(parents=True, exist_ok=True)
    with cache_lock("wheel"):  # pip builds in the source tree (build/, egg-info): one at a time
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
             "-w", str(dest), str(PROJECT)],
            check=True,
        )
    return dest
