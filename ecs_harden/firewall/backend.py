"""The Backend protocol every firewall implementation follows, and the operations it applies."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol, Union

from ecs_harden.firewall.evaluate import ChainReader
from ecs_harden.firewall.rule import Rule


@dataclass(frozen=True)
class NewChain:
    chain: str
    table: str = "filter"


@dataclass(frozen=True)
class Insert:
    chain: str
    position: int  # 1-based, as iptables -I
    args: tuple[str, ...]
    table: str = "filter"


@dataclass(frozen=True)
class DeleteAt:
    """Delete the rule at position (1-based), which must still be `rule` as read: checked
    where the commit happens, against the table it changes (legacy: under the xtables
    lock; nf_tables: by handle, in a batch the kernel refuses if anything changed since
    the read). Never by re-serialized text, which an odd comment would not survive."""

    chain: str
    position: int
    rule: Rule
    table: str = "filter"


Op = Union[NewChain, Insert, DeleteAt]


def binary(family: int) -> str:
    """The command that writes a family's rules: what a change is said with."""
    return "iptables" if family == 4 else "ip6tables"


def describe(op: Op) -> str:
    from ecs_harden.firewall.rule import quote_args

    table = "" if op.table == "filter" else f"-t {op.table} "
    if isinstance(op, NewChain):
        return f"{table}-N {op.chain}"
    if isinstance(op, Insert):
        return f"{table}-I {op.chain} {op.position} {quote_args(op.args)}"
    return f"{table}-D {op.chain} {op.position} ({op.rule.text()})"


def separate(ops: Sequence[Op]) -> None:
    """Deletes by position go in a commit of their own (ValueError otherwise): on nf_tables
    they are a netlink batch of their own, so a commit mixing them with inserts could not
    be all or nothing; and the insert that makes the block effective must never wait on,
    or fail with, a delete."""
    kinds = {isinstance(op, DeleteAt) for op in ops}
    if len(kinds) > 1:
        raise ValueError("a commit holds deletes by position and other ops: commit them apart")


class Backend(Protocol):
    """One IP family's filter table, read and changed through one mechanism."""

    family: int  # 4 or 6
    name: str

    def snapshot(self, table: str = "filter") -> ChainReader:
        """A reader of one table's chains as they are now (None for a chain that does not exist)."""
        ...

    def commit(self, ops: Sequence[Op]) -> None:
        """Apply every op, all or nothing; deletes by position in a commit of their own
        (separate())."""
        ...

    def transaction(self) -> AbstractContextManager[None]:
        """Reads and a commit that nobody else's change can come between, where the
        mechanism allows it (legacy: under the xtables lock, so the commit needs no
        second read); elsewhere a no-op (iptables-restore is atomic by itself)."""
        ...
