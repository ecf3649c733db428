"""Planning the live block: inserts, dedupe, moves, and what remove takes."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Sequence

import pytest

import ecs_harden.imds.live as live
from ecs_harden.firewall.backend import DeleteAt, Insert, NewChain, Op
from ecs_harden.firewall.evaluate import ChainReader
from ecs_harden.firewall.rule import Chain, parse_chain_listing, parse_line, quote_args
from ecs_harden.imds.block import Block
from ecs_harden.imds.live import LiveBlockComponent

V4 = ipaddress.ip_network("169.254.169.254/32")
OURS = '-d 169.254.169.254/32 -i docker+ -m comment --comment "ecs-harden: block IMDS from containers" -j DROP'
HAND = "-d 169.254.169.254/32 -i docker+ -j DROP"


class FakeBackend:
    """An in-memory table: the unit-test stand-in for a real backend."""

    family = 4
    name = "fake"

    def __init__(self, text: str, raw: str = f"-P PREROUTING ACCEPT\n-A PREROUTING {OURS}\n"):
        self.text = text
        self.raw = raw
        self.committed: list[Sequence[Op]] = []

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def snapshot(self, table: str = "filter") -> ChainReader:
        text = self.raw if table == "raw" else self.text
        names = {ln.split()[1] for ln in text.splitlines() if ln.split()[0] in ("-P", "-N", "-A")}

        def read(name: str) -> Chain | None:
            return parse_chain_listing(name, text) if name in names else None

        return read

    def commit(self, ops: Sequence[Op]) -> None:
        """Applied to the text as iptables would, so the next snapshot sees them."""
        self.committed.append(list(ops))
        # Deletes by position refer to the table as read, as the real backends resolve them.
        deletes = sorted((o for o in ops if isinstance(o, DeleteAt)), key=lambda o: -o.position)
        for op in [o for o in ops if not isinstance(o, DeleteAt)] + deletes:
            attr = "raw" if op.table == "raw" else "text"
            lines = getattr(self, attr).splitlines()
            if isinstance(op, NewChain):
                lines.append(f"-N {op.chain}")
            elif isinstance(op, Insert):
                rules = [i for i, ln in enumerate(lines) if ln.startswith(f"-A {op.chain} ")]
                at = rules[op.position - 1] if len(rules) >= op.position else len(lines)
                lines.insert(at, f"-A {op.chain} {quote_args(op.args)}")
            elif isinstance(op, DeleteAt):
                rules = [i for i, ln in enumerate(lines) if ln.startswith(f"-A {op.chain} ")]
                assert parse_line(lines[rules[op.position - 1]]) == op.rule, "deleted the wrong rule"
                del lines[rules[op.position - 1]]
            setattr(self, attr, "\n".join(lines) + "\n")


def component(text: str, raw: str | None = None) -> tuple[LiveBlockComponent, FakeBackend]:
    be = FakeBackend(text) if raw is None else FakeBackend(text, raw)
    return LiveBlockComponent(4, lambda: be, ("docker+",), V4), be


def test_empty_host_creates_docker_user_both_copies_and_the_guard() -> None:
    c, _ = component("-P FORWARD ACCEPT\n", raw="-P PREROUTING ACCEPT\n")
    insp = c.inspect()
    assert insp.findings[0].status == "drift"
    assert "chain DOCKER-USER does not exist" in insp.findings[0].detail
    assert "no guard for docker+ in raw PREROUTING" in insp.findings[0].detail
    assert insp.plan is not None and insp.plan.ops == (
        NewChain("DOCKER-USER"),
        Insert("DOCKER-USER", 1, Block("docker+", V4).args()),
        Insert("FORWARD", 1, Block("docker+", V4).args()),
        Insert("PREROUTING", 1, Block("docker+", V4).args(), "raw"),
    )


def test_guard_below_another_raw_rule_is_moved_up() -> None:
    c, be = component(
        f"-P FORWARD ACCEPT\n-N DOCKER-USER\n-A FORWARD {OURS}\n-A DOCKER-USER {OURS}\n",
        raw=f"-P PREROUTING ACCEPT\n-A PREROUTING -j ACCEPT\n-A PREROUTING {OURS}\n",
    )
    insp = c.inspect()
    assert "not at the top of raw PREROUTING" in insp.findings[0].detail
    # The insert first, on its own; the old copy (now third) goes in a commit of its own.
    assert insp.plan is not None
    assert [type(o).__name__ for o in insp.plan.ops] == ["Insert"]
    c.execute(insp)
    assert [[type(o).__name__ for o in ops] for ops in be.committed] == [["Insert"], ["DeleteAt"]]
    assert be.raw.splitlines()[1:] == [f"-A PREROUTING {OURS}", "-A PREROUTING -j ACCEPT"]
    assert c.inspect().findings[0].status == "ok"


def test_compliant_host_plans_nothing() -> None:
    c, _ = component(
        f"-P FORWARD ACCEPT\n-N DOCKER-USER\n-A FORWARD -j DOCKER-USER\n-A FORWARD {OURS}\n"
        f"-A DOCKER-USER {OURS}\n-A DOCKER-USER -j RETURN\n"
    )
    insp = c.inspect()
    assert insp.findings[0].status == "ok"
    assert insp.changes == () and insp.plan is None


def test_hand_made_single_copy_is_accepted_as_the_block() -> None:
    c, _ = component(f"-P FORWARD ACCEPT\n-N DOCKER-USER\n-A FORWARD {HAND}\n-A DOCKER-USER {HAND}\n")
    assert c.inspect().findings[0].status == "ok"


def test_duplicates_are_deleted_by_position_keeping_the_copy_on_top() -> None:
    c, be = component(
        f"-P FORWARD ACCEPT\n-N DOCKER-USER\n-A FORWARD {OURS}\n-A DOCKER-USER {HAND}\n-A DOCKER-USER {HAND}\n"
        f"-A DOCKER-USER {OURS}\n"
    )
    insp = c.inspect()
    assert "3 copies of the DROP for docker+ in DOCKER-USER" in insp.findings[0].detail
    # One copy opens DOCKER-USER already: no insert, the two below are deleted by position.
    assert insp.plan is not None
    ops = list(insp.plan.ops)
    assert [(type(o), o.chain, getattr(o, "position", None)) for o in ops] == [
        (DeleteAt, "DOCKER-USER", 2), (DeleteAt, "DOCKER-USER", 3)]
    c.execute(insp)
    assert be.committed == [ops]
    assert c.inspect().findings[0].status == "ok"


def test_remove_takes_only_rules_with_our_comment() -> None:
    c, _ = component(f"-P FORWARD ACCEPT\n-N DOCKER-USER\n-A FORWARD {OURS}\n-A DOCKER-USER {HAND}\n")
    ops = c.removal_ops()
    assert [(o.table, o.chain) for o in ops] == [("filter", "FORWARD"), ("raw", "PREROUTING")]
    assert all(isinstance(o, DeleteAt) for o in ops)


def test_ipv6_without_kernel_support_is_ok(monkeypatch: pytest.MonkeyPatch) -> None:
    be = FakeBackend("")
    c = LiveBlockComponent(6, lambda: be, ("docker+",), ipaddress.ip_network("fd00:ec2::254/128"))
    monkeypatch.setattr(live, "ipv6_available", lambda: False)
    (f,) = c.inspect().findings
    assert f.status == "ok" and "no IPv6" in f.detail
    assert c.removal_ops() == []
