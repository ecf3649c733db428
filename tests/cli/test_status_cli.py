"""`ecs-harden status` when the policy on disk does not load: it still shows the daemon."""

from __future__ import annotations

import json
import os

from tests.cli.conftest import Harden


def test_status_shows_the_daemon_report_when_the_policy_is_invalid(harden: Harden) -> None:
    harden.config.write_bytes(b"ECS_AWSVPC_BLOCK_IMDS=true\nECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST=false\n")
    ran = harden("run", "--once")
    expected = ran.code  # 0 compliant, 3 not: status must agree with the daemon's report
    assert expected in (0, 3), ran.stderr
    good = harden("status", "--format", "json")
    assert good.code == expected and good.json()["policy_file"] == {"valid": True, "error": None}

    # Valid YAML, invalid value: the status file's place is still readable from it.
    harden.policy.write_text(harden.policy.read_text() + "interval: -1\n")
    r = harden("status")
    assert r.code == expected, r.stdout + r.stderr
    assert "ecs_config.ECS_AWSVPC_BLOCK_IMDS" in r.stdout  # the daemon's report
    assert "INVALID" in r.stdout and "interval" in r.stdout
    assert "does not load" in r.stderr
    j = harden("status", "--format", "json")
    assert j.code == expected
    doc = j.json()
    assert doc["policy_file"]["valid"] is False and "interval" in doc["policy_file"]["error"]
    assert doc["daemon"]["policy"]["source"] == str(harden.policy)
    assert {f["check"] for f in doc["findings"]} >= {"ecs_config.ECS_AWSVPC_BLOCK_IMDS"}


def test_stale_status_with_an_invalid_policy_still_exits_1(harden: Harden) -> None:
    assert harden("run", "--once").code in (0, 3)
    status = harden.tmp / "status.json"
    data = json.loads(status.read_text())
    old = os.stat(status).st_mtime - 3600
    os.utime(status, (old, old))
    harden.policy.write_text(harden.policy.read_text() + "mode: sometimes\n")
    r = harden("status")
    assert r.code == 1 and "not running" in r.stderr and "INVALID" in r.stdout
    assert data["daemon"]["policy"]["reload_error"] is None


def test_unparseable_policy_falls_back_to_the_default_status_file(harden: Harden) -> None:
    harden.policy.write_text("interval: [\n")
    os.chmod(harden.policy, 0o600)
    r = harden("status")
    assert r.code == 1
    assert "does not load" in r.stderr and "/run/ecs-harden/status.json" in r.stderr


def test_a_finding_not_looked_at_within_a_resync_is_stale_never_ok(harden: Harden) -> None:
    """The status file is fresh (a heartbeat rewrote it) but one finding was last looked
    at long ago: `status` says stale for it, not ok, and exits 1."""
    harden.config.write_bytes(b"ECS_AWSVPC_BLOCK_IMDS=true\nECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST=false\n")
    assert harden("run", "--once").code in (0, 3)
    status = harden.tmp / "status.json"
    data = json.loads(status.read_text())
    data["findings"] = [f for f in data["findings"] if f["status"] == "ok"]
    assert data["findings"], data
    for f in data["findings"]:
        f["observed"] = "2026-12-02T06:00:00Z"  # long before now: this run's clock
    aged = data["findings"][0]["check"]
    now = json.loads(json.dumps(data))
    for f in now["findings"][1:]:
        f["observed"] = now["time"]
    data["findings"][1:] = now["findings"][1:]
    data["compliant"] = True
    data["daemon"]["last_error"] = None
    status.write_text(json.dumps(data))
    r = harden("status")
    assert r.code == 1, r.stdout + r.stderr
    line = next(ln for ln in r.stdout.splitlines() if aged in ln)
    assert line.startswith("STALE") and "last seen ok at 2026-12-02T06:00:00Z" in line
    assert "NOT compliant" in r.stdout and aged in r.stderr
    j = harden("status", "--format", "json").json()
    assert j["compliant"] is False
    assert {f["check"]: f["status"] for f in j["findings"]}[aged] == "stale"
    assert all(f["status"] == "ok" for f in j["findings"] if f["check"] != aged)


def test_status_lists_the_latest_attempts_a_workloads_words_never_reach_the_terminal_raw(harden: Harden) -> None:
    assert harden("run", "--once").code in (0, 3)
    status = harden.tmp / "status.json"
    data = json.loads(status.read_text())
    recent = [{"task_arn": "arn:aws:ecs:us-east-1:1:task/prod/t-web", "task_family": "web", "container": "app",
               "source": "172.17.0.2", "interface": "docker0", "path": "bridge", "count": 5,
               "last_seen": "2026-12-07T10:00:01.000Z"},
              {"task_arn": "", "task_family": "evil\x1b[2J", "container": "x\ny", "source": "10.0.0.5",
               "interface": "eth0", "path": "host", "count": 2, "last_seen": "2026-12-07T10:00:02.000Z"}]
    data["daemon"]["attempts"] = {"listening": True, "error": None, "last_hour": 7, "recent": recent,
                                  "unattributed": 40}
    status.write_text(json.dumps(data))
    r = harden("status")
    lines = r.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("attempts: 7 blocked in the last hour"))
    assert "40 packets unattributed" in lines[start]
    assert lines[start + 1].split() == ["2026-12-07T10:00:02.000Z", "evil?[2J/x?y", "from", "10.0.0.5", "on",
                                        "eth0", "[host]:", "2"]  # the latest first, control characters as ?
    assert "web/app (task t-web) from 172.17.0.2 on docker0 [bridge]: 5" in lines[start + 2]
    assert "\x1b" not in r.stdout


def test_the_ssm_daemon_item_carries_the_attempts_of_the_last_hour(harden: Harden) -> None:
    assert harden("run", "--once").code in (0, 3)
    status = harden.tmp / "status.json"
    data = json.loads(status.read_text())
    data["daemon"]["attempts"] = {"listening": True, "error": None, "last_hour": 9, "recent": []}
    status.write_text(json.dumps(data))
    r = harden("check", "--format", "ssm-compliance")
    (daemon,) = [it for it in r.json()["Items"] if it["Id"] == "daemon"]
    assert daemon["Details"]["attempts_last_hour"] == "9"
    data["daemon"]["attempts"] = {"last_hour": "9; rm -rf /"}  # not the daemon's: left out
    status.write_text(json.dumps(data))
    (daemon,) = [it for it in harden("check", "--format", "ssm-compliance").json()["Items"] if it["Id"] == "daemon"]
    assert "attempts_last_hour" not in daemon["Details"]
