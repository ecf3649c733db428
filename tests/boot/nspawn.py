"""BootedHost: the test image booted with systemd-nspawn, a real systemd as its PID 1.

The image is never written: each host is an overlay (the image below, the host's own
"disk" above), so a reboot is a second boot of the same overlay, with a fresh /run
and a fresh, empty network namespace (--private-network), as after a real reboot.
Everything runs inside an outer `unshare --net --mount --pid` sandbox whose holder
dies with this process, so a failing test leaves no container, mount or netns behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import psutil

from tests.boot.cgroups import Subtree
from tests.lab.sandbox import _die_with_parent

H = TypeVar("H", bound="BootedHost")


class BootError(RuntimeError):
    pass


def outer_sandbox() -> tuple[subprocess.Popen[bytes], int]:
    """A private network + mount + PID namespace that dies with this process: its holder,
    and the PID of its PID 1 (to nsenter)."""
    holder = subprocess.Popen(
        ["unshare", "--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc",
         "--propagation", "private", "sleep", "infinity"],
        preexec_fn=_die_with_parent,
    )
    deadline = time.monotonic() + 10
    while not (kids := psutil.Process(holder.pid).children()):
        if time.monotonic() > deadline:
            holder.kill()
            raise BootError("the sandbox holder did not start")
        time.sleep(0.01)
    return holder, kids[0].pid


class BootedHost:
    def __init__(self, image: Path, workdir: Path | None = None):
        self.image = image
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="ecs-harden-boot-"))
        self.root = self.dir / "merged"
        self.holder: subprocess.Popen[bytes] | None = None
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.ns_pid = 0  # the outer sandbox's PID 1
        self.init_pid = 0  # the container's systemd
        self.boots = 0
        self.variant = "nft"  # which iptables the image's alternatives point at
        self.flavor = "debian"  # what its /etc says it is
        # Its network: none but loopback (a fresh, empty namespace at every boot), or a
        # veth on a bridge of the outer sandbox (tests/vm/fleet.py).
        self.network: list[str] = ["--private-network"]
        self.options: list[str] = []  # more of nspawn's
        # A cgroup tree of its own, writable (tests/boot/cgroups.py): for Docker inside.
        self.subtree: Subtree | None = None

    # -- the outer sandbox and the disk ----------------------------------
    def start(self) -> BootedHost:
        for d in ("upper", "work", "merged"):
            (self.dir / d).mkdir(exist_ok=True)
        self.holder, self.ns_pid = outer_sandbox()
        self.outer(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={self.image},upperdir={self.dir}/upper,workdir={self.dir}/work",
                    str(self.root)])
        return self

    def outer(self, argv: Sequence[str], *, check: bool = True, timeout: float = 300,
              input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run argv in the outer sandbox (this machine's file system, private net and mounts)."""
        cp = subprocess.run(["nsenter", "-t", str(self.ns_pid), "-n", "-m", "-p", "--", *argv],
                            capture_output=True, text=True, timeout=timeout, input=input, check=False)
        if check and cp.returncode != 0:
            raise BootError(f"{' '.join(argv)} exited {cp.returncode}: {cp.stderr[-3000:]}")
        return cp

    def offline(self, script: str, *, binds: Sequence[str] = (), timeout: float = 600) -> str:
        """Run a shell script in the image without booting it (like a chroot, no network)."""
        argv = ["systemd-nspawn", "-q", "--register=no", "--keep-unit", "--private-network",
                "-D", str(self.root)]
        argv += [f"--bind-ro={b}" for b in binds]
        return self.outer([*argv, "/bin/sh", "-ec", script], timeout=timeout).stdout

    # -- booting ---------------------------------------------------------
    def boot(self, timeout: float = 180) -> None:
        if self.nspawn is not None and self.nspawn.poll() is None:
            raise BootError("already booted")
        self.boots += 1
        log = open(self.dir / f"console-{self.boots}.log", "wb")  # noqa: SIM115 - the child owns it
        argv = ["systemd-nspawn", "-q", "--register=no", "--keep-unit", "-b", *self.network, *self.options,
                "--console=pipe", "-D", str(self.root)]
        if self.subtree is not None:
            argv = self._in_subtree(self.subtree, argv)
        self.nspawn = subprocess.Popen(
            ["nsenter", "-t", str(self.ns_pid), "-n", "-m", "-p", "--", *argv],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        self.init_pid = 0
        while not self.init_pid:
            if self.nspawn.poll() is not None or time.monotonic() > deadline:
                raise BootError("the container did not start: " + self.console()[-3000:])
            for p in psutil.Process(self.nspawn.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if p.name() == "systemd" and p.ppid() != self.nspawn.pid:
                        self.init_pid = p.pid
                        break
            time.sleep(0.05)
        while True:
            cp = self.run(["systemctl", "is-system-running"], check=False)
            state = cp.stdout.strip()
            if state in ("running", "degraded"):
                return
            if self.nspawn.poll() is not None or time.monotonic() > deadline:
                raise BootError(f"boot did not finish ({state}): " + self.console()[-3000:])
            time.sleep(0.2)

    def _in_subtree(self, subtree: Subtree, argv: list[str]) -> list[str]:
        """argv run in the subtree's cgroups, its own cgroup and mount namespaces, with
        the subtree's hierarchies as the container's /sys/fs/cgroup."""
        subtree.create()
        # Over /sys/fs/cgroup in its mount namespace: nspawn reaches its cgroups there,
        # so the paths its cgroup namespace gives must resolve in that view.
        target = "/sys/fs/cgroup"
        inner = self.dir / "boot-inner.sh"
        inner.write_text("set -e\n" + subtree.mount(target) + 'exec "$@"\n')
        outer = self.dir / "boot-outer.sh"
        outer.write_text("set -e\n" + subtree.enter()
                         + f'exec unshare --cgroup --mount --propagation private sh {inner} "$@"\n')
        return ["sh", str(outer), *argv[:-2], f"--bind={target}:/sys/fs/cgroup",
                "--system-call-filter=@keyring", *argv[-2:]]

    def console(self) -> str:
        path = self.dir / f"console-{self.boots}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run argv inside the booted container (all its namespaces)."""
        cp = subprocess.run(
            ["nsenter", "-t", str(self.init_pid), "-a", "--", "env", "-i",
             "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C", *argv],
            capture_output=True, text=True, timeout=timeout, input=input, check=False,
        )
        if check and cp.returncode != 0:
            raise BootError(f"{' '.join(argv)} exited {cp.returncode}: {cp.stdout[-2000:]} {cp.stderr[-2000:]}")
        return cp

    def sh(self, script: str, *, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.run(["sh", "-ec", script], check=check, timeout=timeout)

    def shutdown(self, verb: str = "poweroff", timeout: float = 120) -> None:
        """A clean shutdown (or reboot: nspawn then exits, and boot() starts the next one)."""
        if self.nspawn is None or self.nspawn.poll() is not None:
            return
        self.run(["systemctl", verb, "--no-block"], check=False)
        try:
            self.nspawn.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.nspawn.kill()
            self.nspawn.wait(timeout=30)
            raise BootError("the container did not shut down: " + self.console()[-3000:]) from None

    def reboot(self) -> None:
        self.shutdown("reboot")
        self.boot()

    # -- teardown --------------------------------------------------------
    def halt(self) -> None:
        """The container gone: shut down cleanly if it can, killed if not."""
        if self.nspawn is not None and self.nspawn.poll() is None:
            with contextlib.suppress(Exception):
                self.shutdown(timeout=30)
            if self.nspawn.poll() is None:
                self.nspawn.kill()

    def stop(self) -> None:
        self.halt()
        if self.subtree is not None:
            self.subtree.remove()
        if self.holder is not None and self.holder.poll() is None:
            if self.ns_pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.ns_pid, signal.SIGKILL)
            self.holder.kill()
            self.holder.wait(timeout=30)
        self.holder = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self: H) -> H:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
