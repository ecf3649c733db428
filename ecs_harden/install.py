"""`ecs-harden install`: what goes where on a host, written once. The user-data and the
Ansible role call it; neither says in bash or Jinja which restore package, unit or
drop-in a flavor needs.

1. The flavor's boot restore package (iptables-services with dnf or yum,
   iptables-persistent with apt-get, told not to save the live rules: ecs-harden
   merges its own), where its service is not installed yet.
2. ecs-harden.service as the package ships it, the Amazon Linux 2 drop-in (systemd
   219) on amzn2, and the drop-in that makes this policy's paths writable in the
   unit's sandbox (unitpaths.drop_in), each written only when it differs. Where the
   RPM put the unit in /usr/lib/systemd/system, no copy goes to /etc (a tarball
   install's is removed), nor an /etc gate that would mask the package's.
3. An ECS agent gate from an older user-data (ecs.service's `ExecStartPre=ecs-harden
   ... check`, which held the agent for what the policy only reports) becomes
   `ecs-harden gate`; the drop-in's other bytes stay as they were.
4. `systemctl daemon-reload` when a unit file changed, `systemctl enable`; with
   --now the unit is started, or restarted when it runs and a unit file or the
   installed version changed (--restart: whenever it runs).

The restore service itself is never started here, nor by apply: starting
iptables.service flushes the live tables and Docker's chains with them.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from ecs_harden import __version__, flavors, proc, unitpaths
from ecs_harden.atomic import ensure_dir, read_bytes, write_atomic
from ecs_harden.errors import RuntimeFailure
from ecs_harden.flavors import Flavor
from ecs_harden.persist.service import SYSTEMCTL_ENV, systemd_state, sysv_state
from ecs_harden.policy import Policy

UNIT = "ecs-harden.service"
UNIT_DIR = "/etc/systemd/system"
VENDOR_UNIT_DIR = "/usr/lib/systemd/system"  # where the RPM puts the unit and the agent gate
ECS_DROP_INS = "/etc/systemd/system/ecs.service.d"
GATE_NAME = "ecs-harden-gate.conf"  # the agent gate drop-in (the user-data's, the RPM's)
# The operator's documentation (the README, where the unit's Documentation= points, and
# docs/ beside it, so the README's links work on the host) and the man page.
DOC_DIR = "/usr/local/share/doc/ecs-harden"
MAN_DIR = "/usr/local/share/man/man8"
# Where the wheel put them (its data files, pyproject.toml): the venv's share/.
SHARE = os.path.join(sys.prefix, "share")
PACKAGED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "systemd")
VERSION_FILE = "installed-version"  # in state_dir: the version the running unit was started with


@dataclass
class Result:
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"changed": self.changed, "unchanged": self.unchanged}


def restore_installed(flavor: type[Flavor]) -> bool:
    states = [sysv_state(s) if flavor.service_manager == "sysv" else systemd_state(s)
              for s in flavor.restore_services]
    return bool(states) and all(st != "not-found" for st in states)


def install_restore(flavor: type[Flavor], result: Result, *, dry_run: bool) -> None:
    package = flavor.restore_package
    if package is None or not flavor.restore_services:
        raise RuntimeFailure(
            f"flavor {flavor.name}: no known boot restore for iptables; set imds.persist: false "
            "to run with the live block only, and persist it yourself"
        )
    if restore_installed(flavor):
        result.unchanged.append(f"{package} (the boot restore) is installed")
        return
    steps = flavor.install_steps(package)
    if steps is None:
        raise RuntimeFailure(f"cannot install {package}: none of {', '.join(flavor.package_tools)} "
                             f"(the {flavor.name} package tools) is on this host")
    tool = steps[-1].argv[0]
    result.changed.append(f"install {package} (the boot restore) with {tool}")
    if dry_run:
        return
    for step in steps:
        done = proc.run(list(step.argv), input=step.input, check=False, timeout=step.timeout,
                        env=dict(step.env))
        if done.returncode != 0 and step.must_succeed:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise RuntimeFailure(f"{' '.join(step.argv)} exited {done.returncode}: {' / '.join(tail)}")
    if not restore_installed(flavor):
        raise RuntimeFailure(f"{package} installed, but {', '.join(flavor.restore_services)} not found")


def from_package() -> bool:
    """The unit is the RPM's (/usr/lib/systemd/system, ExecStart /usr/bin/ecs-harden): a
    copy in /etc would shadow it, and an /etc gate of the same name would mask the
    package's (with a path the package does not have)."""
    vendor = read_bytes(os.path.join(VENDOR_UNIT_DIR, UNIT))
    return vendor is not None and b"\nExecStart=/usr/bin/ecs-harden run" in vendor


def unit_files(policy: Policy, flavor: type[Flavor]) -> dict[str, bytes | None]:
    """Every file of the unit and what it must hold (None: must not exist)."""
    with open(os.path.join(PACKAGED, UNIT), "rb") as f:
        unit = f.read()
    drop_ins = os.path.join(UNIT_DIR, f"{UNIT}.d")
    rpm = from_package()
    files: dict[str, bytes | None] = {os.path.join(UNIT_DIR, UNIT): None if rpm else unit}
    etc_gate = os.path.join(ECS_DROP_INS, GATE_NAME)
    if rpm and os.path.isfile(os.path.join(VENDOR_UNIT_DIR, "ecs.service.d", GATE_NAME)) \
            and not os.path.islink(etc_gate):  # a link (to /dev/null): the operator masked it
        files[etc_gate] = None  # the package's gate holds
    # The packaged drop-ins (systemd/<name>/): this flavor's, and none of another's.
    for name in sorted(os.listdir(PACKAGED)):
        packaged = os.path.join(PACKAGED, name, f"{UNIT}.d-{name}.conf")
        if os.path.isfile(packaged):
            with open(packaged, "rb") as f:
                ours = f.read() if flavor.unit_drop_in == name else None
            files[os.path.join(drop_ins, f"{name}.conf")] = ours
    files[os.path.join(drop_ins, "paths.conf")] = unitpaths.drop_in(policy, flavor.name).encode()
    return files


def shipped_docs() -> dict[str, bytes | None]:
    """The docs and the man page as the wheel shipped them into the venv's share/, at their
    places on the host; without them (a source checkout), the README from the package's
    metadata only."""
    files: dict[str, bytes | None] = {}
    for src, dest in ((os.path.join(SHARE, "doc", "ecs-harden"), DOC_DIR),
                      (os.path.join(SHARE, "man", "man8"), MAN_DIR)):
        for top, _dirs, names in os.walk(src):
            for name in sorted(names):
                if src.endswith("man8") and not name.startswith("ecs-harden."):
                    continue
                with open(os.path.join(top, name), "rb") as f:
                    files[os.path.join(dest, os.path.relpath(os.path.join(top, name), src))] = f.read()
    readme = os.path.join(DOC_DIR, "README.md")
    if readme not in files:
        body = _metadata_readme()
        if body is not None:
            files[readme] = body
    return files


def _metadata_readme() -> bytes | None:
    """The README as the installed package carries it (its metadata's description)."""
    try:
        from importlib.metadata import PackageNotFoundError, metadata
        body = metadata("ecs-harden").get_payload()
    except (ImportError, PackageNotFoundError):
        return None
    return body.encode() if isinstance(body, str) and body.strip() else None


def install_unit(policy: Policy, flavor: type[Flavor], result: Result, *, dry_run: bool) -> bool:
    """The unit's files; True when one changed (then systemd reloads and the unit restarts)."""
    return _write(unit_files(policy, flavor), result, dry_run=dry_run)


def install_docs(result: Result, *, dry_run: bool) -> None:
    """The docs and the man page: a changed page restarts nothing."""
    _write(shipped_docs(), result, dry_run=dry_run)


def _write(files: dict[str, bytes | None], result: Result, *, dry_run: bool) -> bool:
    """Write what differs; True when something did."""
    changed = False
    for path, want in files.items():
        have = read_bytes(path)
        if have == want:
            if want is not None:
                result.unchanged.append(path)
            continue
        changed = True
        result.changed.append(f"{'remove' if want is None else 'write'} {path}")
        if dry_run:
            continue
        if want is None:
            os.unlink(path)
        else:
            ensure_dir(os.path.dirname(path), mode=0o755)
            write_atomic(path, want, mode=0o644)
    return changed


_OLD_GATE = re.compile(
    rb"^(ExecStartPre=[-@!+]*)(\S*/ecs-harden|ecs-harden)(?:[ \t][^\n]*)?[ \t]check\b[^\n]*$", re.M)


def migrate_gates(result: Result, *, dry_run: bool, directory: str = ECS_DROP_INS) -> bool:
    """Rewrite each old gate line in ecs.service's drop-ins; True when one changed."""
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".conf"))
    except OSError:
        return False
    changed = False
    for name in names:
        path = os.path.join(directory, name)
        if os.path.islink(path):
            continue  # somebody's link: theirs to change
        have = read_bytes(path)
        if have is None:
            continue
        want = _OLD_GATE.sub(lambda m: m.group(1) + m.group(2) + b" gate", have)
        if want == have:
            continue
        changed = True
        result.changed.append(f"{path}: the ECS agent's gate is now `ecs-harden gate` (was a full check)")
        if not dry_run:
            write_atomic(path, want, mode=0o644)
    return changed


def create_writable(policy: Policy, flavor: type[Flavor], result: Result, *, dry_run: bool) -> None:
    """What the daemon writes, created now, as root and outside any sandbox. The unit's
    `ExecStartPre=+ecs-harden prepare` does it at every start too, but amzn2's systemd
    219 has no '+': there prepare runs inside the sandbox, where /opt and /var are
    read-only, and a directory missing then (node_exporter's textfile directory, say)
    stays missing."""
    missing = [p for p in unitpaths.writable_paths(policy, flavor.name) if not os.path.lexists(p.path)]
    if dry_run:
        result.changed.extend(f"create {p.path} ({p.why})" for p in missing)
        return
    result.changed.extend(f"create {path}" for path in unitpaths.prepare(policy, flavor.name))


def systemd_running() -> bool:
    """PID 1 is systemd (sd_booted): not in an image being prepared, a chroot, a container
    without it. Enabling works either way (it writes symlinks); reload and start do not."""
    return os.path.isdir("/run/systemd/system")


def _systemctl(*args: str, check: bool = True) -> proc.Completed:
    return proc.run(["systemctl", *args], check=check, timeout=120, env=SYSTEMCTL_ENV)


def _version_changed(policy: Policy) -> bool:
    try:
        data = read_bytes(os.path.join(policy.state_dir, VERSION_FILE))
    except RuntimeFailure:
        return True
    return data is None or data.decode("utf-8", "replace").strip() != __version__


def _remember_version(policy: Policy) -> None:
    ensure_dir(policy.state_dir, mode=0o700)
    write_atomic(os.path.join(policy.state_dir, VERSION_FILE), f"{__version__}\n".encode(), mode=0o600)


def install(
    policy: Policy, *, restore: bool = True, enable: bool = True, now: bool = False,
    restart: bool = False, dry_run: bool = False, flavor: type[Flavor] | None = None,
) -> Result:
    flavor = flavor or flavors.detect()
    result = Result()
    if restore and policy.imds.persist:
        install_restore(flavor, result, dry_run=dry_run)
    files_changed = install_unit(policy, flavor, result, dry_run=dry_run)
    if not from_package():  # the RPM has its own in /usr/share
        install_docs(result, dry_run=dry_run)
    gates_changed = migrate_gates(result, dry_run=dry_run)
    create_writable(policy, flavor, result, dry_run=dry_run)
    new_version = _version_changed(policy)
    booted = systemd_running()
    if (files_changed or gates_changed) and not dry_run and booted:
        _systemctl("daemon-reload")
    if enable:
        if systemd_state(UNIT) != "enabled":
            result.changed.append(f"enable {UNIT}")
            if not dry_run:
                _systemctl("enable", UNIT)
        else:
            result.unchanged.append(f"{UNIT} enabled")
    if dry_run:
        return result
    if now and not booted:
        raise RuntimeFailure(f"--now: systemd is not running here; {UNIT} is installed and enabled "
                             "and starts at the next boot")
    if now:
        active = _systemctl("is-active", UNIT, check=False).stdout.strip() == "active"
        if not active:
            _systemctl("start", UNIT)
            result.changed.append(f"start {UNIT}")
        elif restart or files_changed or new_version:
            _systemctl("restart", UNIT)
            why = "asked to" if restart else "its unit changed" if files_changed else f"now {__version__}"
            result.changed.append(f"restart {UNIT} ({why})")
        else:
            result.unchanged.append(f"{UNIT} running")
        _remember_version(policy)
    return result


def render(result: Result) -> Sequence[str]:
    return [*(f"changed: {c}" for c in result.changed), *(f"unchanged: {u}" for u in result.unchanged)]
