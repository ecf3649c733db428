"""The daemon against the naive shell loop, in the namespace lab, on both iptables variants.

    .venv/bin/python -m bench.daemon_bench [--sizes 1000,10000,50000] [--samples 50]
                                           [--idle 60] [--write]

For each variant and ruleset size (Docker-shaped: N per-container ACCEPTs in filter
DOCKER and N DNATs in nat DOCKER, as Docker writes them), in one lab host (the fake
IMDS and credentials endpoint, a docker0 bridge without Docker, so that the probe
really probes at the default policy):
- repair latency (tests/lab/deleter.py): every copy of the block in filter and raw is
  deleted in one `iptables-restore --noflush`, 0.2-1.5 s after the previous repair (the
  moment issue 24's blind spot needed), and the clock runs until every copy is back.
  A deletion not repaired within 5 s is counted as missing, and fails the bench;
- the same for the naive `while sleep 1; do iptables -C ... || iptables -I ...; done`;
- idle CPU of the daemon and of the loop over --idle seconds each, the daemon's peak
  RSS (VmHWM) and the log lines it wrote while idle;
- `ecs-harden check` wall time in a fresh process (cold), median of three.
Measurements, not assertions. --write records bench/RESULTS.md and bench/results.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from tests.lab.foreign import per_container
from tests.lab.host import PROJECT, EcsHost
from tests.lab.sandbox import Sandbox

HERE = Path(__file__).resolve().parent
IMDS = "169.254.169.254"
NAIVE = f"-i docker+ -d {IMDS}/32 -j DROP"

def docker_shaped_rules(n: int) -> str:
    filt = ["*filter", ":DOCKER - [0:0]", ":DOCKER-USER - [0:0]", ":DOCKER-ISOLATION-STAGE-1 - [0:0]",
            ":DOCKER-ISOLATION-STAGE-2 - [0:0]",
            "-A FORWARD -j DOCKER-USER", "-A FORWARD -j DOCKER-ISOLATION-STAGE-1",
            "-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-A FORWARD -o docker0 -j DOCKER", "-A FORWARD -i docker0 ! -o docker0 -j ACCEPT",
            "-A FORWARD -i docker0 -o docker0 -j ACCEPT",
            "-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2",
            "-A DOCKER-ISOLATION-STAGE-1 -j RETURN", "-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP",
            "-A DOCKER-ISOLATION-STAGE-2 -j RETURN", "-A DOCKER-USER -j RETURN"]
    nat = ["*nat", ":DOCKER - [0:0]", "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
           "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE", "-A DOCKER -i docker0 -j RETURN"]
    more_filter, more_nat = per_container(n, "DOCKER")
    filt += more_filter
    nat += more_nat
    return "\n".join([*filt, "COMMIT", *nat, "COMMIT"]) + "\n"


def policy(sb: Sandbox, probe: bool = True) -> Path:
    path = sb.dir / "policy.yaml"
    # The status file where the unit keeps it: on the sandbox's /run tmpfs.
    path.write_text(f"state_dir: {sb.dir}/state\n"
                    f"ecs_config:\n  path: {sb.dir}/etc-ecs/ecs.config\n"
                    + ("" if probe else "imds:\n  probe: false\n"))
    os.chmod(path, 0o600)
    return path


def start_daemon(sb: Sandbox, probe: bool = True) -> tuple[psutil.Process, subprocess.Popen[bytes]]:
    proc = sb.spawn([sys.executable, "-m", "ecs_harden", "--log-format", "json", "--policy",
                     str(policy(sb, probe)), "run"], sb.dir / "daemon.log", env={"PYTHONPATH": str(PROJECT)})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        kids = psutil.Process(proc.pid).children()
        if kids and Path(f"/proc/{kids[0].pid}/root/run/ecs-harden/status.json").exists():
            return kids[0], proc
        time.sleep(0.05)
    raise RuntimeError("daemon did not come up: " + (sb.dir / "daemon.log").read_text()[-2000:])


def probe_status(daemon: psutil.Process, within: float = 60) -> str:
    """imds.probe's status once the daemon's probe has looked (READY does not wait for it)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            status = json.loads(Path(f"/proc/{daemon.pid}/root/run/ecs-harden/status.json").read_text())
        except (OSError, ValueError):
            status = {}
        for f in status.get("findings") or []:
            if f.get("check") == "imds.probe" and f.get("status") != "stale":
                return str(f["status"])
        time.sleep(0.2)
    return "not looked at"


def cpu_seconds(p: psutil.Process) -> float:
    """The process's own CPU to the nanosecond (schedstat), plus its reaped children's (ticks)."""
    with open(f"/proc/{p.pid}/schedstat") as fh:
        own = int(fh.read().split()[0]) / 1e9
    t = p.cpu_times()
    return own + t.children_user + t.children_system


def idle_cpu(p: psutil.Process, seconds: float) -> float:
    before, t0 = cpu_seconds(p), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(p) - before) / (time.monotonic() - t0) * 100


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def latencies(sb: Sandbox, variant: str, samples: int, mark: str = "ecs-harden") -> list[float | None]:
    """Milliseconds from each deletion to its repair; None: never repaired (within 5 s)."""
    out = sb.run([sys.executable, "-m", "tests.lab.deleter", variant, str(samples), "0.2", "1.5", mark],
                 env={"PYTHONPATH": str(PROJECT)}, timeout=samples * 20 + 60).stdout
    found = [None if s["repaired"] is None else s["repaired"] * 1000 for s in json.loads(out)]
    return found + [None] * (samples - len(found))  # it stops at a deletion never repaired


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def check_cold(sb: Sandbox) -> float:
    times = []
    for _ in range(3):
        t0 = time.monotonic()
        sb.run([sys.executable, "-m", "ecs_harden", "--policy", str(sb.dir / "policy.yaml"), "check"],
               env={"PYTHONPATH": str(PROJECT)}, check=False)
        times.append(time.monotonic() - t0)
    return statistics.median(times)


def measure(variant: str, n: int, samples: int, idle: float) -> dict[str, Any]:
    with EcsHost(variant).start(docker=False) as host:
        sb = host.sandbox
        # docker0 as Docker and ecs-init leave it: forwarding on, route_localnet for the
        # credentials endpoint's DNAT to 127.0.0.1 (without it the probe's credentials
        # control fails, its finding is undecided and it probes again at every resync,
        # which no healthy host does).
        sb.sh("ip link add docker0 type bridge; ip addr add 172.17.0.1/16 dev docker0; ip link set docker0 up; "
              "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.docker0.route_localnet=1")
        sb.run(["iptables-restore", "--noflush"], input=docker_shaped_rules(n))
        daemon, proc = start_daemon(sb)
        # Idle first: the steady state of a host where nothing changes (after a burst of
        # repairs the next resync re-reads the changed ruleset once), from the first probe on.
        probe = probe_status(daemon)
        time.sleep(3)
        log = sb.dir / "daemon.log"
        lines_before = log.read_text().count("\n")
        cpu = idle_cpu(daemon, idle)
        log_lines = log.read_text().count("\n") - lines_before
        lat = latencies(sb, variant, samples)
        rss = peak_rss_mib(daemon.pid)
        cold = check_cold(sb)
        daemon.terminate()
        proc.wait(timeout=30)
        # side by side, the same host: the daemon with the probe off, idle
        daemon, proc = start_daemon(sb, probe=False)
        time.sleep(3)
        cpu_off = idle_cpu(daemon, idle)
        daemon.terminate()
        proc.wait(timeout=30)
        # the daemon leaves its rules: take them out, the loop keeps only its own
        sb.sh("for t in filter raw; do iptables-save -t $t | grep -- '^-A .*ecs-harden' | sed 's/^-A/-D/' "
              "| while read -r l; do eval iptables -w -t $t $l; done; done")
        sb.iptables("-I", "DOCKER-USER", *shlex.split(NAIVE))
        loop = sb.spawn(["sh", "-c", f"while sleep 1; do iptables -w -C DOCKER-USER {NAIVE} "
                                     f"|| iptables -w -I DOCKER-USER {NAIVE}; done"], sb.dir / "loop.log")
        time.sleep(1.5)
        shell = psutil.Process(loop.pid).children()[0]
        loop_lat = [x for x in latencies(sb, variant, max(10, samples // 3), "DOCKER-USER") if x is not None]
        loop_cpu = idle_cpu(shell, idle)
        loop.kill()
    ok = [x for x in lat if x is not None]
    return {
        "variant": variant, "rules": n, "samples": len(lat), "lost": len(lat) - len(ok),
        "p50": pct(ok, 0.5) if ok else None, "p99": pct(ok, 0.99) if ok else None,
        "max": max(ok) if ok else None,
        "loop_p50": pct(loop_lat, 0.5), "loop_max": max(loop_lat),
        "cpu": cpu, "cpu_off": cpu_off, "probe": probe, "loop_cpu": loop_cpu, "rss": rss, "check": cold, "log_lines": log_lines, "idle": idle,
    }


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    ipt = subprocess.run(["iptables-nft", "-V"], capture_output=True, text=True).stdout.strip()
    return (f"{time.strftime('%Y-%m-%d')}; {cpu}, {os.cpu_count()} cores; Linux {platform.release()}; "
            f"Python {platform.python_version()}; {ipt}")


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| iptables | rules | repair p50 / p99 / max | never repaired | loop repair p50 / max "
           "| idle CPU daemon / probe off / loop | peak RSS | `check` cold | log lines idle |",
           "|---|---|---|---|---|---|---|---|---|"]

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    for r in rows:
        cpu_off = f"{r['cpu_off']:.3f} %" if "cpu_off" in r else "-"
        probe = f" (probe {r['probe']})" if r.get("probe", "ok") != "ok" else ""
        out.append(
            f"| {r['variant']} | {r['rules']:,} | {ms(r['p50'])} / {ms(r['p99'])} / {ms(r['max'])} ms "
            f"| {r.get('lost', 0)} of {r.get('samples', '?')} "
            f"| {r['loop_p50']:.0f} / {r['loop_max']:.0f} ms | {r['cpu']:.3f} %{probe} / {cpu_off} / {r['loop_cpu']:.2f} % "
            f"| {r['rss']:.0f} MiB | {r['check']:.2f} s | {r['log_lines']} |"
        )
    return "\n".join(out) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for variant, color in (("nft", "tab:blue"), ("legacy", "tab:orange")):
        rs = [r for r in rows if r["variant"] == variant]
        x = [r["rules"] for r in rs]
        a.plot(x, [r["p99"] for r in rs], "o-", color=color, label=f"daemon p99 ({variant})")
        a.plot(x, [r["loop_p50"] for r in rs], "s--", color=color, alpha=0.6, label=f"naive loop p50 ({variant})")
        b.plot(x, [r["cpu"] for r in rs], "o-", color=color, label=f"daemon ({variant})")
        b.plot(x, [r["loop_cpu"] for r in rs], "s--", color=color, alpha=0.6, label=f"naive loop ({variant})")
    for ax, title, unit in ((a, "repair latency", "ms"), (b, "idle CPU", "% of one core")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("Docker-shaped rules (filter + nat each)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


BEGIN, END = "<!-- daemon_bench: begin -->", "<!-- daemon_bench: end -->"


def write_section(path: Path, text: str) -> None:
    """Replace this bench's part of RESULTS.md (between its markers); the rest is kept."""
    old = path.read_text() if path.exists() else "# Benchmark results\n\n" + BEGIN + "\n" + END + "\n"
    if BEGIN not in old or END not in old:
        raise SystemExit(f"{path}: no {BEGIN} ... {END} markers: put them around the daemon table")
    start, end = old.index(BEGIN) + len(BEGIN), old.index(END)
    path.write_text(old[:start] + "\n" + text + old[end:])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,50000")
    ap.add_argument("--variants", default="nft,legacy")
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--idle", type=float, default=120.0)  # two resyncs
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of bench/results.json this run does not measure")
    args = ap.parse_args()
    rows = []
    for variant in args.variants.split(","):
        for n in (int(x) for x in args.sizes.split(",")):
            rows.append(measure(variant, n, args.samples, args.idle))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if args.merge and (HERE / "results.json").exists():
        measured = {(r["variant"], r["rules"]) for r in rows}
        kept = [r for r in json.loads((HERE / "results.json").read_text())
                if (r["variant"], r["rules"]) not in measured]
        order = {"nft": 0, "legacy": 1}
        rows = sorted(kept + rows, key=lambda r: (order.get(r["variant"], 2), r["rules"]))
    head = (f"Daemon at the default policy (interval 5 s, resync 60 s, the probe on: a docker0 "
            f"bridge; idle also with `probe: false`, same host) against the naive 1 s loop; {args.samples} deletions of every copy each, "
            f"0.2-1.5 s after the previous repair; {args.idle:.0f} s idle each.\n\n"
            f"Machine: {machine()}.\n\n")
    text = head + table(rows)
    print(text)
    if args.write:
        write_section(HERE / "RESULTS.md", text)
        (HERE / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
        try:
            plot(rows, HERE / "results.png")
        except ImportError:
            print("bench/results.png not redrawn: matplotlib is the bench extra "
                  "(.venv/bin/pip install -e '.[bench]')", file=sys.stderr)
    lost = [f"{r['variant']} {r['rules']:,}: {r['lost']}" for r in rows if r.get("lost")]
    if lost:
        print(f"FAILED: deletions never repaired: {'; '.join(lost)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
