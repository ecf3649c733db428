"""ecs_agent.introspection judged and planned on in-memory tables (tests/unit's FakeBackend):
ecs-init's rules as it writes them, ours placed after the IMDS guard, what remove takes."""

from __future__ import annotations

from ecs_harden.firewall.backend import DeleteAt, Insert
from ecs_harden.introspection import IntrospectionComponent, PortBlock
from tests.unit.test_imds_plan import OURS, FakeBackend

GUARD = '-d 169.254.169.254/32 ! -i lo -m comment --comment "ecs-harden: block IMDS from every interface" -j DROP'
# ecs-init (amazon-ecs-agent ecs-init/exec/iptables, 1.97.0 on), as `iptables -S` prints
# them: the ACCEPT from docker0 in front of its drop of everything but lo
ECS_INIT_DROP = "-A INPUT ! -i lo -p tcp -m tcp --dport 51678 -j DROP"
ECS_INIT_ACCEPT = "-A INPUT -i docker0 -p tcp -m tcp --dport 51678 -j ACCEPT"
RAW = f"-P PREROUTING ACCEPT\n-A PREROUTING {GUARD}\n-A PREROUTING {OURS}\n"


def filter_(*rules: str, policy: str = "ACCEPT") -> str:
    return f"-P INPUT {policy}\n-P FORWARD ACCEPT\n" + "".join(f"{r}\n" for r in rules)


def component(text: str, mode: str = "report", raw: str = RAW) -> tuple[IntrospectionComponent, FakeBackend]:
    be = FakeBackend(text, raw)
    return IntrospectionComponent(mode, ("docker+",), {4: lambda: be}), be


def test_the_accept_ecs_init_writes_for_docker0_is_named_as_a_warning() -> None:
    c, _ = component(filter_(ECS_INIT_ACCEPT, ECS_INIT_DROP))
    (f,) = c.inspect().findings
    assert f.status == "warn" and f.actual == "reachable"
    assert f"IPv4 from docker+: accepted by `{ECS_INIT_ACCEPT}`" in f.detail  # docker0 is one of docker+
    assert "ECScape" in f.detail


def test_ecs_init_before_2025_drops_it_and_nothing_else_is_reported() -> None:
    c, _ = component(filter_(ECS_INIT_DROP))
    insp = c.inspect()
    assert [f.status for f in insp.findings] == ["ok"] and insp.plan is None


def test_no_rules_and_input_accepting_everything_is_reachable() -> None:
    (f,) = component(filter_())[0].inspect().findings
    assert f.status == "warn" and "(policy INPUT ACCEPT)" in f.detail


def test_block_goes_right_after_the_imds_guard_and_then_holds() -> None:
    c, be = component(filter_(ECS_INIT_ACCEPT, ECS_INIT_DROP), mode="block")
    insp = c.inspect()
    assert insp.findings[0].status == "drift"
    assert insp.plan is not None and insp.plan.inserts == {4: (Insert("PREROUTING", 3, PortBlock("docker+").args(), "raw"),)}
    c.execute(insp)
    assert be.raw.splitlines()[1:3] == [f"-A PREROUTING {GUARD}", f"-A PREROUTING {OURS}"]
    assert "--dport 51678" in be.raw.splitlines()[3]
    again = c.inspect()
    assert again.findings[0].status == "ok" and again.plan is None


def test_a_copy_shadowed_by_a_foreign_accept_is_replaced_and_the_old_one_deleted() -> None:
    ours = "-A PREROUTING -i docker+ -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 51678 " \
           '-m comment --comment "ecs-harden: block ECS agent introspection from containers" -j DROP'
    raw = RAW + "-A PREROUTING -i docker0 -j ACCEPT\n" + ours + "\n" + ours + "\n"
    c, be = component(filter_(ECS_INIT_ACCEPT), mode="block", raw=raw)
    insp = c.inspect()
    assert insp.findings[0].status == "drift"
    c.execute(insp)
    lines = be.raw.splitlines()
    assert lines[3] == ours and lines[4] == "-A PREROUTING -i docker0 -j ACCEPT" and lines.count(ours) == 1
    assert c.inspect().findings[0].status == "ok"


def test_report_after_block_takes_our_rules_away_and_remove_does_too() -> None:
    c, be = component(filter_(ECS_INIT_ACCEPT), mode="block")
    c.execute(c.inspect())
    r_be = FakeBackend(be.text, be.raw)
    r = IntrospectionComponent("report", ("docker+",), {4: lambda: r_be})
    insp = r.inspect()
    assert insp.findings[0].status == "drift" and "still there" in insp.findings[0].detail
    assert insp.plan is not None and insp.plan.inserts == {}
    r.execute(insp)
    assert "51678" not in r_be.raw and r.inspect().findings[0].status == "warn"
    said = c.remove()
    assert len(said) == 1 and "51678" not in be.raw
    assert isinstance(be.committed[-1][0], DeleteAt)
