"""imds.paths and imds.exceptions, judged from given links and namespaces."""

from __future__ import annotations

import json
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


def test_scanner_names_bypassing_links_and_rescans_only_after_a_while(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    calls: list[list[str]] = []
    ns_links = [
        {"ifindex": 1, "ifname": "lo"},
        {"ifindex": 9, "ifname": "eth0", "link_index": 2, "link_netnsid": 0, "linkinfo": {"info_kind": "ipvlan"}},
        {"ifindex": 10, "ifname": "eth1", "link_index": 9, "linkinfo": {"info_kind": "macvlan"}},
    ]

    def run(argv: list[str], **kw: object) -> proc.Completed:
        calls.append(argv)
        return proc.Completed(tuple(argv), 0, json.dumps(ns_links), "")

    monkeypatch.setattr(proc, "run", run)
    scanner = NamespaceScanner(clock=lambda: now[0])
    monkeypatch.setattr(scanner, "namespaces", lambda: {1234: 77})
    monkeypatch.setattr(paths, "container_of", lambda proc_dir, pid: "container abcdefabcdef")
    found = scanner.scan({2: "eth0"})
    assert found == [Bypass(77, "container abcdefabcdef", "eth0", "ipvlan", "eth0")]
    scanner.scan({2: "eth0"})
    assert len(calls) == 1
    now[0] = paths.RESCAN
    scanner.scan({2: "eth0"})
    assert len(calls) == 2


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
