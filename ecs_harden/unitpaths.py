"""What the sandboxed unit must be able to write, and `ecs-harden prepare`, which creates it.

systemd skips a `ReadWritePaths=-PATH` that does not exist when it builds the
unit's mount namespace, and fails the unit for one without the `-`. So whatever
the daemon writes must exist before that namespace is built: the unit runs
`ecs-harden prepare` as a fully privileged `ExecStartPre=+` (outside the
ProtectSystem=strict view), which creates the missing directories and the
xtables lock file, and only then starts the sandboxed daemon.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ecs_harden import flavors
from ecs_harden.atomic import ensure_dir
from ecs_harden.errors import RuntimeFailure
from ecs_harden.firewall.libiptc import LOCK_PATH as XTABLES_LOCK
from ecs_harden.policy import Policy


@dataclass(frozen=True)
class WritablePath:
    path: str
    kind: str  # "dir" or "file"
    mode: int
    why: str


def _file_dir(path: str) -> str:
    """The directory a write to path really lands in (a symlink's target's directory)."""
    real = os.path.realpath(path) if os.path.islink(path) else path
    return os.path.dirname(real)


def writable_paths(policy: Policy, flavor: str) -> list[WritablePath]:
    """Every directory (and the one file) the daemon writes under this policy and flavor."""
    out = [
        WritablePath(_file_dir(policy.ecs_config.path), "dir", 0o755, "ecs_config.path"),
        WritablePath(policy.state_dir, "dir", 0o700, "state_dir"),
        WritablePath(os.path.dirname(policy.report.status_file), "dir", 0o755, "report.status_file"),
    ]
    if policy.report.textfile:
        out.append(WritablePath(os.path.dirname(policy.report.textfile), "dir", 0o755, "report.textfile"))
    if policy.imds.persist:
        fl = flavors.by_name(flavor)
        families = (4, 6) if policy.imds.ipv6 is not None else (4,)
        for family in families:
            rules = fl.rules_file(family)
            if rules:
                out.append(WritablePath(_file_dir(rules), "dir", 0o755, f"{fl.name} rules file"))
    out.append(WritablePath(XTABLES_LOCK, "file", 0o600, "the xtables lock (legacy iptables)"))
    seen: set[str] = set()
    unique = []
    for p in out:
        if p.path not in seen:
            seen.add(p.path)
            unique.append(p)
    return unique


def _create(p: WritablePath) -> None:
    if p.kind == "dir":
        ensure_dir(p.path, mode=p.mode)
        os.chmod(p.path, p.mode)  # whatever the unit's UMask= made of it
        return
    ensure_dir(os.path.dirname(p.path), mode=0o755)
    try:
        os.close(os.open(p.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, p.mode))
    except OSError as exc:
        raise RuntimeFailure(f"{p.path}: cannot create: {exc.strerror}") from None


def prepare(policy: Policy, flavor: str) -> list[str]:
    """Create what is missing and return it; try every path, then raise for the first failure."""
    created: list[str] = []
    failures: list[str] = []
    for p in writable_paths(policy, flavor):
        if os.path.lexists(p.path):
            continue
        try:
            _create(p)
            created.append(p.path)
        except (OSError, RuntimeFailure) as exc:
            failures.append(f"{p.path} ({p.why}): {exc}")
    if failures:
        raise RuntimeFailure("cannot create " + "; ".join(failures)
                             + (f" (created {', '.join(created)})" if created else ""))
    return created
