"""Fixtures for the namespace lab: one ECS-host look-alike per iptables variant."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.lab.host import EcsHost
from tests.require import require

NEEDED = ("unshare", "nsenter", "dockerd", "containerd", "iptables-legacy", "iptables-nft", "ip")


def lab_missing() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root"
    missing = [t for t in NEEDED if shutil.which(t) is None]
    if missing or not os.path.exists("/bin/busybox"):
        return "the lab needs " + ", ".join(missing or ["busybox-static"])
    return None


def require_lab() -> None:
    """Skip without the lab's tools; under CI their absence is a failure."""
    require(lab_missing())


@pytest.fixture(scope="module", params=["legacy", "nft"])
def host(request: pytest.FixtureRequest) -> Iterator[EcsHost]:
    require_lab()
    with EcsHost(request.param) as h:
        yield h


@pytest.fixture
def clean(host: EcsHost) -> EcsHost:
    """The host with Docker running and no block at all."""
    if host.docker("info", check=False).returncode != 0:
        host.start_docker()
    host.policy()
    host.harden("remove", "--yes", check=True)
    for fam in (4, 6):
        for chain in ("FORWARD", "DOCKER-USER"):
            for rule in host.sandbox.rules(chain, fam):
                if "169.254.169.254" in rule or "fd00:ec2::254" in rule:
                    host.sandbox.iptables("-D", *rule.split()[1:], family=fam)
    return host
