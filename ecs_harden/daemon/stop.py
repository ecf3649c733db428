"""Before `remove`: the daemon stopped, or the rollback refused. A running daemon would
put every rule back within a second; a unit left enabled would at the next boot."""

from __future__ import annotations

import json
import os
import shutil

from ecs_harden import proc
from ecs_harden.errors import RuntimeFailure
from ecs_harden.persist.service import SYSTEMCTL_ENV

UNIT = "ecs-harden.service"


def _systemd() -> bool:
    return shutil.which("systemctl") is not None and os.path.isdir("/run/systemd/system")


def _unit_state() -> tuple[str, str]:
    active = proc.run(["systemctl", "is-active", UNIT], check=False, env=SYSTEMCTL_ENV).stdout.strip()
    enabled = proc.run(["systemctl", "is-enabled", UNIT], check=False, env=SYSTEMCTL_ENV).stdout.strip()
    return active, enabled


def running_daemon(status_file: str) -> int | None:
    """The pid of a live `ecs-harden run` named by the status file, if any."""
    try:
        with open(status_file, "rb") as fh:
            pid = int(json.loads(fh.read())["daemon"]["pid"])
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid == os.getpid() or b"run" not in argv:
        return None
    return pid if any(b"ecs_harden" in a or b"ecs-harden" in a for a in argv) else None


def stop_daemon(status_file: str) -> list[str]:
    """Stop and disable ecs-harden.service where systemd runs it; refuse (nothing removed)
    while any daemon is still running. What was done, one line each."""
    done: list[str] = []
    if _systemd():
        active, enabled = _unit_state()
        if active in ("active", "activating", "reloading") or enabled in ("enabled", "enabled-runtime"):
            argv = ["systemctl", "disable", "--now", UNIT]
            result = proc.run(argv, check=False, timeout=120, env=SYSTEMCTL_ENV)
            if result.returncode != 0:
                raise RuntimeFailure(
                    f"{UNIT} is {active} and {enabled}: it would put every rule back, and "
                    f"`{' '.join(argv)}` failed ({result.stderr.strip() or result.returncode}); "
                    "nothing was removed"
                )
            done.append(f"stopped and disabled: {UNIT} (was {active}, {enabled})")
    pid = running_daemon(status_file)
    if pid is not None:
        raise RuntimeFailure(
            f"the ecs-harden daemon (pid {pid}) is running and would put every rule back: stop it "
            f"first (systemctl disable --now {UNIT}, or kill -TERM {pid}); nothing was removed"
        )
    return done
