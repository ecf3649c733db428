"""Host facts that can be judged from text alone."""

from __future__ import annotations

import pytest

from ecs_harden import facts


@pytest.mark.parametrize(
    "text,variant",
    [
        ("iptables v1.8.9 (nf_tables)\n", "nf_tables"),
        ("iptables v1.8.9 (legacy)\n", "legacy"),
        ("iptables v1.8.4 (legacy)\n", "legacy"),
        ("iptables v1.4.18\n", "legacy"),  # Amazon Linux AMI: no suffix before 1.8
        ("", None),
        ("command not found", None),
    ],
)
def test_parse_iptables_version(text: str, variant: str | None) -> None:
    assert facts.parse_iptables_version(text) == variant


def test_iso_is_utc_z() -> None:
    assert facts.iso(0) == "1970-01-01T00:00:00Z"
    assert facts.iso(None) is None


def test_process_json_has_started_only_when_running() -> None:
    assert facts.Process(False).to_json() == {"running": False}
    running = facts.Process(True, 42, 0.0).to_json()
    assert running == {"running": True, "pid": 42, "started": "1970-01-01T00:00:00Z"}


def test_ecs_agent_matches_the_agent_binary_only() -> None:
    assert facts._is_ecs_agent({"name": "agent", "cmdline": ["/agent"]})
    init = ["/usr/libexec/amazon-ecs-init", "start"]
    assert not facts._is_ecs_agent({"name": "amazon-ecs-init", "cmdline": init})
    assert not facts._is_ecs_agent({"name": "bash", "cmdline": []})
