"""The status file and the node_exporter textfile."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ecs_harden import __version__
from ecs_harden.daemon.status import Counters, metrics_text, read_status, write_status
from ecs_harden.report import Finding, Report

REPORT = Report(
    "enforce", {"flavor": "debian", "init": "systemd", "iptables": "nf_tables"},
    (Finding("imds.ipv4.live", "ok"), Finding("ecs_config.ECS_AWSVPC_BLOCK_IMDS", "drift")),
)


def test_status_round_trip_and_age(tmp_path: Path) -> None:
    path = tmp_path / "run" / "status.json"
    write_status(str(path), REPORT, {"pid": 1, "interval": 5})
    data, age = read_status(str(path))
    assert data["compliant"] is False and data["daemon"]["pid"] == 1
    assert data["version"] == 1 and len(data["findings"]) == 2
    assert 0 <= age < 5
    old = time.time() - 100
    os.utime(path, (old, old))
    assert read_status(str(path))[1] >= 99


def test_metrics_follow_prometheus_naming() -> None:
    counters = Counters(repairs=3, repairs_by_check={"imds.ipv4.live": 2, "ecs_config.ECS_AWSVPC_BLOCK_IMDS": 1},
                        errors=4, last_duration=0.0123, last_reconcile=1700000000.0)
    text = metrics_text(REPORT, counters, up=True, now=1700000005.0)
    lines = text.splitlines()
    assert f'ecs_harden_build_info{{version="{__version__}"}} 1' in lines
    assert "ecs_harden_up 1" in lines
    assert "ecs_harden_heartbeat_timestamp_seconds 1700000005.000" in lines
    assert 'ecs_harden_check_repairs_total{check="imds.ipv4.live"} 2' in lines
    assert 'ecs_harden_check_repairs_total{check="ecs_config.ECS_AWSVPC_BLOCK_IMDS"} 1' in lines
    assert "ecs_harden_reconcile_errors_total 4" in lines
    assert "ecs_harden_up 0" in metrics_text(REPORT, counters, up=False).splitlines()
    assert "ecs_harden_compliant 0" in lines
    assert 'ecs_harden_finding{check="imds.ipv4.live",status="ok"} 1' in lines
    assert 'ecs_harden_finding{check="imds.ipv4.live",status="drift"} 0' in lines
    assert "ecs_harden_repairs_total 3" in lines
    assert "# TYPE ecs_harden_repairs_total counter" in lines
    assert "ecs_harden_reconcile_duration_seconds 0.012300" in lines
    assert "ecs_harden_last_reconcile_timestamp_seconds 1700000000.000" in lines
    for ln in lines:
        assert ln.startswith("#") or ln.startswith("ecs_harden_")
