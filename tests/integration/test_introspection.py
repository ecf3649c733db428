"""ecs_agent.introspection with real containers on both iptables variants: a stand-in for
the ECS agent's introspection server on tcp/51678 of the host, behind the rules ecs-init
writes at each start of the agent; reported by default, dropped on request, and the drop
holds when ecs-init takes its rules away and puts them back (`systemctl restart ecs`)."""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.lab.host import CREDS, IMAGE, IMDS_V4, EcsHost

PORT = "51678"
# ecs-init's filter INPUT rules for the port, as Engine.PreStart writes them in iptables
# and ip6tables (amazon-ecs-agent ecs-init/exec/iptables/iptables.go, 1.97.0 on): the drop
# of everything but lo inserted on top, then the ACCEPT from the default bridge above it.
ECS_INIT = (
    ("-p", "tcp", "--dport", PORT, "!", "-i", "lo", "-j", "DROP"),
    ("-p", "tcp", "--dport", PORT, "-i", "docker0", "-j", "ACCEPT"),
)
BLOCK = "ecs_agent:\n  introspection: block\n"


def ecs_init(host: EcsHost, start: bool) -> None:
    """ecs-init's pre-start (its rules inserted) or post-stop (deleted), both families."""
    for family in (4, 6):
        for rule in ECS_INIT:
            host.sandbox.iptables("-I" if start else "-D", "INPUT", *rule, family=family)


def gateways(host: EcsHost) -> list[str]:
    """docker0's addresses (IPv4, then IPv6's global one): the containers' gateways."""
    out = host.sandbox.run(["ip", "-j", "addr", "show", "dev", "docker0"]).stdout
    addrs = [a for a in json.loads(out)[0]["addr_info"] if a.get("scope") == "global"]
    return [a["local"] for a in sorted(addrs, key=lambda a: a["family"] != "inet")]


def reaches_agent(host: EcsHost, *addresses: str) -> dict[str, bool]:
    """Whether one container on docker0 gets the agent's answer from each address:51678
    (one container for all; IPv6 waits for the container's address to leave DAD, and each
    address gets a second try: a first SYN can go unanswered while the neighbours are
    resolved on a busy machine)."""
    script = ("i=0; while ip -6 addr show dev eth0 | grep -q tentative && [ $i -lt 100 ]; "
              "do sleep 0.1; i=$((i+1)); done; for a in " + " ".join(addresses) + "; do r=no; "
              "for t in 1 2; do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 1 $a " + PORT
              + " | grep -q agent-ok && { r=yes; break; }; done; echo \"$a $r\"; done")
    out = host.docker("run", "--rm", IMAGE, "sh", "-c", script, check=False, timeout=90).stdout
    got = dict(line.split() for line in out.splitlines() if line.count(" ") == 1)
    assert set(got) == set(addresses), out
    return {a: got[a] == "yes" for a in addresses}


def host_reaches_agent(host: EcsHost) -> bool:
    cp = host.sandbox.run([sys.executable, "-c", "import socket; socket.create_connection(('127.0.0.1', 51678), 2)"],
                          check=False)
    return cp.returncode == 0


@pytest.fixture
def agent(clean: EcsHost) -> Iterator[EcsHost]:
    if not host_reaches_agent(clean):
        clean._server(None, "::", int(PORT), "agent-ok", "introspection")
        deadline = time.monotonic() + 10
        while not host_reaches_agent(clean):
            assert time.monotonic() < deadline, "the introspection stand-in did not start"
            time.sleep(0.1)
    ecs_init(clean, start=True)
    yield clean
    ecs_init(clean, start=False)


def finding(report: dict[str, Any]) -> dict[str, Any]:
    (f,) = [f for f in report["findings"] if f["check"] == "ecs_agent.introspection"]
    return f  # type: ignore[no-any-return]


def test_by_default_containers_reaching_it_through_ecs_inits_accept_are_a_warning(agent: EcsHost) -> None:
    v4, v6 = gateways(agent)
    assert reaches_agent(agent, v4, v6) == {v4: True, v6: True}
    code, report = agent.report("check")
    f = finding(report)
    assert f["status"] == "warn", f
    assert "IPv4 from docker+: accepted by `-A INPUT -i docker0 -p tcp -m tcp --dport 51678 -j ACCEPT`" in f["detail"]
    assert "IPv6 from docker+: accepted by `-A INPUT -i docker0 -p tcp -m tcp --dport 51678 -j ACCEPT`" in f["detail"]
    assert code == 3  # the IMDS block is not there yet (a clean host)
    code, report = agent.report("apply")  # a warning is no failure, and report changes nothing
    assert code == 0 and finding(report)["status"] == "warn" and finding(report)["changed"] is False
    assert not any("51678" in r for r in agent.sandbox.rules_in("raw", "PREROUTING"))
    assert reaches_agent(agent, v4) == {v4: True}


def test_block_drops_it_from_containers_and_holds_across_ecs_inits_restart(agent: EcsHost) -> None:
    agent.policy(BLOCK)
    code, report = agent.report("apply")
    assert code == 0, report
    assert finding(report)["status"] == "ok" and finding(report)["changed"] is True
    targets = [*gateways(agent), "169.254.169.1"]  # the bridge's addresses and another of the host's
    assert not any(reaches_agent(agent, *targets).values())
    assert host_reaches_agent(agent)  # the agent's own tools, over lo
    assert not agent.reaches(IMDS_V4) and agent.reaches(CREDS)
    ecs_init(agent, start=False)  # systemctl restart ecs: post-stop, then pre-start
    ecs_init(agent, start=True)
    assert agent.sandbox.rules("INPUT")[0] == "-A INPUT -i docker0 -p tcp -m tcp --dport 51678 -j ACCEPT"
    assert not any(reaches_agent(agent, *targets).values())
    code, again = agent.report("check")
    assert code == 0 and finding(again)["status"] == "ok" and again["changes"] == []
    # back to report: our rules go, and the warning comes back
    agent.policy()
    code, report = agent.report("apply")
    assert code == 0 and finding(report)["status"] == "warn", report
    assert not any("51678" in r for r in agent.sandbox.rules_in("raw", "PREROUTING"))
    assert all(reaches_agent(agent, *gateways(agent)).values())


def test_the_daemon_puts_a_deleted_block_back_and_remove_takes_it_away(agent: EcsHost) -> None:
    from tests.integration.test_daemon import daemon_with, policy_text, until

    for _, run in daemon_with(agent, policy_text(agent) + BLOCK, "introspection-policy.yaml"):
        run.wait_for("READY=1")
        ours = [r for r in agent.sandbox.rules_in("raw", "PREROUTING") if PORT in r]
        assert len(ours) == 1
        agent.sandbox.iptables("-t", "raw", "-D", *shlex.split(ours[0])[1:])
        assert not any(PORT in r for r in agent.sandbox.rules_in("raw", "PREROUTING"))
        until(lambda: any(PORT in r for r in agent.sandbox.rules_in("raw", "PREROUTING")), 30)
        assert not any(reaches_agent(agent, *gateways(agent)).values())
    # the daemon killed (its rules left), then remove: ours gone from both families
    assert any(PORT in r for r in agent.sandbox.rules_in("raw", "PREROUTING", 6))
    agent.harden("remove", "--yes", check=True)
    for family in (4, 6):
        assert not any(PORT in r for r in agent.sandbox.rules_in("raw", "PREROUTING", family))
    assert all(reaches_agent(agent, *gateways(agent)).values())
