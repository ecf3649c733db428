"""What ecs-harden trusts on the host's file system: paths only root could have made.

Everything else is input from a stranger. A symlink planted in a directory another
user can write (node_exporter's textfile directory, say) must never turn one of our
writes into the replacement of a file it points at. So:

- the status and metrics files are replaced without following anything at their
  last component (a link there is itself replaced), in a directory opened with
  O_NOFOLLOW and refused when group or others may write it without the sticky bit;
- ecs.config and the rules files follow a symlink only when the link, its target
  and every directory on the way to both are root's and not writable by others;
- the policy is read from a descriptor opened with O_NOFOLLOW and checked with fstat,
  every directory above it checked the same way.

A directory writable by others but sticky (/tmp) counts as safe for entries that are
root's: the sticky bit keeps others from renaming or removing them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat

from ecs_harden.errors import RefusedLink, RuntimeFailure, read_only_hint

MAX_LINKS = 40  # as the kernel's own limit on a path's symlinks


class UntrustedPath(RuntimeFailure):
    """A path whose ownership or mode lets someone other than root change where it leads."""


class UntrustedLink(RefusedLink, UntrustedPath):
    """A symlink ecs-harden will not follow."""


def others_may_write(st: os.stat_result, *, directory: bool = True) -> bool:
    """Group or others can change it: write a file, or replace a directory's entries (a
    sticky directory keeps them from renaming or removing entries that are not theirs)."""
    writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    return bool(writable) and not (directory and st.st_mode & stat.S_ISVTX)


def _unsafe(st: os.stat_result, *, directory: bool) -> str | None:
    if st.st_uid != 0:
        return f"owned by uid {st.st_uid}, not root"
    if others_may_write(st, directory=directory):
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def untrusted_directories(path: str) -> str | None:
    """Why some directory from / down to path's parent is unsafe, or None."""
    parts = os.path.abspath(path).split("/")[1:-1]
    current = "/"
    for part in ["", *parts]:
        current = os.path.join(current, part) if part else current
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return None  # a dangling path: atomic.resolve says so in its own words
        except OSError as exc:
            return f"{current}: {exc.strerror}"
        if stat.S_ISLNK(st.st_mode):
            why = untrusted_link(current)
            if why:
                return why
            try:
                st = os.stat(current)
            except OSError:
                return None  # dangling or a loop: atomic.resolve says so
        why = _unsafe(st, directory=True)
        if why:
            return f"directory {current} is {why}"
    return None


def untrusted_link(path: str) -> str | None:
    """Why following the symlink at path is unsafe, or None: every link of the chain, the
    final target and every directory on the way to each must be root's and not writable
    by others."""
    current = os.path.abspath(path)
    for _ in range(MAX_LINKS):
        why = untrusted_directories(current)
        if why:
            return why
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return None  # dangling: atomic.resolve says so in its own words
        except OSError as exc:
            return f"{current}: {exc.strerror}"
        if not stat.S_ISLNK(st.st_mode):
            why = _unsafe(st, directory=False)
            return f"its target {current} is {why}" if why else None
        if st.st_uid != 0:
            return f"the link {current} is owned by uid {st.st_uid}, not root"
        current = os.path.join(os.path.dirname(current), os.readlink(current))
    return None  # a loop: atomic.resolve refuses it as dangling


def check_link(path: str) -> None:
    """UntrustedLink when path is a symlink ecs-harden must not follow."""
    if not os.path.islink(path):
        return
    why = untrusted_link(path)
    if why:
        raise UntrustedLink(
            f"{path} is a symlink ecs-harden will not follow: {why}; a link is followed only "
            "when the link, its target and every directory on the way are root's and not "
            "writable by group or others; nothing was written"
        )


def write_replacing(path: str, data: bytes, *, mode: int = 0o644) -> None:
    """Replace path's directory entry with a new file holding data, never following a
    symlink there (the link itself is replaced), in a directory that others cannot
    write (or that is sticky). For the status and metrics files, rewritten constantly,
    so no fsync."""
    directory, name = os.path.split(os.path.abspath(path))
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(directory):
            raise UntrustedPath(f"{path}: its directory {directory} is a symlink; nothing written") from None
        hint = read_only_hint(directory) if exc.errno == errno.EROFS else ""
        raise RuntimeFailure(f"{path}: cannot open {directory}: {exc.strerror}{hint}") from None
    try:
        st = os.fstat(dfd)
        if others_may_write(st):
            raise UntrustedPath(
                f"{path}: refusing to write in {directory}, which group or others can write "
                f"(mode {stat.S_IMODE(st.st_mode):04o}) without the sticky bit; nothing written"
            )
        tmp = f".{name}.{secrets.token_hex(6)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=dfd)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            hint = read_only_hint(directory) if exc.errno == errno.EROFS else ""
            raise RuntimeFailure(f"{path}: cannot write: {exc.strerror}{hint}") from None
    finally:
        os.close(dfd)
