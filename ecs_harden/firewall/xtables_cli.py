"""XtablesCli: the iptables/ip6tables command line (argv lists, -w), for nf_tables hosts.

Reads are targeted (`iptables -S CHAIN`); writes go through one
`iptables-restore --noflush` transaction, so a repair that moves a rule is
atomic and never leaves a window without the block.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Dict, Tuple

from ecs_harden import proc
from ecs_harden.errors import RuntimeFailure
from ecs_harden.firewall import nfthandles, nftstate
from ecs_harden.firewall.backend import DeleteAt, Insert, NewChain, Op, separate
from ecs_harden.firewall.evaluate import ChainReader
from ecs_harden.firewall.netlink import generation
from ecs_harden.firewall.rule import Chain, parse_chain_listing, quote_args

WAIT_SECONDS = "10"

# (family, table, chain) -> (the chain's state over netlink, what `iptables -S` printed
# for it): a resync reads every chain's state in this process and lists only a changed one.
_LISTED: dict[tuple[int, str, str], tuple[bytes, Chain | None]] = {}
_LISTED_MAX = 64
States = Tuple[int, Dict[str, bytes]]  # the generation read at, {chain: state}


class XtablesCli:
    name = "xtables-cli"

    def __init__(self, family: int):
        self.family = family
        self.binary = "iptables" if family == 4 else "ip6tables"
        # The chains the last snapshot of each table read: the next one reads them all at
        # once (a repair's latency is mostly these process starts, one after the other).
        self._read_last: dict[str, list[str]] = {}
        self._preloaded: dict[str, dict[str, proc.Completed]] = {}

    def preload(self, table: str, name: str, done: proc.Completed) -> None:
        """A listing read beforehand (`argv`, run beside others): the next snapshot of the
        table takes it instead of running it again."""
        self._preloaded.setdefault(table, {})[name] = done

    def argv(self, name: str, table: str) -> list[str]:
        return self._argv(name, table)

    def _argv(self, name: str, table: str) -> list[str]:
        return [self.binary, "-w", WAIT_SECONDS, "-t", table, "-S", name]

    def read_chain(self, name: str, table: str = "filter") -> Chain | None:
        return self._chain(name, table, proc.run(self._argv(name, table), check=False))

    def _chain(self, name: str, table: str, done: proc.Completed) -> Chain | None:
        if done.returncode != 0:
            if "No chain" in done.stderr or "does not exist" in done.stderr:
                return None
            # iptables-nft 1.8.9 calls a chain that does not exist "incompatible";
            # only the whole table's listing tells the two apart.
            if "incompatible" in done.stderr and not self._chain_listed(name, table):
                return None
            raise RuntimeFailure(
                f"`{self.binary} -S {name}` exited {done.returncode}: {done.stderr.strip()}"
            )
        return parse_chain_listing(name, done.stdout)

    def _chain_listed(self, name: str, table: str) -> bool:
        done = proc.run([self.binary, "-w", WAIT_SECONDS, "-t", table, "-S"], check=False)
        return any(line.split()[:2] in (["-N", name], ["-P", name]) for line in done.stdout.splitlines())

    def transaction(self) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    def snapshot(self, table: str = "filter") -> ChainReader:
        names = self._read_last.get(table, [])
        ready: dict[str, proc.Completed] = self._preloaded.pop(table, {})
        known, keys = self._unchanged(table, [n for n in names if n not in ready])
        todo = [n for n in names if n not in ready and n not in known]
        if len(todo) > 1:
            ready.update(zip(todo, proc.run_many([self._argv(n, table) for n in todo])))
            self._remember(table, {n: ready[n] for n in todo}, keys)
        seen: list[str] = []
        self._read_last[table] = seen

        def read(name: str) -> Chain | None:
            if name not in seen:
                seen.append(name)
            if name in known:
                return known.pop(name)
            done = ready.pop(name, None)
            if done is None:
                found, key = self._unchanged(table, [name])
                if name in found:
                    return found[name]
                done = proc.run(self._argv(name, table), check=False)
                self._remember(table, {name: done}, key)
            return self._chain(name, table, done)

        return read

    def _key(self) -> str:
        """The iptables binary in use: a listing is its output, an upgrade may print otherwise."""
        path = shutil.which(self.binary)
        if path is None:
            return ""
        st = os.stat(path)
        return f"{os.path.realpath(path)}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"

    def _unchanged(self, table: str, names: Sequence[str]) -> tuple[dict[str, Chain | None], States]:
        """The chains whose state over netlink is the one their cached listing was read at,
        and the states read (to key the listings run now)."""
        if not names:
            return {}, (-1, {})
        try:
            gen, states = nftstate.states(self.family, table, names)
            binary = self._key().encode()
        except OSError:
            return {}, (-1, {})
        states = {n: binary + b"\0" + s for n, s in states.items()}
        found: dict[str, Chain | None] = {}
        for name, state in states.items():
            hit = _LISTED.get((self.family, table, name))
            if hit is not None and hit[0] == state:
                found[name] = hit[1]
        return found, (gen, states)

    def _remember(self, table: str, listed: dict[str, proc.Completed], key: States) -> None:
        """Keep what was listed under the state read before it, only if the ruleset is still
        at that generation (so the listing is of exactly that state)."""
        gen, states = key
        if not states or not any(n in states for n in listed):
            return
        try:
            if generation() != gen:
                return
        except OSError:
            return
        for name, done in listed.items():
            if name not in states:
                continue
            try:
                chain = self._chain(name, table, done)
            except RuntimeFailure:
                continue
            if len(_LISTED) >= _LISTED_MAX:
                _LISTED.clear()
            _LISTED[(self.family, table, name)] = (states[name], chain)

    def restore_script(self, ops: Sequence[Op]) -> str:
        lines: list[str] = []
        for table in dict.fromkeys(op.table for op in ops):
            lines.append(f"*{table}")
            for op in ops:
                if op.table != table:
                    continue
                if isinstance(op, NewChain):
                    lines.append(f"-N {op.chain}")
                elif isinstance(op, Insert):
                    lines.append(f"-I {op.chain} {op.position} {quote_args(op.args)}")
            lines.append("COMMIT")
        return "\n".join(lines) + "\n"

    def commit(self, ops: Sequence[Op]) -> None:
        separate(ops)
        by_chain: dict[tuple[str, str], list[DeleteAt]] = {}
        for op in ops:
            if isinstance(op, DeleteAt):
                by_chain.setdefault((op.table, op.chain), []).append(op)
        if ops and not by_chain:
            proc.run(
                [f"{self.binary}-restore", "-w", WAIT_SECONDS, "--noflush"],
                input=self.restore_script(ops),
            )
        for (table, chain), deletes in by_chain.items():
            self._delete_at(table, chain, deletes)

    def _delete_at(self, table: str, chain: str, deletes: Sequence[DeleteAt]) -> None:
        """Map positions to handles on one generation of the ruleset, check each rule is
        still the one planned, and delete by handle only if that generation still holds."""
        where = f"{self.binary} -t {table} {chain}"
        try:
            before = generation()
            listed = self.read_chain(chain, table)
            found = nfthandles.handles(self.family, table, chain)
            if generation() != before:
                raise nfthandles.Changed(0, "the ruleset changed while it was read")
            if listed is None or len(listed.rules) != len(found):
                raise RuntimeFailure(
                    f"{where}: iptables lists {len(listed.rules) if listed else 0} rules, nf_tables "
                    f"holds {len(found)}; nothing deleted"
                )
            doomed = []
            for op in deletes:
                at = op.position - 1
                if not (0 <= at < len(listed.rules)) or listed.rules[at] != op.rule:
                    raise nfthandles.Changed(0, f"rule {op.position} is no longer {op.rule.text()}")
                doomed.append(found[at])
            nfthandles.delete(self.family, table, chain, doomed, before)
        except nfthandles.Changed as exc:
            raise RuntimeFailure(f"{where}: {exc.strerror}; nothing deleted, will retry") from None
        except OSError as exc:
            raise RuntimeFailure(f"{where}: cannot delete by handle: {exc}") from None
