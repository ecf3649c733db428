"""Run the real `ecs-harden` as a subprocess, in a private network namespace so that
nothing it does to netfilter can reach this machine's own ruleset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def findings(self) -> dict[str, dict[str, Any]]:
        return {f["check"]: f for f in self.json()["findings"]}

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.stderr.splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out


@dataclass
class Harden:
    tmp: Path

    @property
    def config(self) -> Path:
        return self.tmp / "etc-ecs" / "ecs.config"

    @property
    def state(self) -> Path:
        return self.tmp / "state"

    @property
    def policy(self) -> Path:
        return self.tmp / "policy.yaml"

    def write_policy(self, extra: str = "", ecs_config: str = "") -> None:
        text = (
            f"state_dir: {self.state}\n"
            f"report:\n  status_file: {self.tmp / 'status.json'}\n"
            f"ecs_config:\n  path: {self.config}\n{ecs_config}" + extra
        )
        self.policy.write_text(text)
        os.chmod(self.policy, 0o600)

    def __call__(self, *args: str, policy: bool = True, env: dict[str, str] | None = None) -> Result:
        argv = [sys.executable, "-m", "ecs_harden", "--log-format", "json"]
        if policy:
            argv += ["--policy", str(self.policy)]
        cp = subprocess.run(
            ["unshare", "--net", "--", *argv, *args],
            capture_output=True, text=True, timeout=120, check=False,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]),
                 "ECS_HARDEN_LOCK_FILE": str(self.tmp / "reconcile.lock"),
                 "XTABLES_LOCKFILE": str(self.tmp / "xtables.lock"), **(env or {})},
        )
        return Result(cp.returncode, cp.stdout, cp.stderr)


@pytest.fixture
def harden(tmp_path: Path) -> Harden:
    if os.geteuid() != 0:
        pytest.skip("needs root for unshare")
    h = Harden(tmp_path)
    h.config.parent.mkdir()
    h.write_policy("imds:\n  persist: false\n")
    return h
