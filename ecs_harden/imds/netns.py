"""The network namespace of every process: what imds.paths (the containers' namespaces)
and imds.host_network (task processes in the host's) both look at."""

from __future__ import annotations

import os

PROC = "/proc"


def process_namespaces(proc_dir: str = PROC) -> tuple[int | None, dict[int, int]]:
    """Our own network namespace's inode (None if unreadable) and pid -> the inode of
    each process's; a process gone or not ours to look at is left out."""
    try:
        own = os.stat(os.path.join(proc_dir, "self", "ns", "net")).st_ino
        entries = os.listdir(proc_dir)
    except OSError:
        return None, {}
    out: dict[int, int] = {}
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            out[int(entry)] = os.stat(os.path.join(proc_dir, entry, "ns", "net")).st_ino
        except OSError:
            continue
    return own, out
