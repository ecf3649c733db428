"""Every path from a workload to IMDS (SPEC "Paths"), with real packets on both variants:
the raw PREROUTING guard of every interface, declared exceptions, imds.paths."""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab.host import CREDS, IMDS_V4, IMDS_V6, EcsHost

USER_NET = "labnet"  # a user-defined network: Docker names its bridge br-<id>
CUSTOM = "tasks0"  # a bridge with a name of the operator's choosing
CUSTOM_V6 = "fd00:beef::/64"
ROUTED = "10.99.0"  # a routed veth into a namespace, as CNI's ptp plugin wires a task

CONNECT = (
    "import socket,sys\n"
    "try:\n"
    "    s=socket.create_connection((sys.argv[1],80),2); s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n"
    "    s.shutdown(socket.SHUT_WR); print(b''.join(iter(lambda: s.recv(4096), b'')).decode())\n"
    "except OSError as e:\n"
    "    print('failed', e)\n"
)


def findings(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["check"]: f for f in report["findings"]}


def networks(host: EcsHost) -> None:
    """A user-defined network and a custom-named IPv6 bridge, as an operator creates them;
    ecs-init's route_localnet on each (the credentials endpoint is DNATed to loopback)."""
    if host.docker("network", "inspect", USER_NET, check=False).returncode != 0:
        host.docker("network", "create", USER_NET)
    if host.docker("network", "inspect", CUSTOM, check=False).returncode != 0:
        host.docker("network", "create", "--ipv6", "--subnet", CUSTOM_V6,
                    "-o", f"com.docker.network.bridge.name={CUSTOM}", CUSTOM)
    host.sandbox.sh(
        f"for d in /proc/sys/net/ipv4/conf/br-* /proc/sys/net/ipv4/conf/{CUSTOM}; do "
        "echo 1 > $d/route_localnet; done; "
        f"ip netns exec imds ip -6 route replace {CUSTOM_V6} via fd00:ec2::1"
    )


def routed_task(host: EcsHost) -> None:
    """A namespace behind a plain routed veth (no bridge, no Docker), let through FORWARD
    the way a CNI plugin's own rules do."""
    host.sandbox.sh(
        f"""
        ip netns list | grep -qw task1 && exit 0
        ip netns add task1
        ip link add hv1 type veth peer name tv1
        ip link set tv1 netns task1
        ip addr add {ROUTED}.1/24 dev hv1
        ip link set hv1 up
        ip netns exec task1 sh -ec 'ip link set lo up; ip addr add {ROUTED}.2/24 dev tv1;
            ip link set tv1 up; ip route add default via {ROUTED}.1'
        iptables -I FORWARD -i hv1 -j ACCEPT
        iptables -I FORWARD -o hv1 -j ACCEPT
        """
    )


def task_reaches(host: EcsHost, address: str) -> bool:
    cp = host.sandbox.run(["ip", "netns", "exec", "task1", sys.executable, "-c", CONNECT, address],
                          check=False)
    return "imds-ok" in cp.stdout


@pytest.fixture
def paths(clean: EcsHost) -> Iterator[EcsHost]:
    networks(clean)
    routed_task(clean)
    yield clean
    clean.policy()


def guard_lines(host: EcsHost, family: int = 4) -> list[str]:
    return [r for r in host.sandbox.rules_in("raw", "PREROUTING", family) if "ecs-harden" in r]


def test_the_guard_blocks_every_interface_but_not_the_host(paths: EcsHost) -> None:
    h = paths
    # Before: every path is open (the routed task too: FORWARD lets it through).
    assert h.reaches(IMDS_V4, network=USER_NET)
    assert task_reaches(h, IMDS_V4)
    code, report = h.report("apply")
    assert code == 0, report
    for network in (None, USER_NET, CUSTOM):
        assert not h.reaches(IMDS_V4, network=network), network
        assert h.reaches(CREDS, network=network), network
    assert not h.reaches(IMDS_V6, network=CUSTOM)
    assert not task_reaches(h, IMDS_V4)
    assert h.host_reaches_imds(IMDS_V4)
    assert h.host_reaches_imds(IMDS_V6)
    # the guard has no -i: only loopback is left alone; both families, persisted.
    for family, address in ((4, "169.254.169.254/32"), (6, "fd00:ec2::254/128")):
        guard = f'-A PREROUTING -d {address} ! -i lo -m comment --comment "ecs-harden: block IMDS from ' \
                'every interface" -j DROP'
        assert guard in guard_lines(h, family)
        saved = (h.sandbox.etc / "iptables" / f"rules.v{family}").read_text()
        assert guard in saved
    assert h.report("check")[0] == 0
    code, again = h.report("apply")
    assert code == 0 and again["changes"] == []


def test_a_deleted_guard_is_named_and_put_back(paths: EcsHost) -> None:
    h = paths
    assert h.report("apply")[0] == 0
    guard = next(r for r in guard_lines(h) if "every interface" in r)
    h.sandbox.iptables("-t", "raw", "-D", *shlex.split(guard)[1:])
    assert h.reaches(IMDS_V4, network=USER_NET)
    code, report = h.report("check")
    assert code == 3
    detail = findings(report)["imds.ipv4.live"]["detail"]
    assert "the guard of every interface is missing from raw PREROUTING" in detail
    assert h.report("apply")[0] == 0
    assert not h.reaches(IMDS_V4, network=USER_NET)


def test_a_declared_exception_lets_that_interface_through_and_is_reported(paths: EcsHost) -> None:
    h = paths
    pol = h.policy(f"imds:\n  allow_interfaces: [{CUSTOM}]\n", name="exception.yaml", probe=True)
    code, report = h.report("apply", policy=pol)
    assert code == 0, report
    assert h.reaches(IMDS_V4, network=CUSTOM)
    assert not h.reaches(IMDS_V4, network=USER_NET)
    assert not h.reaches(IMDS_V4)
    assert f"{CUSTOM}: IMDS reached (declared exception)" in findings(report)["imds.probe"]["actual"]
    exceptions = findings(report)["imds.exceptions"]
    assert exceptions["status"] == "warn"
    assert CUSTOM in exceptions["actual"]
    raw = guard_lines(h)
    assert raw.index(next(r for r in raw if "-j RETURN" in r)) < raw.index(
        next(r for r in raw if "every interface" in r))
    # Withdrawn: the hole closes, the RETURN is gone, the report says nothing of it.
    code, report = h.report("apply")
    assert code == 0, report
    assert not h.reaches(IMDS_V4, network=CUSTOM)
    assert not any("-j RETURN" in r for r in guard_lines(h))
    assert "imds.exceptions" not in findings(report)


def test_without_the_guard_an_uncovered_bridge_is_drift(paths: EcsHost) -> None:
    h = paths
    pol = h.policy("imds:\n  guard_all_interfaces: false\n", name="noguard.yaml")
    code, report = h.report("apply", policy=pol)
    assert code == 3, report
    assert h.reaches(IMDS_V4, network=USER_NET)  # nothing covers br-<id>
    f = findings(report)["imds.paths"]
    assert f["status"] == "drift"
    assert CUSTOM in f["detail"] and "br-" in f["detail"]
    assert not any("every interface" in r for r in guard_lines(h))
    # Declared, the same bridges are exceptions, not drift.
    pol = h.policy(f"imds:\n  guard_all_interfaces: false\n  interfaces: [docker+, br-+]\n"
                   f"  allow_interfaces: [{CUSTOM}, hv1]\n", name="declared.yaml")
    code, report = h.report("apply", policy=pol)
    assert code == 0, report
    assert findings(report)["imds.paths"]["status"] == "ok"
    assert not h.reaches(IMDS_V4, network=USER_NET)


def test_the_probe_proves_the_block_from_each_bridge(paths: EcsHost) -> None:
    h = paths
    code, report = h.report("apply", policy=h.policy(probe=True, name="probe.yaml"))
    assert code == 0, report
    f = findings(report)["imds.probe"]
    assert f["status"] == "ok", json.dumps(f)
    bridge = "br-" + h.docker("network", "inspect", "-f", "{{.Id}}", USER_NET).stdout.strip()[:12]
    for name in ("docker0", bridge, CUSTOM):
        assert f"{name}: IMDS blocked" in f["actual"]
    assert "docker0: IMDS blocked, credentials connected" in f["actual"]
    assert not [ln for ln in h.sandbox.run(["ip", "-o", "link"]).stdout.splitlines() if "ecsh-" in ln]


def test_the_probe_names_the_bridge_that_reaches_imds(paths: EcsHost) -> None:
    h = paths
    pol = h.policy("imds:\n  guard_all_interfaces: false\n", name="noguard.yaml", probe=True)
    code, report = h.report("apply", policy=pol)
    assert code == 3
    f = findings(report)["imds.probe"]
    bridge = "br-" + h.docker("network", "inspect", "-f", "{{.Id}}", USER_NET).stdout.strip()[:12]
    assert f["status"] == "drift"
    assert f"from {bridge} a connection to 169.254.169.254 was accepted" in f["detail"]
    assert "docker0: IMDS blocked" in f["actual"]


def probe_sources(f: dict[str, Any]) -> dict[str, str]:
    """Bridge -> the probe's own IPv4 address, from imds.probe's actual."""
    out = {}
    for part in f["actual"].split("; "):
        where, _, rest = part.partition(": ")
        if "(from " in rest:
            out[where] = rest.split("(from ", 1)[1].rstrip(")").split(", ")[0]
    return out


def test_no_container_decides_the_probes_address(paths: EcsHost) -> None:
    """Neighbour entries a container can make (stale) or an operator pinned (permanent) on
    the top 64 addresses of docker0's subnet do not starve the probe; it never takes the
    address of an idle container Docker placed at the top of its network (Docker's API),
    nor one a namespace Docker does not know answers ARP for, neither in the neighbour
    table."""
    h = paths
    pol = h.policy(probe=True, name="probe.yaml")
    assert h.report("apply", policy=pol)[0] == 0
    info = json.loads(h.sandbox.run(["ip", "-j", "-4", "addr", "show", "docker0"]).stdout)[0]["addr_info"][0]
    net = ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}").network
    top = [net.broadcast_address - i for i in range(1, 65)]
    pinned = {str(a) for i, a in enumerate(top) if i % 2 == 0}
    idle = top[1]  # the first address the probe would take, were it not answered for
    h.sandbox.sh("; ".join(
        f"ip neigh replace {a} dev docker0 lladdr 02:00:00:00:00:{i:02x} nud {'permanent' if i % 2 == 0 else 'stale'}"
        for i, a in enumerate(top) if a != idle))
    h.sandbox.sh(f"""
        ip netns add idle; ip link add idle-h type veth peer name idle-c; ip link set idle-c netns idle
        ip link set idle-h master docker0 up
        ip netns exec idle sh -ec 'ip link set lo up; ip addr add {idle}/{net.prefixlen} dev idle-c; ip link set idle-c up'
        ip neigh del {idle} dev docker0 2>/dev/null || true""")
    h.docker("network", "create", "--subnet", "10.98.0.0/24", "topnet")
    try:
        h.docker("run", "-d", "--network", "topnet", "--ip", "10.98.0.254", "lab/busybox",
                       "sleep", "600").stdout.strip()
        topnet = "br-" + h.docker("network", "inspect", "-f", "{{.Id}}", "topnet").stdout.strip()[:12]
        h.sandbox.sh(f"echo 1 > /proc/sys/net/ipv4/conf/{topnet}/route_localnet")
        assert "10.98.0.254" not in h.sandbox.run(["ip", "neigh", "show", "dev", topnet]).stdout
        report = h.report("check", "--fresh", policy=pol)[1]
        f = findings(report)["imds.probe"]
        assert f["status"] == "ok", json.dumps(f)
        chosen = probe_sources(f)
        assert chosen["docker0"] not in pinned | {str(idle)}, chosen
        assert ipaddress.ip_address(chosen["docker0"]) in net, chosen
        assert chosen[topnet] == "10.98.0.253", chosen
        # the namespace Docker does not know was not disturbed: its address still leads to it
        mac = h.sandbox.run(["ip", "netns", "exec", "idle", "cat", "/sys/class/net/idle-c/address"]).stdout.strip()
        h.sandbox.run(["ip", "netns", "exec", "idle", "busybox", "ping", "-c", "1", "-W", "2", info["local"]])
        assert mac in h.sandbox.run(["ip", "neigh", "show", str(idle), "dev", "docker0"]).stdout
    finally:
        for line in h.docker("ps", "-aq", "--filter", "network=topnet", check=False).stdout.split():
            h.docker("rm", "-f", line, check=False)
        h.docker("network", "rm", "topnet", check=False)
        h.sandbox.sh("ip netns del idle; ip link del idle-h; ip neigh flush dev docker0 nud all", check=False)


def test_a_silent_path_to_imds_is_never_taken_for_the_block(paths: EcsHost) -> None:
    """Our DROP is silent, and so are loss and a dead route: with every copy of the v4
    block deleted (the guard too) and IMDS dropping what reaches it, the probe is never
    `ok` (undecided, `warn`: no DROP of ours counted its packets); with the block in
    place it is `ok` through 90 % loss on IMDS' side, its packets counted by our DROP."""
    from tests.integration.test_live_block import delete_every_copy

    h = paths
    pol = h.policy(probe=True, name="probe.yaml")
    assert h.report("apply", policy=pol)[0] == 0
    loss = ("ip netns exec imds iptables -w -I INPUT -p tcp --dport 80 -m statistic --mode random "
            "--probability {p} -j DROP")
    h.sandbox.sh(loss.format(p="0.9"))
    try:
        for _ in range(3):
            f = findings(h.report("check", "--fresh", policy=pol)[1])["imds.probe"]
            assert f["status"] == "ok" and "docker0: IMDS blocked" in f["actual"], f
        delete_every_copy(h)
        h.sandbox.sh("ip netns exec imds iptables -w -F INPUT; " + loss.format(p="1"))
        for _ in range(3):
            f = findings(h.report("check", "--fresh", policy=pol)[1])["imds.probe"]
            assert f["status"] == "warn" and "docker0: IMDS undecided" in f["actual"], f
            assert "no DROP rule of ours counted the probe's packets" in f["detail"], f
        h.sandbox.sh("ip netns exec imds iptables -w -F INPUT")  # the path works again: IMDS answers
        f = findings(h.report("check", "--fresh", policy=pol)[1])["imds.probe"]
        assert f["status"] == "drift" and "docker0: IMDS REACHED" in f["actual"], f
    finally:
        h.sandbox.sh("ip netns exec imds iptables -w -F INPUT", check=False)


def test_behind_600_ms_of_delay_the_probe_is_never_ok_without_the_block(paths: EcsHost) -> None:
    """IMDS 600 ms away each way (a TUN delay line, tests/lab/delayline.py: this kernel
    has no netem): with the block in place the probe is `ok` through the delay (our DROP
    counted its packets); with every copy of the v4 block deleted it is never `ok`
    (`warn`, undecided, or `drift` when a connect got through in time)."""
    from tests.integration.test_live_block import delete_every_copy

    h = paths
    pol = h.policy(probe=True, name="probe.yaml")
    assert h.report("apply", policy=pol)[0] == 0
    log = h.dir / "delayline.log"
    line = h.sandbox.spawn([sys.executable, "-m", "tests.lab.delayline", "dl-host", "dl-imds", "imds", "0.6"],
                           log, env={"PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    try:
        deadline = time.monotonic() + 30
        while "ready" not in (log.read_text() if log.exists() else ""):
            assert line.poll() is None and time.monotonic() < deadline, log.read_text() if log.exists() else ""
            time.sleep(0.1)
        h.sandbox.sh(f"ip link set dl-host up; ip route add {IMDS_V4}/32 dev dl-host; "
                     "ip netns exec imds sh -ec 'ip link set dl-imds up; ip route add 172.16.0.0/12 dev dl-imds'")
        # the path really is slow: the host's own connect takes the delay at least once
        took = h.sandbox.run([sys.executable, "-c", "import socket, time; t = time.monotonic(); "
                              f"socket.create_connection(('{IMDS_V4}', 80), timeout=10).close(); "
                              "print(time.monotonic() - t)"]).stdout
        assert float(took) >= 0.55, took
        for _ in range(3):
            f = findings(h.report("check", "--fresh", policy=pol)[1])["imds.probe"]
            assert f["status"] == "ok" and "docker0: IMDS blocked" in f["actual"], f
        delete_every_copy(h)
        for _ in range(3):
            f = findings(h.report("check", "--fresh", policy=pol)[1])["imds.probe"]
            assert f["status"] in ("warn", "drift") and "docker0: IMDS blocked" not in f["actual"], f
    finally:
        h.sandbox.sh("ip link del dl-host", check=False)
        line.wait(timeout=30)
    assert line.returncode is not None


def test_a_probe_killed_midway_leaves_no_namespace_or_veth(paths: EcsHost) -> None:
    """kill -9 while the probe's pair is on docker0 (its namespace a thread's): the kernel
    takes the namespace and the pair; the next probe finds nothing of the last one's."""
    h = paths
    pol = h.policy(probe=True, name="probe.yaml")
    assert h.report("apply", policy=pol)[0] == 0
    run = (f"PYTHONPATH={shlex.quote(str(Path(__file__).resolve().parents[2]))} {sys.executable} "
           f"-m ecs_harden --policy {pol} check --fresh >/dev/null 2>&1")
    script = (
        f"{run} & pid=$!; "
        "for i in $(seq 500); do ip -o link show master docker0 | grep -q ecsh-p && break; sleep 0.01; done; "
        "ip -o link show master docker0 | grep -c ecsh-p || true; kill -9 $pid; wait $pid || true; "
        "for i in $(seq 100); do ip -o link | grep -q ecsh- || break; sleep 0.05; done; "
        "ip -o link | grep -c ecsh- || true; "
        f"{run}; echo rc=$?; ip -o link | grep -c ecsh- || true"
    )
    out = h.sandbox.sh(script).stdout.split()
    assert int(out[0]) >= 1, "the probe's pair was never seen on docker0"
    assert out[1:] == ["0", "rc=0", "0"], out


def test_a_macvlan_container_bypasses_every_rule_and_is_named_as_drift(paths: EcsHost) -> None:
    """A container on Docker's macvlan driver, a child of the interface toward IMDS: its
    packets leave through the parent past every netfilter hook of the host. Nothing can
    block it; imds.paths names the container and the parent."""
    h = paths
    assert h.report("apply")[0] == 0
    h.docker("network", "create", "-d", "macvlan", "--subnet", "169.254.169.0/24",
             "-o", "parent=imds-host", "mvnet")
    try:
        cid = h.docker("run", "-d", "--network", "mvnet", "--ip", "169.254.169.50", "lab/busybox",
                       "sleep", "600").stdout.strip()
        reached = h.docker("exec", cid, "sh", "-c",
                           f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {IMDS_V4} 80", check=False)
        assert "imds-ok" in reached.stdout  # the guard never saw it
        code, report = h.report("check")
        f = findings(report)["imds.paths"]
        assert code == 3 and f["status"] == "drift", f
        assert f"container {cid[:12]} has macvlan" in f["detail"] and "a child of imds-host" in f["detail"]
        # declared, the parent is an exception: reported, not drift
        pol = h.policy("imds:\n  allow_interfaces: [imds-host]\n", name="mv.yaml")
        f = findings(h.report("check", policy=pol)[1])["imds.paths"]
        assert f["status"] == "ok" and "(declared exception)" in f["actual"], f
    finally:
        for line in h.docker("ps", "-aq", "--filter", "network=mvnet", check=False).stdout.split():
            h.docker("rm", "-f", line, check=False)
        h.docker("network", "rm", "mvnet", check=False)


def test_checks_beside_other_probes_never_break_a_probe(paths: EcsHost) -> None:
    """One probe at a time per host: 12 `check --fresh`, four at once, beside the daemon and
    a loop of `apply` probing back to back: each check's own probe proves the block, the
    daemon's too, and no veth is left. Without --fresh, check takes the daemon's recent
    probe and says so."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.integration.test_daemon import start_daemon

    h = paths
    assert h.report("apply")[0] == 0
    policy = h.policy("interval: 1\nresync: 2\n", name="probing.yaml", probe=True)
    run = start_daemon(h, policy)
    stop = h.dir / "stop-probing"
    stop.unlink(missing_ok=True)
    (h.dir / "apply-codes").unlink(missing_ok=True)
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[2]),
           "PATH": f"{h.dir}/bin:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"}
    looping = h.sandbox.spawn(["sh", "-c", f"while [ ! -e {stop} ]; do {sys.executable} -m ecs_harden --policy "
                               f"{policy} apply >/dev/null 2>&1; echo $? >> {h.dir}/apply-codes; done"],
                              h.dir / "apply-loop.log", env=env)
    try:
        run.wait_for("READY=1", 60)
        with ThreadPoolExecutor(4) as pool:
            reports = list(pool.map(lambda _: h.report("check", "--fresh", policy=policy), range(12)))
        for i, (_, report) in enumerate(reports):
            f = findings(report)["imds.probe"]
            assert f["status"] == "ok" and "the daemon's probe" not in f["detail"], (i, f)
        deadline = time.monotonic() + 30
        while "imds.probe" not in findings(json.loads((h.dir / "status.json").read_text())) or \
                findings(json.loads((h.dir / "status.json").read_text()))["imds.probe"]["status"] == "stale":
            assert time.monotonic() < deadline
            time.sleep(0.5)
        daemon = findings(json.loads((h.dir / "status.json").read_text()))["imds.probe"]
        assert daemon["status"] == "ok", daemon
        reused = findings(h.report("check", policy=policy)[1])["imds.probe"]
        assert reused["status"] == "ok" and "the daemon's probe, " in reused["detail"], reused
        assert "could not run" not in run.log.read_text()
    finally:
        stop.touch()
        looping.wait(timeout=60)
        os.kill(run.pid, signal.SIGTERM)
        run.proc.wait(timeout=30)
        run.notify.close()
    codes = (h.dir / "apply-codes").read_text().split()
    assert len(codes) >= 2 and set(codes) == {"0"}, codes
    assert h.sandbox.sh("ip -o link | grep -c ecsh- || true").stdout.strip() == "0"


# As an unprivileged user: N processes, each in a user and network namespace of its own;
# their pids go to PIDS, the last on its own line at the end.
MANY = ("pids=$1; n=$2; : > $pids; i=0; while [ $i -lt $n ]; do "
        "unshare --user --map-root-user --net sleep 900 & echo $! >> $pids; i=$((i+1)); done; "
        "echo ready >> $pids; wait")


# One variant: the namespace scan reads /proc and runs nsenter/ip, never netfilter.
@pytest.mark.one_variant("legacy")
def test_thousands_of_a_users_namespaces_never_stall_a_check_or_the_daemon(paths: EcsHost) -> None:
    """2,000 empty user+net namespaces of an unprivileged user (the scan used to take 8-9 s,
    serially, in the daemon's loop): `check` answers within 10 s and says how many it did not
    look at yet; the daemon, its watchdog fed meanwhile, has looked at all of them within
    three resyncs and names a macvlan child in the last namespace created. Last in the
    module: the namespaces stay until the module's sandbox goes."""
    from tests.integration.test_daemon import start_daemon

    h = paths
    assert h.report("apply")[0] == 0
    shared = Path(tempfile.mkdtemp(prefix="ecsh-userns-"))  # the user writes there, not in h.dir
    shared.chmod(0o777)
    pids = shared / "pids"
    maker = h.sandbox.spawn(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", MANY,
                             "sh", str(pids), "2000"], h.dir / "user-ns.log")
    deadline = time.monotonic() + 120
    while not (pids.exists() and pids.read_text().endswith("ready\n")):
        assert time.monotonic() < deadline and maker.poll() is None, (h.dir / "user-ns.log").read_text()[-2000:]
        time.sleep(0.5)
    last = pids.read_text().split()[-2]
    time.sleep(1)  # the last unshare has made its namespace
    h.sandbox.sh(f"ip link add mvlast link imds-host type macvlan mode bridge; ip link set mvlast netns {last}")
    try:
        t0 = time.monotonic()
        code, report = h.report("check")
        took = time.monotonic() - t0
        f = findings(report)["imds.paths"]
        assert took < 10 and code in (0, 3), f"check took {took:.1f} s, exit {code}"
        assert f["status"] in ("warn", "drift"), f
        assert "not looked at yet" in f["detail"] or "mvlast" in f["detail"], f
        policy = h.policy("interval: 1\nresync: 5\n", name="many-ns.yaml", probe=True)
        run = start_daemon(h, policy)
        try:
            run.wait_for("READY=1", 60)
            status = h.dir / "status.json"
            deadline = time.monotonic() + 3 * 5 + 20  # three resyncs, and what a scan itself takes
            seen: dict[str, Any] = {}
            while time.monotonic() < deadline:
                seen = findings(json.loads(status.read_text()))["imds.paths"]
                if "mvlast" in seen["detail"] and "not looked at yet" not in seen["detail"]:
                    break
                time.sleep(0.5)
            assert "mvlast" in seen["detail"] and "not looked at yet" not in seen["detail"], seen
            assert seen["status"] == "drift" and "has macvlan mvlast, a child of imds-host" in seen["detail"]
            assert run.proc.poll() is None  # never killed by its watchdog
            run.collect(2)
            assert sum("WATCHDOG=1" in m.split("\n") for m in run.messages) >= 2
        finally:
            os.kill(run.pid, signal.SIGKILL)
            run.proc.wait(timeout=10)
            run.notify.close()
    finally:
        h.sandbox.sh(f"kill {' '.join(pids.read_text().split()[:-1])} 2>/dev/null; true", check=False)
        shutil.rmtree(shared, ignore_errors=True)
