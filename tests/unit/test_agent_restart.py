"""ecs_agent.restart: warn when the agent predates ecs.config; restart under on-change."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ecs_harden import proc
from ecs_harden.ecsconfig.agent import AgentRestartComponent
from ecs_harden.facts import Process
from ecs_harden.policy import EcsConfigPolicy, Policy


def _policy(path: Path, restart: str = "never", mode: str = "enforce") -> Policy:
    return Policy(mode=mode, ecs_config=EcsConfigPolicy(path=str(path), restart_agent=restart))


@pytest.fixture
def config(tmp_path: Path) -> Path:
    p = tmp_path / "ecs.config"
    p.write_text("ECS_AWSVPC_BLOCK_IMDS=true\n")
    os.utime(p, (1000, 1000))
    return p


def test_not_running_is_ok(config: Path) -> None:
    c = AgentRestartComponent(_policy(config), "systemd", lambda: Process(False))
    (f,) = c.inspect().findings
    assert f.status == "ok" and f.actual == "not running"


def test_agent_started_after_change_is_ok(config: Path) -> None:
    c = AgentRestartComponent(_policy(config), "systemd", lambda: Process(True, 7, 2000.0))
    assert c.inspect().findings[0].status == "ok"


def test_stale_agent_warns_and_names_the_command(config: Path) -> None:
    c = AgentRestartComponent(_policy(config), "upstart", lambda: Process(True, 7, 500.0))
    insp = c.inspect()
    assert insp.findings[0].status == "warn"
    assert "stop ecs then start ecs" in insp.findings[0].detail
    assert insp.changes == ()  # restart_agent: never


@pytest.mark.parametrize(
    "init,expected",
    [
        ("systemd", [("systemctl", "restart", "ecs")]),
        ("upstart", [("stop", "ecs"), ("start", "ecs")]),
        ("sysvinit", [("service", "ecs", "restart")]),
    ],
)
def test_on_change_restarts_the_way_the_init_system_does(
    config: Path, monkeypatch: pytest.MonkeyPatch, init: str, expected: list[tuple[str, ...]]
) -> None:
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(proc, "run", lambda argv, **kw: calls.append(tuple(argv)))
    c = AgentRestartComponent(_policy(config, "on-change"), init, lambda: Process(True, 7, 500.0))
    insp = c.inspect()
    assert insp.repairs == frozenset({"ecs_agent.restart"})
    c.execute(insp)
    assert calls == expected


def test_report_mode_never_plans_a_restart(config: Path) -> None:
    policy = _policy(config, "on-change", mode="report")
    c = AgentRestartComponent(policy, "systemd", lambda: Process(True, 7, 500.0))
    assert c.inspect().changes == ()
