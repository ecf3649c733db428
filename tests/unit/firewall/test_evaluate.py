"""The path evaluator on Docker-shaped rulesets."""

from __future__ import annotations

import ipaddress

import pytest

from ecs_harden.firewall.evaluate import PathEvaluator, Probe, Tri, iface_covers, iface_disjoint, rule_matches
from ecs_harden.firewall.rule import Chain, parse_chain_listing, parse_line
from tests.lab import foreign

DOCKER = """-P FORWARD ACCEPT
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A FORWARD -i docker0 -o docker0 -j ACCEPT
-A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
"""
BLOCK = "-d 169.254.169.254/32 -i docker+ -j DROP"
PROBE = Probe("docker+", ipaddress.ip_network("169.254.169.254/32"), ("docker+",))


def evaluator(text: str) -> PathEvaluator:
    by_chain: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.split()[0] in ("-A", "-P", "-N"):
            by_chain.setdefault(line.split()[1], []).append(line)

    def read(name: str) -> Chain | None:
        return parse_chain_listing(name, "\n".join(by_chain[name])) if name in by_chain else None

    return PathEvaluator(read)


def verdicts(text: str, probe: Probe = PROBE) -> set[tuple[str, str]]:
    return {(o.verdict, o.rule) for o in evaluator(text).outcomes(probe)}


def test_docker_alone_accepts() -> None:
    assert ("accept", "-A FORWARD -i docker0 ! -o docker0 -j ACCEPT") in verdicts(DOCKER)


def test_drop_below_dockers_accept_is_shadowed() -> None:
    out = verdicts(DOCKER + f"-A FORWARD {BLOCK}\n")
    assert ("accept", "-A FORWARD -i docker0 ! -o docker0 -j ACCEPT") in out


def test_drop_at_top_of_docker_user_is_effective() -> None:
    text = DOCKER.replace("-A DOCKER-USER -j RETURN", f"-A DOCKER-USER {BLOCK}\n-A DOCKER-USER -j RETURN")
    assert verdicts(text) == {("block", f"-A DOCKER-USER {BLOCK}")}


def test_drop_after_a_return_in_docker_user_is_not_reached() -> None:
    text = DOCKER.replace("-A DOCKER-USER -j RETURN", f"-A DOCKER-USER -j RETURN\n-A DOCKER-USER {BLOCK}")
    assert any(v == "accept" for v, _ in verdicts(text))


def test_drop_at_top_of_forward_is_effective() -> None:
    text = DOCKER.replace("-P FORWARD ACCEPT\n", f"-P FORWARD ACCEPT\n-A FORWARD {BLOCK}\n")
    assert verdicts(text) == {("block", f"-A FORWARD {BLOCK}")}


def test_drop_for_a_narrower_pattern_is_not_enough() -> None:
    text = "-P FORWARD ACCEPT\n-A FORWARD -d 169.254.169.254/32 -i docker0 -j DROP\n"
    assert ("accept", "policy FORWARD ACCEPT") in verdicts(text)


def test_policy_drop_counts_as_block() -> None:
    assert verdicts("-P FORWARD DROP\n") == {("block", "policy FORWARD DROP")}


def test_unknown_target_may_accept() -> None:
    out = verdicts("-P FORWARD DROP\n-A FORWARD -j NFQUEUE --queue-num 1\n")
    assert {v for v, _ in out} == {"unknown"}


def test_goto_does_not_come_back() -> None:
    text = "-P FORWARD DROP\n-N G\n-A FORWARD -g G\n-A FORWARD -j ACCEPT\n-A G -j RETURN\n"
    # RETURN from a goto chain returns to FORWARD's caller: the policy.
    assert verdicts(text) == {("block", "policy FORWARD DROP")}


def test_maybe_match_explores_both_ways() -> None:
    text = f"-P FORWARD DROP\n-A FORWARD -s 10.0.0.0/8 -j ACCEPT\n-A FORWARD {BLOCK}\n"
    assert {v for v, _ in verdicts(text)} == {"accept", "block"}


def test_established_only_accept_does_not_shadow() -> None:
    text = f"-P FORWARD ACCEPT\n-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n-A FORWARD {BLOCK}\n"
    assert {v for v, _ in verdicts(text)} == {"block"}


def test_other_ports_and_protocols_do_not_shadow() -> None:
    text = (
        "-P FORWARD ACCEPT\n-A FORWARD -p udp -j ACCEPT\n-A FORWARD -p tcp -m tcp --dport 443 -j ACCEPT\n"
        f"-A FORWARD -d 10.0.0.1/32 -j ACCEPT\n-A FORWARD -o docker0 -j ACCEPT\n-A FORWARD {BLOCK}\n"
    )
    assert {v for v, _ in verdicts(text)} == {"block"}


def test_ipv6_probe() -> None:
    probe = Probe("docker+", ipaddress.ip_network("fd00:ec2::254/128"), ("docker+",))
    text = "-P FORWARD ACCEPT\n-A FORWARD -d fd00:ec2::254/128 -i docker+ -j DROP\n"
    assert {v for v, _ in verdicts(text, probe)} == {"block"}
    assert {v for v, _ in verdicts(f"-P FORWARD ACCEPT\n-A FORWARD {BLOCK}\n", probe)} == {"accept"}


@pytest.mark.parametrize(
    "wide,narrow,covers,disjoint",
    [
        ("docker+", "docker0", True, False),
        ("docker+", "docker+", True, False),
        ("docker0", "docker+", False, False),
        ("br-+", "docker+", False, True),
        ("+", "br-abc", True, False),
        ("docker0", "docker0", True, False),
        ("docker0", "docker1", False, True),
        ("dock+", "docker+", True, False),
    ],
)
def test_interface_patterns(wide: str, narrow: str, covers: bool, disjoint: bool) -> None:
    assert iface_covers(wide, narrow) is covers
    assert iface_disjoint(wide, narrow) is disjoint


def test_rule_matches_is_three_valued() -> None:
    def m(line: str) -> Tri:
        rule = parse_line(line)
        assert rule is not None
        return rule_matches(rule, PROBE)

    assert m("-A F -i docker0 -j ACCEPT") is Tri.MAYBE
    assert m("-A F ! -i docker+ -j ACCEPT") is Tri.NO
    assert m("-A F -o docker0 -j ACCEPT") is Tri.NO
    assert m("-A F ! -o docker0 -j ACCEPT") is Tri.YES
    assert m("-A F -d 169.254.0.0/16 -j ACCEPT") is Tri.YES
    assert m("-A F ! -d 169.254.0.0/16 -j ACCEPT") is Tri.NO
    assert m("-A F -m state --state NEW -j ACCEPT") is Tri.YES
    assert m("-A F -m physdev --physdev-in veth0 -j ACCEPT") is Tri.MAYBE
    assert m("-A F -m comment --comment x -j ACCEPT") is Tri.YES


def mark_tree(levels: int, width: int) -> str:
    chains, rules = foreign.mark_tree(levels, width)
    return "\n".join(["-P FORWARD ACCEPT", *(f"-N {c}" for c in chains), *rules]) + "\n"


def test_a_deep_tree_of_jumps_is_walked_without_recursion() -> None:
    found = verdicts(mark_tree(4, 4))
    assert any(v == "accept" and "-m mark --mark 0x" in r for v, r in found)
    # With the block on top, the walk stops there.
    assert verdicts(mark_tree(4, 4).replace("-A FORWARD -m mark", f"-A FORWARD {BLOCK}\n-A FORWARD -m mark", 1)) \
        == {("block", f"-A FORWARD {BLOCK}")}


def test_hundreds_of_rules_that_may_accept_are_no_crash() -> None:
    text = "-P FORWARD ACCEPT\n" + "".join(f"-A FORWARD -s 10.0.{i // 250}.{i % 250}/32 -j ACCEPT\n" for i in range(2000))
    found = verdicts(text)
    assert len(found) == 2001 and ("accept", "policy FORWARD ACCEPT") in found


def test_more_chains_than_the_budget_is_unknown() -> None:
    found = {o.verdict for o in evaluator(mark_tree(5, 4)).outcomes(PROBE)}  # 1,365 chains
    assert "unknown" in found


def test_the_budget_ends_in_unknown_never_in_effective() -> None:
    text = "-P FORWARD DROP\n" + "-A FORWARD -s 10.0.0.1/32 -j LOG\n" * 50
    ev = evaluator(text)
    ev.max_steps = 10
    found = {o.verdict for o in ev.outcomes(PROBE)}
    assert "unknown" in found
    assert {o.verdict for o in evaluator(text).outcomes(PROBE)} == {"block"}


def test_an_unreadable_rule_may_accept() -> None:
    text = '-P FORWARD DROP\n-A FORWARD -m comment --comment "a\n-A FORWARD -j DROP\n'
    found = verdicts(text)
    assert any(v == "unknown" and "cannot read" in r for v, r in found)
