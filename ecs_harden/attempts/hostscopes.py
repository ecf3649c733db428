"""Where host-network task containers' sockets are: ecstasks.slice and the container
scopes in it, as the attempts table's `out` chain matches them (nftlog.HostMatch).

A cgroup's id is its directory's inode number (64-bit hosts: x86_64, aarch64), and its
level its depth from the root of the cgroup v2 hierarchy (the mount's own root, from
/proc/self/mountinfo, plus the path below the mount point). The agent's tasks are
ecstasks.slice/ecstasks-<task>.slice, each container a docker-<id>.scope in it (Docker's
systemd cgroup driver) or a directory named by the id (its cgroupfs driver). Names come
from root's processes (systemd, Docker, the agent), and are still read as untrusted:
directories only, never links, at most MAX_SCOPES.
"""

from __future__ import annotations

import os
import re
import stat

from ecs_harden.attempts.nftlog import HostMatch, Scope
from ecs_harden.firewall.rule import Network
from ecs_harden.imds.hostnet import CGROUP_ROOT, TASK_SLICE, cgroup_v2

MAX_SCOPES = 1000
_TASK = re.compile(r"^ecstasks-[A-Za-z0-9_.-]{1,128}\.slice$")
_SCOPE = re.compile(r"^(?:docker-)?([0-9a-f]{64})(?:\.scope)?$")
MOUNTINFO = "/proc/self/mountinfo"


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def cgroup_level(path: str, mountinfo: str = MOUNTINFO) -> int | None:
    """The depth of a directory of the cgroup v2 hierarchy from its root; None when no
    cgroup2 mount holds it."""
    best: tuple[str, str] | None = None
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as fh:
            lines = fh.read(1 << 20).splitlines()
    except OSError:
        return None
    path = os.path.normpath(path)
    for line in lines:
        head, sep, tail = line.partition(" - ")
        fields = head.split()
        if not sep or len(fields) < 5 or not tail.startswith("cgroup2 "):
            continue
        root, point = _unescape(fields[3]), _unescape(fields[4])
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) > len(best[1])):
            best = (root, point)
    if best is None:
        return None
    root, point = best
    parts = [p for p in root.split("/") if p] + [p for p in os.path.relpath(path, point).split("/")
                                                 if p not in ("", ".")]
    return len(parts)


def _dirs(path: str) -> list[tuple[str, int]]:
    """Subdirectories (never links) and their inode numbers, from the directory's own
    entries: no stat of each of a cgroup's dozens of control files."""
    try:
        with os.scandir(path) as it:
            found = [(e.name, e.inode()) for e in it if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []
    return sorted(found)


def host_match(imds: dict[int, Network], cgroup_root: str = CGROUP_ROOT) -> HostMatch | None:
    """ecstasks.slice and its task container scopes now; None without cgroup v2 or the slice."""
    if not cgroup_v2(cgroup_root):
        return None
    slice_dir = os.path.join(cgroup_root, TASK_SLICE)
    try:
        st = os.lstat(slice_dir)
    except OSError:
        return None
    level = cgroup_level(slice_dir)
    if level is None or not stat.S_ISDIR(st.st_mode):
        return None
    scopes: list[Scope] = []
    for task, _ in _dirs(slice_dir):
        if not _TASK.match(task):
            continue
        for name, ino in _dirs(os.path.join(slice_dir, task)):
            m = _SCOPE.match(name)
            if m and len(scopes) < MAX_SCOPES:
                scopes.append(Scope(m.group(1), ino, level + 2))
    return HostMatch(tuple(sorted(imds.items())), st.st_ino, level, tuple(scopes))
