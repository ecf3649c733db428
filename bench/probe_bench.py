"""What the paths checks cost: imds.probe, imds.paths, imds.host_network and imds.v1, as the
daemon runs them, in the namespace lab (real Docker, real netfilter).

    .venv/bin/python -m bench.probe_bench [--runs 20] [--bridges 1,3]

For each number of bridges (docker0 plus user-defined networks, one container each) on
the nft variant: wall time and CPU (the process and every child it starts) per run of
each component's inspect, and CPU per hour at the default resync (60 s). The probe is
measured twice: a probe (`apply`, `check --fresh`, the daemon when the bridges change or
its 300 s are up) and a look of the daemon's that keeps its result (the bridges read
again); its hour is 12 probes and 48 such looks. Then, with the daemon running, `check`
in a fresh process (taking the daemon's probe), `check --fresh`, and `check` under
`probe: false`, median of five. Measurements, not assertions; printed as Markdown
tables (bench/RESULTS.md keeps the last ones).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time

from ecs_harden.imds.probe import EVERY
from tests.integration.test_daemon import start_daemon
from tests.lab.host import PROJECT, EcsHost

INSIDE = r"""
import json, os, resource, sys, time
from ecs_harden import policy as policy_mod
from ecs_harden.facts import gather
from ecs_harden.assembly import build, daemon_components
pol = policy_mod.load(sys.argv[1])
wanted = ("imds.probe", "imds.paths", "imds.host_network", "imds.v1")
components = [c for c in build(pol, gather()) if c.name in wanted]
kept = [c for c in daemon_components(pol, gather()) if c.name == "imds.probe"]
kept[0].name = "imds.probe (kept)"
out = {}
for c in components + kept:
    c.inspect()  # warm: imports, first reads (the kept one: its probe)
    walls, cpus = [], []
    for _ in range(int(sys.argv[2])):
        r0 = resource.getrusage(resource.RUSAGE_SELF); k0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        c.inspect()
        walls.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_SELF); k1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(sum(getattr(b, f) - getattr(a, f) for a, b in ((r0, r1), (k0, k1))
                        for f in ("ru_utime", "ru_stime")))
    walls.sort(); cpus.sort()
    out[c.name] = {"wall": walls[len(walls) // 2], "cpu": cpus[len(cpus) // 2]}
print(json.dumps(out))
"""


def measure(bridges: int, runs: int) -> dict[str, dict[str, float]]:
    with EcsHost("nft") as h:
        for n in range(1, bridges):
            h.docker("network", "create", f"bench{n}")
        for n in range(bridges):
            net = ["--network", f"bench{n}"] if n else []
            h.docker("run", "-d", *net, "lab/busybox", "sleep", "3600")
        pol = h.policy(probe=True)
        assert h.report("apply", policy=pol)[0] == 0
        cp = h.sandbox.run([sys.executable, "-c", INSIDE, str(pol), str(runs)],
                           env={"PYTHONPATH": str(PROJECT)}, timeout=1800)
        out: dict[str, dict[str, float]] = json.loads(cp.stdout)
        off = h.policy(name="off.yaml")
        run = start_daemon(h, pol)
        try:
            run.wait_for("READY=1", 60)
            deadline = time.monotonic() + 60
            while "the daemon's probe" not in json.dumps(h.report("check", policy=pol)[1]):
                assert time.monotonic() < deadline, "the daemon never probed"
                time.sleep(1)
            for name, args, p in (("check", (), pol), ("check --fresh", ("--fresh",), pol),
                                  ("check, probe: false", (), off)):
                times = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    h.harden("check", *args, policy=p)
                    times.append(time.perf_counter() - t0)
                out[name] = {"wall": statistics.median(times)}
        finally:
            os.kill(run.pid, signal.SIGTERM)
            run.proc.wait(timeout=30)
            run.notify.close()
        return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--bridges", default="1,3")
    args = ap.parse_args()
    print("| bridges | check | wall per run (median) | CPU per run (median) | CPU per hour at resync 60 s |")
    print("|---|---|---|---|---|")
    commands = []
    for b in (int(x) for x in args.bridges.split(",")):
        found = measure(b, args.runs)
        probes = 3600 / EVERY
        for name, m in found.items():
            if "cpu" not in m:
                commands.append((b, name, m["wall"]))
                continue
            if name == "imds.probe":
                hour = m["cpu"] * probes + found["imds.probe (kept)"]["cpu"] * (60 - probes)
                how = f"{probes:.0f} probes + {60 - probes:.0f} kept looks: "
            elif name == "imds.probe (kept)":
                continue
            else:
                hour, how = m["cpu"] * 60, ""
            print(f"| {b} | `{name}` | {m['wall'] * 1000:.0f} ms | {m['cpu'] * 1000:.1f} ms | "
                  f"{how}{hour:.2f} s ({hour / 3600 * 100:.4f} %) |")
            if name == "imds.probe":
                k = found["imds.probe (kept)"]
                print(f"| {b} | `imds.probe`, kept | {k['wall'] * 1000:.0f} ms | {k['cpu'] * 1000:.1f} ms | - |")
    print("\n| bridges | command (a fresh process, the daemon running) | wall (median of 5) |\n|---|---|---|")
    for b, name, wall in commands:
        print(f"| {b} | `{name}` | {wall:.2f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
