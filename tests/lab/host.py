"""EcsHost: a sandbox dressed as an ECS container instance.

- a fake IMDS in its own network namespace at 169.254.169.254 and fd00:ec2::254;
- a fake ECS credentials endpoint on 127.0.0.1:51679, wired as ecs-init does
  (nat PREROUTING DNAT from 169.254.170.2:80, route_localnet on docker0);
- a real Docker engine (Debian's docker.io) with private dirs and sockets;
- a busybox-static image; every probe is a real container opening a connection.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from tests.lab.flavors import dress
from tests.lab.sandbox import Sandbox, SandboxError

IMDS_V4 = "169.254.169.254"
IMDS_V6 = "fd00:ec2::254"
CREDS = "169.254.170.2"
CONTAINER_V6_NET = "fd00:dead::/64"
IMAGE = "lab/busybox"
PROJECT = Path(__file__).resolve().parents[2]

# The box's fake-endpoint server (a test fixture), used by the lab as well.
HTTP_SERVER = PROJECT / "vm" / "box" / "files" / "ecs-test-http"


def busybox_tarball() -> bytes:
    """A root filesystem holding only busybox-static and the applets the probes use."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "tmp", "etc"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        tar.add("/bin/busybox", arcname="bin/busybox")
        for applet in ("sh", "nc", "echo", "sleep", "printf", "cat", "ip", "timeout", "true"):
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            tar.addfile(info)
    return buf.getvalue()


class EcsHost:
    def __init__(
        self, variant: str, *, ipv6: bool = True, flavor: str = "debian",
        etc_from: Path | None = None, install_restore: bool = True,
    ):
        self.sandbox = Sandbox(variant, etc_from=etc_from)
        self.flavor = flavor
        self.install_restore = install_restore
        self.ipv6 = ipv6
        self.dir = self.sandbox.dir
        self.docker_dir = self.dir / "docker"
        self.sock = self.docker_dir / "docker.sock"
        self.dockerd_args: list[str] = []

    @property
    def variant(self) -> str:
        return self.sandbox.variant

    # -- life cycle -------------------------------------------------------
    def start(self, *, docker: bool = True) -> EcsHost:
        self.sandbox.start()
        try:
            if self.sandbox.etc_from is None:
                dress(self.sandbox, self.flavor, install_restore=self.install_restore)
            self._imds()
            self._credentials()
            if docker:
                self.start_docker()
                self.import_image()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.sandbox.stop()

    def __enter__(self) -> EcsHost:
        return self if self.sandbox.holder is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _server(self, netns: str | None, addr: str, port: int, body: str, name: str) -> None:
        argv = [sys.executable, str(HTTP_SERVER), addr, str(port), body]
        if netns:
            argv = ["ip", "netns", "exec", netns, *argv]
        self.sandbox.spawn(argv, self.dir / f"{name}.log")

    def _imds(self) -> None:
        self.sandbox.sh(
            f"""
            ip netns add imds
            ip link add imds-host type veth peer name imds-peer
            ip link set imds-peer netns imds
            ip addr add 169.254.169.1/24 dev imds-host
            ip addr add fd00:ec2::1/64 dev imds-host nodad
            ip link set imds-host up
            ip netns exec imds sh -ec '
              ip link set lo up
              ip addr add {IMDS_V4}/24 dev imds-peer
              ip addr add {IMDS_V6}/64 dev imds-peer nodad
              ip link set imds-peer up
              ip route add default via 169.254.169.1
              ip -6 route add {CONTAINER_V6_NET} via fd00:ec2::1
            '
            sysctl -qw net.ipv6.conf.all.forwarding=1
            """
        )
        self._server("imds", "::", 80, "imds-ok", "imds")

    def _credentials(self) -> None:
        self._server(None, "127.0.0.1", 51679, "creds-ok", "creds")
        self.sandbox.iptables(
            "-t", "nat", "-A", "PREROUTING", "-d", f"{CREDS}/32", "-p", "tcp", "--dport", "80",
            "-j", "DNAT", "--to-destination", "127.0.0.1:51679",
        )

    # -- docker -----------------------------------------------------------
    def start_docker(self, *extra: str) -> None:
        d = self.docker_dir
        d.mkdir(parents=True, exist_ok=True)
        if not self._alive("containerd.pid"):
            self.sandbox.spawn(
                ["sh", "-c", f"echo $$ > {d}/containerd.pid; exec containerd --root {d}/ctr-root "
                 f"--state {d}/ctr-state --address {d}/containerd.sock"],
                d / "containerd.log",
            )
            self._wait_for(d / "containerd.sock", "containerd")
        self.dockerd_args = list(extra) or self.dockerd_args
        args = [
            "dockerd", "--data-root", f"{d}/data", "--exec-root", f"{d}/exec",
            "--pidfile", f"{d}/dockerd.pid", "-H", f"unix://{self.sock}",
            "--containerd", f"{d}/containerd.sock", "--storage-driver", "vfs",
            "--userland-proxy=false",
        ]
        if self.ipv6:
            args += ["--ipv6", "--fixed-cidr-v6", CONTAINER_V6_NET]
        self.sock.unlink(missing_ok=True)
        self.sandbox.spawn([*args, *self.dockerd_args], d / "dockerd.log")
        self._wait_for(self.sock, "dockerd")
        deadline = time.monotonic() + 60
        while self.docker("info", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise SandboxError("dockerd did not answer: " + self._tail("dockerd.log"))
            time.sleep(0.2)
        self.sandbox.sh(
            "[ ! -d /proc/sys/net/ipv4/conf/docker0 ] "
            "|| sysctl -qw net.ipv4.conf.docker0.route_localnet=1"
        )

    def stop_docker(self) -> None:
        pidfile = self.docker_dir / "dockerd.pid"
        if not pidfile.exists():
            return
        self.sandbox.sh(
            f"pid=$(cat {pidfile}); kill $pid; "
            f"for i in $(seq 200); do kill -0 $pid 2>/dev/null || exit 0; sleep 0.1; done; kill -9 $pid",
            check=False,
        )
        pidfile.unlink(missing_ok=True)

    def restart_docker(self) -> None:
        self.stop_docker()
        self.start_docker()

    def _alive(self, pidfile: str) -> bool:
        p = self.docker_dir / pidfile
        if not p.exists():
            return False
        return self.sandbox.run(["kill", "-0", p.read_text().strip()], check=False).returncode == 0

    def _wait_for(self, path: Path, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline:
                raise SandboxError(f"{what} did not start: " + self._tail(f"{what}.log"))
            time.sleep(0.05)

    def _tail(self, log: str) -> str:
        try:
            return (self.docker_dir / log).read_text()[-3000:]
        except OSError:
            return "(no log)"

    def docker(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return self.sandbox.run(
            ["/usr/bin/docker", "-H", f"unix://{self.sock}", *args], check=check, timeout=timeout
        )

    def import_image(self) -> None:
        if self.docker("image", "inspect", IMAGE, check=False).returncode == 0:
            return
        tar = self.dir / "busybox.tar"
        tar.write_bytes(busybox_tarball())
        self.docker("import", "--change", 'CMD ["/bin/sh"]', str(tar), IMAGE)

    # -- probes -----------------------------------------------------------
    def probe(self, address: str, port: int = 80, *, network: str | None = None, timeout: int = 2) -> str:
        """Run a container that opens address:port over HTTP; return what it read."""
        host = f"[{address}]" if ":" in address else address
        script = (
            f"printf 'GET /latest/meta-data/ HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n' "
            f"| nc -w {timeout} {address} {port}"
        )
        if ":" in address:
            # The container's IPv6 address is unusable until duplicate address detection ends.
            script = (
                "i=0; while ip -6 addr show dev eth0 | grep -q tentative && [ $i -lt 50 ]; "
                "do sleep 0.1; i=$((i+1)); done; " + script
            )
        args = ["run", "--rm"]
        if network:
            args += ["--network", network]
        return self.docker(*args, IMAGE, "sh", "-c", script, check=False, timeout=60).stdout

    def reaches(self, address: str, **kw: object) -> bool:
        body = "creds-ok" if address == CREDS else "imds-ok"
        return body in self.probe(address, **kw)  # type: ignore[arg-type]

    def host_reaches_imds(self, address: str = IMDS_V4) -> bool:
        cp = self.sandbox.run(
            [sys.executable, "-c",
             "import socket,sys; s=socket.create_connection((sys.argv[1],80),2); "
             "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); s.shutdown(socket.SHUT_WR); "
             "print(b''.join(iter(lambda: s.recv(4096), b'')).decode())", address],
            check=False,
        )
        return "imds-ok" in cp.stdout

    # -- ecs-harden -------------------------------------------------------
    def policy(self, text: str = "", name: str = "policy.yaml", *, probe: bool = False) -> Path:
        """A policy keeping state and status in the sandbox's directory. The active probe
        (imds.probe: ~0.6 s a command, a dropped connect's timeout) is off unless asked
        for: tests/integration/test_paths.py, the daemon's tests and every booted host run
        it; the other lab tests are about other things and run many commands."""
        path = self.dir / name
        base = (
            f"state_dir: {self.dir}/state\n"
            f"report:\n  status_file: {self.dir}/status.json\n"
        )
        if not probe and "probe:" not in text:
            if "imds:\n" in text:
                text = text.replace("imds:\n", "imds:\n  probe: false\n", 1)
            else:
                base += "imds:\n  probe: false\n"
        path.write_text(base + text)
        os.chmod(path, 0o600)
        return path

    def harden(self, *args: str, policy: Path | None = None, check: bool = False,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
        pol = policy or self.dir / "policy.yaml"
        if not pol.exists():
            self.policy()
        argv = [sys.executable, "-m", "ecs_harden", "--log-format", "json", "--policy", str(pol), *args]
        path = f"{self.dir}/bin:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        return self.sandbox.run(
            argv, check=check, timeout=timeout, env={"PYTHONPATH": str(PROJECT), "PATH": path}
        )

    def report(self, *args: str, policy: Path | None = None) -> tuple[int, dict[str, Any]]:
        cp = self.harden(*args, "--format", "json", policy=policy)
        try:
            return cp.returncode, json.loads(cp.stdout)
        except json.JSONDecodeError:
            raise SandboxError(f"no JSON from ecs-harden {args}: {cp.stdout} {cp.stderr}") from None


