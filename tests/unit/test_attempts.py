"""Attempts without a kernel or a Docker: NFLOG messages parsed (and malformed ones
refused), who held an address when, the window's attribution and the counters, Docker's
event stream, the finding's words, the nf_tables rule's shape."""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
from typing import Any

import pytest

from ecs_harden.attempts import nftlog, own
from ecs_harden.attempts.component import AttemptsComponent, describe
from ecs_harden.attempts.nflog import Packet, parse
from ecs_harden.attempts.tally import MAX_SERIES, PROBE, UNATTRIBUTED, Tally
from ecs_harden.attempts.workloads import DockerEvents, History, Watcher, Workload
from ecs_harden.firewall.netlink import encode_attr

ARN = "arn:aws:ecs:us-east-1:123456789012:task/prod/"


def nflog_body(family: int, payload: bytes, indev: int = 7, mac: bytes = b"\x02\x42\xac\x11\x00\x02") -> bytes:
    hw = struct.pack(">HH", len(mac), 0) + mac + bytes(8 - len(mac))
    attrs = (encode_attr(4, struct.pack(">I", indev)) + encode_attr(8, hw) + encode_attr(9, payload))
    return bytes([family, 0, 0, 0]) + attrs


def ipv4(src: str) -> bytes:
    return bytes([0x45, 0, 0, 60]) + bytes(8) + socket.inet_aton(src) + socket.inet_aton("169.254.169.254")


def test_an_nflog_message_gives_source_interface_and_mac() -> None:
    p = parse(nflog_body(socket.AF_INET, ipv4("172.17.0.2")), now=100.0)
    assert p == Packet(100.0, 4, "172.17.0.2", 7, "02:42:ac:11:00:02")
    v6 = bytes([0x60]) + bytes(7) + socket.inet_pton(socket.AF_INET6, "fd00:dead::2") + bytes(16)
    assert parse(nflog_body(socket.AF_INET6, v6), now=1.0).source == "fd00:dead::2"  # type: ignore[union-attr]


@pytest.mark.parametrize("body", [
    b"", b"\x02\x00", nflog_body(socket.AF_INET, ipv4("10.0.0.1")[:15]),  # cut short
    nflog_body(socket.AF_INET, bytes([0x60]) + ipv4("10.0.0.1")[1:]),  # says IPv6 in an IPv4 message
    nflog_body(99, ipv4("10.0.0.1")),  # no family of ours
])
def test_a_malformed_message_is_skipped(body: bytes) -> None:
    assert parse(body, now=1.0) is None


A = Workload("a" * 64, "app", ARN + "t-a", "web", "3")
B = Workload("b" * 64, "job", ARN + "t-b", "batch", "1")


def container(w: Workload, address: str, created: int = 50) -> dict[str, Any]:
    return {"Id": w.container_id, "Names": ["/x"], "Created": created,
            "Labels": {"com.amazonaws.ecs.task-arn": w.task_arn, "com.amazonaws.ecs.container-name": w.name,
                       "com.amazonaws.ecs.task-definition-family": w.task_family,
                       "com.amazonaws.ecs.task-definition-version": w.revision},
            "NetworkSettings": {"Networks": {"bridge": {"IPAddress": address, "GlobalIPv6Address": ""}}}}


def test_an_address_given_again_is_attributed_by_the_packets_time() -> None:
    h = History()
    h.seen([container(A, "172.17.0.2")], now=100.0, started={A.container_id: 90.0})
    h.ended(A.container_id, 120.0)
    h.seen([container(B, "172.17.0.2")], now=125.0, started={B.container_id: 121.0})
    assert h.at("172.17.0.2", 95.0) == A and h.at("172.17.0.2", 119.9) == A
    assert h.at("172.17.0.2", 122.0) == B and h.at("172.17.0.2", 80.0) is None
    assert h.at("172.17.0.3", 95.0) is None


def test_a_window_gives_one_attempt_per_workload_and_counters_that_sum_to_the_table() -> None:
    h = History()
    h.seen([container(A, "172.17.0.2"), container(B, "172.17.0.3")], now=10.0, started={})
    clock = [100.0]
    t = Tally(h, clock=lambda: clock[0], window=10)
    pk = [Packet(101.0 + i / 10, 4, "172.17.0.2", 3, "") for i in range(5)]
    pk += [Packet(102.0, 4, "172.17.0.3", 3, ""), Packet(103.0, 4, "10.9.9.9", 3, "")]
    t.add(pk, lambda i: "docker0")
    assert t.due(105.0) == []  # the window is open
    assert t.due(110.0) == []  # closed, in its grace
    got = t.due(112.5)
    assert [(a.workload, a.count) for a in got] == [(A, 5), (None, 1), (B, 1)]  # most first
    assert got[0].fields()["task_family"] == "web" and got[0].fields()["container_id"] == "a" * 12
    assert got[1].fields()["container"] == "unknown"
    counters = t.counters({"bridge": 7 + 40})  # 40 more dropped than logged: past the limit
    assert counters[("web", "app", "bridge")] == 5 and counters[UNATTRIBUTED] == 40
    assert sum(counters.values()) == 47 and ("", "unattributed", "host") not in counters
    assert [r["count"] for r in t.last_hour(113.0)] == [5, 1, 1]


def test_the_probes_own_connects_are_counted_apart_and_never_an_attempt() -> None:
    t = Tally(History(), clock=lambda: 0.0, window=1)
    with own.probing(["172.17.255.254"]):
        import time

        now = time.time()
        t.add([Packet(now, 4, "172.17.255.254", 3, "")], lambda i: "docker0")
        assert t.flush() == []
    assert t.totals == {PROBE: 1}


def test_series_are_bounded() -> None:
    h = History()
    t = Tally(h, clock=lambda: 0.0, window=1)
    for i in range(MAX_SERIES + 5):
        w = Workload(f"{i:064d}", f"c{i}", task_family=f"f{i}")
        h.seen([container(w, f"10.1.{i // 250}.{i % 250 + 1}")], now=0.0, started={w.container_id: 0.0})
        h.ended(w.container_id, 10.0)
    t.add([Packet(1.0, 4, f"10.1.{i // 250}.{i % 250 + 1}", 3, "") for i in range(MAX_SERIES + 5)],
          lambda i: "docker0")
    t.flush()
    assert len(t.totals) == MAX_SERIES + 1 and t.totals[("other", "other", "bridge")] == 5


def stream() -> tuple[DockerEvents, socket.socket]:
    """A DockerEvents reading one end of a socket pair, Docker's side the other."""
    ours, docker = socket.socketpair()
    ours.setblocking(False)
    ev = DockerEvents.__new__(DockerEvents)
    ev.sock, ev.buffer, ev.headers_done, ev.broken = ours, b"", False, False
    docker.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n")
    return ev, docker


def send(docker: socket.socket, *events: dict[str, Any]) -> None:
    docker.sendall(b"".join(json.dumps(e).encode() + b"\n" for e in events))


def test_docker_events_give_the_address_from_the_network_connect_on() -> None:
    h = History()
    events = [
        {"Type": "network", "Action": "connect", "Actor": {"Attributes": {"container": A.container_id}},
         "timeNano": 200_000_000_000},
        {"Type": "container", "Action": "start", "id": A.container_id, "timeNano": 201_000_000_000},
        {"Type": "container", "Action": "start", "id": 5, "timeNano": "x"},  # not Docker's: skipped
    ]
    listed = [[], [container(A, "172.17.0.2")]]
    ev, docker = stream()
    w = Watcher(h, clock=lambda: 202.0, lister=lambda: listed.pop(0), opener=lambda: ev)
    w.ensure()
    send(docker, *events)
    w.readable()
    assert h.at("172.17.0.2", 200.5) == A  # a packet before the start event is A's
    send(docker, {"Type": "network", "Action": "disconnect",
                  "Actor": {"Attributes": {"container": A.container_id}}, "timeNano": 300_000_000_000})
    docker.sendall(b'{"half": ')  # a line not yet whole waits for its end
    w.readable()
    assert h.at("172.17.0.2", 299.0) == A and h.at("172.17.0.2", 301.0) is None
    docker.close()
    w.readable()
    assert ev.broken and w.fileno() == -1  # Docker went away: opened again on the next due


def test_the_finding_names_the_most_active_workloads() -> None:
    recent = [{"task_family": "web", "container": "app", "count": 5},
              {"task_family": "", "container": "unknown", "count": 9},
              {"task_family": "web", "container": "app", "count": 2}]
    assert describe(recent) == "-/unknown (9), web/app (7)"


def test_inspect_without_a_table_or_a_daemon_warns_and_plans_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nftlog, "read", lambda: None)
    rules = nftlog.matches({4: ipaddress.ip_network("169.254.169.254/32")}, [], ["docker+"], guard=True)
    insp = AttemptsComponent(rules, lambda: None, enforce=True).inspect()
    (f,) = insp.findings
    assert f.status == "warn" and "attempts are not logged" in f.detail and "no daemon's record" in f.detail
    assert insp.plan is not None
    assert AttemptsComponent(rules, lambda: None, enforce=False).inspect().plan is None  # mode: report
    monkeypatch.setattr(nftlog, "read", lambda: nftlog.Installed({"pre": (nftlog.fingerprint(rules[0]),)},
                                                                 {"pre": 3}))
    record = {"last_hour": 0, "recent": [], "error": None}
    insp = AttemptsComponent(rules, lambda: record, enforce=True).inspect()
    assert insp.findings[0].status == "ok" and insp.plan is None


def test_the_rule_matches_what_the_guard_drops() -> None:
    guard_on = nftlog.matches({4: ipaddress.ip_network("169.254.169.254/32"),
                               6: ipaddress.ip_network("fd00:ec2::254/128")}, ["tasks0", "veth+"], ["docker+"],
                              guard=True)
    assert [(m.family, m.unless, m.only) for m in guard_on] == [(4, ("tasks0", "veth+"), None), (6, ("tasks0", "veth+"), None)]
    off = nftlog.matches({4: ipaddress.ip_network("169.254.0.0/16")}, [], ["docker+", "br-+"], guard=False)
    assert [m.only for m in off] == ["docker+", "br-+"]
    assert nftlog.iface_bytes("docker+") == b"docker" and nftlog.iface_bytes("lo") == b"lo\0"
    assert nftlog.fingerprint(off[0]) != nftlog.fingerprint(off[1])


def test_the_tables_count_starts_with_the_process_and_survives_the_table_made_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A daemon started on a table that has counted already counts from then on (no double
    counting across restarts); a table made again (its counters at zero) adds on."""
    from ecs_harden.attempts.recorder import Recorder

    readings = iter([500, 520, 530, 4, 10])
    monkeypatch.setattr(nftlog, "read", lambda: nftlog.Installed({"pre": (b"",)}, {"pre": next(readings)}))
    rec = Recorder()
    assert [rec.table_packets()["bridge"] for _ in range(5)] == [0, 20, 30, 34, 40]


C1, C2 = "c" * 64, "d" * 64
HOSTNET = Workload(C1, "agent-sidecar", ARN + "t-host", "hostfam", "4")


def host_packet(when: float, container: str) -> Packet:
    prefix = f"{nftlog.HOST_PREFIX} {container}".strip()
    return Packet(when, 4, "10.0.0.5", 0, "", prefix, 2)


def test_host_network_attempts_go_to_the_container_their_socket_was_in() -> None:
    """The host path names the container in the log prefix (its socket's cgroup): the
    container is looked up by id, never by the host's address, which every host-network
    task shares; the catch-all (no container's rule) is `unknown` on the host path, and
    while the probe runs in the task cgroup, the catch-all is the probe's."""
    h = History()
    h.seen([{**container(HOSTNET, ""), "HostConfig": {"NetworkMode": "host"}}], now=10.0, started={})
    assert h.host_network == {C1}
    t = Tally(h, clock=lambda: 0.0, window=1)
    t.add([host_packet(1.0 + i / 10, C1) for i in range(3)] + [host_packet(1.5, C2), host_packet(1.6, "")],
          lambda i: "eth0")
    got = {a.workload.name if a.workload else "?": a for a in t.flush()}
    assert got["agent-sidecar"].count == 3 and got["agent-sidecar"].path == "host"
    fields = got["agent-sidecar"].fields()
    assert fields["task_family"] == "hostfam" and fields["interface"] == "eth0" and fields["path"] == "host"
    assert got[C2[:12]].count == 1  # a container Docker did not list: its id, never dropped
    assert got["?"].fields()["container"] == "unknown" and got["?"].path == "host"
    counters = t.counters({"bridge": 0, "host": 5 + 7})
    assert counters[("hostfam", "agent-sidecar", "host")] == 3
    assert counters[("", "unattributed", "host")] == 7 and sum(counters.values()) == 12
    import time

    with own.probing([own.CGROUP]):
        t.add([host_packet(time.time(), "")], lambda i: "eth0")
        assert t.flush() == []
    assert t.totals[("", own.NAME, "host")] == 1


def test_the_log_prefix_and_output_interface_are_read() -> None:
    ip = bytes([0x45]) + bytes(11) + bytes([10, 0, 0, 5]) + bytes([169, 254, 169, 254])
    body = nflog_body(2, ip, indev=0) + encode_attr(5, struct.pack(">I", 2)) + encode_attr(
        10, f"{nftlog.HOST_PREFIX} {C1}".encode() + b"\0")
    p = parse(body, 5.0)
    assert p is not None and p.prefix == f"{nftlog.HOST_PREFIX} {C1}" and p.outdev == 2 and p.source == "10.0.0.5"


def test_host_scopes_are_found_by_cgroup_and_level(tmp_path: Any) -> None:
    from ecs_harden.attempts import hostscopes

    root = tmp_path / "cg"
    (root / "ecstasks.slice" / "ecstasks-abc.slice" / f"docker-{C1}.scope").mkdir(parents=True)
    (root / "ecstasks.slice" / "ecstasks-abc.slice" / C2).mkdir()  # Docker's cgroupfs driver
    (root / "ecstasks.slice" / "ecstasks-abc.slice" / "not-a-container").mkdir()
    (root / "ecstasks.slice" / "elsewhere").mkdir()
    (root / "ecstasks.slice" / "ecstasks-x.slice").symlink_to(root)  # never followed
    (root / "cgroup.controllers").write_text("")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"40 31 0:38 / {root} rw,relatime - cgroup2 cgroup2 rw\n")
    assert hostscopes.cgroup_level(str(root / "ecstasks.slice"), str(mountinfo)) == 1
    assert hostscopes.cgroup_level("/elsewhere", str(mountinfo)) is None
    import functools

    original = hostscopes.cgroup_level
    hostscopes.cgroup_level = functools.partial(original, mountinfo=str(mountinfo))
    try:
        found = hostscopes.host_match({4: ipaddress.ip_network("169.254.169.254/32")}, str(root))
    finally:
        hostscopes.cgroup_level = original
    assert found is not None and found.level == 1
    assert found.slice_id == (root / "ecstasks.slice").stat().st_ino
    assert sorted((sc.container, sc.level) for sc in found.scopes) == [(C1, 3), (C2, 3)]
    assert hostscopes.host_match({4: ipaddress.ip_network("169.254.169.254/32")}, str(tmp_path)) is None


def test_a_host_network_container_coming_only_renames_the_tasks_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    rules = nftlog.matches({4: ipaddress.ip_network("169.254.169.254/32")}, [], ["docker+"], guard=True)
    imds = ((4, ipaddress.ip_network("169.254.169.254/32")),)
    before = nftlog.HostMatch(imds, 77, 1)
    after = nftlog.HostMatch(imds, 77, 1, (nftlog.Scope(C1, 99, 3),))
    monkeypatch.setattr(nftlog, "read", lambda: nftlog.Installed(nftlog.wanted(rules, before), {"pre": 0}))
    record = {"last_hour": 0, "recent": [], "error": None}
    same = AttemptsComponent(rules, lambda: record, enforce=True, host=lambda: before).inspect()
    assert same.plan is None and same.findings[0].status == "ok"
    came = AttemptsComponent(rules, lambda: record, enforce=True, host=lambda: after).inspect()
    assert came.plan is not None and not came.plan.whole and came.repairs == frozenset()
    assert came.findings[0].status == "ok"  # routine, not drift
    moved = nftlog.HostMatch(imds, 78, 1)  # the slice made afresh: the table anew
    anew = AttemptsComponent(rules, lambda: record, enforce=True, host=lambda: moved).inspect()
    assert anew.plan is not None and anew.plan.whole and anew.repairs == frozenset({"imds.attempts"})


def test_a_lost_listener_never_stops_the_loop_and_is_bound_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The NFLOG socket breaking (or the group taken) is said once and tried again every
    RETRY seconds; the table keeps counting meanwhile, so what was missed is unattributed."""
    from ecs_harden.attempts import recorder as rec_mod
    from ecs_harden.attempts.source import NflogSource
    from ecs_harden.daemon.wakeups import Wake

    class Broken:
        closed = False

        def read(self) -> list[Packet]:
            raise OSError(9, "Bad file descriptor")

        def close(self) -> None:
            self.closed = True

        def fileno(self) -> int:
            return 99

    tries: list[int] = []

    def refused() -> Broken:
        tries.append(1)
        if len(tries) == 1:
            raise OSError(16, "Device or resource busy")
        return Broken()

    monkeypatch.setattr(rec_mod, "Listener", refused)
    rec = rec_mod.Recorder()
    assert not rec.listen(now=100.0) and "busy" in rec.error and rec.retry_at == 100.0 + rec_mod.RETRY
    src = NflogSource(rec, clock=lambda: 0.0)
    assert src.fileno() == -1
    rec.retry_at = 0.0  # due now
    src.due(0.0, Wake())
    assert rec.listener is not None and rec.error == "" and src.fileno() == 99
    broken = rec.listener
    src.readable(0.0, Wake())  # raises inside: said, closed, never out of the loop
    assert rec.listener is None and "lost NFLOG group" in rec.error and broken.closed
    assert rec.status()["listening"] is False
