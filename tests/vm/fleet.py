"""Fleet: three booted systemd-nspawn instances of the test image, each with its own
systemd, network namespace and sshd, on one bridge of an outer sandbox, and an Ansible
controller in that sandbox reaching them over SSH as an operator reaches a fleet.

What the fleet report and a fleet-wide converge need is hosts over SSH, not kernels:
this costs seconds per host where a TCG VM costs minutes. Everything lives in one outer
`unshare --net --mount --pid` sandbox that dies with this process (tests/boot/nspawn.py),
so the bridge, the hosts and their addresses exist only in there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.boot.nspawn import BootedHost, BootError, outer_sandbox

BRIDGE = "fleetbr"
NET = "10.77.0"
CONTROLLER = f"{NET}.1"
HTTP_PORT = 8080
# Nothing a fleet report needs, and each would cost CPU in three hosts at once.
MASKED = ("docker.service", "docker.socket", "containerd.service", "cloud-init.service",
          "cloud-init-local.service", "cloud-config.service", "cloud-final.service",
          "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_reap.service")


class FleetHost(BootedHost):
    """One host of the fleet: a BootedHost in the fleet's outer sandbox, on its bridge."""

    def __init__(self, fleet: Fleet, name: str, address: str):
        super().__init__(fleet.image, fleet.dir / name)
        self.name = name
        self.address = address
        self.network = [f"--network-bridge={BRIDGE}", f"--machine={name}"]
        self.fleet = fleet

    def start(self) -> FleetHost:
        for d in ("upper", "work", "merged"):
            (self.dir / d).mkdir(parents=True, exist_ok=True)
        self.ns_pid = self.fleet.ns_pid
        # Written into the overlay's upper layer before it is mounted (the mount exists
        # only in the outer sandbox): they show through as the host's own files.
        upper = self.dir / "upper"
        etc = upper / "etc"
        (etc / "systemd" / "system").mkdir(parents=True, exist_ok=True)
        (etc / "hostname").write_text(f"{self.name}\n")
        for unit in MASKED:
            link = etc / "systemd" / "system" / unit
            link.unlink(missing_ok=True)
            link.symlink_to("/dev/null")
        (upper / "root").mkdir(mode=0o700, exist_ok=True)
        ssh = upper / "root" / ".ssh"
        ssh.mkdir(mode=0o700, exist_ok=True)
        shutil.copy(self.fleet.key.with_suffix(".pub"), ssh / "authorized_keys")
        os.chmod(ssh / "authorized_keys", 0o600)
        # Its address, before sshd starts (networkd is not in the image: a unit of its own).
        address_unit = etc / "systemd" / "system" / "fleet-address.service"
        address_unit.write_text(
            "[Unit]\nDescription=the fleet test's address on host0\nBefore=ssh.service\n"
            "[Service]\nType=oneshot\n"
            f"ExecStart=/sbin/ip addr add {self.address}/24 dev host0\n"
            "ExecStart=/sbin/ip link set host0 up\n"
            f"ExecStart=/sbin/ip route add default via {CONTROLLER}\n"
            "[Install]\nWantedBy=multi-user.target\n"
        )
        wants = etc / "systemd" / "system" / "multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        (wants / "fleet-address.service").unlink(missing_ok=True)
        (wants / "fleet-address.service").symlink_to("/etc/systemd/system/fleet-address.service")
        self.outer(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={self.image},upperdir={upper},workdir={self.dir}/work", str(self.root)])
        return self

    def stop(self) -> None:  # the outer sandbox and the directory are the fleet's
        self.halt()


class Fleet:
    """names: each host's name; prepare(host), when given, runs on each host's disk
    before its first boot (to dress it as another flavor, say)."""

    def __init__(self, image: Path, names: Sequence[str], workdir: Path | None = None,
                 prepare: Callable[[FleetHost], None] | None = None):
        self.prepare = prepare
        self.image = image
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="ecs-harden-fleet-"))
        self.key = self.dir / "id_ed25519"
        self.holder: subprocess.Popen[bytes] | None = None
        self.ns_pid = 0
        self.hosts = {n: FleetHost(self, n, f"{NET}.{11 + i}") for i, n in enumerate(names)}
        self.server: subprocess.Popen[bytes] | None = None

    def outer(self, argv: Sequence[str], *, check: bool = True, timeout: float = 300,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        cp = subprocess.run(["nsenter", "-t", str(self.ns_pid), "-n", "-m", "-p", "--", *argv],
                            capture_output=True, text=True, timeout=timeout, check=False,
                            env={**os.environ, **(env or {})})
        if check and cp.returncode != 0:
            raise BootError(f"{' '.join(argv)} exited {cp.returncode}: {cp.stdout[-3000:]} {cp.stderr[-3000:]}")
        return cp

    def start(self) -> Fleet:
        self.dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        self.holder, self.ns_pid = outer_sandbox()
        self.outer(["sh", "-ec", f"ip link set lo up; ip link add {BRIDGE} type bridge; "
                    f"ip addr add {CONTROLLER}/24 dev {BRIDGE}; ip link set {BRIDGE} up"])
        for host in self.hosts.values():
            host.start()
            if self.prepare is not None:
                self.prepare(host)
        for host in self.hosts.values():
            host.boot()
        for host in self.hosts.values():
            self.wait_ssh(host.name)
        return self

    def wait_ssh(self, name: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.ssh(name, "true", timeout=20).returncode != 0:
            if time.monotonic() > deadline:
                raise BootError(f"{name}: no ssh: {self.ssh(name, 'true').stderr[-2000:]}")
            time.sleep(0.5)

    def ssh_args(self) -> list[str]:
        return ["-i", str(self.key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", f"UserKnownHostsFile={self.dir / 'known_hosts'}", "-o", "ConnectTimeout=5"]

    def ssh(self, name: str, command: str, *, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self.outer(["ssh", *self.ssh_args(), f"root@{self.hosts[name].address}", command],
                          check=False, timeout=timeout)

    def inventory(self, host_vars: dict[str, dict[str, str]], group: str = "ecs_instances") -> Path:
        """The operator's inventory; host_vars per host (its Python, where ecs-harden comes from)."""
        path = self.dir / "inventory.ini"

        def line(n: str, h: FleetHost) -> str:
            extra = "".join(f" {k}={v}" for k, v in host_vars.get(n, {}).items())
            return f"{n} ansible_host={h.address}{extra}\n"

        path.write_text(
            f"[{group}]\n" + "".join(line(n, h) for n, h in self.hosts.items())
            + f"\n[{group}:vars]\nansible_user=root\n"
            f"ansible_ssh_common_args={' '.join(self.ssh_args())}\n"
        )
        return path

    def serve(self, root: Path) -> str:
        """A static HTTP server on the bridge (the wheelhouse); its URL."""
        argv = ["nsenter", "-t", str(self.ns_pid), "-n", "-m", "-p", "--", sys.executable, "-m",
                "http.server", "--bind", CONTROLLER, "--directory", str(root), str(HTTP_PORT)]
        log = open(self.dir / "http.log", "wb")  # noqa: SIM115 - the child owns it
        self.server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 20
        while self.outer(["bash", "-c", f"exec 3<>/dev/tcp/{CONTROLLER}/{HTTP_PORT}"],
                         check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise BootError("the wheelhouse server did not start")
            time.sleep(0.1)
        return f"http://{CONTROLLER}:{HTTP_PORT}/"

    def stop(self) -> None:
        for host in self.hosts.values():
            host.stop()
        if self.server is not None:
            self.server.kill()
            self.server.wait(10)
        if self.holder is not None and self.holder.poll() is None:
            if self.ns_pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.ns_pid, 9)
            self.holder.kill()
            self.holder.wait(timeout=30)
        self.holder = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Fleet:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
