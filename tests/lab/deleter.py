"""Deletes every copy of the IPv4 block at random moments and times each repair; runs
inside a lab sandbox (`python -m tests.lab.deleter VARIANT COUNT MIN MAX [MARK]`)
beside a running daemon (MARK: what the rules to delete hold, ecs-harden's comment by
default). Shared by the daemon's lab test and bench/daemon_bench.py.

Every rule of ours to 169.254.169.254 in filter and raw goes in one `iptables-restore
--noflush` (another tool's flush looks like this), MIN-MAX seconds after the previous
deletion was repaired: the moment a daemon that mistakes its own repair for the steady
state is blind (issue 24). The repair's end is seen by a kernel event (nf_tables) or the
table signature (legacy), then confirmed with `iptables -C` of every copy, so the
watching costs the daemon nothing. Prints JSON: one object per deletion, `at` on
CLOCK_BOOTTIME (a container's /proc/uptime) just before the deletion began, and
`repaired`: seconds from its end to the repair's, null when it was
not repaired within LIMIT seconds.
"""

from __future__ import annotations

import json
import random
import select
import shlex
import subprocess
import sys
import time
from typing import Any

from ecs_harden.daemon.nftevents import NftEvents
from ecs_harden.firewall.tableinfo import TableProbe

IMDS = "169.254.169.254"
TABLES = ("filter", "raw")
LIMIT = 5.0


def copies(mark: str) -> dict[str, list[str]]:
    """table -> the rules to IMDS there holding `mark`, as `iptables-save` prints them
    (without `-A `)."""
    out: dict[str, list[str]] = {}
    for table in TABLES:
        text = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True, check=True).stdout
        found = [ln[3:] for ln in text.splitlines() if ln.startswith("-A ") and IMDS in ln and mark in ln]
        if found:
            out[table] = found
    return out


def present(rules: dict[str, list[str]]) -> bool:
    return all(subprocess.run(["iptables", "-w", "-t", table, "-C", *shlex.split(rule)],
                              capture_output=True).returncode == 0
               for table, found in rules.items() for rule in found)


def delete(rules: dict[str, list[str]]) -> None:
    script = "".join(f"*{t}\n" + "".join(f"-D {r}\n" for r in found) + "COMMIT\n"
                     for t, found in rules.items())
    subprocess.run(["iptables-restore", "-w", "--noflush"], input=script.encode(), check=True)


def main() -> int:
    variant, count, low, high = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    mark = sys.argv[5] if len(sys.argv) > 5 else "ecs-harden"
    rules = copies(mark)
    if mark == "ecs-harden" and set(rules) != set(TABLES):
        print(f"no copy of the block in some table: {rules}", file=sys.stderr)
        return 2
    events = NftEvents() if variant == "nft" else None
    probe = TableProbe((4,)) if variant == "legacy" else None
    out: list[dict[str, Any]] = []
    for _ in range(count):
        deadline = time.monotonic() + LIMIT
        while not present(rules) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not present(rules):
            break  # the last deletion was never repaired: nothing left to delete
        time.sleep(random.uniform(low, high))
        if events is not None:
            events.drain()
        at = time.clock_gettime(time.CLOCK_BOOTTIME)  # before: the first table goes before it returns
        delete(rules)
        t0 = time.monotonic()
        seen = probe.signature() if probe is not None else None
        repaired = None
        while time.monotonic() - t0 < LIMIT:
            if events is not None:
                if not select.select([events], [], [], 0.2)[0]:
                    continue
                t = time.monotonic()
                events.drain()
            else:
                assert probe is not None
                now = probe.signature()
                if now == seen:
                    time.sleep(0.0005)
                    continue
                t, seen = time.monotonic(), now
            if present(rules):
                repaired = t - t0
                break
        out.append({"at": at, "repaired": repaired})
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
