"""imds.probe's judgement and address choice, and imds.v1 (no namespace, no network here:
the lab's tests/integration/test_paths.py sends the real packets)."""

from __future__ import annotations

import ipaddress

from ecs_harden.imds.probe import Path_, ProbeComponent, judge, pick
from ecs_harden.imds.v1 import ImdsV1Component

IMDS = {4: "169.254.169.254", 6: "fd00:ec2::254"}
BLOCKED = {"169.254.169.254:80": "timeout", "fd00:ec2::254:80": "timeout", "169.254.170.2:80": "connected"}


def test_the_probe_address_is_the_highest_free_one_of_the_subnet() -> None:
    own = ipaddress.ip_interface("172.17.0.1/16")
    assert pick(own, set()) == "172.17.255.254/16"
    assert pick(own, {"172.17.255.254"}) == "172.17.255.253/16"
    small = ipaddress.ip_interface("10.0.0.1/30")  # .1 is the bridge, .2 the only other
    assert pick(small, set()) == "10.0.0.2/30"
    assert pick(small, {"10.0.0.2"}) is None
    assert pick(ipaddress.ip_interface("fd00:dead::1/64"), set()) == "fd00:dead::ffff:ffff:ffff:fffe/64"


def test_blocked_everywhere_is_ok_and_a_reached_imds_is_drift_naming_the_bridge() -> None:
    ok = judge([Path_("docker0", BLOCKED), Path_("br-1", BLOCKED)], IMDS)
    assert ok.status == "ok" and "docker0: IMDS blocked, credentials connected" in ok.actual
    leak = dict(BLOCKED, **{"169.254.169.254:80": "connected"})
    f = judge([Path_("docker0", BLOCKED), Path_("br-1", leak)], IMDS)
    assert f.status == "drift" and "from br-1 a connection to 169.254.169.254 was accepted" in f.detail
    assert judge([Path_("br-1", leak)], IMDS, ("br-+",)).status == "ok"


def test_a_silent_credentials_endpoint_or_a_failed_probe_is_a_warning_not_ok() -> None:
    quiet = dict(BLOCKED, **{"169.254.170.2:80": "refused"})
    assert judge([Path_("docker0", quiet)], IMDS).status == "warn"
    assert judge([Path_("docker0", {}, "no free address")], IMDS).status == "warn"
    # the task cgroup has no credentials leg: blocked there is ok
    cg = {"169.254.169.254:80": "timeout", "fd00:ec2::254:80": "timeout"}
    assert judge([Path_("the task cgroup", cg)], IMDS).status == "ok"
    assert judge([Path_("the task cgroup", dict(cg, **{"fd00:ec2::254:80": "connected"}))], IMDS).status == "drift"


def test_the_component_runs_the_prober_and_never_crashes_on_its_failure() -> None:
    from ecs_harden.errors import RuntimeFailure

    seen: list[bool] = []

    def prober(cg: bool) -> list[Path_]:
        seen.append(cg)
        return [Path_("docker0", BLOCKED)]

    c = ProbeComponent(IMDS, task_cgroup=lambda: True, prober=prober)
    assert c.inspect().findings[0].status == "ok" and seen == [True]

    def broken(cg: bool) -> list[Path_]:
        raise RuntimeFailure("unshare: not found")

    f = ProbeComponent(IMDS, task_cgroup=lambda: False, prober=broken).inspect().findings[0]
    assert f.status == "warn" and "unshare: not found" in f.detail


def test_imds_v1() -> None:
    def answer(status: int | None) -> str:
        return ImdsV1Component("169.254.169.254", asker=lambda a: status).inspect().findings[0].status

    assert answer(401) == "ok"
    assert answer(None) == "ok"
    assert answer(200) == "warn"
    f = ImdsV1Component("169.254.169.254", asker=lambda a: 200).inspect().findings[0]
    assert "--http-tokens required" in f.detail and "hop limit" in f.detail
