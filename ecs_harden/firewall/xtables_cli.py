"""XtablesCli: the iptables/ip6tables command line (argv lists, -w), for nf_tables hosts.

Reads are targeted (`iptables -S CHAIN`); writes go through one
`iptables-restore --noflush` transaction, so a repair that moves a rule is
atomic and never leaves a window without the block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from contextlib import AbstractContextManager

from ecs_harden import proc
from ecs_harden.errors import RuntimeFailure
from ecs_harden.firewall import nfthandles
from ecs_harden.firewall.backend import DeleteAt, Insert, NewChain, Op, separate
from ecs_harden.firewall.evaluate import ChainReader
from ecs_harden.firewall.netlink import generation
from ecs_harden.firewall.rule import Chain, parse_chain_listing, quote_args

WAIT_SECONDS = "10"


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
        if len(names) > 1:
            ready.update(zip(names, proc.run_many([self._argv(n, table) for n in names])))
        seen: list[str] = []
        self._read_last[table] = seen

        def read(name: str) -> Chain | None:
            if name not in seen:
                seen.append(name)
            done = ready.pop(name, None)
            return self.read_chain(name, table) if done is None else self._chain(name, table, done)

        return read

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
