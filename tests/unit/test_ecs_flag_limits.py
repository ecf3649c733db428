"""What ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST=false does not do is said in its finding,
whatever the finding says otherwise (FACTS: it only stops ECS placing host-network
tasks that have a task role)."""

from __future__ import annotations

from ecs_harden.ecsconfig.component import judge
from ecs_harden.ecsconfig.envfile import EnvFile

KEY = "ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST"


def test_the_network_host_flag_says_what_it_does_not_do_ok_or_drift() -> None:
    for text, status in ((b"ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST=false\n", "ok"),
                         (b"ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST=true\n", "drift")):
        f = judge(EnvFile.parse(text), KEY, "false")
        assert f.status == status
        assert "does not keep host-network containers from IMDS" in f.detail, f.detail


def test_other_flags_carry_no_such_note() -> None:
    f = judge(EnvFile.parse(b"ECS_AWSVPC_BLOCK_IMDS=true\n"), "ECS_AWSVPC_BLOCK_IMDS", "true")
    assert f.status == "ok" and "note:" not in f.detail
