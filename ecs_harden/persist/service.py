"""imds.persistence.service: the distribution's boot restore is enabled (and safe to enable).

Enabling only: the restore service is never started or restarted here, because
restarting iptables.service flushes the live tables and Docker's rules with them
(moby/moby#12294).
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable

from ecs_harden import proc
from ecs_harden.atomic import Identity, file_identity, read_bytes
from ecs_harden.component import FILES, Base, Inspection
from ecs_harden.errors import RefusedLink, RuntimeFailure
from ecs_harden.flavors import Flavor
from ecs_harden.journal import ChangeJournal
from ecs_harden.persist.rulesfile import RulesFile
from ecs_harden.persist.samples import is_untouched_sample
from ecs_harden.report import DRIFT, ERROR, OK, WARN, Finding

CHECK = "imds.persistence.service"


# netfilter-persistent also ships a SysV script, so a plain `systemctl enable` runs
# update-rc.d in the caller, which writes /etc/rc?.d: read-only in the unit's sandbox,
# and needless where systemd boots the host. Skipping SysV leaves the native unit to
# PID 1 (over D-Bus), which writes its symlinks outside our sandbox.
SYSTEMCTL_ENV = {"SYSTEMCTL_SKIP_SYSV": "1"}


def systemd_state(unit: str) -> str:
    """`systemctl is-enabled` (works offline): enabled, disabled, masked, ... or not-found."""
    try:
        done = proc.run(["systemctl", "is-enabled", unit], check=False, env=SYSTEMCTL_ENV)
    except proc.CommandError as exc:
        return f"unknown: {exc}"
    state = done.stdout.strip().splitlines()[-1:] if done.stdout.strip() else []
    if state:
        return state[0]
    if "No such file" in done.stderr or "not found" in done.stderr or done.returncode == 4:
        return "not-found"
    return "unknown: " + done.stderr.strip()


def sysv_state(service: str, rc_root: str = "/etc") -> str:
    """chkconfig's view, read from the rc symlinks it maintains (runlevel 3)."""
    if not os.path.exists(os.path.join(rc_root, "init.d", service)) and not os.path.exists(
        os.path.join(rc_root, "rc.d", "init.d", service)
    ):
        return "not-found"
    for pattern in ("rc.d/rc3.d/S??" + service, "rc3.d/S??" + service):
        if glob.glob(os.path.join(rc_root, pattern)):
            return "enabled"
    return "disabled"


UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/lib/systemd/system",
             "/lib/systemd/system", "/etc/init.d", "/etc/rc.d/init.d", "/etc/rc.d/rc3.d", "/etc/rc3.d")
CACHE_FOR = 3600.0


def enablement_signature(extra: tuple[str, ...] = ()) -> tuple[tuple[str, Identity], ...]:
    """mtimes of every directory whose entries decide `systemctl is-enabled` (and chkconfig):
    enabling, disabling, masking or installing a unit adds or removes an entry in one."""
    dirs: list[str] = []
    for d in UNIT_DIRS:
        dirs.append(d)
        try:
            with os.scandir(d) as it:
                dirs += [e.path for e in it if e.name.endswith((".wants", ".requires")) and e.is_dir()]
        except OSError:
            pass
    return tuple((d, file_identity(d)) for d in (*dirs, *extra))


class ServiceComponent(Base):
    wakes_on = FILES
    name = CHECK

    def __init__(
        self, flavor: type[Flavor], families: tuple[int, ...], clock: Callable[[], float] = time.monotonic,
        journal: ChangeJournal | None = None,
    ):
        self.flavor = flavor
        self.journal = journal  # records what it enabled, so that `remove` disables just that
        self.families = families
        self.services = flavor.services_for(families)
        self.clock = clock
        # A steady answer, kept while nothing it depends on changed (at most CACHE_FOR):
        # the daemon's resync then costs no `systemctl` process.
        self._cached: tuple[object, float, Inspection[tuple[tuple[str, ...], ...]]] | None = None

    def expected(self) -> str:
        return (", ".join(self.services) or "a boot restore service") + " enabled for boot"

    def state(self, service: str) -> str:
        if self.flavor.service_manager == "sysv":
            return sysv_state(service)
        return systemd_state(service)

    def enable_argv(self, service: str, verb: str = "enable") -> tuple[str, ...]:
        if self.flavor.service_manager == "sysv":
            return ("chkconfig", service, "on" if verb == "enable" else "off")
        return ("systemctl", verb, service)

    def breaking_rules(self, *, samples_too: bool = False) -> list[str]:
        """The catch-all REJECT/DROP lines the boot restore would bring back. The
        package's untouched sample is left out unless samples_too: imds.ipvN.persisted
        replaces it before this component runs (and execute looks again)."""
        out = []
        for family in self.families:
            path = self.flavor.rules_file(family)
            try:
                data = read_bytes(path) if path else None
            except RefusedLink:
                continue  # the file's own check reports the link
            if not data or path is None:
                continue
            rejects = RulesFile(data).catch_all_rejects()
            if rejects and not samples_too and self.flavor.ships_sample and is_untouched_sample(
                data, family, path, self.flavor.restore_package
            )[0]:
                continue
            out += [f"{path}: {r}" for r in rejects]
        return out

    def inspect(self) -> Inspection[tuple[tuple[str, ...], ...]]:
        rules = tuple(p for p in (self.flavor.rules_file(f) for f in self.families) if p)
        key = enablement_signature(rules)
        now = self.clock()
        if self._cached is not None and self._cached[0] == key and now - self._cached[1] < CACHE_FOR:
            return self._cached[2]
        inspection = self._inspect()
        steady = not inspection.changes and all(f.status != ERROR for f in inspection.findings)
        self._cached = (key, now, inspection) if steady else None
        return inspection

    def _inspect(self) -> Inspection[tuple[tuple[str, ...], ...]]:
        if not self.services:
            return Inspection((Finding(
                CHECK, ERROR, self.expected(), "no mechanism",
                f"flavor {self.flavor.name}: no known boot restore service; the block is not restored "
                "at boot unless you persist it yourself (or set imds.persist: false)",
            ),))
        states = {s: self.state(s) for s in self.services}
        actual = ", ".join(f"{s}: {st}" for s, st in states.items())
        unknown = [st for st in states.values() if st.startswith("unknown")]
        if unknown:
            return Inspection((Finding(
                CHECK, ERROR, self.expected(), actual,
                f"cannot tell whether the boot restore is enabled ({unknown[0]})",
            ),))
        missing = [s for s, st in states.items() if st == "not-found"]
        if missing:
            return Inspection((Finding(
                CHECK, ERROR, self.expected(), actual,
                f"{', '.join(missing)} not installed (package {self.flavor.restore_package}): "
                f"run `{self.flavor.install_command()}`, then ecs-harden apply",
            ),))
        off = [s for s, st in states.items() if not st.startswith("enabled")]
        # Enabled already: the sample too is what boot restores until it is replaced.
        breaking = self.breaking_rules(samples_too=not off)
        restores = "; ".join(breaking)
        if not off:
            if breaking:
                return Inspection((Finding(
                    CHECK, WARN, self.expected(), actual,
                    f"enabled, but at boot it restores {restores}, which cuts containers off "
                    "(or the task credentials endpoint behind INPUT)",
                ),))
            return Inspection(
                (Finding(CHECK, OK, self.expected(), actual, "the boot restore is enabled"),)
            )
        masked = [s for s in off if states[s] == "masked"]
        if masked:
            return Inspection((Finding(
                CHECK, DRIFT, self.expected(), actual,
                f"{', '.join(masked)} is masked; unmask it (systemctl unmask) if the block should "
                "survive a reboot; ecs-harden does not override a mask",
            ),))
        if breaking:
            return Inspection((Finding(
                CHECK, DRIFT, self.expected(), actual,
                f"not enabled, and not enabled by ecs-harden: at boot it would restore {restores}, "
                "which cuts every container off (and the task credentials endpoint behind INPUT). "
                "Remove the catch-all REJECT/DROP lines from the file, then run ecs-harden apply",
            ),))
        argvs = tuple(self.enable_argv(s) for s in off)
        return Inspection(
            (Finding(CHECK, DRIFT, self.expected(), actual,
                     f"{', '.join(off)} not enabled: the persisted block is not restored at boot"),),
            tuple(" ".join(a) for a in argvs),
            frozenset({CHECK}),
            argvs,
        )

    def execute(self, inspection: Inspection[tuple[tuple[str, ...], ...]]) -> None:
        argvs = inspection.plan
        if argvs is None:
            return
        breaking = self.breaking_rules(samples_too=True)
        if breaking:  # the sample was not replaced (its own check says why): never enable it
            raise RuntimeFailure(f"not enabled: at boot it would restore {'; '.join(breaking)}")
        for argv in argvs:
            proc.run(argv, timeout=60, env=SYSTEMCTL_ENV)
            self._record(argv[-1] if argv[0] == "systemctl" else argv[1], "enable")

    def _record(self, service: str, action: str) -> None:
        if self.journal is not None:
            self.journal.record({"kind": "restore-service", "path": None, "unit": service, "action": action,
                                 "changes": [" ".join(self.enable_argv(service, action))]})

    def enabled_by_us(self) -> list[str]:
        """The restore services whose last journaled change is ecs-harden enabling them."""
        last: dict[str, str] = {}
        for entry in self.journal.records() if self.journal is not None else []:
            if entry.get("kind") == "restore-service" and isinstance(entry.get("unit"), str):
                last[entry["unit"]] = str(entry.get("action"))
        return [s for s in self.services if last.get(s) == "enable"]

    def remove(self) -> list[str]:
        """Disable the restore services ecs-harden enabled (rollback); what the operator
        enabled stays. Raises RuntimeFailure when one cannot be disabled."""
        out = []
        for service in self.enabled_by_us():
            if self.state(service).startswith("enabled"):
                argv = self.enable_argv(service, "disable")
                proc.run(argv, timeout=60, env=SYSTEMCTL_ENV)
                out.append(f"{service} (enabled for boot by ecs-harden): disabled")
            self._record(service, "disable")
        return out
