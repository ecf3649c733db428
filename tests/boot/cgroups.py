"""A cgroup subtree of the test's own, in every hierarchy, for a booted host that runs
Docker.

systemd-nspawn mounts cgroup v1 controllers read-only (runc then cannot create a
container), and binding this machine's /sys/fs/cgroup instead hands the booted systemd
the whole hierarchy: it made init.scope at the root of each and, at shutdown, removed
every empty cgroup it could see (measured). So the host gets a tree of its own: a child
of this process's cgroup in each hierarchy, entered before a new cgroup namespace, and
the hierarchies mounted afresh inside that namespace, where a mount is rooted at the
namespace's root. The booted systemd and its Docker see, create and trim only that
subtree; it is emptied and removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Hierarchy:
    mountpoint: Path  # where this machine has it mounted
    fstype: str  # cgroup or cgroup2
    options: str  # the mount's options naming it: "memory", "none,name=systemd", ""
    path: str  # this process's cgroup in it

    @property
    def name(self) -> str:
        return self.mountpoint.name


def hierarchies() -> list[Hierarchy]:
    """This machine's cgroup hierarchies and this process's place in each."""
    mine: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        mine[controllers] = path
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype, _, super_opts = right.split(" ", 2)
        if fstype not in ("cgroup", "cgroup2") or left.split()[3] != "/":
            continue
        mountpoint = Path(left.split()[4])
        if fstype == "cgroup2":
            found.append(Hierarchy(mountpoint, fstype, "", mine.get("", "/")))
            continue
        names = [o for o in super_opts.split(",") if (o not in ("rw", "ro") and "=" not in o) or o.startswith("name=")]
        key = ",".join(names)
        if key in mine:
            options = key if not key.startswith("name=") else f"none,{key}"
            found.append(Hierarchy(mountpoint, fstype, options, mine[key]))
    return found


class Subtree:
    """name: the child cgroup made under this process's own in every hierarchy."""

    def __init__(self, name: str):
        self.name = name
        self.hierarchies = hierarchies()

    def dirs(self) -> list[Path]:
        return [h.mountpoint / h.path.lstrip("/") / self.name for h in self.hierarchies]

    def create(self) -> None:
        for h, d in zip(self.hierarchies, self.dirs()):
            d.mkdir(exist_ok=True)
            if h.options == "cpuset":  # a cpuset child holds no task until it has cpus and mems
                for f in ("cpuset.cpus", "cpuset.mems"):
                    (d / f).write_text((d.parent / f).read_text())

    def enter(self) -> str:
        """Shell: move this shell into the subtree (a new cgroup namespace is then rooted there)."""
        return "".join(f"echo $$ > {d}/cgroup.procs\n" for d in self.dirs())

    def mount(self, target: str) -> str:
        """Shell, run in that namespace and a mount namespace of its own: the hierarchies
        mounted afresh at target, each rooted at the subtree; then this shell moved one
        level down, into "host" (nspawn places its payload beside its own cgroup, which
        cannot be the namespace's root)."""
        lines = [f"mkdir -p {target}", f"mount -t tmpfs -o mode=0755 ecs-test-cgroup {target}"]
        for h in self.hierarchies:
            opts = f" -o {h.options}" if h.options else ""
            d = f"{target}/{h.name}"
            lines += [f"mkdir -p {d}", f"mount -t {h.fstype}{opts} {h.fstype} {d}", f"mkdir -p {d}/host"]
            if h.options == "cpuset":
                lines += [f"cat {d}/cpuset.{f} > {d}/host/cpuset.{f}" for f in ("cpus", "mems")]
            lines.append(f"echo $$ > {d}/host/cgroup.procs")
        return "\n".join(lines) + "\n"

    def remove(self, timeout: float = 30) -> None:
        """Kill what is left in the subtree, then remove it, deepest first."""
        deadline = time.monotonic() + timeout
        for top in self.dirs():
            if not top.exists():
                continue
            while True:
                left = [d for d in sorted(top.rglob("*"), key=lambda p: -len(p.parts)) if d.is_dir()] + [top]
                for d in left:
                    for pid in _pids(d):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    with contextlib.suppress(OSError):
                        d.rmdir()
                if not top.exists() or time.monotonic() > deadline:
                    break
                time.sleep(0.1)


def _pids(d: Path) -> list[int]:
    try:
        return [int(p) for p in (d / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []
