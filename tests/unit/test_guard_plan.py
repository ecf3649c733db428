"""The guard of every interface and its exceptions, planned against an in-memory table."""

from __future__ import annotations

from ecs_harden.imds.block import Block
from ecs_harden.imds.guard import GuardRule, members
from ecs_harden.imds.live import LiveBlockComponent
from ecs_harden.persist.rulesfile import RulesFile
from tests.unit.test_imds_plan import OURS, V4, FakeBackend

FILTER = (
    "-P FORWARD ACCEPT\n-N DOCKER-USER\n"
    f"-A DOCKER-USER {OURS}\n-A FORWARD {OURS}\n-A FORWARD -j DOCKER-USER\n"
)
GUARD = '-d 169.254.169.254/32 ! -i lo -m comment --comment "ecs-harden: block IMDS from every interface" -j DROP'
EXC = '-d 169.254.169.254/32 -i tasks0 -m comment --comment "ecs-harden: declared IMDS exception" -j RETURN'


def guarded(raw: str, exceptions: tuple[str, ...] = ()) -> tuple[LiveBlockComponent, FakeBackend]:
    be = FakeBackend(FILTER, "-P PREROUTING ACCEPT\n" + raw)
    return LiveBlockComponent(4, lambda: be, ("docker+",), V4, members(V4, exceptions, guard=True)), be


def raw_rules(be: FakeBackend) -> list[str]:
    return [ln[len("-A PREROUTING "):] for ln in be.raw.splitlines() if ln.startswith("-A ")]


def converge(c: LiveBlockComponent) -> None:
    first = c.inspect()
    c.execute(first)
    assert c.inspect().changes == ()


def test_the_guard_goes_in_after_its_exceptions_and_twice_changes_nothing() -> None:
    c, be = guarded(f"-A PREROUTING {OURS}\n", ("tasks0",))
    f = c.inspect().findings[0]
    assert f.status == "drift" and "the guard of every interface is missing" in f.detail
    converge(c)
    assert raw_rules(be) == [EXC, GUARD, OURS]
    assert c.inspect().findings[0].status == "ok"


def test_a_guard_above_its_exception_is_not_in_force_and_is_put_in_order() -> None:
    c, be = guarded(f"-A PREROUTING {GUARD}\n-A PREROUTING {EXC}\n-A PREROUTING {OURS}\n", ("tasks0",))
    f = c.inspect().findings[0]
    assert f.status == "drift" and "not in force" in f.detail
    converge(c)
    assert raw_rules(be).index(EXC) < raw_rules(be).index(GUARD)
    assert len(raw_rules(be)) == 3


def test_an_accept_above_the_guard_puts_it_back_on_top_and_keeps_the_accept() -> None:
    c, be = guarded(f"-A PREROUTING -i eth9 -j ACCEPT\n-A PREROUTING {GUARD}\n-A PREROUTING {OURS}\n")
    converge(c)
    rules = raw_rules(be)
    assert rules[0] in (GUARD, OURS) and "-i eth9 -j ACCEPT" in rules
    assert rules.count(GUARD) == 1


def test_a_withdrawn_exception_is_deleted_the_operators_return_is_kept() -> None:
    theirs = "-d 169.254.169.254/32 -i eth7 -j RETURN"
    c, be = guarded(
        f"-A PREROUTING {EXC}\n-A PREROUTING {GUARD}\n-A PREROUTING {OURS}\n-A PREROUTING {theirs}\n")
    f = c.inspect().findings[0]
    assert "a withdrawn exception is still in raw PREROUTING" in f.detail
    converge(c)
    assert raw_rules(be) == [GUARD, OURS, theirs]


def test_guard_off_takes_ours_out_and_remove_takes_all() -> None:
    be = FakeBackend(
        FILTER, f"-P PREROUTING ACCEPT\n-A PREROUTING {EXC}\n-A PREROUTING {GUARD}\n-A PREROUTING {OURS}\n")
    c = LiveBlockComponent(4, lambda: be, ("docker+",), V4, members(V4, ("tasks0",), guard=False))
    converge(c)
    assert raw_rules(be) == [OURS]
    c2, be2 = guarded(f"-A PREROUTING {EXC}\n-A PREROUTING {GUARD}\n", ("tasks0",))
    c2.remove()
    assert raw_rules(be2) == []


def test_the_rules_file_holds_the_guard_in_order_and_gives_it_back_on_remove() -> None:
    blocks = [Block("docker+", V4)]
    guard = members(V4, ("tasks0",), guard=True)
    operator = b"*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A PREROUTING -j CT --notrack\nCOMMIT\n"
    merged = RulesFile(operator).merged(blocks, guard)
    text = merged.decode()
    assert text.index("-i tasks0") < text.index("! -i lo") < text.index("-j CT --notrack")
    assert RulesFile(merged).merged(blocks, guard) == merged
    # a guard the policy turned off leaves the file; the operator's lines stay byte for byte
    unguarded = RulesFile(merged).merged(blocks, ())
    assert b"every interface" not in unguarded and b"declared IMDS exception" not in unguarded
    back = RulesFile(merged).without_ours()
    assert operator in back and b"ecs-harden" not in back
    assert RulesFile(back).merged(blocks, guard) == merged
    raw = [r for _, r in RulesFile(merged).rules("raw")]
    assert [GuardRule(V4, "tasks0").is_copy(r) for r in raw] == [False, True, False, False]
    assert [GuardRule(V4).is_copy(r) for r in raw] == [False, False, True, False]
