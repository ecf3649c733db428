"""A hardened ECS host, as an operator checks it: the unit, the block where Docker keeps
it, the persisted rules, ecs.config, the status and metrics files, and real containers."""

from __future__ import annotations

import datetime
import json
import time
from typing import Any

import pytest

from ecs_harden import flavors
from tests.infra.conftest import Harden, probe

CREDS = "169.254.170.2"


def rules_files(flavor: str) -> tuple[str, str]:
    """The flavor's persisted files, as ecs-harden's flavors name them (v4, v6)."""
    fl = flavors.by_name(flavor)
    return str(fl.rules_file(4)), str(fl.rules_file(6))

RESTORE_UNITS = {"debian": ("netfilter-persistent",), "amzn2": ("iptables", "ip6tables"),
                 "amzn2023": ("iptables", "ip6tables"), "rhel": ("iptables", "ip6tables")}


def families(policy: dict[str, Any]) -> list[tuple[int, str]]:
    out = [(4, policy["imds"]["ipv4"])]
    if policy["imds"]["ipv6"]:
        out.append((6, policy["imds"]["ipv6"]))
    return out


def blocks(lines: list[str], chain: str, dest: str, iface: str) -> int:
    """How many `-A chain ... -d dest -i iface ... -j DROP` lines there are."""
    n = 0
    for line in lines:
        words = line.split()
        if words[:2] == ["-A", chain] and "-j" in words and words[words.index("-j") + 1] == "DROP" \
                and dest in words and iface in words:
            n += 1
    return n


@pytest.mark.daemon
def test_unit_enabled_and_active(host: Any) -> None:
    unit = host.service("ecs-harden")
    assert unit.is_enabled
    assert unit.is_running
    assert host.run("systemctl show -p SubState --value ecs-harden").stdout.strip() == "running"


def test_check_exits_0_and_reports_compliant(harden: Harden) -> None:
    rc, report = harden.json("check")
    bad = [f for f in report["findings"] if f["status"] not in ("ok",)]
    assert rc == 0, bad
    assert report["compliant"] is True


def test_every_path_is_closed_and_the_probe_proves_it(harden: Harden, policy: dict[str, Any]) -> None:
    """imds.paths holds, and (unless the policy turns the probe off) a real connect from a
    namespace on docker0 did not reach IMDS."""
    _, report = harden.json("check")
    found = {f["check"]: f for f in report["findings"]}
    assert found["imds.paths"]["status"] == "ok", found["imds.paths"]
    if (policy.get("imds") or {}).get("probe", True):
        probe = found["imds.probe"]
        assert probe["status"] != "drift" and "REACHED" not in probe["actual"], probe
        assert "docker0: IMDS blocked" in probe["actual"] or "no bridge" in probe["actual"], probe


@pytest.mark.parametrize("family", [4, 6])
def test_block_once_where_the_agent_keeps_it(host: Any, policy: dict[str, Any], family: int) -> None:
    dest = dict(families(policy)).get(family)
    if dest is None:
        pytest.skip("the policy has no IPv6 rule")
    for iface in policy["imds"]["interfaces"]:
        for table, chain in (("filter", "DOCKER-USER"), ("filter", "FORWARD"), ("raw", "PREROUTING")):
            rules = host.iptables.rules(table, chain, version=family)
            assert blocks(rules, chain, dest, iface) == 1, (table, chain, rules)
        # DOCKER-USER is FORWARD's first jump for Docker's traffic: nothing accepts before it
        forward = [r for r in host.iptables.rules("filter", "FORWARD", version=family) if r.startswith("-A")]
        first_jump = next(i for i, r in enumerate(forward) if "-j DOCKER-USER" in r or "-j DROP" in r)
        assert not any("-j ACCEPT" in r for r in forward[:first_jump]), forward


def test_persisted_rules_restore_the_block(host: Any, policy: dict[str, Any], facts: dict[str, Any]) -> None:
    if not policy["imds"]["persist"]:
        pytest.skip("imds.persist: false")
    files = rules_files(facts["flavor"])
    for (family, dest), path in zip(families(policy), files):
        f = host.file(path)
        assert f.exists and f.user == "root", path
        lines = f.content_string.splitlines()
        for iface in policy["imds"]["interfaces"]:
            assert blocks(lines, "DOCKER-USER", dest, iface) == 1, (path, family)
            assert blocks(lines, "FORWARD", dest, iface) == 1, (path, family)
            assert blocks(lines, "PREROUTING", dest, iface) == 1, (path, family)
        # the file loads as the boot restore would load it
        tool = "iptables-restore" if family == 4 else "ip6tables-restore"
        assert host.run(f"{tool} --test < {path}").rc == 0, path
    for unit in RESTORE_UNITS[facts["flavor"]]:
        assert host.service(unit).is_enabled, unit


def test_ecs_config_values(host: Any, policy: dict[str, Any]) -> None:
    cfg = host.file(policy["ecs_config"]["path"])
    assert cfg.exists
    values: dict[str, str] = {}
    for line in cfg.content_string.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value  # ecs-init takes the last one
    for key, want in policy["ecs_config"]["settings"].items():
        if want is None:
            assert key not in values, key
        else:
            assert values.get(key) == str(want), (key, values.get(key))


def _age(stamp: str) -> float:
    when = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return (datetime.datetime.now(datetime.timezone.utc) - when).total_seconds()


def settled(host: Any, policy: dict[str, Any], timeout: float = 40) -> dict[str, Any]:
    """The daemon's status file once the slow checks have looked (READY does not wait for
    them: right after a start the probe is `stale`, never looked at)."""
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = json.loads(host.file(policy["report"]["status_file"]).content_string)
        if status["compliant"] or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


@pytest.mark.daemon
def test_status_file_fresh_and_compliant(host: Any, policy: dict[str, Any], harden: Harden) -> None:
    status = settled(host, policy)
    assert status["compliant"] is True, [f for f in status["findings"] if f.get("status") != "ok"]
    # the heartbeat rewrites it every interval; the host's clock is the judge
    now = float(host.check_output("date +%s.%N"))
    mtime = host.file(policy["report"]["status_file"]).mtime.timestamp()
    assert now - mtime < 3 * float(policy["interval"]) + 10
    cmd = harden.run("status", "--format", "json")
    report = json.loads(cmd.stdout)
    not_ok = [f for f in report["findings"] if f.get("status") != "ok"]
    assert cmd.rc == 0, (cmd.rc, cmd.stderr, report.get("age_seconds"), not_ok)
    assert report["daemon"]["pid"] == int(host.check_output("systemctl show -p MainPID --value ecs-harden"))


@pytest.mark.daemon
def test_the_daemon_runs_the_paths_checks_inside_its_sandbox(host: Any, policy: dict[str, Any]) -> None:
    """The unit's sandbox lets the probe make its namespace and the paths check look into
    the containers' (a probe that could not run would only be a warning)."""
    status = settled(host, policy)
    found = {f["check"]: f for f in status["findings"]}
    assert found["imds.paths"]["status"] == "ok", found["imds.paths"]
    if (policy.get("imds") or {}).get("probe", True):
        probe = found["imds.probe"]
        assert "could not run" not in probe["detail"] and "REACHED" not in probe["actual"], probe


@pytest.mark.daemon
def test_metrics_textfile_fresh(host: Any, policy: dict[str, Any]) -> None:
    path = policy["report"]["textfile"]
    if not path:
        pytest.skip("no report.textfile in the policy")
    text = host.file(path).content_string
    assert "ecs_harden_compliant 1" in text and "ecs_harden_up 1" in text, text
    version = host.check_output("/usr/local/bin/ecs-harden --version").split()[-1]
    assert f'ecs_harden_build_info{{version="{version}"}} 1' in text, text
    now = float(host.check_output("date +%s.%N"))
    # written at every heartbeat (one interval), not only after a reconcile
    beat = [ln for ln in text.splitlines() if ln.startswith("ecs_harden_heartbeat_timestamp_seconds ")]
    assert beat and now - float(beat[0].split()[1]) < 3 * float(policy["interval"]) + 10, (beat, now)


@pytest.mark.daemon
def test_ready_in_the_journal(host: Any) -> None:
    since = host.check_output("systemctl show -p ActiveEnterTimestamp --value ecs-harden")
    assert since, "never active"
    out = host.check_output("journalctl -b -u ecs-harden -o cat --no-pager")
    assert "daemon.started" in out
    # systemd logs the start job done only when READY=1 arrived (Type=notify)
    assert host.run("systemctl show -p StatusText --value ecs-harden").stdout.startswith("compliant")


def test_a_container_cannot_reach_imds(host: Any, policy: dict[str, Any], image: str) -> None:
    for family, dest in families(policy):
        address = dest.split("/")[0]
        t0 = time.monotonic()
        got = probe(host, image, address)
        assert "imds-ok" not in got and "ami-id" not in got and "HTTP/" not in got, (family, got)
        assert time.monotonic() - t0 < 60


def test_a_container_reaches_the_credentials_endpoint(host: Any, image: str) -> None:
    got = probe(host, image, CREDS)
    assert "HTTP/1." in got, got
