"""The status file and the node_exporter textfile."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ecs_harden import __version__
from ecs_harden.report import Finding, Report
from ecs_harden.statusfile import Counters, metrics_text, read_status, write_status

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
    counters = Counters(started=1699999000.0, reconciles=7, repairs=3,
                        repairs_by_check={"imds.ipv4.live": 2, "ecs_config.ECS_AWSVPC_BLOCK_IMDS": 1},
                        errors=4, last_duration=0.0123, last_reconcile=1700000000.0)
    text = metrics_text(REPORT, counters, up=True, now=1700000005.0)
    lines = text.splitlines()
    assert f'ecs_harden_build_info{{version="{__version__}"}} 1' in lines
    assert "ecs_harden_up 1" in lines
    assert "ecs_harden_heartbeat_timestamp_seconds 1700000005.000" in lines
    assert "ecs_harden_up 0" in metrics_text(REPORT, counters, up=False).splitlines()
    assert "ecs_harden_compliant 0" in lines
    assert 'ecs_harden_finding{check="imds.ipv4.live",status="ok"} 1' in lines
    assert 'ecs_harden_finding{check="imds.ipv4.live",status="drift"} 0' in lines
    # one counter of repairs, by check: its sum is the daemon's repairs
    repairs = [ln for ln in lines if ln.startswith("ecs_harden_repairs_total")]
    assert repairs == ['ecs_harden_repairs_total{check="ecs_config.ECS_AWSVPC_BLOCK_IMDS"} 1',
                       'ecs_harden_repairs_total{check="imds.ipv4.live"} 2']
    assert sum(int(ln.split()[-1]) for ln in repairs) == counters.repairs
    assert "# TYPE ecs_harden_repairs_total counter" in lines
    assert "ecs_harden_reconciles_total 7" in lines and "# TYPE ecs_harden_reconciles_total counter" in lines
    assert "ecs_harden_reconcile_errors_total 4" in lines
    assert "ecs_harden_last_reconcile_duration_seconds 0.012300" in lines
    assert "# TYPE ecs_harden_last_reconcile_duration_seconds gauge" in lines
    assert "ecs_harden_last_reconcile_timestamp_seconds 1700000000.000" in lines
    assert "ecs_harden_start_time_seconds 1699999000.000" in lines
    # only counters end in _total; no gauge is named like a histogram's _seconds sum
    types = dict(ln.split()[2:4] for ln in lines if ln.startswith("# TYPE"))
    for name, kind in types.items():
        assert name.endswith("_total") == (kind == "counter"), name
    # the 0.3 names, for one more minor release, marked deprecated
    assert 'ecs_harden_check_repairs_total{check="imds.ipv4.live"} 2' in lines
    assert "ecs_harden_reconcile_duration_seconds 0.012300" in lines
    deprecated = [ln for ln in lines if ln.startswith("# HELP") and "DEPRECATED" in ln]
    assert [ln.split()[2] for ln in deprecated] == ["ecs_harden_check_repairs_total",
                                                    "ecs_harden_reconcile_duration_seconds"]
    for ln in lines:
        assert ln.startswith("#") or ln.startswith("ecs_harden_")
