"""What ecs-harden detects about the host it runs on."""

from __future__ import annotations

import datetime
import os
import re
import shutil
from dataclasses import dataclass
from typing import Any

from ecs_harden import flavors, proc
from ecs_harden.errors import RuntimeFailure


@dataclass(frozen=True)
class Process:
    running: bool
    pid: int | None = None
    started: float | None = None  # epoch seconds

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"running": self.running}
        if self.running:
            out["pid"] = self.pid
            out["started"] = iso(self.started)
        return out


@dataclass(frozen=True)
class Facts:
    flavor: str
    init: str
    iptables: str | None
    docker: Process
    ecs_agent: Process
    os_id: str = ""
    os_version: str = ""

    def platform(self) -> dict[str, Any]:
        return {"flavor": self.flavor, "init": self.init, "iptables": self.iptables}

    def to_json(self) -> dict[str, Any]:
        return {
            **self.platform(),
            "os": {"id": self.os_id, "version_id": self.os_version},
            "docker": self.docker.to_json(),
            "ecs_agent": self.ecs_agent.to_json(),
        }


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return (
        datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z")
    )


_VARIANT_RE = re.compile(r"\((legacy|nf_tables)\)")


def parse_iptables_version(text: str) -> str | None:
    """`iptables -V` output to 'legacy' or 'nf_tables'; iptables < 1.8 has no suffix and is legacy."""
    match = _VARIANT_RE.search(text)
    if match:
        return match.group(1)
    return "legacy" if text.strip().startswith("iptables v") else None


def iptables_variant() -> str | None:
    if shutil.which("iptables") is None:
        return None
    try:
        done = proc.run(["iptables", "-V"], timeout=10)
    except RuntimeFailure:
        return None
    return parse_iptables_version(done.stdout + done.stderr)


def init_system() -> str:
    if os.path.isdir("/run/systemd/system"):
        return "systemd"
    if os.path.exists("/sbin/initctl"):
        try:
            done = proc.run(["/sbin/initctl", "--version"], timeout=5, check=False)
        except RuntimeFailure:
            done = None
        if done is not None and "upstart" in done.stdout:
            return "upstart"
    return "sysvinit"


_last: dict[str, Process] = {}


def _still(key: str) -> Process | None:
    """The process found last time, if it still runs (one /proc read instead of a scan)."""
    import psutil  # here: `gate` (the agent's ExecStartPre) imports this module and needs none of it

    p = _last.get(key)
    if p is None or p.pid is None:
        return None
    try:
        if psutil.Process(p.pid).create_time() == p.started:
            return p
    except psutil.Error:
        pass
    return None


def _find(key: str, names: tuple[str, ...], match: Any) -> Process:
    """Scan by name (cheap: /proc/PID/stat), then confirm candidates with match."""
    import psutil

    found = _still(key)
    if found is not None:
        return found
    for p in psutil.process_iter(["name"]):
        try:
            if p.info["name"] in names and match({"name": p.info["name"], "cmdline": p.cmdline()}):
                found = Process(True, p.pid, p.create_time())
                _last[key] = found
                return found
        except (psutil.Error, TypeError, IndexError):
            continue
    return Process(False)


def _is_ecs_agent(info: dict[str, Any]) -> bool:
    """The agent is `/agent` inside the ecs-agent container, started by ecs-init."""
    cmd = info.get("cmdline") or []
    return (bool(cmd) and cmd[0] in ("/agent", "/agent.exe")) or info["name"] == "amazon-ecs-agent"


def docker() -> Process:
    return _find("docker", ("dockerd",), lambda info: True)


def ecs_agent() -> Process:
    return _find("ecs_agent", ("agent", "agent.exe", "amazon-ecs-agent"), _is_ecs_agent)


def gather() -> Facts:
    osr = flavors.read_os_release()
    flavor = flavors.detect_from(osr)
    return Facts(
        flavor=flavor.name,
        init=init_system(),
        iptables=iptables_variant(),
        docker=docker(),
        ecs_agent=ecs_agent(),
        os_id=osr.id,
        os_version=osr.version_id,
    )
