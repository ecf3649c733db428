"""ansible/filter_plugins/fleet_report.py: the rows, the summary and the Markdown table of
ansible/fleet-report.yml, from what the plays register (including unreachable hosts)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

PLUGIN = Path(__file__).resolve().parents[2] / "ansible" / "filter_plugins" / "fleet_report.py"


def plugin() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fleet_report", PLUGIN)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def report(compliant: bool, findings: list[dict[str, Any]]) -> str:
    return json.dumps({"version": 1, "compliant": compliant, "mode": "enforce",
                       "platform": {"flavor": "debian", "init": "systemd", "iptables": "nf_tables"},
                       "findings": findings})


OK = {"check": "imds.ipv4.live", "status": "ok", "detail": "dropped"}
LIVE = {"check": "imds.ipv4.live", "status": "drift", "detail": "DOCKER-USER docker+: 0"}
QUOTED = {"check": "ecs_config.ECS_AWSVPC_BLOCK_IMDS", "status": "drift",
          "detail": 'line 1: the value "true" is quoted | silently off'}
STATUS = {"rc": 0, "stdout": json.dumps({"compliant": True, "daemon": {"pid": 7, "repairs": 2,
                                                                       "last_reconcile": "2026-11-28T00:00:00Z"}})}


def test_rows_summary_and_table() -> None:
    fr = plugin()
    hostvars = {
        "a": {"fleet_report_check": {"rc": 0, "stdout": report(True, [OK])}, "fleet_report_status": STATUS},
        "b": {"fleet_report_check": {"rc": 3, "stdout": report(False, [LIVE, QUOTED])},
              "fleet_report_status": {"rc": 1, "stdout": "", "stderr": "no status file"}},
        "c": {"fleet_report_check": {"unreachable": True, "msg": "Failed to connect to the host via ssh"}},
        "d": {},  # never reached: no result at all
        "e": {"fleet_report_check": {"rc": 2, "stdout": "", "stderr": "policy.yaml:3: bad key"}},
    }
    out = fr.fleet_report(hostvars, ["a", "b", "c", "d", "e"])
    assert out["summary"] == {"hosts": 5, "compliant": 1, "not_yet_effective": 0, "drifting": 2, "unreachable": 2,
                              "with_attempts": 0}
    a, b, c, d, e = out["hosts"]
    assert a["compliant"] is True and a["drift"] == [] and a["daemon"]["running"] and a["daemon"]["pid"] == 7
    assert b["compliant"] is False and [f["check"] for f in b["drift"]] == [
        "imds.ipv4.live", "ecs_config.ECS_AWSVPC_BLOCK_IMDS"]
    assert not b["daemon"]["running"]
    assert not c["reachable"] and "ssh" in c["error"] and not d["reachable"]
    assert e["reachable"] and e["compliant"] is None and "bad key" in e["error"]
    md = fr.fleet_markdown(out)
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| host")]
    assert len(rows) == 5
    assert "**NO**" in rows[1] and "`ecs_config.ECS_AWSVPC_BLOCK_IMDS`" in rows[1]
    assert "\\|" in rows[1] and rows[1].count(" | ") == 6  # a '|' in a detail does not split the row
    assert "**unreachable**" in rows[2] and "**unreachable**" in rows[3] and "**error**" in rows[4]
    assert md.rstrip().endswith("5 hosts, 1 compliant, 0 not yet effective (the ECS agent runs the old flags), "
                                "2 drifting, 2 unreachable")
    json.dumps(out)  # what the playbook writes


def test_flags_the_running_agent_has_not_read_are_not_yet_effective() -> None:
    """ecs_agent.restart warn (restart_agent: never): compliant as ecs-harden counts it,
    but the agent still runs the old flags; the report must not call it plain compliant."""
    fr = plugin()
    restart = {"check": "ecs_agent.restart", "status": "warn",
               "detail": "ecs.config changed after the agent started; restart_agent is never"}
    hostvars = {"a": {"fleet_report_check": {"rc": 0, "stdout": report(True, [OK, restart])},
                      "fleet_report_status": STATUS},
                "b": {"fleet_report_check": {"rc": 0, "stdout": report(True, [OK])}, "fleet_report_status": STATUS}}
    out = fr.fleet_report(hostvars, ["a", "b"])
    assert out["summary"]["compliant"] == 1 and out["summary"]["not_yet_effective"] == 1
    a, b = out["hosts"]
    assert a["compliant"] is True and a["effective"] is False and a["pending"][0]["check"] == "ecs_agent.restart"
    assert b["effective"] is True
    rows = [ln for ln in fr.fleet_markdown(out).splitlines() if ln.startswith("| a ")]
    assert "yes, **not yet effective**" in rows[0] and "`ecs_agent.restart`" in rows[0]


def test_attempts_in_the_last_hour_are_a_column_and_a_count() -> None:
    """The daemon's record (status --format json's daemon.attempts) per host: a column, the
    hosts that saw any counted; a host without the record shows nothing, never 0."""
    fr = plugin()
    tried = {"rc": 0, "stdout": json.dumps({"compliant": True, "daemon": {
        "pid": 7, "repairs": 0, "last_reconcile": "x", "attempts": {"last_hour": 12, "recent": []}}})}
    hostvars = {"a": {"fleet_report_check": {"rc": 0, "stdout": report(True, [OK])}, "fleet_report_status": tried},
                "b": {"fleet_report_check": {"rc": 0, "stdout": report(True, [OK])}, "fleet_report_status": STATUS}}
    out = fr.fleet_report(hostvars, ["a", "b"])
    a, b = out["hosts"]
    assert a["attempts_last_hour"] == 12 and b["attempts_last_hour"] is None
    assert out["summary"]["with_attempts"] == 1
    md = fr.fleet_markdown(out)
    assert "IMDS attempts (last hour)" in md and md.splitlines()[4].endswith("| **12** |")
    assert md.splitlines()[5].endswith("|  |")
    assert "1 with blocked IMDS attempts in the last hour" in fr.summary_line(out)
    assert [fr.attempts_count(v) for v in ("3", -1, "x", None, "")] == [3, 0, None, None, None]
