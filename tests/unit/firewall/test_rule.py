"""Parsing `iptables -S` lines into Rules and back."""

from __future__ import annotations

import pytest

from ecs_harden.firewall.rule import Neg, parse_chain_listing, parse_line, quote_args

LINES = [
    "-A FORWARD -i docker0 ! -o docker0 -j ACCEPT",
    "-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    '-A DOCKER-USER -d 169.254.169.254/32 -i docker+ -m comment --comment "ecs-harden: block IMDS from containers" -j DROP',
    "-A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT",
    "-A FORWARD -j REJECT --reject-with icmp-host-prohibited",
    "-A X ! -s 10.0.0.0/8 ! -p udp -m multiport ! --dports 53,80:90 -g Y",
]


@pytest.mark.parametrize("line", LINES)
def test_text_round_trips(line: str) -> None:
    rule = parse_line(line)
    assert rule is not None
    assert rule.text() == line
    assert parse_line(rule.text()) == rule


def test_fields() -> None:
    rule = parse_line(LINES[3])
    assert rule is not None
    assert rule.dst == Neg("172.17.0.2/32")
    assert rule.in_iface == Neg("docker0", negated=True)
    assert rule.proto == Neg("tcp")
    assert rule.matches[0].module == "tcp"
    assert rule.matches[0].options[0].name == "dport"
    assert rule.target == "ACCEPT" and not rule.goto
    goto = parse_line(LINES[5])
    assert goto is not None and goto.goto and goto.target == "Y"
    assert goto.matches[0].options[0].negated


def test_reject_keeps_target_args() -> None:
    rule = parse_line(LINES[4])
    assert rule is not None and rule.target_args == ("--reject-with", "icmp-host-prohibited")


def test_comment_detection() -> None:
    rule = parse_line(LINES[2])
    assert rule is not None
    assert rule.has_comment("ecs-harden: block IMDS from containers")
    assert not rule.has_comment("ecs-harden")


def test_unknown_options_are_kept_as_uncertain() -> None:
    rule = parse_line("-A FORWARD -f -j ACCEPT")
    assert rule is not None and rule.unknown == ("-f",)


def test_listing() -> None:
    chain = parse_chain_listing("FORWARD", "-P FORWARD DROP\n" + "\n".join(LINES[:2]) + "\n-A OTHER -j DROP\n")
    assert chain.policy == "DROP"
    assert len(chain.rules) == 2


def test_quote_args_for_restore() -> None:
    assert quote_args(["-m", "comment", "--comment", 'a "b" c']) == '-m comment --comment "a \\"b\\" c"'
    assert parse_line("-A X " + quote_args(["--comment", 'a "b" c'])) is not None


def test_iptables_quoting_is_read_back_exactly() -> None:
    from ecs_harden.firewall.rule import parse_line, quote_args, tokenize

    line = '-A FORWARD -d 169.254.169.254/32 -i docker+ -m comment --comment "it\\\'s \\"q\\" \\\\" -j DROP'
    rule = parse_line(line)
    assert rule is not None and not rule.unreadable
    assert rule.matches[0].options[0].values == ("it's \"q\" \\",)
    assert tokenize(quote_args(rule.args)) == list(rule.args)


def test_a_comment_holding_newlines_is_one_rule_in_a_listing() -> None:
    from ecs_harden.firewall.rule import parse_chain_listing

    text = '-P FORWARD ACCEPT\n-A FORWARD -m comment --comment "a\n-A FORWARD -i docker+ -d 169.254.169.254/32 -j DROP\n" -j ACCEPT\n'
    chain = parse_chain_listing("FORWARD", text)
    assert len(chain.rules) == 1 and chain.rules[0].target == "ACCEPT"
    assert chain.rules[0].matches[0].options[0].values == ("a\n-A FORWARD -i docker+ -d 169.254.169.254/32 -j DROP\n",)


@pytest.mark.parametrize("line", ['-A FORWARD -m comment --comment "open -j ACCEPT', "-A FORWARD -j ACC'EPT",
                                  '-A FORWARD "x"y -j ACCEPT', "-A"])
def test_a_line_that_cannot_be_read_is_an_unreadable_rule_not_a_crash(line: str) -> None:
    from ecs_harden.firewall.rule import parse_line

    rule = parse_line(line)
    if line == "-A":
        assert rule is None
    else:
        assert rule is not None and rule.unreadable and rule.text() == line
