"""imds.probe's judgement and address choice, and imds.v1 (no namespace, no network here:
the lab's tests/integration/test_paths.py sends the real packets)."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

import pytest

from ecs_harden.imds.probe import Path_, ProbeComponent, in_use, judge, pick
from ecs_harden.imds.v1 import Answer, ImdsV1Component

IMDS = {4: "169.254.169.254", 6: "fd00:ec2::254"}
BLOCKED = {"169.254.169.254:80": "dropped", "fd00:ec2::254:80": "dropped", "169.254.170.2:80": "connected"}


def test_the_probe_address_is_the_highest_free_one_of_the_subnet() -> None:
    own = ipaddress.ip_interface("172.17.0.1/16")
    assert pick(own, set())[:2] == ["172.17.255.254/16", "172.17.255.253/16"]
    assert pick(own, {"172.17.255.254"})[0] == "172.17.255.253/16"
    small = ipaddress.ip_interface("10.0.0.1/30")  # .1 is the bridge, .2 the only other
    assert pick(small, set()) == ["10.0.0.2/30"]
    assert pick(small, {"10.0.0.2"}) == []
    assert pick(ipaddress.ip_interface("fd00:dead::1/64"), set())[0] == "fd00:dead::ffff:ffff:ffff:ffff/64"
    # a container's ARP traffic makes stale entries on every top address: not a reason to skip them
    top = [f"172.17.255.{n}" for n in range(254, 190, -1)]
    neighbours = [{"dst": a, "state": ["STALE"]} for a in top] + [
        {"dst": "172.17.255.254", "state": ["REACHABLE"]}, {"dst": "172.17.255.253", "state": ["PERMANENT"]},
        {"dst": "172.17.255.252", "state": ["FAILED"]}]
    assert in_use(neighbours) == {"172.17.255.254", "172.17.255.253"}
    assert pick(own, in_use(neighbours))[0] == "172.17.255.252/16"
    # every top address somebody's: still candidates further down, never none
    assert pick(own, set(top))[0] == "172.17.255.190/16"


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
    cg = {"169.254.169.254:80": "dropped", "fd00:ec2::254:80": "dropped"}
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
        return ImdsV1Component("169.254.169.254", asker=lambda a: Answer(status)).inspect().findings[0].status

    assert answer(401) == "ok"
    assert answer(None) == "ok"
    assert answer(200) == "warn"
    f = ImdsV1Component("169.254.169.254", asker=lambda a: Answer(200)).inspect().findings[0]
    assert "--http-tokens required" in f.detail and "hop limit" in f.detail


def test_check_takes_the_daemons_recent_probe_and_says_so(tmp_path: Path) -> None:
    import json
    import time

    from ecs_harden.imds.probe import daemon_probe

    status = tmp_path / "status.json"

    def write(observed_ago: float, finding_status: str = "ok") -> None:
        seen = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - observed_ago))
        status.write_text(json.dumps({"findings": [
            {"check": "imds.probe", "status": finding_status, "expected": "e", "actual": "a",
             "detail": "proved by a real connection from each bridge", "observed": seen}]}))

    write(5)
    f = daemon_probe(str(status), within=61)
    assert f is not None and f.status == "ok" and f.actual == "a"
    assert f.detail.startswith("proved by a real connection") and re.search(r"the daemon's probe, [5-7]s ago", f.detail)
    write(120)
    assert daemon_probe(str(status), within=61) is None  # too old: probe now
    write(5, "warn")
    assert daemon_probe(str(status), within=61) is None  # it could not prove anything
    write(5)
    os.utime(status, (time.time() - 300, time.time() - 300))
    assert daemon_probe(str(status), within=61) is None  # no heartbeat: no daemon
    assert daemon_probe(str(tmp_path / "none.json"), within=61) is None
    status.write_text("{not json")
    assert daemon_probe(str(status), within=61) is None
    # the component takes it instead of probing
    write(5)
    c = ProbeComponent({4: "169.254.169.254"}, task_cgroup=lambda: False, prober=_never,
                       recent=lambda: daemon_probe(str(status), within=61))
    assert c.inspect().findings[0].status == "ok"


def _never(_: bool) -> list[Path_]:
    raise AssertionError("probed although the daemon's probe was recent")


def test_the_probes_child_gets_no_systemd_private_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from ecs_harden.imds.probe import Child

    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    child = Child(["sh", "-c", 'echo ready; read x; echo "{\\"env\\": \\"${NOTIFY_SOCKET:-}${WATCHDOG_USEC:-}\\"}"'])
    child.start()
    try:
        child.send({})
        assert child.read() == {"env": ""}
    finally:
        child.stop()


def test_one_probe_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ecs_harden import lock
    from ecs_harden.imds import probe

    monkeypatch.setenv(lock.ENV_VAR, str(tmp_path / "lock" / "reconcile.lock"))
    monkeypatch.setattr(probe, "LOCK_TIMEOUT", 0.2)
    held = lock.ReconcileLock(probe.probe_lock_path(), timeout=1)
    held.acquire()
    try:
        c = ProbeComponent({4: "169.254.169.254"}, task_cgroup=lambda: False,
                           prober=lambda cg: probe.Prober({4: "169.254.169.254"}, task_cgroup=cg).run())
        f = c.inspect().findings[0]
        assert f.status == "warn" and "the probe could not run: another process" in f.detail, f
        assert f"pid {os.getpid()}" in f.detail
    finally:
        held.release()


def test_no_answer_is_blocked_only_when_our_drop_counted_the_probes_packets() -> None:
    """Our DROP is silent: a connect with no answer is `dropped` only when the counters of
    our DROP rules where the packet went moved by at least what was sent there without an
    answer; otherwise `no answer`, and the finding is undecided (warn), never ok."""
    from ecs_harden.imds.probe import Prober, _undecided

    p = Prober({4: "169.254.169.254", 6: "fd00:ec2::254"}, task_cgroup=True)
    silent = {"169.254.169.254:80": "timeout", "fd00:ec2::254:80": "timeout", "169.254.170.2:80": "connected"}
    answers = [Path_("docker0", silent), Path_("br-1", silent),
               Path_("the task cgroup", {"169.254.169.254:80": "timeout", "fd00:ec2::254:80": "timeout"})]
    raw4, raw6, out4, out6 = (4, "raw", "PREROUTING"), (6, "raw", "PREROUTING"), (4, "filter", "OUTPUT"), (6, "filter", "OUTPUT")
    before = {raw4: 10, raw6: 0, out4: 5, out6: 0}
    # v4: both bridges' SYNs counted; v6: one of two; OUTPUT v4 counted, v6 not read
    after = {raw4: 12, raw6: 1, out4: 6}
    judged = p._account(answers, before, after)
    undecided = [q for q in judged if _undecided(q)]
    by = {q.where: q.outcomes for q in judged}
    assert by["docker0"]["169.254.169.254:80"] == "dropped" and by["br-1"]["169.254.169.254:80"] == "dropped"
    assert by["docker0"]["fd00:ec2::254:80"] == "no answer (timeout)"
    assert by["the task cgroup"] == {"169.254.169.254:80": "dropped", "fd00:ec2::254:80": "no answer (timeout)"}
    assert {q.where for q in undecided} == {"docker0", "br-1", "the task cgroup"}
    f = judge(judged, p.imds)
    assert f.status == "warn" and "no DROP rule of ours counted" in f.detail and "IMDS undecided" in f.actual
    # counted everywhere: ok; an answer is drift whatever the counters say
    judged = p._account(answers, before, {raw4: 12, raw6: 2, out4: 6, out6: 1})
    assert not any(_undecided(q) for q in judged) and judge(judged, p.imds).status == "ok"
    reached = [Path_("docker0", dict(silent, **{"169.254.169.254:80": "connected"}))]
    assert judge(p._account(reached, before, after), p.imds).status == "drift"


def test_the_daemons_probe_is_kept_while_the_bridges_stay_the_same_and_no_longer() -> None:
    """every > 0 (the daemon): one probe per `every` seconds while the bridges and their
    addresses are what they were; a bridge that comes, goes or changes is probed at once;
    an undecided or failed probe is never kept."""
    now = [0.0]
    layout = ["docker0 172.17.0.1/16"]
    runs: list[float] = []
    result = [[Path_("docker0", BLOCKED)]]

    def prober(cg: bool) -> list[Path_]:
        runs.append(now[0])
        return result[0]

    c = ProbeComponent(IMDS, task_cgroup=lambda: False, prober=prober, every=300,
                       clock=lambda: now[0], layout=lambda: layout[0])
    first = c.inspect().findings[0]
    assert first.status == "ok" and "probed at" in first.detail
    now[0] = 299
    assert c.inspect().findings[0] == first and runs == [0.0]
    now[0] = 301
    c.inspect()
    assert runs == [0.0, 301]
    now[0] = 302
    layout[0] = "docker0 172.17.0.1/16, br-1 172.18.0.1/16"  # a network made: probed now
    c.inspect()
    assert runs == [0.0, 301, 302]
    result[0] = [Path_("docker0", dict(BLOCKED, **{"169.254.169.254:80": "no answer (timeout)"}))]
    now[0] = 603
    assert c.inspect().findings[0].status == "warn"
    now[0] = 604
    c.inspect()
    assert runs == [0.0, 301, 302, 603, 604]
    # every = 0 (apply, check --fresh): each inspect probes
    once = ProbeComponent(IMDS, task_cgroup=lambda: False, prober=prober, clock=lambda: now[0],
                          layout=lambda: layout[0])
    once.inspect(), once.inspect()
    assert runs[-2:] == [604, 604] and len(runs) == 7
