"""What attributing blocked IMDS attempts costs (issue 30), in a private network namespace
(`unshare --net`, this machine's kernel): the attempts table, the guard, a bridge with two
"containers" (namespaces on veths).

- flood: one source sends non-blocking connects to IMDS as fast as Python can for
  --seconds, another one connect a second; the listener (the daemon's NFLOG reading and
  tallying, in this process) is measured in CPU time over the flood, and the second
  source must still be counted.
- idle: what the daemon does per heartbeat for attempts while nothing tries (the status
  and the textfile's series: two netlink dumps of the table), timed over many calls and
  given as a share of one core at the default 5 s interval; the listener itself makes no
  wakeups while nothing arrives.

    unshare --net --mount sh -c 'mount -t tmpfs none /run; mkdir /run/netns; \\
        .venv/bin/python -m bench.attempts_bench'
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import resource
import selectors
import subprocess
import sys
import time

from ecs_harden.attempts import nftlog
from ecs_harden.attempts.recorder import Recorder

SETUP = """set -e
ip link set lo up
ip link add br0 type bridge; ip addr add 10.9.0.1/24 dev br0; ip link set br0 up
for n in a b; do ip netns add $n; ip link add v$n type veth peer name e$n; ip link set v$n master br0 up
  ip link set e$n netns $n; done
for n in a b; do i=$([ $n = a ] && echo 2 || echo 3); ip netns exec $n sh -c "ip link set lo up
  ip addr add 10.9.0.$i/24 dev e$n; ip link set e$n up; ip route add default via 10.9.0.1"; done
sysctl -qw net.ipv4.ip_forward=1
iptables-nft -t raw -I PREROUTING -d 169.254.169.254 ! -i lo -j DROP
"""
# SECONDS [RATE]: non-blocking connects to IMDS, as fast as one process can or RATE a second
FLOOD = """
import socket, sys, time
seconds = float(sys.argv[1])
rate = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
start, n = time.time(), 0
while True:
    now = time.time()
    if now - start >= seconds:
        break
    due = int((now - start) * rate) if rate else n + 1
    while n < due:
        s = socket.socket(); s.setblocking(False)
        try:
            s.connect(("169.254.169.254", 80))
        except OSError:
            pass
        s.close(); n += 1
    if rate:
        time.sleep(0.002)
print(n)
"""
# a namespace on docker0 (no container of Docker's) at 172.17.255.250, to flood from
FLOOD_NETNS = """
ip netns add flood
ip link add fl-host type veth peer name fl-peer
ip link set fl-host master docker0 up
ip link set fl-peer netns flood
ip netns exec flood sh -ec 'ip link set lo up; ip addr add 172.17.255.250/16 dev fl-peer
    ip link set fl-peer up; ip route add default via 172.17.0.1'
"""
ONCE = "import socket; s = socket.socket(); s.settimeout(1)\ntry: s.connect(('169.254.169.254', 80))\nexcept OSError: pass"


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--calls", type=int, default=200)
    args = ap.parse_args()
    subprocess.run(["sh", "-c", SETUP], check=True)
    nftlog.put(nftlog.matches({4: ipaddress.ip_network("169.254.169.254/32")}, [], ["docker+"], guard=True))
    rec = Recorder()
    assert rec.listen()
    rec.table_packets()  # counting starts now
    listener = rec.listener
    assert listener is not None
    sel = selectors.DefaultSelector()
    sel.register(listener.fileno(), selectors.EVENT_READ)
    flood = subprocess.Popen(["ip", "netns", "exec", "a", sys.executable, "-c", FLOOD, str(args.seconds)],
                             stdout=subprocess.PIPE, text=True)
    c0, t0 = cpu(), time.monotonic()
    once_at = t0 + args.seconds / 2
    once: subprocess.Popen[bytes] | None = None
    while flood.poll() is None:
        if once is None and time.monotonic() >= once_at:
            once = subprocess.Popen(["ip", "netns", "exec", "b", sys.executable, "-c", ONCE])
        if sel.select(0.5):
            rec.read()
    rec.read()
    c1, t1 = cpu(), time.monotonic()
    sent = int((flood.stdout.read() if flood.stdout else "0").strip() or 0)
    if once is not None:
        once.wait()
    rec.read()
    attempts = rec.tally.flush()
    by_source = {a.source: a.count for a in attempts}
    table = rec.table_packets()
    t2 = time.perf_counter()
    for _ in range(args.calls):
        rec.refresh()
        rec.status()
        rec.metrics_lines()
    per_beat = (time.perf_counter() - t2) / args.calls
    result = {
        "flood_seconds": round(t1 - t0, 2), "flood_connects": sent, "table_packets": table,
        "logged": sum(by_source.values()), "logged_by_source": by_source,
        "listener_cpu_share_of_a_core_during_flood": round((c1 - c0) / (t1 - t0), 4),
        "second_source_counted": by_source.get("10.9.0.3", 0),
        "per_heartbeat_ms": round(per_beat * 1000, 3),
        "idle_share_of_a_core_at_5s_interval": round(per_beat / 5.0, 6),
    }
    print(json.dumps(result, indent=2))
    nftlog.delete()
    return 0 if result["second_source_counted"] >= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
