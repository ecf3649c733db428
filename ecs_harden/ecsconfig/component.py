"""The ecs_config.<KEY> checks: the file holds each managed key's desired value exactly once."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from ecs_harden.atomic import ensure_dir, read_bytes
from ecs_harden.component import ECS, Base, Inspection
from ecs_harden.ecsconfig.envfile import EnvFile, Line
from ecs_harden.errors import RefusedLink, RuntimeFailure
from ecs_harden.journal import ChangeJournal
from ecs_harden.policy import Policy
from ecs_harden.report import DRIFT, ERROR, OK, Finding

ECS_INIT_DEFAULTS = {"ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST": "true"}
# What a flag does not do, said in every finding of it (FACTS: the agent's source).
LIMITS = {
    "ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST": (
        "it only stops ECS placing host-network tasks that have a task role; it does not keep "
        "host-network containers from IMDS (they use the host's network, which the block leaves open)"
    ),
}


def _show(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")


def _lines(lines: list[Line]) -> str:
    nums = [str(line.number) for line in lines]
    return ("line " if len(nums) == 1 else "lines ") + ", ".join(nums)


def judge(envfile: EnvFile | None, key: str, want: str | None) -> Finding:
    """The finding for one managed key, as ecs-init would hand it to the agent, with
    what the flag does not do where that is easy to overlook."""
    found = _judge(envfile, key, want)
    limit = LIMITS.get(key)
    if limit is None:
        return found
    return dataclasses.replace(found, detail=f"{found.detail} (note: {limit})")


def _judge(envfile: EnvFile | None, key: str, want: str | None) -> Finding:
    check = f"ecs_config.{key}"
    expected = "absent" if want is None else f"{key}={want}"
    lines = envfile.lines_of(key) if envfile is not None else []
    if not lines:
        if want is None:
            return Finding(check, OK, expected, "absent", f"{key} is not set, as required")
        where = "the file does not exist" if envfile is None else f"no line sets {key}"
        default = ECS_INIT_DEFAULTS.get(key)
        consequence = (
            f"; ecs-init then injects {key}={default} itself, so absent is not {want}"
            if default is not None and default != want
            else "; the agent uses its built-in default"
        )
        return Finding(check, DRIFT, expected, "absent", where + consequence)
    last = lines[-1]
    actual = f"{key}={_show(last.value)}" if last.key == key else f"{key} (unreadable)"
    if len(lines) > 1:
        actual += f" ({len(lines)} lines)"
    if want is None:
        return Finding(
            check, DRIFT, expected, actual, f"{_lines(lines)} set {key}; the policy says absent"
        )
    problems: list[str] = []
    hidden = [line for line in lines if line.key != key]
    if hidden:
        problems.append(
            f"{_lines(hidden)}: whitespace before '=' hides {key} from ecs-init"
        )
    if len(lines) > 1:
        problems.append(
            f"{key} is set on {_lines(lines)}; ecs-init silently uses the last one (line {last.number})"
        )
    value = last.value
    if last.key == key and value != want.encode():
        if len(value) >= 2 and value[:1] in (b'"', b"'") and value[-1:] == value[:1]:
            problems.append(
                f"line {last.number}: the value {_show(value)} is quoted; ecs-init passes the "
                f"quotes to the agent, which cannot parse it, so the setting is silently off"
            )
        else:
            problems.append(f"line {last.number} sets {key}={_show(value)}, want {want}")
    if problems:
        return Finding(check, DRIFT, expected, actual, "; ".join(problems))
    return Finding(check, OK, expected, actual, f"line {last.number}: {key}={want}")


@dataclass(frozen=True)
class _Plan:
    old: bytes | None
    new: bytes


class EcsConfigComponent(Base):
    wakes_on = ECS
    name = "ecs_config"

    def __init__(self, policy: Policy):
        self.path = policy.ecs_config.path
        self.settings = dict(policy.ecs_config.settings)
        self.journal = ChangeJournal(policy.state_dir, policy.backups)

    def watches(self) -> tuple[str, ...]:
        return (self.path,)

    def inspect(self) -> Inspection[_Plan]:
        try:
            old = read_bytes(self.path)
        except RefusedLink as exc:
            return Inspection(tuple(
                Finding(f"ecs_config.{k}", ERROR, "absent" if v is None else f"{k}={v}",
                        "refused symlink", str(exc))
                for k, v in self.settings.items()
            ))
        envfile = EnvFile.parse(old) if old is not None else None
        findings = tuple(judge(envfile, k, v) for k, v in self.settings.items())
        new = (envfile or EnvFile(())).with_settings(self.settings).render()
        if old is not None and new == old:
            return Inspection(findings)
        if old is None and not any(v is not None for v in self.settings.values()):
            return Inspection(findings)
        drifted = [f for f in findings if f.status == DRIFT]
        changes = tuple(
            f"{self.path}: " + (f"remove {f.check[11:]}" if f.expected == "absent" else f"set {f.expected}")
            for f in drifted
        )
        return Inspection(
            findings,
            changes or (f"{self.path}: normalise managed lines",),
            frozenset(f.check for f in drifted),
            _Plan(old, new),
        )

    def execute(self, inspection: Inspection[_Plan]) -> None:
        plan = inspection.plan
        if plan is None:
            return
        if read_bytes(self.path) != plan.old:
            raise RuntimeFailure(f"{self.path}: changed while being repaired; will retry")
        if plan.old is None:
            ensure_dir(os.path.dirname(self.path), mode=0o755)
        self.journal.replace_file(
            self.path, plan.old, plan.new, kind="ecs_config", summary=inspection.changes
        )
