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

import contextlib
import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.attempts_bench import FLOOD, FLOOD_NETNS  # the same flood as the benchmarks'
from tests.integration.test_daemon import Running, daemon_with, policy_text, until
from tests.lab.host import IMAGE, PROJECT, EcsHost

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
    host.sandbox.sh(FLOOD_NETNS)
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


def v2_root() -> Path | None:
    """The cgroup v2 hierarchy's own root as mounted here (/sys/fs/cgroup on a v2 host,
    /sys/fs/cgroup/unified on a hybrid one)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        head, _, tail = line.partition(" - ")
        fields = head.split()
        if tail.startswith("cgroup2 ") and fields[3] == "/" and "rw" in fields[5].split(","):
            return Path(fields[4])
    return None


HOST_FIVE = "sleep 3; for i in 1 2 3 4 5; do nc -w 1 169.254.169.254 80 </dev/null & done; wait; sleep 60"


@pytest.fixture
def task_slice(clean: EcsHost) -> Iterator[tuple[EcsHost, Path]]:
    """ecstasks.slice at the root of the cgroup v2 hierarchy, as the ECS agent's hosts have
    it, removed (with what the test made in it) afterwards."""
    root = v2_root()
    if root is None:
        pytest.skip("no writable cgroup v2 hierarchy here")
    made = root / "ecstasks.slice"
    if made.exists():
        pytest.skip(f"{made} exists already: not ours to use")
    made.mkdir()
    try:
        yield clean, root
    finally:
        for d in [*sorted((p for p in made.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)), made]:
            for _ in range(50):
                for pid in (d / "cgroup.procs").read_text().split():  # a test's leftovers: out first
                    with contextlib.suppress(OSError):
                        (root / "cgroup.procs").write_text(pid)
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


def output_drops(host: EcsHost) -> int:
    """What imds.host_network's OUTPUT rule (both families) dropped."""
    total = 0
    for binary in ("iptables", "ip6tables"):
        out = host.sandbox.run([binary, "-w", "-L", "OUTPUT", "-v", "-x", "-n"]).stdout
        total += sum(int(line.split()[0]) for line in out.splitlines() if "host-network ECS tasks" in line)
    return total


def test_a_host_network_task_is_named_by_its_sockets_cgroup(task_slice: tuple[EcsHost, Path]) -> None:
    """imds.host_network: block on cgroup v2: a host-network container whose processes are in
    ecstasks.slice/ecstasks-<task>.slice/docker-<id>.scope (where the agent and Docker's
    systemd driver put them) opens 5 connections to IMDS: filter OUTPUT drops them, the
    journal names the task on the host path (the host's address is every host-network
    task's: the container comes from its socket's cgroup), and the host path's series sum to
    the OUTPUT rule's counters (the daemon's own probe from the task cgroup apart)."""
    host, root = task_slice
    host.sandbox.sh(f"ln -sfn {host.sock} /run/docker.sock")
    text = (policy_text(host) + f"  attempts_window: {WINDOW}\nimds:\n  host_network: block\n")
    # the daemon sees the v2 hierarchy at /sys/fs/cgroup, as on AL2023 (a mount of its own)
    wrap = ["unshare", "--mount", "sh", "-c", f'mount --bind {root} /sys/fs/cgroup && exec "$@"', "sh"]
    made: list[str] = []
    try:
        with contextlib.contextmanager(daemon_with)(host, text, "hostnet-policy.yaml", wrap) as (_, run):
            run.wait_for("READY=1")
            assert len(host.sandbox.rules("OUTPUT")) == 1, host.sandbox.rules("OUTPUT")
            cid = host.docker("create", "--network", "host", *labels("hostfam", "t-host", "sidecar", "4"),
                              IMAGE, "sh", "-c", HOST_FIVE).stdout.strip()
            made.append(cid)
            scope = root / "ecstasks.slice" / "ecstasks-t-host.slice" / f"docker-{cid}.scope"
            scope.mkdir(parents=True)
            host.docker("start", cid)
            pid = host.docker("inspect", "-f", "{{.State.Pid}}", cid).stdout.strip()
            host.sandbox.sh(f"echo {pid} > {scope}/cgroup.procs")  # before its sleep ends (its pid namespace's)
            seen(run, {"hostfam"}, 40)
            time.sleep(WINDOW + 3)
            mine = [e for e in events(run) if e["task_family"] == "hostfam"]
            assert sum(e["count"] for e in mine) >= 5 and len(mine) <= 2, mine
            e = mine[0]
            assert e["path"] == "host" and e["container"] == "sidecar" and e["container_id"] == cid[:12]
            assert e["task_arn"].endswith("/t-host") and e["task_revision"] == "4" and e["ip_version"] == 4
            assert "imds-ok" not in host.docker("logs", cid).stdout
            # the probe's own (from ecstasks.slice/ecs-harden-probe) never appear; the log is
            # the lab host's, earlier tests' bridge events in it
            assert {x["task_family"] for x in events(run) if x["path"] == "host"} == {"hostfam"}
            until(lambda: sum(n for k, n in blocked_series(host).items() if 'path="host"' in k)
                  == output_drops(host) > 0, 20)
            series = blocked_series(host)
            assert series['task_family="hostfam",container="sidecar",path="host"'] >= 5
            assert series.get('task_family="",container="unattributed",path="host"', 0) == 0
    finally:
        for cid in made:
            host.docker("rm", "-f", cid, check=False)
        host.sandbox.sh("rm -f /run/docker.sock")


MADE_IS_WANTED = """
import ipaddress
from ecs_harden.attempts import nftlog
from ecs_harden.attempts.component import AttemptsComponent
imds = {4: ipaddress.ip_network("169.254.169.254/32"), 6: ipaddress.ip_network("fd00:ec2::254/128")}
rules = nftlog.matches(imds, ["tasks0"], ["docker+"], guard=True)
host = nftlog.HostMatch(tuple(sorted(imds.items())), 4242, 1, (nftlog.Scope("c" * 64, 4343, 3),))
for h in (None, host):
    comp = AttemptsComponent(rules, lambda: {"last_hour": 0}, enforce=True, host=lambda: h)
    first = comp.inspect()
    assert first.plan is not None, first
    comp.execute(first)
    again = comp.inspect()
    assert again.plan is None and again.findings[0].status == "ok", again
moved = nftlog.HostMatch(host.imds, 4242, 1, (nftlog.Scope("d" * 64, 4444, 3),))
comp = AttemptsComponent(rules, lambda: {"last_hour": 0}, enforce=True, host=lambda: moved)
came = comp.inspect()
assert came.plan is not None and not came.plan.whole
comp.execute(came)
assert comp.inspect().plan is None
assert nftlog.read().prints == nftlog.wanted(rules, moved)
print("made as wanted")
"""


def test_the_table_made_is_the_table_wanted(clean: EcsHost) -> None:
    """What the kernel keeps of the table (each rule's fingerprint) is what the component
    compares with: once made, nothing to do; a host-network container coming renames only
    the tasks chain. (When they differed, every firewall event made the table again, and
    each remake was a firewall event.)"""
    out = clean.sandbox.run([sys.executable, "-c", MADE_IS_WANTED], env={"PYTHONPATH": str(PROJECT)})
    assert "made as wanted" in out.stdout, out.stdout + out.stderr
    clean.sandbox.run([sys.executable, "-c", "from ecs_harden.attempts import nftlog; nftlog.delete()"],
                      env={"PYTHONPATH": str(PROJECT)})


REUSE_WINDOW = 12
THREE = "for i in 1 2 3; do nc -w 1 169.254.169.254 80 </dev/null & done; wait"


def test_an_address_given_to_another_container_within_the_window_splits_the_attempts(clean: EcsHost) -> None:
    """A container tries, is removed, and another is given its address and tries, all in one
    window: each attempt goes to whoever held the address at the packet's time (the window is
    attributed after both, so a lookup at that time would give all of them to the second).
    The iptables variant plays no part here (the attempts table is nf_tables on both): nft only."""
    if clean.variant != "nft":
        pytest.skip("attribution is the same on both variants")
    host = clean
    host.sandbox.sh(f"ln -sfn {host.sock} /run/docker.sock")
    text = policy_text(host) + f"  attempts_window: {REUSE_WINDOW}\n"
    host.docker("network", "create", "--subnet", "10.77.0.0/24", "reuse-net", check=False)
    try:
        with contextlib.contextmanager(daemon_with)(host, text, "reuse-policy.yaml") as (_, run):
            run.wait_for("READY=1")
            first = host.docker("run", "--rm", "--network", "reuse-net", "--ip", "10.77.0.9",
                                *labels("before", "t-1", "old"), IMAGE, "sh", "-c", THREE).stdout
            second = host.docker("run", "-d", "--network", "reuse-net", "--ip", "10.77.0.9",
                                 *labels("after", "t-2", "new"), IMAGE, "sh", "-c", THREE + "; sleep 30").stdout.strip()
            assert "imds-ok" not in first
            seen(run, {"before", "after"}, REUSE_WINDOW + 20)
            got = [e for e in events(run) if e["source"] == "10.77.0.9"]
            by = {e["task_family"]: e for e in got}
            assert set(by) == {"before", "after"}, got  # nobody's attempts given to the other
            assert by["before"]["count"] >= 3 and by["after"]["count"] >= 3, got
            assert by["before"]["container"] == "old" and by["after"]["container"] == "new"
            assert by["after"]["container_id"] == second[:12]
            host.docker("rm", "-f", second)
    finally:
        host.docker("network", "rm", "reuse-net", check=False)
        host.sandbox.sh("rm -f /run/docker.sock")
