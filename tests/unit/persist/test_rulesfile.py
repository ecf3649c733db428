"""RulesFile: merge keeps every operator line, places the block first, and is idempotent."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecs_harden.firewall.evaluate import Probe
from ecs_harden.imds.block import Block
from ecs_harden.persist.rulesfile import RulesFile

V4 = ipaddress.ip_network("169.254.169.254/32")
BLOCKS = [Block("docker+", V4)]
PROBE = Probe("docker+", V4, ("docker+",))
HAND = "-A FORWARD -d 169.254.169.254/32 -i docker+ -j DROP\n"


def effective(data: bytes) -> bool:
    rf = RulesFile(data)
    return all(
        o.verdict == "block"
        for started in (False, True)
        for o in rf.outcomes(PROBE, docker_started=started)
    )


def test_new_file_is_a_complete_filter_table() -> None:
    out = RulesFile(b"").merged(BLOCKS).decode()
    assert out.startswith("*filter\n") and out.endswith("COMMIT\n")
    assert ":DOCKER-USER - [0:0]" in out
    assert effective(out.encode())


def test_aws_recipe_dump_gets_our_rule_on_top_and_keeps_everything_else() -> None:
    dump = (
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        "-A FORWARD -i docker0 ! -o docker0 -j ACCEPT\n" + HAND + "COMMIT\n"
    ).encode()
    assert not effective(dump)
    out = RulesFile(dump).merged(BLOCKS)
    assert effective(out)
    text = out.decode()
    assert "-A FORWARD -i docker0 ! -o docker0 -j ACCEPT" in text
    # The shadowed hand copy replaced by ours on top; the guard in a new *raw section.
    assert text.count("169.254.169.254") == 3
    assert text.endswith("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                         '-A PREROUTING -d 169.254.169.254/32 -i docker+ -m comment --comment '
                         '"ecs-harden: block IMDS from containers" -j DROP\nCOMMIT\n')
    assert RulesFile(out).merged(BLOCKS) == out


def test_no_filter_table_appends_one() -> None:
    nat = b"*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT"
    out = RulesFile(nat).merged(BLOCKS)
    assert out.startswith(nat + b"\n*filter\n")


def test_crlf_files_stay_crlf() -> None:
    data = b"*filter\r\n:FORWARD ACCEPT [0:0]\r\nCOMMIT\r\n"
    out = RulesFile(data).merged(BLOCKS)
    assert b"\n" not in out.replace(b"\r\n", b"")


def test_catch_all_rejects() -> None:
    rf = RulesFile(b"*filter\n-A FORWARD -j REJECT --reject-with icmp-host-prohibited\n"
                   b"-A FORWARD -s 10.0.0.0/8 -j DROP\n-A INPUT -j DROP\n-A OUTPUT -j REJECT\nCOMMIT\n")
    assert rf.catch_all_rejects() == [
        "-A FORWARD -j REJECT --reject-with icmp-host-prohibited", "-A INPUT -j DROP"
    ]


operator_rule = st.sampled_from([
    "-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT",
    "-A FORWARD -s 198.51.100.0/24 -j DROP",
    "-A FORWARD -i docker0 ! -o docker0 -j ACCEPT",
    "-A DOCKER-USER -j RETURN",
    "-A DOCKER-USER -s 10.1.0.0/16 -j ACCEPT",
    "# a comment",
    "",
    HAND.strip(),
])


@settings(max_examples=200, deadline=None)
@given(st.lists(operator_rule, max_size=8), st.booleans())
def test_merge_property(rules: list[str], declare_docker_user: bool) -> None:
    decl = ":DOCKER-USER - [0:0]\n" if declare_docker_user else ""
    data = ("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n" + decl
            + "".join(r + "\n" for r in rules) + "COMMIT\n").encode()
    out = RulesFile(data).merged(BLOCKS)
    assert effective(out)
    merged = RulesFile(out)
    for chain in ("DOCKER-USER", "FORWARD"):
        assert len(merged.copies(BLOCKS[0], chain)) == 1
    # Every operator line other than block copies is kept, in order.
    assert len(merged.copies(BLOCKS[0], "PREROUTING", "raw")) == 1
    def others(b: bytes) -> list[str]:
        return [ln for ln in b.decode().splitlines()
                if "169.254.169.254" not in ln and ln != ":DOCKER-USER - [0:0]"]
    raw_skeleton = ["*raw", ":PREROUTING ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", "COMMIT"]
    assert others(out) == others(data) + raw_skeleton
    assert RulesFile(out).merged(BLOCKS) == out
    # remove gives the file back byte for byte; an unused DOCKER-USER declaration (an empty
    # chain, a no-op at boot) goes with ours: the two cannot be told apart.
    # (A hand-made copy the agent replaced stays replaced; a file using DOCKER-USER without
    # declaring it keeps the declaration that makes it restorable.)
    back = RulesFile(out).without_ours()
    assert others(back) == others(data)
    used = any(r.startswith("-A DOCKER-USER") for r in rules)
    if HAND.strip() not in rules and (declare_docker_user or not used):
        assert back == (data if used else data.replace(decl.encode(), b""))


@pytest.mark.parametrize("original", [
    "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A INPUT -i lo -j ACCEPT\nCOMMIT\n",
    "# mine\r\n*filter\r\n:INPUT DROP [0:0]\r\n-A INPUT -i lo -j ACCEPT\r\nCOMMIT\r\n",
    "*raw\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -s 10.9.9.9/32 -j DROP\nCOMMIT\n*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n",
    "*filter\n:FORWARD ACCEPT [0:0]\n:DOCKER-USER - [0:0]\n-A DOCKER-USER -s 10.1.1.1/32 -j DROP\nCOMMIT\n",
    "*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n",
])
def test_remove_gives_the_operators_file_back_byte_for_byte(original: str) -> None:
    blocks = [Block("docker+", V4), Block("br-+", V4)]
    merged = RulesFile(original.encode()).merged(blocks)
    assert merged != original.encode()
    back = RulesFile(merged).without_ours()
    assert back == original.encode()
    assert not RulesFile.created_by_us(back, blocks)


def test_a_file_ecs_harden_created_is_known_as_such_once_emptied() -> None:
    blocks = [Block("docker+", V4)]
    assert RulesFile.created_by_us(RulesFile(RulesFile(b"").merged(blocks)).without_ours(), blocks)
