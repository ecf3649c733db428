"""EMULATED Amazon Linux 2023 and 2 hosts from the Debian test image (no Amazon Linux
image can be fetched here): what tests/boot/scripts/amazon-linux needs in its /dress
directory. What each part emulates, and how, is said where it is made; TESTING.md
(its Layout, tests/boot) sums it up.

- AL2023: iptables-nft, python3 is 3.9, dnf; AL2: iptables-legacy, python3 is 3.7 and
  3.8 comes from amazon-linux-extras, yum. The Pythons are pyenv's builds for this
  Debian (the image's libc), under /usr/local/lib/amzn-python.
- AL2023: the real rpm and dnf (Debian's builds, kept out of PATH in the image) over a
  local repository (`repository`): a base package providing what the ECS AMI has, and
  iptables-services built as an RPM (tests/boot/amazon/rpm). AL2: yum, rpm and
  amazon-linux-extras are tests/boot/amazon/pkgtool (a stand-in).
- iptables-services: its units (the package's text), an init script reduced to what
  they use (tests/lab/files/iptables.init) and its sample rules files, byte for byte.
- systemd is the image's 252 on both: AL2's 219 cannot be had here (TESTING.md).
- Docker is the image's docker.io, running for real (in a cgroup tree of the host's
  own, tests/boot/cgroups.py), with the test box's fake IMDS and credentials endpoint.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.boot.image import CACHE, PROJECT, cache_lock
from tests.boot.nspawn import BootedHost
from tests.lab.flavors import FIXTURES, IPTABLES_SERVICE, LAB_FILES, OS_RELEASE, SAMPLES

HERE = Path(__file__).resolve().parent / "amazon"
DRESS_SCRIPT = Path(__file__).resolve().parent / "scripts" / "amazon-linux"
PREFIX = "/usr/local/lib/amzn-python"  # where the dress puts the Pythons
BOX_FILES = PROJECT / "vm" / "box" / "files"
NOCLOUD = BOX_FILES / "99-ecs-test-nocloud.cfg"
# (python3, the Pythons on the host, the one the user-data's venv uses)
PYTHONS = {"amzn2023": ("3.9", ("3.9",), "3.9"), "amzn2": ("3.7", ("3.7", "3.8"), "3.8")}
NVR = {"amzn2023": "iptables-services-1.8.8-3.amzn2023.0.2.noarch",
       "amzn2": "iptables-services-1.8.4-10.amzn2.1.2.x86_64"}
# TEST FIXTURE: what netfilter holds when docker.service starts (Docker itself runs:
# the host boots with the cgroup hierarchy and the keyring calls it needs, see BootedHost).
DOCKER_RECORD = """# TEST FIXTURE (tests/boot/amazon.py): the ruleset at the moment docker.service starts
[Service]
ExecStartPre=/bin/sh -c 'mkdir -p /var/log/ecs-test; \
{ cat /proc/sys/kernel/random/boot_id; systemctl is-active ecs-harden iptables; \
iptables -S; iptables -t raw -S; } > /var/log/ecs-test/before-docker.v4; \
{ ip6tables -S; ip6tables -t raw -S; } > /var/log/ecs-test/before-docker.v6'
"""


# TEST FIXTURE: the ECS agent's unit where ECS AMIs have it (ordering and restart as
# there; RestartSec 2 s instead of 10 s to keep the test short), running nothing.
ECS_SERVICE = """# TEST FIXTURE (tests/boot/amazon.py): ecs.service as ECS AMIs order and restart it
[Unit]
Description=TEST FIXTURE: Amazon ECS container agent (a stand-in)
Requires=docker.service
After=docker.service
After=cloud-final.service
[Service]
Type=simple
Restart=on-failure
RestartSec=2s
EnvironmentFile=-/etc/ecs/ecs.config
ExecStart=/bin/sleep infinity
[Install]
WantedBy=multi-user.target
"""


def pyenv_version(minor: str) -> Path:
    """pyenv's newest build of that minor version (pyenv is on every machine here)."""
    try:
        root = Path(subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):  # not on PATH: where scripts/oldpython looks too
        root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    pattern = re.compile(rf"{re.escape(minor)}\.(\d+)")
    found = sorted((p for p in (root / "versions").iterdir() if pattern.fullmatch(p.name)),
                   key=lambda p: int(p.name.rsplit(".", 1)[1]))
    if not found:
        raise FileNotFoundError(f"pyenv has no Python {minor}")
    return found[-1]


def wheelhouse(python: Path, dest: Path) -> Path:
    """ecs-harden and its dependencies, built by and for that Python (as an operator builds
    a wheelhouse per target Python)."""
    dest.mkdir(parents=True, exist_ok=True)
    # pip's `wheel` of an sdist without pyproject.toml (python-iptables) needs the wheel
    # package, which pyenv's bare interpreter lacks: a build venv of that Python has it.
    venv = CACHE / f"wheel-build-{python.name}"
    if not (venv / "bin" / "wheel").exists():
        subprocess.run([str(python / "bin" / "python3"), "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "wheel"],
                       check=True, timeout=600)
    subprocess.run([str(venv / "bin" / "pip"), "wheel", "-q", "--disable-pip-version-check",
                    "-w", str(dest), str(PROJECT)], check=True, timeout=1200)
    return dest


def package(dest: Path, flavor: str) -> None:
    """iptables-services as the stand-in package manager installs it."""
    files = dest / "files"
    units = files / "usr" / "lib" / "systemd" / "system"
    libexec = files / "usr" / "libexec" / "iptables"
    sysconfig = files / "etc" / "sysconfig"
    for d in (units, libexec, sysconfig):
        d.mkdir(parents=True, exist_ok=True)
    for tool, v in (("iptables", "IPv4"), ("ip6tables", "IPv6")):
        (units / f"{tool}.service").write_text(IPTABLES_SERVICE.format(tool=tool, v=v))
        os.chmod(units / f"{tool}.service", 0o644)
        shutil.copy(LAB_FILES / "iptables.init", libexec / f"{tool}.init")
        os.chmod(libexec / f"{tool}.init", 0o755)
        shutil.copy(SAMPLES / tool, sysconfig / tool)
        os.chmod(sysconfig / tool, 0o600)
    (dest / "config").write_text("/etc/sysconfig/iptables\n/etc/sysconfig/ip6tables\n")
    (dest / "nvr").write_text(NVR[flavor] + "\n")


RPM_SPECS = HERE / "rpm"


def _rpmbuild(spec: Path, stage: Path | None, out: Path) -> None:
    text = spec.read_text().replace("@STAGE@", str(stage))
    work = out / "build"
    (work / "SPECS").mkdir(parents=True, exist_ok=True)
    (work / "SPECS" / spec.name).write_text(text)
    subprocess.run(["rpmbuild", "-bb", "--define", f"_topdir {work}", "--define", "_build_id_links none",
                    "--define", "__os_install_post %{nil}", "--define", "_rpmdir %{_topdir}/RPMS",
                    "--define", "_rpmfilename %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm",
                    str(work / "SPECS" / spec.name)], check=True, capture_output=True, timeout=300)
    for rpm in (work / "RPMS").glob("*.rpm"):
        shutil.move(str(rpm), out / rpm.name)
    shutil.rmtree(work)


def repository(dest: Path, extra: Sequence[Path] = ()) -> Path:
    """TEST FIXTURE: AL2023's local repository for the real dnf: the base package (what
    the AMI provides), iptables-services as Amazon's package lays its files down, and the
    extra RPMs (a release's ecs-harden), indexed by createrepo_c."""
    h = hashlib.sha256()
    for path in sorted(RPM_SPECS.iterdir()):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    h.update(IPTABLES_SERVICE.encode() + (LAB_FILES / "iptables.init").read_bytes())
    for tool in ("iptables", "ip6tables"):
        h.update((SAMPLES / tool).read_bytes())
    cached = CACHE / f"amzn2023-rpms-{h.hexdigest()[:12]}"
    with cache_lock("amzn2023-rpms"):
        if not (cached / "done").exists():
            shutil.rmtree(cached, ignore_errors=True)
            cached.mkdir(parents=True)
            package(cached / "iptables-services", "amzn2023")
            _rpmbuild(RPM_SPECS / "amzn2023-base.spec", None, cached)
            _rpmbuild(RPM_SPECS / "iptables-services.spec", cached / "iptables-services" / "files", cached)
            (cached / "done").write_text("ok\n")
    repo = dest / "repo"
    repo.mkdir(parents=True)
    for rpm in [*cached.glob("*.rpm"), *extra]:
        shutil.copy(rpm, repo / rpm.name)
    subprocess.run(["createrepo_c", "-q", str(repo)], check=True, capture_output=True, timeout=300)
    return repo


def dress(dest: Path, flavor: str, user_data: str | None, *, python38: bool = False,
          docker: bool = False, login: Path | None = None, release: Path | None = None,
          rpms: Sequence[Path] = ()) -> list[str]:
    """Fill dest (the script's /dress) for flavor; return the extra nspawn binds. Without
    user_data, no cloud-init seed and no wheelhouse (a host Ansible installs); python38:
    amazon-linux-extras' python3.8 installed beforehand (AL2); docker: Docker runs, with
    the test box's fake IMDS and credentials endpoint and its busybox image (a host booted
    with a Subtree, tests/boot/cgroups.py), else docker.service stays masked; login: a
    public key root's ssh accepts; rpms: more packages in AL2023's local repository."""
    python3, pythons, _ = PYTHONS[flavor]
    (dest / "flavor").write_text(flavor + "\n")
    shutil.copy(FIXTURES / OS_RELEASE[flavor], dest / "os-release")
    shutil.copy(HERE / "pkgtool", dest / "pkgtool")
    if flavor == "amzn2023":  # the real rpm and dnf, over a local repository
        repository(dest, rpms)
    else:  # yum, rpm and amazon-linux-extras: the stand-in
        package(dest / "packages" / "iptables-services", flavor)
    binds = []
    versions = []
    for minor in pythons:
        build = pyenv_version(minor)
        (dest / f"python-{build.name}").mkdir()
        binds.append(f"{build}:/dress/python-{build.name}")
        versions.append(build.name)
    (dest / "pythons").write_text("".join(f"{v}\n" for v in versions))
    by_minor = {v.rsplit(".", 1)[0]: v for v in versions}
    (dest / "python3").write_text(f"{PREFIX}/{by_minor[python3]}/bin/python{python3}\n")
    if flavor == "amzn2":  # amazon-linux-extras' python3.8 topic: the interpreter on PATH
        v38 = by_minor["3.8"]
        (dest / "extras-python3.8").write_text(f"/usr/bin/python3.8 {PREFIX}/{v38}/bin/python3.8\n")
    (dest / "docker-record.conf").write_text(DOCKER_RECORD)
    if docker:  # the test box's Docker layer: its daemon.json, fake IMDS, credentials, image
        shutil.copytree(BOX_FILES, dest / "box")
        (dest / "docker").write_text("yes\n")
        (dest / "ecs.service").write_text(ECS_SERVICE)
    if release is not None:
        (dest / "dist").mkdir()
        shutil.copy(release, dest / "dist" / release.name)
    if login is not None:
        shutil.copy(login, dest / "authorized_keys")
    if python38:
        (dest / "preinstall-python3.8").write_text("yes\n")
    if user_data is None:
        return binds
    shutil.copy(NOCLOUD, dest / "99-ecs-test-nocloud.cfg")
    (dest / "meta-data").write_text(f"instance-id: i-ecs-test-{flavor}-{int(time.time())}\n"
                                    f"local-hostname: ecs-test-{flavor}\n")
    (dest / "user-data").write_text(user_data)
    return binds



def dressed(host: BootedHost, dest: Path, flavor: str, user_data: str | None = None, **kw: Any) -> None:
    """The host's image dressed as flavor: dress() fills dest, then the dressing script
    (tests/boot/scripts/amazon-linux) runs in the image, offline."""
    binds = dress(dest, flavor, user_data, **kw)
    host.offline(DRESS_SCRIPT.read_text(), binds=[f"{dest}:/dress", *binds], timeout=900)

def venv_python(flavor: str) -> Path:
    """The pyenv build the flavor's venv runs on (what its wheelhouse is built with)."""
    return pyenv_version(PYTHONS[flavor][2])


# A container on docker0 asking the host's fake IMDS every 50 ms: REACHED in its log each
# time it got an answer.
PROBER = ("while :; do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 1 169.254.169.254 80 2>/dev/null "
          "| grep -q imds-ok && echo REACHED; sleep 0.05; done")


def start_prober(host: BootedHost) -> None:
    host.run(["/usr/local/lib/ecs-test/ecs-test-image"])
    host.run(["docker", "run", "-d", "--name", "prober", "lab/busybox", "sh", "-c", PROBER])
    time.sleep(2)


def reached(host: BootedHost) -> int:
    """How many times the prober reached IMDS."""
    return host.run(["docker", "logs", "prober"], check=False).stdout.count("REACHED")


def main_pid(host: BootedHost) -> str:
    return host.run(["systemctl", "show", "-p", "MainPID", "--value", "ecs-harden.service"]).stdout.strip()
