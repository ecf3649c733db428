"""Who tried: blocked attempts to reach IMDS attributed to their container and ECS task,
with real containers and the daemon, on both iptables variants.

Two containers labelled as the ECS agent labels task containers, one on docker0 and one
on a user-defined network, each open 5 connections to IMDS: the daemon's journal names
each task with its attempts, nothing reaches IMDS, the status file lists them, `check`
warns naming them, and the textfile's counters sum to what the block dropped (the raw
guard's packet counters). Then a flood from a namespace on docker0 (no container of
Docker's) beside one labelled container's single attempt: that attempt is still named,
and the counters still sum exactly, the flood's unlogged packets as `unattributed`."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bench.attempts_bench import FLOOD  # the same flood as the benchmark's
from tests.integration.test_daemon import Running, daemon_with, policy_text, until
from tests.lab.host import IMAGE, EcsHost

WINDOW = 4
FIVE = "for i in 1 2 3 4 5; do nc -w 1 169.254.169.254 80 </dev/null & done; wait; sleep 60"


def labels(family: str, task: str, container: str, revision: str = "3") -> list[str]:
    arn = f"arn:aws:ecs:us-east-1:123456789012:task/prod/{task}"
    return ["--label", f"com.amazonaws.ecs.task-arn={arn}",
            "--label", f"com.amazonaws.ecs.task-definition-family={family}",
            "--label", f"com.amazonaws.ecs.task-definition-version={revision}",
            "--label", f"com.amazonaws.ecs.container-name={container}"]


def events(run: Running) -> list[dict[str, Any]]:
    out = []
    for line in run.log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "imds.attempt":
            out.append(entry)
    return out


def seen(run: Running, families: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not families <= {e["task_family"] for e in events(run)}:
        if time.monotonic() > deadline:
            lines = [ln for ln in run.log.read_text().splitlines()
                     if '"debug"' not in ln or "attempts." in ln]
            raise AssertionError(f"no imds.attempt for {families}: " + "\n".join(lines[-40:]))
        time.sleep(0.1)


def guard_packets(host: EcsHost) -> int:
    """What the raw guard (both families) dropped: the block's own counters."""
    total = 0
    for binary in ("iptables", "ip6tables"):
        out = host.sandbox.run([binary, "-w", "-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n"]).stdout
        for line in out.splitlines():
            if "block IMDS from every interface" in line:
                total += int(line.split()[0])
    return total


def blocked_series(host: EcsHost) -> dict[str, int]:
    text = (host.dir / "metrics" / "ecs_harden.prom").read_text()
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^ecs_harden_imds_blocked_total\{(.*)\} (\d+)$",
                                                            text, re.M)}


@pytest.fixture
def daemon(clean: EcsHost) -> Iterator[tuple[EcsHost, Running]]:
    """The daemon with 4 s windows; Docker's socket where ecs-harden asks for it (the lab's
    dockerd listens elsewhere; the sandbox's /run is its own)."""
    clean.sandbox.sh(f"ln -sfn {clean.sock} /run/docker.sock")
    text = policy_text(clean) + f"  attempts_window: {WINDOW}\n"
    try:
        yield from daemon_with(clean, text, "attempts-policy.yaml")
    finally:
        clean.sandbox.sh("rm -f /run/docker.sock")


def ip_of(host: EcsHost, cid: str) -> str:
    out = host.docker("inspect", cid).stdout
    nets = json.loads(out)[0]["NetworkSettings"]["Networks"]
    return str(next(n["IPAddress"] for n in nets.values()))


def test_each_task_is_named_with_its_attempts_and_the_counters_sum_to_the_drops(
        daemon: tuple[EcsHost, Running]) -> None:
    host, run = daemon
    run.wait_for("READY=1")
    host.docker("network", "create", "attempts-net", check=False)
    try:
        web = host.docker("run", "-d", *labels("web", "t-web", "app"), IMAGE, "sh", "-c", FIVE).stdout.strip()
        api = host.docker("run", "-d", "--network", "attempts-net", *labels("api", "t-api", "server", "9"),
                          IMAGE, "sh", "-c", FIVE).stdout.strip()
        seen(run, {"web", "api"}, 40)
        time.sleep(WINDOW + 3)  # any second window of theirs closed too
        got = events(run)
        for family, cid, container, revision in (("web", web, "app", "3"), ("api", api, "server", "9")):
            mine = [e for e in got if e["task_family"] == family]
            assert sum(e["count"] for e in mine) >= 5, mine  # 5 connections: their SYNs
            assert len(mine) <= 2, mine  # one line per window, the attempts within ~1 s
            e = mine[0]
            assert e["task_arn"].endswith(f"/t-{family}") and e["container"] == container
            assert e["task_revision"] == revision and e["source"] == ip_of(host, cid)
            assert e["ip_version"] == 4 and e["container_id"] == cid[:12]
        # nothing else: the daemon's own probe (it ran at start) is never an attempt
        assert {e["task_family"] for e in got} == {"web", "api"}, [e for e in got if not e["task_family"]]
        assert {e["interface"] for e in got if e["task_family"] == "web"} == {"docker0"}
        assert all(e["interface"].startswith("br-") for e in got if e["task_family"] == "api")
        logs = host.docker("logs", web).stdout + host.docker("logs", api).stdout
        assert "imds-ok" not in logs
        # the counters: every packet the guard dropped is in a series, none twice
        until(lambda: sum(blocked_series(host).values()) == guard_packets(host) > 0, 20)
        series = blocked_series(host)
        assert series['task_family="web",container="app",path="bridge"'] >= 5
        assert series['task_family="",container="unattributed",path="bridge"'] == 0
        status = json.loads((host.dir / "status.json").read_text())["daemon"]["attempts"]
        assert status["listening"] is True and status["last_hour"] >= 10
        assert {r["task_family"] for r in status["recent"]} >= {"web", "api"}
        _, report = host.report("check")
        (f,) = [f for f in report["findings"] if f["check"] == "imds.attempts"]
        assert f["status"] == "warn" and "web/app" in f["detail"] and "api/server" in f["detail"], f
        for cid in (web, api):
            host.docker("rm", "-f", cid)
    finally:
        host.docker("network", "rm", "attempts-net", check=False)


def test_a_flood_does_not_hide_another_containers_single_attempt(daemon: tuple[EcsHost, Running]) -> None:
    host, run = daemon
    run.wait_for("READY=1")
    host.sandbox.sh("""
        ip netns add flood
        ip link add fl-host type veth peer name fl-peer
        ip link set fl-host master docker0 up
        ip link set fl-peer netns flood
        ip netns exec flood sh -ec 'ip link set lo up; ip addr add 172.17.255.250/16 dev fl-peer
            ip link set fl-peer up; ip route add default via 172.17.0.1'
    """)
    try:
        flood = host.sandbox.spawn(["ip", "netns", "exec", "flood", sys.executable, "-c", FLOOD, "6"],
                                   host.dir / "flood.log")
        time.sleep(2)
        once = host.docker("run", "-d", *labels("batch", "t-once", "job"), IMAGE, "sh", "-c",
                           "nc -w 1 169.254.169.254 80 </dev/null; sleep 60").stdout.strip()
        flood.wait(timeout=30)
        seen(run, {"batch"}, 30)
        mine = [e for e in events(run) if e["task_family"] == "batch"]
        assert mine[0]["container"] == "job" and mine[0]["source"] == ip_of(host, once)
        flooder = [e for e in events(run) if e["source"] == "172.17.255.250"]
        assert flooder and flooder[0]["container"] == "unknown"  # no container of Docker's
        until(lambda: sum(blocked_series(host).values()) == guard_packets(host), 30)
        series = blocked_series(host)
        assert series['task_family="",container="unattributed",path="bridge"'] > 1000  # the flood, unlogged
        assert series['task_family="batch",container="job",path="bridge"'] >= 1
        host.docker("rm", "-f", once)
    finally:
        host.sandbox.sh("ip netns del flood || true")
