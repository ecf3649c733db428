"""imds.paths and imds.exceptions, judged from given links and namespaces."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from ecs_harden import proc
from ecs_harden.imds import paths
from ecs_harden.imds.paths import Bypass, NamespaceScanner, PathsComponent, container_interfaces, judge

HOST = [
    {"ifindex": 1, "ifname": "lo"},
    {"ifindex": 2, "ifname": "eth0", "linkinfo": None},
    {"ifindex": 3, "ifname": "docker0", "linkinfo": {"info_kind": "bridge"}},
    {"ifindex": 4, "ifname": "br-0123456789ab", "linkinfo": {"info_kind": "bridge"}},
    {"ifindex": 5, "ifname": "veth1", "master": "docker0", "linkinfo": {"info_kind": "veth"}},
    {"ifindex": 6, "ifname": "hv1", "linkinfo": {"info_kind": "veth"}},
    {"ifindex": 7, "ifname": "imds-host", "linkinfo": {"info_kind": "veth"}},
]


def test_container_interfaces_are_bridges_and_unbridged_veths_but_the_way_to_imds() -> None:
    assert container_interfaces(HOST, "imds-host") == ["br-0123456789ab", "docker0", "hv1"]


def test_with_the_guard_every_interface_is_blocked() -> None:
    f = judge(["br-0123456789ab", "docker0"], [], ("docker+",), (), guard=True)
    assert f.status == "ok"
    assert "br-0123456789ab: blocked by the guard" in f.actual and "docker0: blocked" in f.actual


def test_without_the_guard_an_uncovered_interface_is_drift_with_the_fix() -> None:
    f = judge(["br-0123456789ab", "docker0", "hv1"], [], ("docker+",), ("hv1",), guard=False)
    assert f.status == "drift"
    assert "br-0123456789ab carries container traffic that nothing blocks" in f.detail
    assert "add br-+ to imds.interfaces" in f.detail
    assert "hv1: declared exception" in f.actual and "hv1" not in f.detail


def test_a_macvlan_child_is_drift_naming_container_and_parent() -> None:
    b = Bypass(42, "container 0123456789ab", "eth0", "macvlan", "eth0")
    f = judge(["docker0"], [b], ("docker+",), (), guard=True)
    assert f.status == "drift"
    assert "container 0123456789ab has macvlan eth0, a child of eth0" in f.detail
    assert judge(["docker0"], [b], ("docker+",), ("eth0",), guard=True).status == "ok"


def scanner_with(monkeypatch: pytest.MonkeyPatch, namespaces: dict[int, int],
                 answer: Callable[[int], proc.Completed], now: list[float]) -> tuple[NamespaceScanner, list[int]]:
    """A scanner over these namespaces (inode -> pid) whose `ip` answers as told per pid."""
    calls: list[int] = []

    def run_many(argvs: list[list[str]], **kw: object) -> list[proc.Completed]:
        out = []
        for argv in argvs:
            pid = int(argv[1].split("/")[-3])
            calls.append(pid)
            out.append(answer(pid))
        return out

    monkeypatch.setattr(proc, "run_many", run_many)
    scanner = NamespaceScanner(clock=lambda: now[0])
    monkeypatch.setattr(scanner, "namespaces", lambda: dict(namespaces))
    monkeypatch.setattr(scanner, "_same_namespace", lambda pid, ino: True)
    monkeypatch.setattr(paths, "container_of", lambda proc_dir, pid: f"container of {pid}")
    return scanner, calls


NS_LINKS = [
    {"ifindex": 1, "ifname": "lo"},
    {"ifindex": 9, "ifname": "eth0", "link_index": 2, "link_netnsid": 0, "linkinfo": {"info_kind": "ipvlan"}},
    {"ifindex": 10, "ifname": "eth1", "link_index": 9, "linkinfo": {"info_kind": "macvlan"}},
]


def test_scanner_names_bypassing_links_and_rescans_only_after_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    scanner, calls = scanner_with(monkeypatch, {1234: 77},
                                  lambda pid: proc.Completed((), 0, json.dumps(NS_LINKS), ""), now)
    found = scanner.scan({2: "eth0"})
    assert found == paths.Scan((Bypass(77, "container of 77", "eth0", "ipvlan", "eth0"),))
    scanner.scan({2: "eth0"})
    assert calls == [77]
    now[0] = paths.RESCAN
    scanner.scan({2: "eth0"})
    assert calls == [77, 77]


def test_a_namespace_that_cannot_be_listed_is_named_never_taken_as_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    """Anyone's bytes: an alias with a control byte (ip -j prints it raw) still parses and
    its macvlan is named, escaped; a listing that is no JSON names its namespace (warn)."""
    alias = json.dumps([{**NS_LINKS[1], "ifname": "mv0", "ifalias": "x\x01y"}]).replace("\\u0001", "\x01")
    assert "\x01" in alias

    def answer(pid: int) -> proc.Completed:
        if pid == 66:
            return proc.Completed((), 0, "[{\"ifname\": \"\ufffd", "")  # cut off
        return proc.Completed((), 0, alias, "")

    scanner, calls = scanner_with(monkeypatch, {1: 66, 2: 77}, answer, [0.0])
    scan = scanner.scan({2: "eth0"})
    assert scan.unreadable == ("pid 66 (container of 66)",)
    assert [b.interface for b in scan.bypasses] == ["mv0"]
    f = judge(["docker0"], (), ("docker+",), (), True, paths.Scan(unreadable=scan.unreadable))
    assert f.status == "warn" and "could not be listed" in f.detail and "pid 66" in f.detail
    scanner.scan({2: "eth0"})
    assert calls.count(66) == 2 and calls.count(77) == 1  # the unreadable one again at once
    assert paths.shown("a\x01b\x7f") == "a\\x01b\\x7f"


def test_a_scan_has_a_budget_and_the_next_scans_go_on_where_it_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    empty = proc.Completed((), 0, "[]", "")
    many = {ino: 1000 + ino for ino in range(2500)}
    scanner, calls = scanner_with(monkeypatch, many, lambda pid: empty, now)
    first = scanner.scan({})
    assert len(calls) == NamespaceScanner.BUDGET_COUNT and first.unseen == 2500 - NamespaceScanner.BUDGET_COUNT
    f = judge(["docker0"], (), ("docker+",), (), True, first)
    assert f.status == "warn" and f"{first.unseen} network namespace(s) not looked at yet" in f.detail
    scanner.scan({})
    last = scanner.scan({})
    assert last.unseen == 0 and sorted(set(calls)) == sorted(many.values()) and len(calls) == 2500
    # time runs out too: a scan stops between batches once BUDGET_SECONDS have gone
    slow, slow_calls = scanner_with(monkeypatch, many, lambda pid: (now.__setitem__(0, now[0] + 0.1), empty)[1], now)
    assert slow.scan({}).unseen > 0 and len(slow_calls) <= NamespaceScanner.BUDGET_SECONDS / 0.1 + slow.BATCH


def test_exceptions_are_reported_with_since_when(tmp_path: Path) -> None:
    class NoNamespaces(NamespaceScanner):
        def namespaces(self) -> dict[int, int]:
            return {}

    c = PathsComponent(("docker+",), ("tasks0",), True, str(tmp_path), scanner=NoNamespaces(),
                       uplink=lambda a: "eth0", host_links=lambda: HOST)
    first = c.inspect()
    exc = {f.check: f for f in first.findings}["imds.exceptions"]
    assert exc.status == "warn" and "tasks0 since not yet recorded" in exc.actual
    c.execute(first)
    again = c.inspect()
    assert again.changes == ()
    recorded = json.loads((tmp_path / "exceptions.json").read_text())["tasks0"]
    assert f"tasks0 since {recorded}" in {f.check: f for f in again.findings}["imds.exceptions"].actual
    none = PathsComponent(("docker+",), (), True, str(tmp_path / "x"), scanner=NoNamespaces(),
                          uplink=lambda a: None, host_links=lambda: HOST)
    assert [f.check for f in none.inspect().findings] == ["imds.paths"]
