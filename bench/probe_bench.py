"""What the paths checks cost: imds.probe, imds.paths, imds.host_network and imds.v1, as the
daemon runs them at every resync, in the namespace lab (real Docker, real netfilter).

    .venv/bin/python -m bench.probe_bench [--runs 20] [--bridges 1,3]

For each number of bridges (docker0 plus user-defined networks, one container each) on
the nft variant: wall time and CPU (the command and every child it starts) per run of
each component's inspect, and CPU per hour at the default resync (60 s). Measurements,
not assertions; printed as a Markdown table (bench/RESULTS.md keeps the last one).
"""

from __future__ import annotations

import argparse
import json
import sys

from tests.lab.host import PROJECT, EcsHost

INSIDE = r"""
import json, os, resource, sys, time
from ecs_harden import policy as policy_mod
from ecs_harden.facts import gather
from ecs_harden.reconcile import build_components
pol = policy_mod.load(sys.argv[1])
wanted = ("imds.probe", "imds.paths", "imds.host_network", "imds.v1")
components = [c for c in build_components(pol, gather()) if c.name in wanted]
out = {}
for c in components:
    c.inspect()  # warm: imports, first reads
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
        assert h.report("apply")[0] == 0
        cp = h.sandbox.run([sys.executable, "-c", INSIDE, str(pol), str(runs)],
                           env={"PYTHONPATH": str(PROJECT)}, timeout=1800)
        return json.loads(cp.stdout)  # type: ignore[no-any-return]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--bridges", default="1,3")
    args = ap.parse_args()
    print("| bridges | check | wall per run (median) | CPU per run (median) | CPU per hour at resync 60 s |")
    print("|---|---|---|---|---|")
    for b in (int(x) for x in args.bridges.split(",")):
        for name, m in measure(b, args.runs).items():
            print(f"| {b} | `{name}` | {m['wall'] * 1000:.0f} ms | {m['cpu'] * 1000:.1f} ms | "
                  f"{m['cpu'] * 60:.2f} s ({m['cpu'] * 60 / 3600 * 100:.3f} %) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
