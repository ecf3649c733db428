"""Sandbox: a private network + mount + PID namespace that dies with its holder process.

Everything the lab does to netfilter, routes, interfaces and mounts happens in
here; when the holder (PID 1 of the namespace) dies, the kernel kills every
process inside, so a test that fails or is interrupted leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import psutil

PR_SET_PDEATHSIG = 1
REAPER = [
    "python3", "-c",
    "import os, time\nwhile True:\n    try:\n        os.wait()\n    except ChildProcessError:\n        time.sleep(1)",
]
VARIANTS = ("legacy", "nft")
XTABLES = (
    "iptables", "iptables-restore", "iptables-save", "ip6tables", "ip6tables-restore", "ip6tables-save"
)


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class SandboxError(RuntimeError):
    pass


class Sandbox:
    def __init__(
        self, variant: str, workdir: Path | None = None, etc_from: Path | None = None, *, reaper: bool = False
    ):
        if variant not in VARIANTS:
            raise ValueError(variant)
        self.variant = variant
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix=f"ecs-harden-lab-{variant}-"))
        self.holder: subprocess.Popen[bytes] | None = None
        self.pid = 0  # PID 1 of the namespace, as this machine sees it
        self.background: list[subprocess.Popen[bytes]] = []
        self.etc_from = etc_from  # another sandbox's /etc: the same disk after a reboot
        # PID 1 that reaps orphans (libvirtd daemonizes QEMU and waits for it to be gone)
        self.reaper = reaper

    # -- life cycle -------------------------------------------------------
    def start(self) -> Sandbox:
        if self.holder is not None:
            raise SandboxError("sandbox already started")
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--mount", "--pid", "--fork", "--kill-child",
             "--mount-proc", "--propagation", "private", *(REAPER if self.reaper else ["sleep", "infinity"])],
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            kids = psutil.Process(self.holder.pid).children()
            if kids:
                self.pid = kids[0].pid
                break
            time.sleep(0.01)
        else:
            self.stop()
            raise SandboxError("the namespace holder did not start")
        self._set_up()
        return self

    def _set_up(self) -> None:
        # A private copy of /etc: persistence writes /etc/sysconfig, /etc/iptables and
        # enables units in /etc/systemd/system, which must never reach this machine's own.
        etc = self.dir / "etc"
        if etc.exists():
            shutil.rmtree(etc)
        subprocess.run(["cp", "-a", str(self.etc_from or "/etc"), str(etc)], check=True)
        alt = etc / "alternatives"
        for name in XTABLES:
            base, _, rest = name.partition("-")
            target = f"/usr/sbin/{base}-{self.variant}" + (f"-{rest}" if rest else "")
            (alt / name).unlink(missing_ok=True)
            (alt / name).symlink_to(target)
        if self.etc_from is None:
            # Start from a host that has never been hardened or persisted.
            for stale in ("iptables", "sysconfig", "ecs", "ecs-harden"):
                shutil.rmtree(etc / stale, ignore_errors=True)
        self.sh(
            f"""
            mount --bind {etc} /etc
            mount -t tmpfs -o mode=755 tmpfs /run
            mkdir -p /run/netns /run/lock /run/lab-cgroup
            # A sysfs of this network namespace, so /sys/class/net shows our bridges,
            # with the cgroup hierarchy Docker needs carried over.
            mount --rbind /sys/fs/cgroup /run/lab-cgroup
            mount -t sysfs sysfs /sys
            mount --rbind /run/lab-cgroup /sys/fs/cgroup
            ip link set lo up
            """
        )

    @property
    def etc(self) -> Path:
        """This sandbox's /etc, as seen from outside."""
        return self.dir / "etc"

    def stop(self) -> None:
        for p in self.background:
            if p.poll() is None:
                p.kill()
        if self.holder is not None and self.holder.poll() is None:
            if self.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
            self.holder.kill()
            self.holder.wait(timeout=10)
        for p in self.background:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
        self.holder = None
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- running things inside -------------------------------------------
    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-n", "-m", "-p", "--", *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 120,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        cp = subprocess.run(
            self.argv(argv), capture_output=True, text=True, timeout=timeout, input=input,
            env={**os.environ, "LANG": "C", **(env or {})}, check=False,
        )
        if check and cp.returncode != 0:
            raise SandboxError(f"{' '.join(argv)} exited {cp.returncode}: {cp.stderr.strip()[-2000:]}")
        return cp

    def sh(
        self, script: str, *, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return self.run(["sh", "-ec", script], check=check, timeout=timeout)

    def spawn(
        self, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        fh: IO[Any] = open(log, "ab")  # noqa: SIM115 - owned by the child
        p = subprocess.Popen(
            self.argv(argv), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
        fh.close()
        self.background.append(p)
        return p

    def iptables(self, *args: str, family: int = 4, check: bool = True) -> str:
        binary = "iptables" if family == 4 else "ip6tables"
        return self.run([binary, "-w", *args], check=check).stdout

    def rules(self, chain: str, family: int = 4) -> list[str]:
        return self.rules_in("filter", chain, family)

    def rules_in(self, table: str, chain: str, family: int = 4) -> list[str]:
        binary = "iptables" if family == 4 else "ip6tables"
        out = self.run([binary, "-w", "-t", table, "-S", chain], check=False)
        return [line for line in out.stdout.splitlines() if line.startswith("-A ")]
