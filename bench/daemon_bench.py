"""Benchmarks of the daemon in the namespace lab: repair latency, idle CPU, probe cost.

    .venv/bin/python -m bench.daemon_bench [--rules 10000] [--idle 30] [--samples 20]

Prints a Markdown table (and writes it to bench/RESULTS.md with --write). Measurements,
not assertions: the tests assert behaviour with generous limits, this records numbers.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import psutil

from tests.lab.flavors import dress
from tests.lab.host import PROJECT
from tests.lab.sandbox import Sandbox

IMDS = "169.254.169.254"


def docker_shaped_rules(n: int) -> str:
    """FORWARD as Docker writes it, plus a DOCKER chain with n per-container rules."""
    lines = ["*filter", ":DOCKER - [0:0]", ":DOCKER-USER - [0:0]",
             "-A FORWARD -j DOCKER-USER", "-A FORWARD -o docker0 -j DOCKER",
             "-A FORWARD -i docker0 ! -o docker0 -j ACCEPT", "-A DOCKER-USER -j RETURN"]
    for i in range(n):
        lines.append(f"-A DOCKER -d 172.{16 + i // 65536 % 16}.{i // 256 % 256}.{i % 256}/32 ! -i docker0 "
                     f"-o docker0 -p tcp -m tcp --dport {1024 + i % 60000} -j ACCEPT")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def our_rule(sb: Sandbox) -> str | None:
    for line in sb.iptables("-S", "DOCKER-USER").splitlines():
        if IMDS in line:
            return line
    return None


def start_daemon(sb: Sandbox, interval: float) -> tuple[psutil.Process, object]:
    policy = sb.dir / "policy.yaml"
    policy.write_text(f"interval: {interval}\nstate_dir: {sb.dir}/state\n"
                      f"report:\n  status_file: {sb.dir}/status.json\nimds:\n  ipv6: null\n")
    os.chmod(policy, 0o600)
    proc = sb.spawn([sys.executable, "-m", "ecs_harden", "--log-level", "warning", "--policy",
                     str(policy), "run"], sb.dir / "daemon.log", env={"PYTHONPATH": str(PROJECT)})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        kids = psutil.Process(proc.pid).children()
        if kids and our_rule(sb) and (sb.dir / "status.json").exists():
            return kids[0], proc
        time.sleep(0.05)
    raise RuntimeError("daemon did not come up: " + (sb.dir / "daemon.log").read_text()[-2000:])


def repair_latency(sb: Sandbox, samples: int) -> list[float]:
    out = []
    for _ in range(samples):
        rule = our_rule(sb)
        assert rule
        t0 = time.monotonic()
        sb.iptables("-D", *shlex.split(rule)[1:])
        while our_rule(sb) is None:
            time.sleep(0.002)
        out.append(time.monotonic() - t0)
        time.sleep(0.3)
    return out


def cpu_over(p: psutil.Process, seconds: float) -> float:
    t = p.cpu_times()
    before = t.user + t.system + t.children_user + t.children_system
    time.sleep(seconds)
    t = p.cpu_times()
    after = t.user + t.system + t.children_user + t.children_system
    return (after - before) / seconds * 100


def naive_loop_cpu(sb: Sandbox, seconds: float) -> float:
    script = (f"while sleep 1; do iptables -w -C DOCKER-USER -i docker+ -d {IMDS}/32 -j DROP "
              f"|| iptables -w -I DOCKER-USER -i docker+ -d {IMDS}/32 -j DROP; done")
    proc = sb.spawn(["sh", "-c", script], sb.dir / "naive.log")
    time.sleep(1.5)
    shell = psutil.Process(proc.pid).children()[0]
    t0 = time.monotonic()
    total = 0.0
    # The loop's children come and go; sum CPU of the shell and its reaped children.
    t = shell.cpu_times()
    before = t.user + t.system + t.children_user + t.children_system
    time.sleep(seconds)
    t = shell.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system - before
    proc.kill()
    return total / (time.monotonic() - t0) * 100


def inspect_cost(sb: Sandbox, n: int = 20) -> float:
    """One legacy poll: the IPv4 live check through python-iptables."""
    code = ("import time, ipaddress; from ecs_harden.firewall.libiptc import Libiptc; "
            "from ecs_harden.imds.live import LiveBlockComponent; be = Libiptc(4); "
            "c = LiveBlockComponent(4, lambda: be, ('docker+',), ipaddress.ip_network('169.254.169.254/32')); "
            f"c.inspect(); t = time.perf_counter(); [c.inspect() for _ in range({n})]; "
            f"print((time.perf_counter() - t) / {n} * 1000)")
    return float(sb.run([sys.executable, "-c", code], env={"PYTHONPATH": str(PROJECT)}).stdout)


def pyiptables_cost(sb: Sandbox, n: int = 10) -> float:
    code = ("import time, iptc; t0 = time.perf_counter()\n"
            f"for _ in range({n}):\n    t = iptc.Table(iptc.Table.FILTER); t.refresh(); "
            "[r for r in iptc.Chain(t, 'DOCKER-USER').rules]\n"
            f"print((time.perf_counter() - t0) / {n} * 1000)")
    return float(sb.run([sys.executable, "-c", code]).stdout)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rules", type=int, default=10000)
    ap.add_argument("--idle", type=float, default=30.0)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    rows = []
    for variant in ("nft", "legacy"):
        with Sandbox(variant) as sb:
            dress(sb, "debian")
            sb.run(["iptables-restore", "--noflush"], input=docker_shaped_rules(args.rules))
            daemon, _ = start_daemon(sb, interval=5.0)
            lat = repair_latency(sb, args.samples)
            time.sleep(2)
            idle = cpu_over(daemon, args.idle)
            naive = naive_loop_cpu(sb, args.idle)
            rss = daemon.memory_info().rss / 2**20
            extra = ""
            if variant == "legacy":
                extra = (f"one poll (v4 live check) {inspect_cost(sb):.1f} ms; python-iptables refresh + "
                         f"DOCKER-USER {pyiptables_cost(sb):.1f} ms")
            rows.append((variant, statistics.median(lat) * 1000, max(lat) * 1000, idle, naive, rss, extra))
    table = [
        f"Daemon at defaults (interval 5 s, resync 60 s), {args.rules} Docker-shaped rules, "
        f"{args.samples} repairs, {args.idle:.0f} s idle; {time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} cores.",
        "",
        "| iptables | repair median | repair max | daemon idle CPU | naive 1 s `iptables -C` loop | daemon RSS | legacy poll cost |",
        "|---|---|---|---|---|---|---|",
    ]
    for v, med, mx, idle, naive, rss, extra in rows:
        table.append(f"| {v} | {med:.0f} ms | {mx:.0f} ms | {idle:.3f} % | {naive:.2f} % | {rss:.0f} MiB | {extra} |")
    text = "\n".join(table) + "\n"
    print(text)
    if args.write:
        (Path(__file__).parent / "RESULTS.md").write_text("# Benchmark results\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
