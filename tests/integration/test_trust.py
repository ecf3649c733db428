"""Nothing on the host can switch ecs-harden off, fool it or make it destroy data (both variants):
report mode, foreign rules no parser or evaluator foresaw, a held lock, planted symlinks, rollback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from typing import Any

import psutil
import pytest

from tests.integration.test_daemon import INTERVAL, daemon_with, until
from tests.lab import foreign
from tests.lab.host import CREDS, IMDS_V4, IMDS_V6, EcsHost

IMDS = f"{IMDS_V4}/32"
daemon = contextlib.contextmanager(daemon_with)


def ruleset(host: EcsHost) -> dict[str, str]:
    """Every table the agent touches, both families, as `-S` prints it (no counters)."""
    out = {}
    for fam in (4, 6):
        for table in ("filter", "raw"):
            out[f"{fam}/{table}"] = host.sandbox.iptables("-t", table, "-S", family=fam)
    return out


def copies(host: EcsHost, chain: str, table: str = "filter", family: int = 4) -> list[str]:
    addr = IMDS_V4 if family == 4 else IMDS_V6
    return [r for r in host.sandbox.rules_in(table, chain, family) if addr in r and "-j DROP" in r
            and "docker+" in r]


def flush_block(host: EcsHost) -> None:
    """Every copy of the block gone, in all six places, and the guard of every interface
    (by number: python-iptables' v6 rule is not byte-equal to what `ip6tables -D` builds
    from its text)."""
    for fam in (4, 6):
        addr = IMDS_V4 if fam == 4 else IMDS_V6
        for table, chain in (("filter", "DOCKER-USER"), ("filter", "FORWARD"), ("raw", "PREROUTING")):
            rules = host.sandbox.rules_in(table, chain, fam)
            for n in reversed(range(len(rules))):
                if addr in rules[n] and "-j DROP" in rules[n] and ("docker+" in rules[n] or "! -i lo" in rules[n]):
                    host.sandbox.iptables("-t", table, "-D", chain, str(n + 1), family=fam)


def files(host: EcsHost) -> dict[str, bytes | None]:
    etc = host.sandbox.etc
    out: dict[str, bytes | None] = {}
    for p in (etc / "ecs" / "ecs.config", etc / "iptables" / "rules.v4", etc / "iptables" / "rules.v6"):
        out[str(p)] = p.read_bytes() if p.exists() else None
    return out


def base(host: EcsHost, extra: str = "") -> str:
    """A daemon policy keeping state and status inside the sandbox's directory."""
    return (f"interval: {INTERVAL}\nstate_dir: {host.dir}/state\n"
            f"report:\n  status_file: {host.dir}/status.json\n" + extra)


def findings(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["check"]: f for f in report["findings"]}


# -- report mode --------------------------------------------------------------

def test_report_mode_changes_nothing_through_any_command(clean: EcsHost) -> None:
    host = clean
    for p in (host.sandbox.etc / "iptables" / "rules.v4", host.sandbox.etc / "iptables" / "rules.v6"):
        p.unlink(missing_ok=True)
    config = host.sandbox.etc / "ecs" / "ecs.config"
    config.parent.mkdir(exist_ok=True)
    config.write_bytes(b'ECS_CLUSTER=prod\nECS_AWSVPC_BLOCK_IMDS="true"\nECS_ENGINE_AUTH_DATA={"x":1}\n')
    policy = host.policy(f"mode: report\ninterval: {INTERVAL}\n", name="report-policy.yaml")
    before_rules, before_files = ruleset(host), files(host)
    assert host.reaches(IMDS_V4)

    code, report = host.report("apply", policy=policy)
    assert code == 3 and report["changes"] == [] and report["mode"] == "report"
    f = findings(report)
    assert f["imds.ipv4.live"]["status"] == "drift" and f["imds.ipv4.persisted"]["status"] == "drift"
    assert f["ecs_config.ECS_AWSVPC_BLOCK_IMDS"]["status"] == "drift"
    assert not any(x["changed"] for x in report["findings"])
    assert host.harden("run", "--once", policy=policy).returncode == 3
    assert (ruleset(host), files(host)) == (before_rules, before_files)

    with daemon(host, policy.read_text(), "report-daemon.yaml"):
        time.sleep(4 * INTERVAL)
        status = json.loads((host.dir / "status.json").read_text())
    assert (ruleset(host), files(host)) == (before_rules, before_files)
    assert status["mode"] == "report" and status["compliant"] is False
    assert findings(status)["imds.ipv4.live"]["status"] == "drift"
    assert status["daemon"]["repairs"] == 0 and status["daemon"]["reconciles"] >= 1
    assert host.reaches(IMDS_V4)  # and so the host stays as exposed as it was, as asked


# -- foreign rules ------------------------------------------------------------

def mark_tree(host: EcsHost) -> None:
    """A 4x4 tree of mark-matching jumps, a leaf ACCEPT for IMDS in each, jumped to first."""
    chains, rules = foreign.mark_tree(4, 4)
    script = "\n".join(["*filter", *(f":{c} - [0:0]" for c in chains),
                        *(r.replace("-A FORWARD", "-I FORWARD 1") for r in rules), "COMMIT", ""])
    host.sandbox.run(["iptables-restore", "-w", "--noflush"], check=True, input=script)


def newline_comment(host: EcsHost) -> None:
    host.sandbox.run(["sh", "-c", "iptables -w -I FORWARD 1 -m comment --comment \"$(printf 'a\\nb')\" -j ACCEPT"],
                     check=True)


def flat_accepts(host: EcsHost) -> None:
    script = "*filter\n" + "".join(f"-I FORWARD 1 -s 10.99.{i // 250}.{i % 250}/32 -j ACCEPT\n"
                                   for i in range(500)) + "COMMIT\n"
    host.sandbox.run(["iptables-restore", "-w", "--noflush"], check=True, input=script)


def quoted_copy(host: EcsHost) -> None:
    """A second DROP copy whose comment holds a ', with ACCEPTs above it."""
    host.sandbox.iptables("-A", "FORWARD", "-i", "docker0", "-j", "ACCEPT")
    host.sandbox.iptables("-A", "FORWARD", "-i", "docker+", "-d", IMDS, "-m", "comment",
                          "--comment", "don't touch", "-j", "DROP")


SCENARIOS = {"newline comment": newline_comment, "tree of jumps": mark_tree, "500 accepts": flat_accepts,
             "quoted copy": quoted_copy}


def undo_foreign(host: EcsHost) -> None:
    host.sandbox.run(["sh", "-c", "iptables -w -F FORWARD; iptables -w -t raw -F PREROUTING; "
                      "for c in $(iptables -w -S | awk '/^-N T/{print $2}'); do iptables -w -F $c; done; "
                      "for c in $(iptables -w -S | awk '/^-N T/{print $2}'); do iptables -w -X $c; done"],
                     check=False)
    host.restart_docker()  # Docker's own FORWARD rules back


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_a_foreign_rule_never_stops_the_block(clean: EcsHost, scenario: str) -> None:
    host = clean
    try:
        host.report("apply")
        flush_block(host)
        SCENARIOS[scenario](host)
        # An ACCEPT above where the guard goes, in raw.
        host.sandbox.iptables("-t", "raw", "-I", "PREROUTING", "1", "-j", "ACCEPT")
        assert host.reaches(IMDS_V4)
        check = host.harden("check", "--format", "json")
        assert check.returncode == 3, check.stderr
        assert "Traceback" not in check.stderr
        apply = host.harden("apply", "--format", "json")
        assert apply.returncode == 0, (apply.stdout, apply.stderr)
        assert "Traceback" not in apply.stderr
        assert not host.reaches(IMDS_V4)
        assert host.reaches(CREDS)
        for chain in ("DOCKER-USER", "FORWARD"):
            assert len(copies(host, chain)) == 1, host.sandbox.rules(chain)
        assert len(copies(host, "PREROUTING", "raw")) == 1
        assert not any("don't touch" in r for r in host.sandbox.rules("FORWARD"))  # tidied, by position
        assert host.harden("check").returncode == 0
    finally:
        undo_foreign(host)


def test_the_daemon_repairs_through_an_unreadable_rule(clean: EcsHost) -> None:
    host = clean
    try:
        with daemon(host, base(host), "foreign-daemon.yaml") as (_host, run):
            run.wait_for("READY=1")
            newline_comment(host)
            quoted_copy(host)
            flush_block(host)
            until(lambda: len(copies(host, "FORWARD")) == 1 and len(copies(host, "DOCKER-USER")) == 1
                  and len(copies(host, "PREROUTING", "raw")) == 1, 15)
            assert not host.reaches(IMDS_V4)
            time.sleep(2 * INTERVAL)
            events = [json.loads(ln) for ln in run.log.read_text().splitlines() if ln.startswith("{")]
            assert not any(e["event"] in ("reconcile.crashed", "command.crashed") for e in events)
            assert "Traceback" not in run.log.read_text()
    finally:
        undo_foreign(host)


# -- the lock -----------------------------------------------------------------

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(600)
"""


def test_a_held_lock_makes_status_fail_and_names_the_holder(clean: EcsHost) -> None:
    host = clean
    lock = "/run/ecs-harden/lock/reconcile.lock"
    with daemon(host, base(host), "lock-daemon.yaml") as (_host, run):
        run.wait_for("READY=1")
        policy = host.dir / "lock-daemon.yaml"
        # READY does not wait for the slow checks: status passes once they have looked.
        until(lambda: host.harden("status", policy=policy).returncode == 0, 30)
        mode = host.sandbox.run(["stat", "-c", "%a %U", lock, os.path.dirname(lock)], check=True).stdout.split()
        assert mode == ["600", "root", "700", "root"]
        # An unprivileged user cannot even open it.
        other = host.sandbox.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                  sys.executable, "-c", HOLD, lock], check=False, timeout=20)
        assert other.returncode != 0 and "PermissionError" in other.stderr
        holder = host.sandbox.spawn([sys.executable, "-c", HOLD, lock], host.dir / "holder.log")
        try:
            until(lambda: "held" in (host.dir / "holder.log").read_text(), 10)
            flush_block(host)
            assert host.reaches(IMDS_V4)  # nobody may pretend otherwise now

            def failing() -> bool:
                return host.harden("status", policy=policy).returncode == 3

            until(failing, 40)
            status = json.loads(host.harden("status", "--format", "json", policy=policy).stdout)
            assert status["compliant"] is False
            assert findings(status)["imds.ipv4.live"]["status"] == "error"
            assert "has held" in status["daemon"]["last_error"]
            assert f"({sys.executable.rsplit('/', 1)[-1]}" in status["daemon"]["last_error"] \
                or "python" in status["daemon"]["last_error"]
            assert f"pid {run.pid}" not in status["daemon"]["last_error"]  # not the waiter itself
        finally:  # the holder itself, not only the nsenter that started it
            for child in psutil.Process(holder.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            holder.kill()
            holder.wait(10)
        until(lambda: len(copies(host, "FORWARD")) == 1, 80)  # backoff reaches 60 s at most
        until(lambda: host.harden("status", policy=policy).returncode == 0, 30)


# -- symlinks -----------------------------------------------------------------

def test_a_planted_metrics_link_never_replaces_ecs_config(clean: EcsHost) -> None:
    host = clean
    config = host.sandbox.etc / "ecs" / "ecs.config"
    config.parent.mkdir(exist_ok=True)
    original = b"ECS_CLUSTER=prod\nECS_ENGINE_AUTH_DATA={\"r\":1}\nECS_AWSVPC_BLOCK_IMDS=true\n" \
               b"ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST=false\n"
    config.write_bytes(original)
    textdir = host.dir / "textfile_collector"
    textdir.mkdir(exist_ok=True)
    os.chown(textdir, 65534, 65534)  # node_exporter's user owns it
    (textdir / "ecs_harden.prom").unlink(missing_ok=True)
    (textdir / "ecs_harden.prom").symlink_to(config)
    text = base(host, f"  textfile: {textdir}/ecs_harden.prom\n")
    with daemon(host, text, "link-daemon.yaml") as (_host, run):
        run.wait_for("READY=1")
        time.sleep(3 * INTERVAL)
        assert config.read_bytes() == original
        assert not (textdir / "ecs_harden.prom").is_symlink()
        assert "ecs_harden_compliant" in (textdir / "ecs_harden.prom").read_text()


def test_an_ecs_config_link_to_a_users_file_is_refused(clean: EcsHost) -> None:
    host = clean
    config = host.sandbox.etc / "ecs" / "ecs.config"
    config.parent.mkdir(exist_ok=True)
    theirs = host.dir / "users-ecs.config"
    theirs.write_bytes(b"ECS_CLUSTER=prod\n")
    os.chown(theirs, 65534, 65534)
    config.unlink(missing_ok=True)
    config.symlink_to(theirs)
    try:
        code, report = host.report("apply")
        assert code in (1, 3)
        f = findings(report)["ecs_config.ECS_AWSVPC_BLOCK_IMDS"]
        assert f["status"] == "error" and "/etc/ecs/ecs.config is a symlink ecs-harden will not follow" in f["detail"]
        assert theirs.read_bytes() == b"ECS_CLUSTER=prod\n" and config.is_symlink()
    finally:
        config.unlink()


# -- rollback -----------------------------------------------------------------

def test_remove_refuses_while_the_daemon_runs_then_rolls_back_for_good(clean: EcsHost) -> None:
    host = clean
    with daemon(host, base(host), "remove-daemon.yaml") as (_host, run):
        run.wait_for("READY=1")
        policy = host.dir / "remove-daemon.yaml"
        inside = json.loads((host.dir / "status.json").read_text())["daemon"]["pid"]  # its PID namespace's
        refused = host.harden("remove", "--yes", policy=policy)
        assert refused.returncode == 1 and f"daemon (pid {inside}) is running" in refused.stderr
        assert "nothing was removed" in refused.stderr
        assert len(copies(host, "FORWARD")) == 1
        os.kill(run.pid, signal.SIGTERM)
        run.proc.wait(10)
        done = host.harden("remove", "--yes", policy=policy)
        assert done.returncode == 0, done.stderr
        time.sleep(2 * INTERVAL)
        assert copies(host, "FORWARD") == [] and copies(host, "DOCKER-USER") == []
        assert host.reaches(IMDS_V4)

