"""VagrantLab: libvirtd, Vagrant and the test VM, confined to a lab Sandbox.

libvirtd and virtlogd run inside a private network + mount + PID namespace (the
lab's Sandbox: its own /etc copy, /run, sysfs), with tmpfs over libvirt's state
directories and its images on this checkout's disk; so the libvirt network, its
bridge, its dnsmasq and its iptables rules, and the QEMU guest exist only in there,
and die with the namespace, also when a test fails. QEMU runs under software
emulation (driver "qemu": KVM does not work on these machines, see FACTS).
Vagrant, ssh and testinfra run in the same namespace: the guest's address is only
routable there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests import artifacts
from tests.boot.image import CACHE, PROJECT, wheelhouse
from tests.lab.sandbox import Sandbox, SandboxError
from tests.vm.box import box

BOX = "ecs-harden-test"
HOST_ADDR = "192.168.121.1"  # vagrant-libvirt's management network, the host side
HTTP_PORT = 8080
CMDLINE = "root=LABEL=root rw console=ttyS0 net.ifnames=0 apparmor=0"


class VagrantLab:
    def __init__(self, workdir: Path, boxdir: Path, hosts: int = 1):
        self.hosts = hosts  # > 1: machines ecs1..ecsN (the Vagrantfile's ECS_HARDEN_HOSTS)
        self.dir = workdir
        self.boxdir = boxdir
        self.sandbox = Sandbox("nft", workdir=workdir / "ns", reaper=True)
        self.vagrant_home = workdir / "vagrant.d"
        self.dot = workdir / "dot"
        self.images = workdir / "images"
        self.seed: Path | None = None
        self.wheelhouse_url = ""
        self.release: tuple[str, str] = ("", "")  # the release tarball's URL and sha256
        self.release_file = Path()  # the tarball itself, on this machine
        self.s3 = ""  # its s3:// URL, where a test put it into moto's server
        self.user_data = ""  # what the first boot's seed gave cloud-init
        self.runs = 0
        self.timings: dict[str, float] = {}

    # -- life cycle -------------------------------------------------------
    def start(self) -> VagrantLab:
        for d in (self.vagrant_home, self.dot, self.images, self.dir / "ns"):
            d.mkdir(parents=True, exist_ok=True)
        self.sandbox.start()
        qemu_conf = self.sandbox.etc / "libvirt" / "qemu.conf"
        with open(qemu_conf, "a") as fh:
            # QEMU as root, no security driver: the guest's files (kernel, seed, pool)
            # live in this checkout, and there is no AppArmor in the namespace.
            fh.write('\nuser = "root"\ngroup = "root"\nsecurity_driver = "none"\n')
        self.sandbox.sh(
            f"""
            for d in /var/lib/libvirt /var/log/libvirt /var/cache/libvirt; do
                mkdir -p $d; mount -t tmpfs -o mode=755 tmpfs $d
            done
            mkdir -p /var/lib/libvirt/images /var/lib/libvirt/qemu /var/lib/libvirt/dnsmasq /run/libvirt
            mount --bind {self.images} /var/lib/libvirt/images
            # daemons: their output to files, or they would hold our pipes open
            virtlogd -d </dev/null >/var/log/libvirt/virtlogd.out 2>&1
            libvirtd -d </dev/null >/var/log/libvirt/libvirtd.out 2>&1
            i=0; while [ ! -S /run/libvirt/libvirt-sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
            virsh -c qemu:///system version >/dev/null
            """,
            timeout=60,
        )
        return self

    def stop(self) -> None:
        try:
            if self.sandbox.pid:
                self.sandbox.run(["virsh", "-c", "qemu:///system", "list", "--all"], check=False, timeout=20)
        finally:
            self.sandbox.stop()
            shutil.rmtree(self.images, ignore_errors=True)

    def __enter__(self) -> VagrantLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- vagrant ----------------------------------------------------------
    def env(self) -> dict[str, str]:
        env = {
            "VAGRANT_HOME": str(self.vagrant_home),
            "VAGRANT_DOTFILE_PATH": str(self.dot),
            "VAGRANT_CWD": str(PROJECT),
            "VAGRANT_DEFAULT_PROVIDER": "libvirt",
            "VAGRANT_CHECKPOINT_DISABLE": "1",
            "LIBVIRT_DEFAULT_URI": "qemu:///system",
            "ECS_HARDEN_BOX": BOX,
            # the guests are provisioned by the test (NoCloud user-data, Ansible), never by Vagrant
            "ECS_HARDEN_PROVISION": "none",
            "ECS_HARDEN_LIBVIRT_DRIVER": "qemu",
            "ECS_HARDEN_KERNEL": str(self.boxdir / "vmlinuz"),
            "ECS_HARDEN_INITRD": str(self.boxdir / "initrd.img"),
            "ECS_HARDEN_CMDLINE": CMDLINE,
            "ECS_HARDEN_SSH_KEY": str(self.boxdir / "id_ed25519"),
            "ECS_HARDEN_MEMORY": "1536" if self.hosts == 1 else "1024",
            "ECS_HARDEN_HOSTS": str(self.hosts),
            "ECS_HARDEN_CPUS": "2",
            "ECS_HARDEN_BOOT_TIMEOUT": "1200",
            "ECS_HARDEN_CONSOLE_LOG": str(self.dir / "console.log"),
        }
        if self.seed is not None:
            env["ECS_HARDEN_SEED"] = str(self.seed)
        return env

    def molecule_env(self, source: str, sha256: str) -> dict[str, str]:
        """For `molecule test` of the role: its own Vagrantfile and dot directory (in its
        ephemeral directory), this lab's box, libvirt and key."""
        import molecule_plugins.vagrant  # the driver's own `vagrant` module lives beside it

        env = {k: v for k, v in self.env().items() if k not in ("VAGRANT_CWD", "VAGRANT_DOTFILE_PATH")}
        venv_bin = str(PROJECT / ".venv" / "bin")
        env.update({
            "ECS_HARDEN_FROM": source,
            "ECS_HARDEN_SHA256": sha256,
            "ECS_HARDEN_PROJECT": str(PROJECT),
            "ECS_HARDEN_VAGRANT_MODULES": str(Path(molecule_plugins.vagrant.__file__).parent / "modules"),
            "MOLECULE_EPHEMERAL_DIRECTORY": str(self.dir / "molecule"),
            "ANSIBLE_HOME": str(self.dir / "ansible-home"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.dir / "ansible-cp"),
            "PATH": f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "NO_COLOR": "1",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
        })
        return env

    def vagrant(self, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess[str]:
        cp = self.sandbox.run(["vagrant", *args], env=self.env(), timeout=timeout, check=False)
        if check and cp.returncode != 0:
            raise SandboxError(
                f"vagrant {' '.join(args)} exited {cp.returncode}:\n{cp.stdout[-3000:]}\n"
                f"{cp.stderr[:2500]}\n...\n{cp.stderr[-500:]}"
                f"\nconsole:\n{self.console()[-3000:]}"
            )
        return cp

    def timed(self, what: str, fn: object, *args: object, **kw: object) -> object:
        t0 = time.monotonic()
        out = fn(*args, **kw)  # type: ignore[operator]
        self.timings[what] = round(time.monotonic() - t0, 1)
        return out

    def add_box(self) -> None:
        self.vagrant("box", "add", "--force", "--name", BOX, str(self.boxdir / "ecs-test.box"), timeout=600)

    def up(self) -> None:
        self.vagrant("up", "--provider=libvirt", timeout=1200)

    def ssh_config(self) -> Path:
        path = self.dir / "ssh-config"
        path.write_text(self.vagrant("ssh-config").stdout)
        return path

    def ssh(
        self, command: str, *, check: bool = True, timeout: float = 600, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        cfg = self.dir / "ssh-config"
        cp = self.sandbox.run(
            ["ssh", "-F", str(cfg), "-o", "ConnectTimeout=10", "-o", "BatchMode=yes", "default", command],
            timeout=timeout, check=False, input=input,
        )
        if check and cp.returncode != 0:
            raise SandboxError(f"ssh {command!r} exited {cp.returncode}: {cp.stdout[-2000:]} {cp.stderr[-2000:]}")
        return cp

    def wait_for_ssh(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ssh("true", check=False, timeout=30).returncode == 0:
                return
            time.sleep(3)
        raise SandboxError("the guest did not answer ssh: " + self.console()[-3000:])

    def reboot(self) -> None:
        """A real guest reboot: the kernel starts again, the ruleset is empty."""
        boot_id = self.ssh("cat /proc/sys/kernel/random/boot_id").stdout.strip()
        self.ssh("sudo systemctl reboot", check=False, timeout=30)
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            time.sleep(5)
            try:
                cp = self.ssh("cat /proc/sys/kernel/random/boot_id", check=False, timeout=30)
            except subprocess.TimeoutExpired:
                continue  # sshd going down or not up yet
            if cp.returncode == 0 and cp.stdout.strip() not in ("", boot_id):
                return
        raise SandboxError("the guest did not come back from the reboot: " + self.console()[-3000:])

    def console(self) -> str:
        """The guest's serial console (kernel, systemd, cloud-init), for failure messages."""
        logs = sorted(self.dir.glob("console*.log"))
        return "".join(f"== {p.name}\n" + p.read_text(errors="replace")[-3000:] for p in logs) or "(no console log)"

    # -- what the guest is given -----------------------------------------
    def seed_iso(self, user_data: str, instance_id: str) -> Path:
        """A NoCloud seed: user-data and meta-data on an ISO labelled cidata."""
        d = self.dir / "seed"
        d.mkdir(exist_ok=True)
        (d / "user-data").write_text(user_data)
        (d / "meta-data").write_text(f"instance-id: {instance_id}\nlocal-hostname: ecs-test\n")
        iso = self.dir / "seed.iso"
        subprocess.run(
            ["genisoimage", "-quiet", "-output", str(iso), "-volid", "cidata", "-joliet", "-rock",
             str(d / "user-data"), str(d / "meta-data")],
            check=True,
        )
        self.seed = iso
        return iso

    def serve(self, directory: Path, log: Path) -> str:
        """An HTTP server for the guest, on every address of the namespace (none of this
        machine's); its URL as the guest sees it."""
        self.sandbox.spawn(
            ["python3", "-m", "http.server", "--bind", "0.0.0.0", "--directory", str(directory), str(HTTP_PORT)],
            log,
        )
        return f"http://{HOST_ADDR}:{HTTP_PORT}/"

    def pytest(self, args: Sequence[str], timeout: float = 1200) -> subprocess.CompletedProcess[str]:
        """tests/infra against the guest, from inside the namespace, over one multiplexed
        ssh connection (testinfra runs a command per check; a handshake each is slow
        under emulation), made for this run only: a master from before a reboot is dead."""
        self.runs += 1
        mux = self.dir / f"ssh-config.{self.runs}"
        mux.write_text(
            (self.dir / "ssh-config").read_text()
            + f"\nHost *\n  ControlMaster auto\n  ControlPath {self.dir}/mux{self.runs}-%C\n  ControlPersist 60\n"
        )
        python = os.environ.get("ECS_HARDEN_PYTHON") or str(PROJECT / ".venv" / "bin" / "python")
        return self.sandbox.run(
            [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(PROJECT),
             "--hosts=ssh://default", f"--ssh-config={mux}", "--sudo",
             str(PROJECT / "tests" / "infra"), *args],
            timeout=timeout, check=False, env={"PYTHONPATH": str(PROJECT)},
        )


def record_timings(timings: dict[str, float]) -> None:
    """Merge into .cache/vm-timings.json (what TESTING.md and the notes quote)."""
    path = CACHE / "vm-timings.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    saved.update(timings)
    CACHE.mkdir(exist_ok=True)
    path.write_text(json.dumps(saved, indent=2) + "\n")


@contextlib.contextmanager
def lab_with_box(tmp_path_factory: pytest.TempPathFactory, name: str, hosts: int = 1) -> Iterator[VagrantLab]:
    """A started VagrantLab with the test box added, a wheelhouse of this checkout
    (lab.wheelhouse_url, for the role) and its release tarball for the box's Python 3.11
    (lab.release, for the user-data) served; its timings recorded when it ends."""
    boxdir, built = box()
    work = tmp_path_factory.mktemp(name)
    wheelhouse(work / "www" / "wheelhouse")
    tarball, sha256 = artifacts.artifact("3.11")
    shutil.copy(tarball, work / "www" / tarball.name)
    with VagrantLab(work / "lab", boxdir, hosts=hosts) as lab:
        lab.timings["box build"] = round(built, 1)
        url = lab.serve(work / "www", work / "http.log")
        lab.wheelhouse_url = url + "wheelhouse/"
        lab.release = (url + tarball.name, sha256)
        lab.release_file = work / "www" / tarball.name
        lab.add_box()
        try:
            yield lab
        finally:
            record_timings({k: v for k, v in lab.timings.items() if v or k != "box build"})
