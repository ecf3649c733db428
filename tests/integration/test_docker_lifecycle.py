"""The block when Docker starts after the agent, and when Docker manages no iptables at all."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.conftest import require_lab
from tests.lab.host import CREDS, IMDS_V4, EcsHost


@pytest.fixture(params=["legacy", "nft"])
def bare(request: pytest.FixtureRequest) -> Iterator[EcsHost]:
    require_lab()
    h = EcsHost(request.param).start(docker=False)
    try:
        yield h
    finally:
        h.stop()


def test_apply_before_docker_starts_then_docker_starts(bare: EcsHost) -> None:
    assert bare.report("apply")[0] == 0
    assert "-N DOCKER-USER" in bare.sandbox.iptables("-S")
    bare.start_docker()
    bare.import_image()
    rules = bare.sandbox.rules("FORWARD")
    assert rules[0] == "-A FORWARD -j DOCKER-USER"
    assert not bare.reaches(IMDS_V4)
    assert bare.reaches(CREDS)
    assert bare.report("check")[0] == 0


def test_docker_with_iptables_false(bare: EcsHost) -> None:
    bare.start_docker("--iptables=false")
    bare.import_image()
    assert "DOCKER-USER" not in bare.sandbox.iptables("-S")
    assert bare.reaches(IMDS_V4)  # routed, not NATed: IMDS still answers
    assert bare.report("check")[0] == 3
    assert bare.report("apply")[0] == 0
    assert not bare.reaches(IMDS_V4)
