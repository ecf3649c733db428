"""The flood through the daemon itself (issue 30): a lab host with real Docker, the daemon
at its default policy but for 5 s windows, a namespace on docker0 sending SYNs to IMDS at
--rate a second for --seconds, and an ECS-labelled container's single attempt in the middle.

Measured (not asserted): the daemon process's CPU over the flood as a share of one core
(its NFLOG reading, tallying and everything else it does meanwhile), the journal lines it
wrote for attempts (at most one per workload per window, then one `more`), whether the
single attempt was named, and the textfile's series against the raw guard's counters.

    .venv/bin/python -m bench.attempts_daemon_bench [--variant nft] [--rate 20000] [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bench.attempts_bench import FLOOD, FLOOD_NETNS
from bench.daemon_bench import cpu_seconds
from tests.lab.host import IMAGE, PROJECT, EcsHost

WINDOW = 5
LABELS = ["--label", "com.amazonaws.ecs.task-arn=arn:aws:ecs:us-east-1:123456789012:task/prod/t-once",
          "--label", "com.amazonaws.ecs.task-definition-family=batch",
          "--label", "com.amazonaws.ecs.task-definition-version=1",
          "--label", "com.amazonaws.ecs.container-name=job"]


def guard_packets(host: EcsHost) -> int:
    total = 0
    for binary in ("iptables", "ip6tables"):
        out = host.sandbox.run([binary, "-w", "-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n"]).stdout
        total += sum(int(line.split()[0]) for line in out.splitlines() if "block IMDS from every interface" in line)
    return total


def series(textfile: Path) -> dict[str, int]:
    out = {}
    for line in textfile.read_text().splitlines():
        if line.startswith("ecs_harden_imds_blocked_total{"):
            labels, _, value = line.rpartition(" ")
            out[labels] = int(value)
    return out


def measure(variant: str, rate: float, seconds: float) -> dict[str, Any]:
    with EcsHost(variant).start() as host:
        sb = host.sandbox
        sb.sh(f"ln -sfn {host.sock} /run/docker.sock")
        textfile = sb.dir / "metrics" / "ecs_harden.prom"
        policy = sb.dir / "attempts-policy.yaml"
        policy.write_text(f"state_dir: {sb.dir}/state\necs_config:\n  path: {sb.dir}/etc-ecs/ecs.config\n"
                          f"report:\n  textfile: {textfile}\n  attempts_window: {WINDOW}\n")
        os.chmod(policy, 0o600)
        log = sb.dir / "daemon.log"
        proc = sb.spawn([sys.executable, "-m", "ecs_harden", "--log-format", "json", "--policy", str(policy), "run"],
                        log, env={"PYTHONPATH": str(PROJECT)})
        deadline = time.monotonic() + 60
        while not textfile.exists():
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)
        (daemon,) = psutil.Process(proc.pid).children()
        time.sleep(WINDOW + 3)  # the first probe's packets counted and their window closed
        sb.sh(FLOOD_NETNS)
        lines0 = log.read_text().count("\n")
        c0, t0 = cpu_seconds(daemon), time.monotonic()
        flood = sb.spawn(["ip", "netns", "exec", "flood", sys.executable, "-c", FLOOD, str(seconds), str(rate)],
                         sb.dir / "flood.log")
        time.sleep(seconds / 2)
        once = host.docker("run", "-d", *LABELS, IMAGE, "sh", "-c",
                           "nc -w 1 169.254.169.254 80 </dev/null; sleep 60").stdout.strip()
        flood.wait(timeout=seconds + 60)
        c1, t1 = cpu_seconds(daemon), time.monotonic()
        time.sleep(WINDOW + 4)  # the last window closed and attributed
        events = []
        kinds: dict[str, int] = {}
        for line in log.read_text().splitlines()[lines0:]:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            kinds[str(entry.get("event"))] = kinds.get(str(entry.get("event")), 0) + 1
            if str(entry.get("event", "")).startswith("imds.attempt"):
                events.append(entry)
        sent = int((sb.dir / "flood.log").read_text().split()[-1])
        time.sleep(6)  # a heartbeat after the counters settled
        found = series(textfile)
        guard = guard_packets(host)
        host.docker("rm", "-f", once)
        sb.sh("ip netns del flood")
        return {
            "variant": variant, "rate_asked": rate, "flood_seconds": round(t1 - t0, 1), "syns_sent": sent,
            "daemon_cpu_share_of_a_core_during_flood": round((c1 - c0) / (t1 - t0), 4),
            "attempt_lines": sum(1 for e in events if e["event"] == "imds.attempt"),
            "windows": int((t1 - t0) // WINDOW) + 2,
            "workloads_per_line": sorted({e.get("task_family") or e.get("source", "") for e in events}),
            "single_attempt_named": any(e.get("task_family") == "batch" and e.get("container") == "job"
                                        for e in events),
            "series_sum": sum(found.values()), "guard_packets": guard, "log_events": kinds,
            "textfile_age_seconds": round(time.time() - textfile.stat().st_mtime, 1),
            "unattributed": found.get('ecs_harden_imds_blocked_total{task_family="",container="unattributed",'
                                      'path="bridge"}', 0),
        }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="nft", choices=("nft", "legacy"))
    ap.add_argument("--rate", type=float, default=20000)
    ap.add_argument("--seconds", type=float, default=30)
    args = ap.parse_args()
    result = measure(args.variant, args.rate, args.seconds)
    print(json.dumps(result, indent=2))
    return 0 if result["single_attempt_named"] and result["series_sum"] == result["guard_packets"] else 1


if __name__ == "__main__":
    sys.exit(main())
