"""imds.ipv4.persisted / imds.ipv6.persisted: the boot file would restore an effective block."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from ecs_harden import proc
from ecs_harden.atomic import Identity, ensure_dir, file_identity, read_bytes
from ecs_harden.component import FILES, Base, Inspection
from ecs_harden.errors import RefusedLink, RuntimeFailure
from ecs_harden.firewall.evaluate import Probe
from ecs_harden.imds.block import (
    DOCKER_USER,
    GUARD_CHAIN,
    GUARD_TABLE,
    MANAGED_CHAINS,
    Block,
    count_problem,
)
from ecs_harden.imds.guard import GuardRule
from ecs_harden.journal import ChangeJournal
from ecs_harden.persist import samples
from ecs_harden.persist.rulesfile import RulesFile
from ecs_harden.persist.samples import is_untouched_sample
from ecs_harden.report import DRIFT, ERROR, OK, Finding


def restore_binary(family: int) -> str:
    return "iptables-restore" if family == 4 else "ip6tables-restore"


def restore_test(family: int, data: bytes) -> str | None:
    """None when `iptables-restore --test` accepts data, else its complaint."""
    done = proc.run(
        [restore_binary(family), "--test"], input=data.decode("utf-8", "surrogateescape"), check=False
    )
    if done.returncode == 0:
        return None
    out = (done.stderr or done.stdout).strip()
    return out.splitlines()[-1] if out else f"exit {done.returncode}"


@dataclass(frozen=True)
class _Plan:
    old: bytes | None
    new: bytes
    sample: bool = False  # old is the package's untouched sample


class PersistedFileComponent(Base):
    wakes_on = FILES
    family: int  # whose rules file (it wakes on FILES, so no firewall event filters it)

    def __init__(
        self,
        family: int,
        path: str | None,
        flavor: str,
        blocks: Sequence[Block],
        interfaces: tuple[str, ...],
        journal: ChangeJournal,
        sample_package: str | None = None,
        guard: Sequence[GuardRule] = (),
    ):
        self.guard = tuple(guard)  # imds.guard: the exceptions, then the guard of every interface
        self.family = family
        self.sample_package = sample_package  # whose sample file is replaced (persist.samples)
        self.replaced: str | None = None  # after replacing the sample: what to say
        self.name = f"imds.ipv{family}.persisted"
        self.path = path
        self.flavor = flavor
        self.blocks = tuple(blocks)
        self.interfaces = interfaces
        self.journal = journal
        self._validated: dict[tuple[Identity, int], str | None] = {}
        # The last steady inspection and the file's identity then: judging a file that
        # did not change gives the same answer, so the daemon's resync skips it.
        self._steady: tuple[Identity, Inspection[_Plan]] | None = None

    def watches(self) -> tuple[str, ...]:
        return (self.path,) if self.path else ()

    def expected(self) -> str:
        where = self.path or "a boot rules file"
        every = " and the guard of every interface" if self.guard else ""
        return (f"{where} restores the DROP once at the top of {' and '.join(MANAGED_CHAINS)}, "
                f"and the guard{every} at the top of raw {GUARD_CHAIN}")

    def _corrupt(self, data: bytes) -> str | None:
        """Validate the existing file, remembering the answer until the file changes."""
        assert self.path is not None
        key = (file_identity(self.path), len(data))
        if key not in self._validated:
            self._validated = {key: restore_test(self.family, data) if data.strip() else None}
        return self._validated[key]

    def inspect(self) -> Inspection[_Plan]:
        if self.path is None:
            return self._inspect()
        key = file_identity(self.path)
        if self._steady is not None and self._steady[0] == key:
            return self._steady[1]
        inspection = self._inspect()
        self._steady = None if inspection.changes else (key, inspection)
        return inspection

    def _inspect(self) -> Inspection[_Plan]:
        if self.path is None:
            return Inspection((Finding(
                self.name, ERROR, self.expected(), "no mechanism",
                f"flavor {self.flavor}: no known way this distribution restores firewall rules at boot; "
                "the live block still works, persist it yourself or set imds.persist: false",
            ),))
        try:
            old = read_bytes(self.path)
        except RefusedLink as exc:
            return Inspection((Finding(self.name, ERROR, self.expected(), "refused symlink", str(exc)),))
        if old is not None:
            complaint = self._corrupt(old)
            if complaint is not None:
                return Inspection((Finding(
                    self.name, ERROR, self.expected(), "unreadable",
                    f"{self.path} is rejected by {restore_binary(self.family)} --test ({complaint}); "
                    "left untouched: fix it by hand, then run ecs-harden apply",
                ),))
        rules = RulesFile(old or b"")
        if old is not None and self.sample_package is not None and rules.catch_all_rejects():
            sample, how = is_untouched_sample(old, self.family, self.path, self.sample_package)
            if sample:
                return self._replace_sample(old, how)
        finding = self.judge(rules, exists=old is not None)
        new = rules.merged(self.blocks, self.guard)
        if old is not None and new == old:
            return Inspection((finding,))
        verb = "create" if old is None else "merge the block into"
        return Inspection((finding,), (f"{verb} {self.path}",), frozenset({self.name}), _Plan(old, new))

    def _replace_sample(self, old: bytes, how: str) -> Inspection[_Plan]:
        assert self.path is not None
        finding = Finding(
            self.name, DRIFT, self.expected(), "the package's sample",
            f"{self.path} is {samples.WHAT}, untouched ({how}): restored at boot it would cut every "
            "container off and block nothing; it is replaced by a file holding the block (backup kept)",
        )
        new = RulesFile(b"").merged(self.blocks, self.guard)
        return Inspection((finding,), (f"replace {samples.WHAT} in {self.path} with the block",),
                          frozenset({self.name}), _Plan(old, new, sample=True))

    def judge(self, rules: RulesFile, *, exists: bool) -> Finding:
        assert self.path is not None
        if not exists:
            return Finding(self.name, DRIFT, self.expected(), "missing",
                           f"{self.path} does not exist: after a reboot nothing blocks IMDS until "
                           "ecs-harden runs")
        problems: list[str] = []
        counts: list[str] = []
        if rules.filter_table() is None:
            problems.append("no *filter table")
        elif DOCKER_USER not in rules.declared():
            problems.append(f"{DOCKER_USER} is not declared")
        for chain in MANAGED_CHAINS:
            top = rules.leading(chain, self.blocks)
            for b in self.blocks:
                copies = rules.copies(b, chain)
                counts.append(f"{chain} {b.interface}: {len(copies)}")
                problem = count_problem("DROP", b.interface, chain, len(copies))
                if problem:
                    problems.append(problem)
                elif copies[0][0] not in top and chain == DOCKER_USER:
                    problems.append(f"the DROP for {b.interface} is not the first rule of {chain}")
        top = rules.leading(GUARD_CHAIN, self.blocks, GUARD_TABLE, self.guard)
        if rules.section(GUARD_TABLE) is not None or self.guard:
            clean, ours = rules.guard_state(self.blocks, self.guard)
            counts.append(f"raw {GUARD_CHAIN} guard rules: {len(ours)}")
            if not clean and self.guard:
                problems.append(f"the guard of every interface (after its {len(self.guard) - 1} "
                                f"declared exception(s)) is not once at the top of raw {GUARD_CHAIN}")
            elif not clean:
                problems.append(f"raw {GUARD_CHAIN} holds guard rules the policy no longer wants")
        for b in self.blocks:
            guards = rules.copies(b, GUARD_CHAIN, GUARD_TABLE)
            counts.append(f"raw {GUARD_CHAIN} {b.interface}: {len(guards)}")
            if len(guards) != 1 or guards[0][0] not in top:
                problems.append(f"the guard for {b.interface} is not once at the top of raw {GUARD_CHAIN}")
        for b in self.blocks:
            probe = Probe(b.interface, b.address, self.interfaces)
            for started, when in ((False, "at boot"), (True, "once Docker starts")):
                leaks = sorted(o.rule for o in rules.outcomes(probe, docker_started=started)
                               if o.verdict != "block")
                if leaks:
                    problems.append(f"{when}, traffic from {b.interface} is let through by {leaks[0]}")
        actual = "; ".join(counts)
        if problems:
            return Finding(self.name, DRIFT, self.expected(), actual, f"{self.path}: " + "; ".join(problems))
        done = f" ({self.replaced})" if self.replaced else ""
        return Finding(self.name, OK, self.expected(), actual,
                       f"{self.path} restores an effective block at boot, before Docker starts{done}")

    def execute(self, inspection: Inspection[_Plan]) -> None:
        plan = inspection.plan
        if plan is None or self.path is None:
            return
        complaint = restore_test(self.family, plan.new)
        if complaint is not None:
            raise RuntimeFailure(
                f"{self.path}: the merged file fails {restore_binary(self.family)} --test ({complaint}); "
                "nothing written"
            )
        if read_bytes(self.path) != plan.old:
            raise RuntimeFailure(f"{self.path}: changed while being merged; will retry")
        if plan.old is None:
            ensure_dir(os.path.dirname(self.path), mode=0o755)
        summary = ([f"replaced {samples.WHAT} in {self.path} with the block"] if plan.sample
                   else inspection.changes)
        # The sample itself goes into the journal (it holds no secret, and backups are
        # pruned): `remove` puts it back.
        extra = {"sample": plan.old.decode("ascii")} if plan.sample and plan.old is not None \
            and plan.old.isascii() else None
        self.journal.replace_file(self.path, plan.old, plan.new, kind=f"rules.v{self.family}",
                                  summary=summary, extra=extra)
        if plan.sample:
            self.replaced = f"replaced {samples.WHAT}; the sample is kept in {self.journal.state_dir}/backups"

    def _replaced_sample(self) -> bytes | None:
        """The package sample ecs-harden replaced in this file, as the journal kept it."""
        for entry in reversed(self.journal.records()):
            if entry.get("path") != self.path:
                continue
            if entry.get("action") == "delete" or entry.get("put_back"):
                return None  # the story of that sample has ended
            sample = entry.get("sample")
            if isinstance(sample, str) and sample.isascii():
                return sample.encode("ascii")
        return None

    def remove(self) -> list[str]:
        """Take the agent's own lines out of the file (rollback)."""
        if self.path is None:
            return []
        try:
            old = read_bytes(self.path)
        except RefusedLink:
            return []  # nothing of ours can be in a file that does not exist
        if old is None:
            return []
        rules = RulesFile(old)
        lines = rules.our_lines()
        if not lines:
            return []
        new = rules.without_ours()
        removed = [f"{self.path}: {rules.lines[i].strip()}" for i in lines]
        sample = self._replaced_sample()
        if sample is not None and RulesFile.created_by_us(new, self.blocks, self.guard):
            self.journal.replace_file(self.path, old, sample, kind=f"rules.v{self.family}",
                                      summary=[f"put back {samples.WHAT} in {self.path}"],
                                      extra={"put_back": True})
            return [*removed, f"{self.path} (the iptables-services sample it replaced is back)"]
        if RulesFile.created_by_us(new, self.blocks, self.guard):  # nothing of anyone else's is left
            self.journal.delete_file(self.path, old, kind=f"rules.v{self.family}",
                                     summary=[f"delete {self.path}, which ecs-harden created"])
            return [*removed, f"{self.path} (created by ecs-harden, now empty)"]
        self.journal.replace_file(self.path, old, new, kind=f"rules.v{self.family}",
                                  summary=[f"remove ecs-harden lines from {self.path}"])
        return removed
