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
    counters = t.counters(table_packets=7 + 40)  # 40 more dropped than logged: past the limit
    assert counters[("web", "app", "bridge")] == 5 and counters[UNATTRIBUTED] == 40
    assert sum(counters.values()) == 47
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
    monkeypatch.setattr(nftlog, "read", lambda: nftlog.Installed((nftlog.fingerprint(rules[0]),), (3,)))
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
    monkeypatch.setattr(nftlog, "read", lambda: nftlog.Installed((b"",), (next(readings),)))
    rec = Recorder()
    assert [rec.table_packets() for _ in range(5)] == [0, 20, 30, 34, 40]
