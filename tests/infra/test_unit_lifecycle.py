"""ecs-harden.service under the host's real systemd: READY only with the block, STATUS=,
the watchdog, reload, stop leaving every rule, Restart=always, and the sandbox
(ProtectSystem=strict) letting it write exactly what it must. Disruptive: it stops,
kills and reloads the unit and takes the live block out; run with --disruptive on test
hosts only."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.infra.conftest import Harden
from tests.infra.test_host import blocks, families, rules_files

pytestmark = [pytest.mark.disruptive, pytest.mark.daemon]
PLACES = (("filter", "DOCKER-USER"), ("filter", "FORWARD"), ("raw", "PREROUTING"))


def show(host: Any, prop: str) -> str:
    return str(host.check_output(f"systemctl show -p {prop} --value ecs-harden"))


def until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout}s: {what}")


def count(host: Any, policy: dict[str, Any]) -> dict[tuple[int, str], int]:
    out = {}
    for family, dest in families(policy):
        for table, chain in PLACES:
            rules = host.iptables.rules(table, chain, version=family)
            out[(family, chain)] = sum(blocks(rules, chain, dest, i) for i in policy["imds"]["interfaces"])
    return out


def take_the_block_out(host: Any, policy: dict[str, Any]) -> None:
    """Delete every copy of the block, as `iptables -S` prints it (comment and all)."""
    for family, dest in families(policy):
        tool = "iptables" if family == 4 else "ip6tables"
        for table, chain in PLACES:
            for line in host.iptables.rules(table, chain, version=family):
                if any(blocks([line], chain, dest, i) for i in policy["imds"]["interfaces"]):
                    rest = line.split(" ", 2)[2]  # after "-A CHAIN"; the shell reads its quotes
                    host.check_output(f"{tool} -w -t {table} -D {chain} {rest}")


@pytest.fixture(autouse=True)
def unit_running(host: Any) -> None:
    """Each test starts from a running unit, whatever the one before left."""
    if show(host, "ActiveState") != "active":
        host.check_output("systemctl start ecs-harden")


def test_start_reaches_ready_only_with_the_block_in_place(host: Any, policy: dict[str, Any]) -> None:
    host.check_output("systemctl stop ecs-harden")
    take_the_block_out(host, policy)
    assert set(count(host, policy).values()) == {0}
    # Type=notify: `systemctl start` returns when READY=1 arrived
    host.check_output("systemctl start ecs-harden")
    assert set(count(host, policy).values()) == {1}, count(host, policy)
    assert show(host, "ActiveState") == "active"


def test_status_shows_the_status_line(host: Any) -> None:
    # READY does not wait for the slow checks (the probe): the line says compliant once they looked
    def line() -> str:
        return str(host.run("systemctl status --no-pager ecs-harden").stdout)

    until(lambda: 'Status: "compliant' in line(), 30, "a compliant status line")


def test_the_watchdog_is_fed(host: Any) -> None:
    assert show(host, "WatchdogUSec") != "0"
    first = show(host, "WatchdogTimestampMonotonic")
    until(lambda: show(host, "WatchdogTimestampMonotonic") != first, 40, "a watchdog ping")


def test_reload_rereads_the_policy(host: Any, harden: Harden) -> None:
    pid = show(host, "MainPID")
    before = harden.json("status")[1]["daemon"]["policy"]["loaded"]
    time.sleep(1.1)  # the load time has a resolution of a second
    host.check_output("systemctl reload ecs-harden")
    until(lambda: harden.json("status")[1]["daemon"]["policy"]["loaded"] != before, 30, "a reload")
    assert show(host, "MainPID") == pid


def test_an_invalid_policy_on_reload_is_an_error_in_the_journal(host: Any, harden: Harden) -> None:
    """Log lines carry their syslog priority: `journalctl -p err` shows the failed reload,
    not the info lines around it; the daemon keeps running its previous policy."""
    pid = show(host, "MainPID")
    backup = f"{harden.policy_file}.lifecycle-backup"
    host.check_output(f"cp -p {harden.policy_file} {backup}")
    since = host.check_output("date '+%Y-%m-%d %H:%M:%S'")
    try:
        host.check_output(f"printf '\\nnot_a_key: 1\\n' >> {harden.policy_file}")
        host.check_output("systemctl reload ecs-harden")

        def errors() -> str:
            return str(host.run(f"journalctl -p err -u ecs-harden --no-pager -o cat --since '{since}'").stdout)

        until(lambda: "policy.reload_failed" in errors(), 30, "the failed reload at priority err")
        assert "not_a_key" in errors() and "daemon.started" not in errors()
        infos = host.run(f"journalctl -p info -u ecs-harden --no-pager -o cat --since '{since}'").stdout
        assert "policy.reload_failed" in infos  # err is above info: both filters show it
        assert show(host, "MainPID") == pid and show(host, "ActiveState") == "active"
    finally:
        host.check_output(f"mv -f {backup} {harden.policy_file}")
        host.check_output("systemctl reload ecs-harden")


def test_stop_leaves_every_rule(host: Any, policy: dict[str, Any], facts: dict[str, Any]) -> None:
    host.check_output("systemctl stop ecs-harden")
    try:
        assert show(host, "ActiveState") == "inactive"
        assert set(count(host, policy).values()) == {1}
        for path in rules_files(facts["flavor"])[: len(families(policy))]:
            assert host.file(path).exists
    finally:
        host.check_output("systemctl start ecs-harden")


def test_restart_always_after_kill_9(host: Any, harden: Harden) -> None:
    pid, restarts = show(host, "MainPID"), int(show(host, "NRestarts"))
    host.check_output(f"kill -9 {pid}")
    until(lambda: show(host, "MainPID") not in ("0", pid) and show(host, "SubState") == "running", 60,
          "the unit back after kill -9")
    assert int(show(host, "NRestarts")) == restarts + 1
    assert harden.run("check").rc == 0


def test_sandbox_writes_exactly_what_it_must(host: Any, policy: dict[str, Any], facts: dict[str, Any]) -> None:
    pid = show(host, "MainPID")

    def writable(directory: str) -> bool:
        probe = f"{directory}/.ecs-harden-write-probe"
        cmd = host.run(f"nsenter -t {pid} -m sh -c 'touch {probe} && rm -f {probe}'")
        return bool(cmd.rc == 0)

    def parent(path: str) -> str:
        return path.rsplit("/", 1)[0]

    must = [parent(policy["ecs_config"]["path"]), policy.get("state_dir", "/var/lib/ecs-harden"),
            parent(policy["report"]["status_file"])]
    if policy["report"]["textfile"]:
        must.append(parent(policy["report"]["textfile"]))
    if policy["imds"]["persist"]:
        must.append(parent(rules_files(facts["flavor"])[0]))
    for d in must:
        assert writable(d), f"{d} must be writable for the daemon"
    for d in ("/etc", "/usr", "/usr/local/bin", "/opt", "/var/lib", "/var/log", "/boot"):
        assert not writable(d), f"{d} must be read-only for the daemon"
    # and it did write them: the status file is the daemon's, fresh
    status = json.loads(host.file(policy["report"]["status_file"]).content_string)
    assert status["daemon"]["pid"] == int(pid)
