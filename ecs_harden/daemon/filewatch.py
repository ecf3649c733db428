"""FileWatch: inotify on the directories of the files the daemon keeps (ecs.config, the
rules files), so an idle daemon never polls them.

Directories are watched, not files: every writer we care about replaces a file by
rename (ours too), which a watch on the file itself would lose. A directory that
does not exist yet is covered by its nearest existing ancestor; a symlink's target
directory is watched too. An event only says "look": the daemon compares the
files' stat signature and reconciles when it changed. `rewatch()` after every
reconcile of the files picks up directories that appeared and links that moved.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Sequence

IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
MASK = (
    0x00000004  # IN_ATTRIB
    | 0x00000008  # IN_CLOSE_WRITE
    | 0x00000040  # IN_MOVED_FROM
    | 0x00000080  # IN_MOVED_TO
    | 0x00000100  # IN_CREATE
    | 0x00000200  # IN_DELETE
    | 0x00000800  # IN_MOVE_SELF
    | 0x00000400  # IN_DELETE_SELF
)

# A lock file's users (legacy iptables takes /run/xtables.lock for every change and
# closes it when done): its closes, and its creation.
CLOSES = (
    0x00000008  # IN_CLOSE_WRITE
    | 0x00000010  # IN_CLOSE_NOWRITE
    | 0x00000100  # IN_CREATE
    | 0x00000080  # IN_MOVED_TO
)

EVENT = struct.Struct("=iIII")  # wd, mask, cookie, len; then len bytes of name

# The interpreter's own libc (find_library would run `ldconfig -p`: a process, ~10 ms).
_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]


def _existing_ancestor(directory: str) -> str:
    d = os.path.abspath(directory)
    while not os.path.isdir(d) and d != "/":
        d = os.path.dirname(d)
    return d


def directories(paths: Sequence[str]) -> list[str]:
    out: list[str] = []
    for path in paths:
        for p in (path, os.path.realpath(path)):
            d = _existing_ancestor(os.path.dirname(p))
            if d not in out:
                out.append(d)
    return out


class FileWatch:
    def __init__(self, paths: Sequence[str], mask: int = MASK):
        self.paths = list(paths)
        self.mask = mask
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd: int = int(fd)
        self.names: set[str] = set()
        try:
            self.rewatch()
        except OSError:
            self.close()
            raise

    def _names(self) -> set[str]:
        """Entry names whose change matters: the files, their link targets, and every
        directory on the way to them (one may be created under a watched ancestor)."""
        out: set[str] = set()
        for path in self.paths:
            for p in (path, os.path.realpath(path)):
                out.update(part for part in p.split("/") if part)
        return out

    def rewatch(self) -> None:
        self.names = self._names()
        # add_watch on a watched directory returns its watch again; on one that was
        # removed and made anew it makes a new one.
        for d in directories(self.paths):
            if _libc.inotify_add_watch(self.fd, os.fsencode(d), self.mask) < 0:
                err = ctypes.get_errno()
                raise OSError(err, f"inotify_add_watch {d}: {os.strerror(err)}")

    def fileno(self) -> int:
        return self.fd

    def drain(self) -> bool:
        """Read every pending event; True when one concerns our files (not, say, the
        status file or a log written into the same directory)."""
        relevant = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return relevant
            if not data:
                return relevant
            offset = 0
            while offset + EVENT.size <= len(data):
                _wd, _mask, _cookie, length = EVENT.unpack_from(data, offset)
                name = data[offset + EVENT.size:offset + EVENT.size + length].rstrip(b"\0")
                offset += EVENT.size + length
                if not name or os.fsdecode(name) in self.names:
                    relevant = True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
