"""Every backend reads what iptables itself prints, and commits all-or-nothing."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from ecs_harden.firewall.rule import parse_line
from tests.integration.conftest import require_lab
from tests.lab.host import PROJECT
from tests.lab.sandbox import Sandbox

# (backend, variant): python-iptables is only ever used on legacy hosts.
COMBOS = [("python-iptables", "legacy"), ("xtables-cli", "nft"), ("xtables-cli", "legacy")]

RULES_V4 = [
    "-A FORWARD -i docker0 ! -o docker0 -j ACCEPT",
    "-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    '-A FORWARD -d 169.254.169.254/32 -i docker+ -m comment --comment "ecs-harden: block IMDS from containers" -j DROP',
    "-A FORWARD -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT",
    "-A FORWARD ! -s 10.0.0.0/8 -p udp -m udp --dport 53 -j RETURN",
    "-A FORWARD -j REJECT --reject-with icmp-host-prohibited",
    "-A FORWARD -m state --state NEW -j LOG",
    "-A FORWARD -j LAB",
    "-A FORWARD -g LAB",
]
RULES_V6 = [
    "-A FORWARD -d fd00:ec2::254/128 -i docker+ -j DROP",
    "-A FORWARD -s fd00:dead::/64 -o eth0 -p tcp -m tcp ! --dport 22 -j ACCEPT",
]


@pytest.fixture(params=COMBOS, ids=[f"{b}-{v}" for b, v in COMBOS])
def box(request: pytest.FixtureRequest) -> Iterator[tuple[Sandbox, str]]:
    require_lab()
    backend, variant = request.param
    with Sandbox(variant) as sb:
        yield sb, backend


def nft_handles_missing(sb: Sandbox, backend: str) -> bool:
    """The iptables command line on legacy tables: no kernel handles to delete by, so its
    deletes by position are refused (ecs-harden picks python-iptables there)."""
    return backend == "xtables-cli" and sb.variant == "legacy"


def drive(sb: Sandbox, backend: str, family: int, *args: str, ops: Any = None) -> Any:
    cp = sb.run(
        [sys.executable, "-m", "tests.lab.backend_cli", backend, str(family), *args],
        input=json.dumps(ops) if ops is not None else None,
        env={"PYTHONPATH": str(PROJECT)}, check=False,
    )
    assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout) if args[0] == "read" else None


@pytest.mark.parametrize("family,rules", [(4, RULES_V4), (6, RULES_V6)])
def test_reads_what_iptables_prints(box: tuple[Sandbox, str], family: int, rules: list[str]) -> None:
    sb, backend = box
    sb.iptables("-N", "LAB", family=family)
    for rule in rules:
        if family == 4 or "LAB" not in rule:
            sb.iptables(*shlex.split(rule), family=family)
    printed = sb.rules("FORWARD", family)
    got = drive(sb, backend, family, "read", "FORWARD", "LAB", "MISSING")
    assert got["FORWARD"]["rules"] == printed
    assert got["FORWARD"]["policy"] == "ACCEPT"
    assert got["LAB"] == {"policy": None, "rules": []}
    assert got["MISSING"] is None


def test_commit_applies_every_op_in_order(box: tuple[Sandbox, str]) -> None:
    sb, backend = box
    block = ["-d", "169.254.169.254/32", "-i", "docker+", "-m", "comment", "--comment", "a comment", "-j", "DROP"]
    sb.iptables("-A", "FORWARD", "-i", "docker+", "-d", "169.254.169.254/32", "-j", "DROP")
    sb.iptables("-A", "FORWARD", "-o", "eth0", "-j", "ACCEPT")
    drive(sb, backend, 4, "commit", ops=[
        {"op": "new", "chain": "DOCKER-USER"},
        {"op": "insert", "chain": "DOCKER-USER", "position": 1, "args": block},
        {"op": "insert", "chain": "FORWARD", "position": 1, "args": block},
        {"op": "insert", "chain": "PREROUTING", "position": 1, "args": block, "table": "raw"},
    ])
    # Deletes by position go in a commit of their own: the old hand-made DROP, now second.
    delete = [{"op": "delete_at", "chain": "FORWARD", "position": 2}]
    if nft_handles_missing(sb, backend):
        before = sb.rules("FORWARD")
        cp = sb.run([sys.executable, "-m", "tests.lab.backend_cli", backend, "4", "commit"],
                    input=json.dumps(delete), env={"PYTHONPATH": str(PROJECT)}, check=False)
        assert cp.returncode != 0 and "nf_tables holds 0; nothing deleted" in cp.stderr, cp.stderr
        assert sb.rules("FORWARD") == before
        return
    drive(sb, backend, 4, "commit", ops=delete)
    want = '-d 169.254.169.254/32 -i docker+ -m comment --comment "a comment" -j DROP'
    assert sb.rules("DOCKER-USER") == [f"-A DOCKER-USER {want}"]
    assert sb.rules("FORWARD") == [f"-A FORWARD {want}", "-A FORWARD -o eth0 -j ACCEPT"]
    raw = [ln for ln in sb.iptables("-t", "raw", "-S", "PREROUTING").splitlines() if ln.startswith("-A")]
    assert raw == [f"-A PREROUTING {want}"]
    got = drive(sb, backend, 4, "read", "--raw", "PREROUTING")
    assert got["PREROUTING"]["rules"] == raw
    drive(sb, backend, 4, "commit", ops=[
        {"op": "delete_at", "chain": "PREROUTING", "position": 1, "table": "raw"},
    ])
    assert "-A PREROUTING" not in sb.iptables("-t", "raw", "-S", "PREROUTING")


@pytest.mark.parametrize("ops,why", [
    # an insert, then one that cannot be made: neither happens
    ([{"op": "insert", "chain": "FORWARD", "position": 1, "args": ["-i", "docker+", "-j", "DROP"]},
      {"op": "insert", "chain": "NO-SUCH-CHAIN", "position": 1, "args": ["-j", "DROP"]}], "failed"),
    # a delete of a rule that is no longer at its position: nothing deleted
    ([{"op": "delete_at", "chain": "FORWARD", "position": 1, "expect": "-A FORWARD -s 192.0.2.1/32 -j ACCEPT"}],
     "rule 1 is no longer -A FORWARD -s 192.0.2.1/32 -j ACCEPT"),
    # deletes by position mixed with other ops: refused before anything happens
    ([{"op": "insert", "chain": "FORWARD", "position": 1, "args": ["-i", "docker+", "-j", "DROP"]},
      {"op": "delete_at", "chain": "FORWARD", "position": 1}], "commit them apart"),
], ids=["failing-insert", "stale-delete", "mixed"])
def test_failed_commit_changes_nothing(box: tuple[Sandbox, str], ops: list[dict[str, Any]], why: str) -> None:
    sb, backend = box
    if why.startswith("rule 1") and nft_handles_missing(sb, backend):
        why = "nf_tables holds 0; nothing deleted"
    sb.iptables("-A", "FORWARD", "-o", "eth0", "-j", "ACCEPT")
    before = sb.iptables("-S")
    cp = sb.run(
        [sys.executable, "-m", "tests.lab.backend_cli", backend, "4", "commit"],
        input=json.dumps(ops), env={"PYTHONPATH": str(PROJECT)}, check=False,
    )
    assert cp.returncode != 0 and why in cp.stderr, cp.stderr
    assert sb.iptables("-S") == before


@pytest.mark.parametrize("family", [4, 6])
def test_the_host_network_rule_round_trips(box: tuple[Sandbox, str], family: int) -> None:
    """imds.host_network's OUTPUT rule (`-m cgroup --path`, which iptables prints quoted)
    is made, read back as iptables prints it, and deleted by position by each backend. The
    path is `/` here: it resolves in any cgroup namespace (ecstasks.slice exists only on an
    ECS host, see tests/vm)."""
    sb, backend = box
    address = "169.254.169.254/32" if family == 4 else "fd00:ec2::254/128"
    args = ["-d", address, "-m", "cgroup", "--path", "/", "-m", "comment",
            "--comment", "ecs-harden: block IMDS from host-network ECS tasks", "-j", "DROP"]
    sb.iptables("-A", "OUTPUT", "-o", "lo", "-j", "ACCEPT", family=family)
    drive(sb, backend, family, "commit", ops=[{"op": "insert", "chain": "OUTPUT", "position": 1, "args": args}])
    printed = sb.rules("OUTPUT", family)
    assert printed[0] == (f'-A OUTPUT -d {address} -m cgroup --path "/" -m comment --comment '
                          '"ecs-harden: block IMDS from host-network ECS tasks" -j DROP'), printed
    # the same rule (iptables quotes the path always, the backends' text only where needed)
    got = drive(sb, backend, family, "read", "OUTPUT")["OUTPUT"]["rules"]
    assert [parse_line(r) for r in got] == [parse_line(r) for r in printed]
    if nft_handles_missing(sb, backend):
        return
    drive(sb, backend, family, "commit", ops=[{"op": "delete_at", "chain": "OUTPUT", "position": 1}])
    assert sb.rules("OUTPUT", family) == ["-A OUTPUT -o lo -j ACCEPT"]
