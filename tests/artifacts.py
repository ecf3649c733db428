"""Release tarballs of this checkout (scripts/release), built once per source state and
target Python and shared by every test that installs ecs-harden the way an operator
does: the booted hosts, the emulated Amazon Linux hosts, the test VM."""

from __future__ import annotations

import hashlib
import importlib.util
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.boot.image import CACHE, PROJECT, cache_lock

SCRIPT = PROJECT / "scripts" / "release"


def source_hash() -> str:
    """The tracked files as they are now (what scripts/release builds from)."""
    names = subprocess.run(["git", "-C", str(PROJECT), "ls-files", "-z"], capture_output=True, check=True)
    h = hashlib.sha256()
    for rel in sorted(filter(None, names.stdout.decode().split("\0"))):
        path = PROJECT / rel
        if path.is_file():
            h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


NATIVE = platform.machine()  # scripts/release builds this one's wheels and makes aarch64's from them


def artifact(minor: str, arch: str = NATIVE) -> tuple[Path, str]:
    """The tarball for Python minor on arch (built now if this source state has none)
    and its sha256 as SHA256SUMS says."""
    with cache_lock("release"):
        return _artifact(minor, arch)


DEFAULT_TARGETS = ("3.8", "3.9", "3.11")  # scripts/release's


def release_dir() -> Path:
    """The whole release of this source state, as `scripts/release` makes it with its
    defaults (every target, the RPM with the 3.9 one, SHA256SUMS merged), each target built
    once, when first asked for: the booted hosts and the VMs install from it and the
    release tests read it (by then mostly built, not built a second time)."""
    for minor in DEFAULT_TARGETS:
        tarball, _ = artifact(minor)
    return tarball.parent


def _artifact(minor: str, arch: str = NATIVE) -> tuple[Path, str]:
    """One target at a time (both architectures), so the first test to ask waits for its
    own target only."""
    out = CACHE / f"release-{source_hash()}"
    sums = out / "SHA256SUMS"
    pattern = f"ecs-harden-*-py{minor}-{arch}.tar.gz"
    found = [p for p in out.glob(pattern)] if out.exists() else []
    if not found:
        for old in CACHE.glob("release-*"):
            if old != out:
                shutil.rmtree(old, ignore_errors=True)
        subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--target", minor], check=True,
                       timeout=1800)
        found = list(out.glob(pattern))
    (tarball,) = found
    for line in sums.read_text().splitlines():
        digest, _, name = line.partition("  ")
        if name == tarball.name:
            return tarball, digest
    raise AssertionError(f"{tarball.name} is not in {sums}")


def rpm(arch: str = NATIVE) -> Path:
    """The Amazon Linux 2023 RPM of this source state for arch (scripts/release builds
    it with the 3.9 tarball)."""
    with cache_lock("release"):
        tarball, _ = _artifact("3.9")
    (found,) = tarball.parent.glob(f"ecs-harden-*-1.amzn2023.{arch}.rpm")  # release 1, not a test's
    return found


def rpm_release(release: int) -> Path:
    """The same RPM rebuilt as another release of the same version (something to upgrade
    to and downgrade from), from the same 3.9 tarball."""
    rpmpkg = _rpmpkg()
    first = rpm()
    with cache_lock("release"):
        version = first.name.split("-")[2]
        want: Path = first.parent / rpmpkg.file_name(version, NATIVE, release)
        if not want.exists():
            (tarball,) = first.parent.glob(f"ecs-harden-*-py3.9-{NATIVE}.tar.gz")
            from tests.boot.amazon import pyenv_version
            rpmpkg.build(tarball, pyenv_version("3.9") / "bin" / "python3.9", first.parent,
                         int(first.stat().st_mtime), version=version, arch=NATIVE,
                         unit=(PROJECT / "ecs_harden" / "systemd" / "ecs-harden.service").read_text(),
                         readme=PROJECT / "README.md", license_file=PROJECT / "LICENSE", release=release)
    return want


def _rpmpkg() -> Any:
    """scripts/rpmpkg.py, as scripts/release imports it."""
    spec = importlib.util.spec_from_file_location("rpmpkg", PROJECT / "scripts" / "rpmpkg.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# A local S3-compatible store (moto's server) for the user-data's s3:// source.
BUCKET = "fleet-artifacts"
# What the launch template exports before our lines, as an instance role would provide:
# the AWS CLI then signs with these and never asks IMDS.
S3_CREDENTIALS = ("export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1 "
                  "AWS_EC2_METADATA_DISABLED=true\n")


def moto_argv(address: str, port: int) -> list[str]:
    return [sys.executable, "-m", "moto.server", "-H", address, "-p", str(port)]


def s3_upload(endpoint: str, tarball: Path) -> tuple[list[str], str]:
    """argv that puts tarball into the bucket at endpoint (to run where the endpoint is
    reachable), and its s3:// URL."""
    key = f"ecs-harden/{tarball.name}"
    code = (f"import boto3; s3 = boto3.client('s3', endpoint_url='{endpoint}', region_name='us-east-1', "
            "aws_access_key_id='testing', aws_secret_access_key='testing'); "
            f"s3.create_bucket(Bucket='{BUCKET}'); s3.upload_file('{tarball}', '{BUCKET}', '{key}')")
    return [sys.executable, "-c", code], f"s3://{BUCKET}/{key}"
