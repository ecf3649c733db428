"""Atomic file replacement: temp file beside the target, fsync, rename, directory fsync.

A path that is a symlink stays one: the file it points to is replaced, in that
file's own directory (configuration management often links /etc/ecs/ecs.config
to a file it owns), if the link is root's (see trust). A dangling link is refused,
never replaced by a regular file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Mapping
from typing import Optional, Tuple

from ecs_harden.errors import RefusedLink, RuntimeFailure, read_only_hint
from ecs_harden.trust import check_link


class DanglingLink(RefusedLink):
    """The path is a symlink whose target does not exist."""

    def __init__(self, path: str, target: str):
        self.path = path
        self.target = target
        super().__init__(
            f"{path} is a symlink to {target}, which does not exist; ecs-harden converges the "
            "file a link points to and will not replace the link with a regular file: "
            "create the target, or point the link at an existing file"
        )


def resolve(path: str) -> str:
    """The file path names after following symlinks; DanglingLink when it names none,
    trust.UntrustedLink when someone other than root could have planted the link."""
    if not os.path.islink(path):
        return path
    check_link(path)
    real = os.path.realpath(path)
    if not os.path.lexists(real) or os.path.islink(real):
        # realpath stops at the first missing component, or loops
        raise DanglingLink(path, os.readlink(path))
    return real


def _failure(path: str, what: str, exc: OSError, directory: str) -> RuntimeFailure:
    hint = read_only_hint(directory) if exc.errno == errno.EROFS else ""
    return RuntimeFailure(f"{path}: {what}: {exc.strerror}{hint}")


def write_atomic(
    path: str, data: bytes, *, mode: int = 0o600, uid: int = 0, gid: int = 0, durable: bool = True
) -> None:
    """Replace path with data. An existing file keeps its mode and owner; a new one gets these.
    durable=False skips the fsyncs: for files rewritten every few seconds on tmpfs (status)."""
    target = resolve(path)
    shown = path if target == path else f"{path} (-> {target})"
    directory = os.path.dirname(os.path.abspath(target))
    try:
        st = os.stat(target)
        mode, uid, gid = st.st_mode & 0o7777, st.st_uid, st.st_gid
    except FileNotFoundError:
        pass
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", dir=directory)
    except OSError as exc:
        raise _failure(shown, "cannot create a temporary file", exc, directory) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            if (uid, gid) != (os.geteuid(), os.getegid()):
                os.fchown(fh.fileno(), uid, gid)
            if durable:
                os.fsync(fh.fileno())
        os.rename(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _failure(shown, "cannot write", exc, directory) from None
    if durable:
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
        raise _failure(path, "cannot create directory", exc, path) from None


StatKey = Optional[Tuple[int, int, int, int]]  # typing.Tuple: evaluated at run time on 3.8
Identity = Tuple[StatKey, StatKey]


def file_identity(path: str) -> Identity:
    """What changes when the file (or, for a symlink, the link or its target) is replaced,
    rewritten, moved or chmodded: (inode, size, mtime, mode) of lstat and of stat."""
    out: list[StatKey] = []
    for stat in (os.lstat, os.stat):
        try:
            st = stat(path)
            out.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode))
        except OSError:
            out.append(None)
    return (out[0], out[1])


def read_bytes(path: str) -> bytes | None:
    """The file's bytes (through symlinks), None when there is no file; DanglingLink for a
    dead link, trust.UntrustedLink for one that is not root's."""
    if os.path.islink(path):
        check_link(path)
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        if os.path.islink(path):
            raise DanglingLink(path, os.readlink(path)) from None
        return None
    except OSError as exc:
        raise RuntimeFailure(f"{path}: cannot read: {exc.strerror}") from None


def read_json_state(path: str) -> dict[str, object]:
    """A small JSON object ecs-harden keeps in its state dir; {} when missing, unreadable
    or not an object (it is only ever a cache of what can be found again)."""
    import json

    try:
        data = read_bytes(path)
        loaded = json.loads(data) if data else {}
    except (RefusedLink, RuntimeFailure, ValueError, OSError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def write_json_state(path: str, value: Mapping[str, object]) -> None:
    import json

    ensure_dir(os.path.dirname(path))
    write_atomic(path, json.dumps(value, sort_keys=True).encode() + b"\n")
