"""RulesFile: an iptables-save file (what iptables.service and netfilter-persistent restore).

Merged, never dumped: every line the operator wrote stays byte for byte; only the
block's own lines (and the DOCKER-USER declaration they need) are added, moved or
removed: at the top of DOCKER-USER and FORWARD in `*filter`, and of PREROUTING in
`*raw` (the guard). Docker's dynamic chains are never written, so nothing stale is
frozen into the boot ruleset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ecs_harden.firewall.evaluate import ChainReader, Outcome, PathEvaluator, Probe
from ecs_harden.firewall.rule import Chain, Rule, parse_line
from ecs_harden.imds import guard as guards_
from ecs_harden.imds.block import (
    COMMENT,
    DOCKER_USER,
    GUARD_CHAIN,
    GUARD_TABLE,
    MANAGED_CHAINS,
    Block,
    leading_copies,
)
from ecs_harden.imds.guard import GuardRule

BUILTIN = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "raw": ("PREROUTING", "OUTPUT"),
}
# Where the block goes, per table, in the order the chains are written.
PLACES = {"filter": MANAGED_CHAINS, GUARD_TABLE: (GUARD_CHAIN,)}

# What Docker puts at the top of FORWARD when it starts after the restore.
DOCKER_START = (
    f"-A FORWARD -j {DOCKER_USER}",
    "-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    "-A FORWARD -o docker0 -j DOCKER",
    "-A FORWARD -i docker0 ! -o docker0 -j ACCEPT",
    "-A FORWARD -i docker0 -o docker0 -j ACCEPT",
)


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="surrogateescape")


def _encode(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogateescape")


@dataclass(frozen=True)
class Section:
    start: int  # index of the `*table` line
    commit: int  # index of its COMMIT line


class RulesFile:
    def __init__(self, data: bytes):
        self.data = data
        self.lines = _decode(data).splitlines(keepends=True)

    # -- reading ----------------------------------------------------------
    def section(self, table: str = "filter") -> Section | None:
        start = None
        for i, line in enumerate(self.lines):
            s = line.strip()
            if s == f"*{table}":
                start = i
            elif s == "COMMIT" and start is not None:
                return Section(start, i)
            elif s.startswith("*"):
                start = None
        return None

    def filter_table(self) -> Section | None:
        return self.section("filter")

    def _lines(self, table: str) -> list[tuple[int, str]]:
        sec = self.section(table)
        if sec is None:
            return []
        return [(i, self.lines[i].strip()) for i in range(sec.start + 1, sec.commit)]

    def declared(self, table: str = "filter") -> dict[str, str]:
        """Chain name -> policy ('-' for user chains) declared in the table."""
        out: dict[str, str] = {}
        for _, line in self._lines(table):
            if line.startswith(":"):
                parts = line[1:].split()
                if parts:
                    out[parts[0]] = parts[1] if len(parts) > 1 else "-"
            elif line.startswith("-N "):
                out[line.split()[1]] = "-"
        return out

    def rules(self, table: str = "filter") -> list[tuple[int, Rule]]:
        out: list[tuple[int, Rule]] = []
        for i, line in self._lines(table):
            if line.startswith("-A "):
                try:
                    rule = parse_line(line)
                except ValueError:
                    continue
                if rule is not None:
                    out.append((i, rule))
        return out

    def chain(self, name: str, prepend: Sequence[str] = ()) -> Chain | None:
        declared = self.declared()
        if name not in declared and name not in BUILTIN["filter"]:
            return None
        extra = [r for r in (parse_line(x) for x in prepend) if r is not None and r.chain == name]
        rules = tuple(extra) + tuple(r for _, r in self.rules() if r.chain == name)
        policy = declared.get(name, "ACCEPT") if name in BUILTIN["filter"] else None
        return Chain(name, policy, rules)

    def reader(self, *, docker_started: bool) -> ChainReader:
        prepend = DOCKER_START if docker_started else ()
        docker_chains = {"DOCKER", DOCKER_USER} if docker_started else set()

        def read(name: str) -> Chain | None:
            chain = self.chain(name, prepend)
            if chain is None and name in docker_chains:
                return Chain(name, None, ())  # Docker creates it empty; RETURN is implied
            return chain

        return read

    def outcomes(self, probe: Probe, *, docker_started: bool) -> frozenset[Outcome]:
        return PathEvaluator(self.reader(docker_started=docker_started)).outcomes(probe)

    def copies(self, block: Block, chain: str, table: str = "filter") -> list[tuple[int, Rule]]:
        return [(i, r) for i, r in self.rules(table) if r.chain == chain and block.is_copy(r)]

    def leading(self, chain: str, blocks: Sequence[Block], table: str = "filter",
                guard: Sequence[GuardRule] = ()) -> set[int]:
        """Line indexes of the copies that open the chain, before any other rule (in raw
        PREROUTING the guard's rules and any of ours too)."""
        own = [(i, r) for i, r in self.rules(table) if r.chain == chain]
        rules = [r for _, r in own]
        if (table, chain) == (GUARD_TABLE, GUARD_CHAIN):
            n = guards_.opening_run(rules, blocks, guard)
        else:
            n = leading_copies(rules, blocks)
        return {i for i, _ in own[:n]}

    def guard_state(self, blocks: Sequence[Block], guard: Sequence[GuardRule]) -> tuple[bool, set[int]]:
        """Whether raw PREROUTING holds the guard once each, in force, and nothing of ours
        besides; and the line indexes of every guard rule of ours (to drop when it is not)."""
        own = [(i, r) for i, r in self.rules(GUARD_TABLE) if r.chain == GUARD_CHAIN]
        rules = [r for _, r in own]
        run = len(self.leading(GUARD_CHAIN, blocks, GUARD_TABLE, guard))
        keep = guards_.kept(rules, run, guard)
        ours = {own[k][0] for k, r in enumerate(rules)
                if guards_.is_ours(r) or any(m.is_copy(r) for m in guard)}
        once = all(sum(1 for r in rules if m.is_copy(r)) == 1 for m in guard)
        clean = keep is not None and once and not guards_.unwanted(rules, guard, keep)
        return clean, ours

    def catch_all_rejects(self) -> list[str]:
        """FORWARD/INPUT rules that would drop every container connection (or the
        credentials endpoint behind INPUT) once restored: the iptables-services stock file."""
        out = []
        for _, r in self.rules():
            if r.chain not in ("FORWARD", "INPUT") or r.target not in ("REJECT", "DROP"):
                continue
            if r.src or r.dst or r.in_iface or r.out_iface or r.proto or r.unknown:
                continue
            if all(m.module == "comment" for m in r.matches):
                out.append(r.text())
        return out

    def our_lines(self) -> list[int]:
        return [
            i
            for table, chains in PLACES.items()
            for i, r in self.rules(table)
            if r.chain in chains and ((r.target == "DROP" and r.has_comment(COMMENT))
                                      or (table == GUARD_TABLE and guards_.is_ours(r)))
        ]

    # -- edits ------------------------------------------------------------
    def merged(self, blocks: Sequence[Block], guard: Sequence[GuardRule] = ()) -> bytes:
        """The file with each block exactly once at the top of each place it belongs, and
        the guard (its exceptions first) at the top of raw PREROUTING."""
        nl = "\r\n" if self.lines and self.lines[0].endswith("\r\n") else "\n"
        drop: set[int] = set()
        insert_at: dict[int, list[str]] = {}
        after: dict[int, list[str]] = {}
        appended: list[str] = []
        for table, chains in PLACES.items():
            sec = self.section(table)
            if sec is None:
                appended += self._new_section(table, chains, blocks, nl, guard)
                continue
            fresh_guard: list[str] = []
            if table == GUARD_TABLE:
                clean, ours = self.guard_state(blocks, guard)
                if not clean:
                    drop.update(ours)
                    fresh_guard = [f"{m.rule(GUARD_CHAIN).text()}{nl}" for m in guard]
            for chain in chains:
                top = self.leading(chain, blocks, table, guard)
                for b in blocks:
                    copies = self.copies(b, chain, table)
                    if not (len(copies) == 1 and copies[0][0] in top):
                        drop.update(i for i, _ in copies)
            for chain in chains:
                missing = [b for b in blocks
                           if not any(i not in drop for i, _ in self.copies(b, chain, table))]
                lines = [f"{b.rule(chain).text()}{nl}" for b in missing]
                if chain == GUARD_CHAIN and table == GUARD_TABLE:
                    lines += fresh_guard
                if not lines:
                    continue
                remaining = [i for i, r in self.rules(table) if r.chain == chain and i not in drop]
                at = remaining[0] if remaining else sec.commit
                insert_at.setdefault(at, []).extend(lines)
            declared = self.declared(table)
            wanted = [c for c in chains if c not in BUILTIN[table] and c not in declared]
            if wanted:
                last_decl = max((i for i, ln in self._lines(table) if ln.startswith(":")), default=sec.start)
                after.setdefault(last_decl, []).extend(f":{c} - [0:0]{nl}" for c in wanted)
        out: list[str] = []
        for i, line in enumerate(self.lines):
            out.extend(insert_at.get(i, ()))
            if i not in drop:
                out.append(line)
            out.extend(after.get(i, ()))
        if appended:
            if out and not out[-1].endswith("\n"):
                out.append(nl)
            out += appended
        return _encode("".join(out))

    @staticmethod
    def _new_section(table: str, chains: Sequence[str], blocks: Sequence[Block], nl: str,
                     guard: Sequence[GuardRule] = ()) -> list[str]:
        body = [f"*{table}{nl}", *(f":{c} ACCEPT [0:0]{nl}" for c in BUILTIN[table])]
        body += [f":{c} - [0:0]{nl}" for c in chains if c not in BUILTIN[table]]
        for chain in chains:
            body += [f"{b.rule(chain).text()}{nl}" for b in blocks]
            if table == GUARD_TABLE and chain == GUARD_CHAIN:
                body += [f"{m.rule(chain).text()}{nl}" for m in guard]
        body.append(f"COMMIT{nl}")
        return body

    def without_ours(self) -> bytes:
        """The file without the agent's lines, and without what it added around them: the
        `:DOCKER-USER - [0:0]` declaration once no rule uses the chain, and the `*raw`
        section it appended once only the built-in chains' declarations are left."""
        drop = set(self.our_lines())
        rest = RulesFile(_encode("".join(line for i, line in enumerate(self.lines) if i not in drop)))
        gone: set[int] = set()
        for table in ("filter", GUARD_TABLE):
            sec = rest.section(table)
            if sec is None:
                continue
            body = rest._lines(table)
            used = any(DOCKER_USER in ln.split() for _, ln in body if not ln.startswith(":"))
            for i, ln in body:
                if not used and ln.split() == [f":{DOCKER_USER}", "-", "[0:0]"]:
                    gone.add(i)
            left = [ln for i, ln in body if i not in gone and ln]
            skeleton = all(ln.startswith(":") and ln.split()[0][1:] in BUILTIN[table] for ln in left)
            last = not any(ln.strip().startswith("*") for ln in rest.lines[sec.commit + 1:])
            if table == GUARD_TABLE and skeleton and last:
                gone.update(range(sec.start, sec.commit + 1))
        return _encode("".join(line for i, line in enumerate(rest.lines) if i not in gone))

    @staticmethod
    def created_by_us(data: bytes, blocks: Sequence[Block], guard: Sequence[GuardRule] = ()) -> bool:
        """data is what the agent writes into an empty file, its own lines taken out again."""
        return data == RulesFile(RulesFile(b"").merged(blocks, guard)).without_ours()
