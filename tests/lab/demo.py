"""The demo behind ./demo: before/after, through a dockerd restart, as a small table."""

from __future__ import annotations

import argparse
import sys
import time

from tests.lab.host import CREDS, IMDS_V4, IMDS_V6, EcsHost


def _row(host: EcsHost, step: str) -> list[str]:
    def mark(reached: bool) -> str:
        return "reached" if reached else "blocked"

    return [
        step,
        mark(host.reaches(IMDS_V4)),
        mark(host.reaches(IMDS_V6)),
        mark(host.reaches(CREDS)),
        mark(host.host_reaches_imds(IMDS_V4)),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--variant", choices=("nft", "legacy"), default="nft")
    args = ap.parse_args(argv)
    print(f"Building the lab ({args.variant} iptables, Docker, fake IMDS, fake ECS credentials)...")
    t0 = time.monotonic()
    rows = [["", "container->IMDS v4", "container->IMDS v6", "container->creds", "host->IMDS"]]
    with EcsHost(args.variant) as host:
        host.policy()
        print(f"  ready in {time.monotonic() - t0:.1f}s; every probe is a real container.\n")
        rows.append(_row(host, "before ecs-harden"))
        print("$ ecs-harden check")
        print(host.harden("--log-level", "error", "check").stdout)
        print("$ ecs-harden apply")
        print(host.harden("--log-level", "error", "apply").stdout)
        rows.append(_row(host, "after ecs-harden apply"))
        host.restart_docker()
        rows.append(_row(host, "after dockerd restart"))
        print("$ iptables -S FORWARD | head -3   (after the restart: Docker is on top again)")
        print("\n".join(host.sandbox.rules("FORWARD")[:3]))
        print("$ iptables -S DOCKER-USER")
        print("\n".join(host.sandbox.rules("DOCKER-USER")) + "\n")
        code = host.harden("check").returncode
        rows.append(["ecs-harden check after restart", f"exit {code}", "", "", ""])
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
