"""The inside of an imds.probe: run in a throwaway network namespace (`unshare --net`) or
in the task cgroup. Says `ready`, reads one JSON line (what to set up, where to connect),
sets up its end of the veth, opens every TCP connection at once (nothing is sent: a
connect only), prints one JSON line of outcomes, and exits, which takes the namespace
and the veth with it."""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import time
from typing import Any

# IMDS and the credentials endpoint answer a connect in milliseconds; a dropped SYN never.
CONNECT_TIMEOUT = 0.5


def set_up(cfg: dict[str, Any]) -> None:
    iface = cfg.get("iface")
    if not iface:
        return
    steps = [["ip", "link", "set", "lo", "up"], ["ip", "link", "set", iface, "up"]]
    for family in ("v4", "v6"):
        net = cfg.get(family)
        if net:
            v6 = family == "v6"
            steps.append(["ip", "addr", "add", net["address"], "dev", iface, *(["nodad"] if v6 else [])])
            steps.append(["ip", *(["-6"] if v6 else []), "route", "add", "default", "via", net["gateway"]])
    for argv in steps:
        subprocess.run(argv, check=True, capture_output=True, timeout=10)


def connect_all(targets: list[list[Any]], timeout: float = CONNECT_TIMEOUT) -> dict[str, str]:
    """Each [address, port] -> "connected", "refused", "timeout" or the error."""
    pending: dict[socket.socket, str] = {}
    out: dict[str, str] = {}
    for address, port in targets:
        key = f"{address}:{port}"
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex((address, int(port)))
        if err in (0,):
            out[key] = "connected"
            s.close()
        elif err in (115, 114):  # EINPROGRESS, EALREADY
            pending[s] = key
        else:
            out[key] = f"error {err}"
            s.close()
    deadline = time.monotonic() + timeout
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        _, writable, _ = select.select([], list(pending), [], left)
        for s in writable:
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            out[pending.pop(s)] = "connected" if err == 0 else ("refused" if err == 111 else f"error {err}")
            s.close()
    for s, key in pending.items():
        out[key] = "timeout"
        s.close()
    return out


def main() -> int:
    print("ready", flush=True)
    line = sys.stdin.readline()
    if not line:
        return 1
    cfg = json.loads(line)
    try:
        set_up(cfg)
    except (subprocess.SubprocessError, OSError) as exc:
        print(json.dumps({"error": f"setting up the probe's namespace failed: {exc}"}), flush=True)
        return 1
    print(json.dumps({"outcomes": connect_all(cfg["targets"])}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
