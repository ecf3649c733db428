"""ecs_harden/systemd/ecs-harden.service under a booted systemd (252, as AL2023 ships), installed
as shipped, on a fresh host: no /run/xtables.lock, no /etc/ecs, no /etc/iptables.

The tests of this module run in order on one host: first boot, the unit's life
cycle, a reboot, then a reboot with the unit disabled."""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.boot.nspawn import BootedHost

MARK = "ecs-harden: block IMDS from containers"
RULES = {
    "debian": ("/etc/iptables/rules.v4", "/etc/iptables/rules.v6"),
    "amzn2023": ("/etc/sysconfig/iptables", "/etc/sysconfig/ip6tables"),
}
RESTORE = {"debian": ("netfilter-persistent.service",), "amzn2023": ("iptables.service", "ip6tables.service")}
WHERE = (("filter", "DOCKER-USER"), ("filter", "FORWARD"), ("raw", "PREROUTING"))


def copies(host: BootedHost) -> dict[str, int]:
    out = {}
    for family, binary in ((4, "iptables"), (6, "ip6tables")):
        for table, chain in WHERE:
            listing = host.run([binary, "-w", "-t", table, "-S", chain], check=False).stdout
            out[f"v{family} {table} {chain}"] = sum(
                1 for line in listing.splitlines() if MARK in line and "-j DROP" in line
            )
    return out


def unit(host: BootedHost, *props: str) -> dict[str, str]:
    out = host.run(["systemctl", "show", "ecs-harden.service", "-p", ",".join(props)]).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def wait_active(host: BootedHost, timeout: float = 60) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        props = unit(host, "ActiveState", "SubState", "NRestarts", "MainPID", "StatusText", "Result")
        if props["ActiveState"] == "active" and props["SubState"] == "running":
            return props
        assert time.monotonic() < deadline, (props, journal(host))
        time.sleep(0.2)


def journal(host: BootedHost, since_boot: bool = True) -> str:
    argv = ["journalctl", "--no-pager", "-o", "cat", "-u", "ecs-harden.service"]
    return host.run(argv + (["-b"] if since_boot else []), check=False).stdout


@pytest.fixture(scope="module")
def host(installed: BootedHost) -> BootedHost:
    installed.boot()
    return installed


def test_first_boot_starts_the_unit_once_and_enforces(host: BootedHost) -> None:
    props = wait_active(host)
    assert props["NRestarts"] == "0", journal(host)
    assert props["StatusText"].startswith("compliant"), props
    assert "NAMESPACE" not in journal(host)
    assert copies(host) == {k: 1 for k in copies(host)} and len(copies(host)) == 6
    variant = host.run(["iptables", "-V"]).stdout
    assert ("legacy" if host.variant == "legacy" else "nf_tables") in variant
    # It created what it writes, under ProtectSystem=strict.
    config = host.run(["cat", "/etc/ecs/ecs.config"]).stdout
    assert config == "ECS_AWSVPC_BLOCK_IMDS=true\nECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST=false\n"
    for rules in RULES[host.flavor]:
        assert MARK in host.run(["cat", rules]).stdout
    # The boot restore is enabled (netfilter-persistent also has a SysV script).
    for service in RESTORE[host.flavor]:
        assert host.run(["systemctl", "is-enabled", service]).stdout.strip() == "enabled"
    if host.flavor == "amzn2023":
        # iptables-services' sample was there (emulated package): replaced, journaled, and
        # the restore enabled for boot only: never started under the running host, whose
        # rules a start (flush, restore) would throw away.
        changes = host.run(["cat", "/var/lib/ecs-harden/changes.jsonl"]).stdout
        for path in RULES[host.flavor]:
            assert f"replaced the iptables-services sample (catch-all REJECT) in {path}" in changes
            assert "REJECT" not in host.run(["cat", path]).stdout
        for service in RESTORE[host.flavor]:
            assert host.run(["systemctl", "is-active", service], check=False).stdout.strip() == "inactive"
    facts = json.loads(host.run(["ecs-harden", "facts", "--format", "json"]).stdout)
    assert facts["flavor"] == host.flavor
    check = host.run(["ecs-harden", "check", "--format", "json"], check=False)
    assert check.returncode == 0, check.stdout
    status = host.run(["ecs-harden", "status", "--format", "json"], check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    assert json.loads(status.stdout)["daemon"]["pid"] == int(props["MainPID"])


def test_ordered_before_docker_and_the_network(host: BootedHost) -> None:
    before = host.run(["systemctl", "show", "-p", "Before", "ecs-harden.service"]).stdout
    for target in ("docker.service", "network-pre.target", "ecs.service"):
        assert target in before


def test_stop_lets_the_daemon_finish_what_it_runs(host: BootedHost) -> None:
    """systemctl stop at moments inside the first reconcile: no child killed, rules kept."""
    wait_active(host)
    for delay in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5):
        host.sh("iptables -w -F DOCKER-USER; iptables -w -t raw -F PREROUTING; ip6tables -w -F FORWARD")
        cursor = host.run(["journalctl", "--show-cursor", "-n", "0", "-q"]).stdout.strip().split("cursor: ")[-1]
        host.run(["systemctl", "restart", "--no-block", "ecs-harden.service"])
        time.sleep(delay)
        host.run(["systemctl", "stop", "ecs-harden.service"], timeout=120)
        log = host.run(["journalctl", "--no-pager", "-o", "cat", "-u", "ecs-harden.service",
                        f"--after-cursor={cursor}"], check=False).stdout
        assert not re.search(r"exited -(15|9)\b|reconcile\.crashed|repair\.failed", log), log
        props = unit(host, "Result", "ActiveState")
        assert props == {"Result": "success", "ActiveState": "inactive"}, (delay, props, journal(host)[-3000:])
        # Whatever it had put in place stays: at most one copy anywhere, never a torn state.
        assert all(n <= 1 for n in copies(host).values()), copies(host)
    host.run(["systemctl", "start", "ecs-harden.service"])
    wait_active(host)
    assert set(copies(host).values()) == {1}


def test_restart_always_brings_it_back_after_kill_9(host: BootedHost) -> None:
    before = wait_active(host)
    host.run(["kill", "-9", before["MainPID"]])
    deadline = time.monotonic() + 30
    while True:
        after = unit(host, "ActiveState", "SubState", "MainPID", "NRestarts")
        if after["SubState"] == "running" and after["MainPID"] not in ("0", before["MainPID"]):
            break
        assert time.monotonic() < deadline, after
        time.sleep(0.2)
    assert int(after["NRestarts"]) >= 1


def test_status_shows_the_daemon_when_the_policy_on_disk_is_broken(host: BootedHost) -> None:
    wait_active(host)
    host.sh("mkdir -p /etc/ecs-harden && printf 'interval: [\\n' > /etc/ecs-harden/policy.yaml "
            "&& chmod 600 /etc/ecs-harden/policy.yaml")
    try:
        host.run(["systemctl", "reload", "ecs-harden.service"])
        time.sleep(1)
        props = wait_active(host)
        assert "policy reload failed" in props["StatusText"], props
        text = host.run(["ecs-harden", "status"], check=False)
        assert text.returncode == 0, text.stdout + text.stderr
        assert "INVALID" in text.stdout and "built-in defaults" in text.stdout, text.stdout
        assert "policy.yaml" in text.stderr
        data = host.run(["ecs-harden", "status", "--format", "json"], check=False)
        doc = json.loads(data.stdout)
        assert doc["policy_file"]["valid"] is False
        assert "interval" in doc["daemon"]["policy"]["reload_error"] or "YAML" in doc["daemon"]["policy"]["reload_error"]
    finally:
        host.run(["rm", "-f", "/etc/ecs-harden/policy.yaml"])
        host.run(["systemctl", "reload", "ecs-harden.service"])


def test_after_a_reboot_it_starts_again(host: BootedHost) -> None:
    host.reboot()
    props = wait_active(host)
    assert props["NRestarts"] == "0", journal(host)
    assert set(copies(host).values()) == {1}
    assert host.run(["ecs-harden", "check"], check=False).returncode == 0


def test_disabled_unit_reboot_persistence_alone_restores_the_block(host: BootedHost) -> None:
    host.run(["systemctl", "disable", "ecs-harden.service"])
    host.reboot()
    assert unit(host, "ActiveState")["ActiveState"] == "inactive"
    for service in RESTORE[host.flavor]:
        restore = host.run(["systemctl", "is-active", service], check=False)
        assert restore.stdout.strip() == "active", host.run(
            ["journalctl", "-b", "-u", service, "--no-pager"], check=False).stdout
    assert set(copies(host).values()) == {1}, copies(host)
    check = host.run(["ecs-harden", "check"], check=False)
    assert check.returncode == 0, check.stdout
    host.run(["systemctl", "enable", "--now", "ecs-harden.service"])


def test_remove_stops_and_disables_the_unit_and_nothing_comes_back(host: BootedHost) -> None:
    wait_active(host)
    assert set(copies(host).values()) == {1}
    done = host.run(["ecs-harden", "remove", "--yes"], check=False)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "stopped and disabled: ecs-harden.service" in done.stdout
    props = unit(host, "ActiveState", "UnitFileState")
    assert props == {"ActiveState": "inactive", "UnitFileState": "disabled"}, props
    time.sleep(3)  # a daemon still running would have put everything back by now
    assert set(copies(host).values()) == {0}, copies(host)
    for path in RULES[host.flavor]:
        text = host.run(["cat", path], check=False).stdout
        assert MARK not in text and "DOCKER-USER" not in text, text
        if host.flavor == "amzn2023":  # the sample is back, and the restore ecs-harden enabled is not
            assert "-A FORWARD -j REJECT" in text
    if host.flavor == "amzn2023":
        for service in RESTORE[host.flavor]:
            assert host.run(["systemctl", "is-enabled", service], check=False).stdout.strip() == "disabled"
    host.reboot()  # and not at the next boot either
    assert set(copies(host).values()) == {0}, copies(host)
    assert unit(host, "ActiveState")["ActiveState"] == "inactive"
    host.run(["ecs-harden", "apply"], check=False)
    host.run(["systemctl", "enable", "--now", "ecs-harden.service"])
