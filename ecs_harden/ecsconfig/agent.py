"""The ecs_agent.restart check: the running agent must have read the current ecs.config."""

from __future__ import annotations

import os
from collections.abc import Callable

from ecs_harden import facts, proc
from ecs_harden.component import ECS, Base, Inspection
from ecs_harden.policy import Policy
from ecs_harden.report import OK, WARN, Finding

CHECK = "ecs_agent.restart"

RESTART_COMMANDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "systemd": (("systemctl", "restart", "ecs"),),
    "upstart": (("stop", "ecs"), ("start", "ecs")),
    "sysvinit": (("service", "ecs", "restart"),),
}


class AgentRestartComponent(Base):
    wakes_on = ECS
    name = "ecs_agent"

    def __init__(
        self,
        policy: Policy,
        init: str,
        find_agent: Callable[[], facts.Process] = facts.ecs_agent,
    ):
        self.path = policy.ecs_config.path
        self.restart = policy.ecs_config.restart_agent == "on-change" and policy.enforce
        self.init = init
        self.find_agent = find_agent

    def commands(self) -> tuple[tuple[str, ...], ...]:
        return RESTART_COMMANDS.get(self.init, RESTART_COMMANDS["sysvinit"])

    def inspect(self) -> Inspection[bool]:
        agent = self.find_agent()
        expected = "agent started after ecs.config last changed"
        if not agent.running or agent.started is None:
            return Inspection(
                (Finding(CHECK, OK, expected, "not running",
                         "the ECS agent is not running; it reads ecs.config when it starts"),)
            )
        try:
            mtime = os.stat(self.path).st_mtime
        except FileNotFoundError:
            return Inspection((Finding(CHECK, OK, expected, "no ecs.config", "nothing to reload"),))
        actual = f"agent pid {agent.pid} started {facts.iso(agent.started)}"
        if agent.started >= mtime:
            return Inspection((Finding(CHECK, OK, expected, actual, "the agent runs with the current file"),))
        how = " then ".join(" ".join(c) for c in self.commands())
        detail = (
            f"ecs.config changed at {facts.iso(mtime)}, after the agent started: it still runs "
            f"with the old settings; restart it ({how})"
        )
        finding = Finding(CHECK, WARN, expected, actual, detail)
        if not self.restart:
            return Inspection((finding,))
        return Inspection((finding,), (f"restart the ECS agent: {how}",), frozenset({CHECK}), True)

    def execute(self, inspection: Inspection[bool]) -> None:
        if not inspection.plan:
            return
        cmds = self.commands()
        for i, argv in enumerate(cmds):
            # upstart's `stop` fails when the job is already stopped; `start` must not.
            proc.run(argv, timeout=120, check=i == len(cmds) - 1)
