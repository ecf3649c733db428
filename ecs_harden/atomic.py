"""Atomic file replacement: temp file beside the target, fsync, rename, directory fsync."""

from __future__ import annotations

import contextlib
import os
import tempfile

from ecs_harden.errors import RuntimeFailure


def write_atomic(path: str, data: bytes, *, mode: int = 0o600, uid: int = 0, gid: int = 0) -> None:
    """Replace path with data. An existing file keeps its mode and owner; a new one gets these."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        st = os.stat(path)
        mode, uid, gid = st.st_mode & 0o7777, st.st_uid, st.st_gid
    except FileNotFoundError:
        pass
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    except OSError as exc:
        raise RuntimeFailure(f"{path}: cannot create a temporary file: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            if (uid, gid) != (os.geteuid(), os.getegid()):
                os.fchown(fh.fileno(), uid, gid)
            os.fsync(fh.fileno())
        os.rename(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise RuntimeFailure(f"{path}: cannot write: {exc.strerror}") from None
    fsync_dir(directory)


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: str, mode: int = 0o700) -> None:
    """Create path (and parents) root-only if it does not exist yet."""
    try:
        os.makedirs(path, mode=mode, exist_ok=True)
    except OSError as exc:
        raise RuntimeFailure(f"{path}: cannot create directory: {exc.strerror}") from None
