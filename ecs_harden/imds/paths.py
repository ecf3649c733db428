"""imds.paths and imds.exceptions: every interface that carries container traffic is blocked
or a declared exception; macvlan/ipvlan children of the uplink, which bypass the host's
netfilter altogether, are found in the containers' namespaces and named.

Container-carrying interfaces: every bridge, and every veth that is no bridge's port (a
routed task, as CNI's ptp plugin wires it), but the one the host reaches IMDS through.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ecs_harden import proc
from ecs_harden.atomic import read_json_state, write_json_state
from ecs_harden.component import PATHS, Base, Inspection
from ecs_harden.errors import RuntimeFailure
from ecs_harden.firewall.evaluate import iface_covers
from ecs_harden.imds.netns import PROC, process_namespaces
from ecs_harden.journal import utc_now
from ecs_harden.report import DRIFT, OK, WARN, Finding

CHECK, EXCEPTIONS = "imds.paths", "imds.exceptions"
BYPASS_KINDS = ("macvlan", "macvtap", "ipvlan", "ipvtap")
RESCAN = 60.0  # a namespace already looked at is looked at again after this long
_CONTAINER_ID = re.compile(r"([0-9a-f]{64})")


def ip_json(*args: str, prefix: Sequence[str] = ()) -> list[dict[str, Any]]:
    """`ip -j ARGS` (in a namespace with prefix) as a list of objects. RuntimeFailure when
    it gives none (an iproute2 without -j, a namespace gone): never an empty answer that
    would read as "nothing there"."""
    argv = [*prefix, "ip", "-j", *args]
    done = proc.run(argv, check=False, timeout=5)
    try:
        # strict=False: `ip -j` prints a control byte of an alias or name as it is
        loaded = json.loads(done.stdout, strict=False) if done.returncode == 0 else None
    except ValueError:
        loaded = None
    if not isinstance(loaded, list):
        raise RuntimeFailure(f"`ip -j {' '.join(args)}` gave no list: {done.stderr.strip()[:200]}")
    return [x for x in loaded if isinstance(x, dict)]


def links(argv_prefix: Sequence[str] = ()) -> list[dict[str, Any]]:
    """`ip -d -j link show` (in a namespace with argv_prefix): every link with its kind."""
    return ip_json("-d", "link", "show", prefix=argv_prefix)


def kind_of(link: dict[str, Any]) -> str | None:
    info = link.get("linkinfo")
    kind = info.get("info_kind") if isinstance(info, dict) else None
    return kind if isinstance(kind, str) else None


def container_interfaces(host_links: Sequence[dict[str, Any]], uplink: str | None = None) -> list[str]:
    """Bridges, and veths that are no bridge's port, but the way to IMDS (uplink) and lo."""
    out = []
    for link in host_links:
        name = link.get("ifname")
        if not isinstance(name, str) or name in ("lo", uplink):
            continue
        kind = kind_of(link)
        if kind == "bridge" or (kind == "veth" and "master" not in link):
            out.append(name)
    return sorted(out)


def route_interface(address: str) -> str | None:
    """The interface the host sends to address through (`ip route get`), None if none."""
    done = proc.run(["ip", "route", "get", address], check=False, timeout=5)
    words = done.stdout.split()
    if done.returncode == 0 and "dev" in words and words.index("dev") + 1 < len(words):
        return words[words.index("dev") + 1]
    return None


@dataclass(frozen=True)
class Bypass:
    """A macvlan/ipvlan child in a container's namespace: it sends out of the parent
    directly, past every rule of the host."""

    pid: int
    container: str  # the container id from its cgroup, else "pid N"
    interface: str
    kind: str
    parent: str


class NamespaceScanner:
    """Looks into each network namespace but the host's for bypassing links; a namespace
    already seen is looked at again only after RESCAN seconds (one `ip` per namespace)."""

    def __init__(self, proc_dir: str = PROC, clock: Callable[[], float] = time.monotonic):
        self.proc = proc_dir
        self.clock = clock
        self._seen: dict[int, tuple[float, list[Bypass]]] = {}

    def namespaces(self) -> dict[int, int]:
        """Network namespace inode -> one pid in it, without the host's (our own)."""
        own, by_pid = process_namespaces(self.proc)
        out: dict[int, int] = {}
        for pid, ino in sorted(by_pid.items()):
            if own is not None and ino != own:
                out.setdefault(ino, pid)
        return out

    def scan(self, host_names: dict[int, str]) -> list[Bypass]:
        now = self.clock()
        found: list[Bypass] = []
        current = self.namespaces()
        for ino, pid in sorted(current.items()):
            seen = self._seen.get(ino)
            if seen is None or now - seen[0] >= RESCAN:
                seen = (now, self._look(pid, host_names))
                self._seen[ino] = seen
            found.extend(seen[1])
        self._seen = {k: v for k, v in self._seen.items() if k in current}
        return found

    def _look(self, pid: int, host_names: dict[int, str]) -> list[Bypass]:
        out = []
        try:
            found = links(["nsenter", f"--net={self.proc}/{pid}/ns/net", "--"])
        except RuntimeFailure:
            return []  # the namespace went away while we looked (a container that exited)
        for link in found:
            kind = kind_of(link)
            if kind not in BYPASS_KINDS or "link_netnsid" not in link:
                continue  # a child of a link in its own namespace stays behind that namespace
            index = link.get("link_index")
            parent = host_names.get(index, f"ifindex {index}") if isinstance(index, int) else "?"
            out.append(Bypass(pid, container_of(self.proc, pid), str(link.get("ifname")), str(kind), parent))
        return out


def container_of(proc_dir: str, pid: int) -> str:
    try:
        with open(os.path.join(proc_dir, str(pid), "cgroup")) as fh:
            m = _CONTAINER_ID.search(fh.read())
    except OSError:
        m = None
    return f"container {m.group(1)[:12]}" if m else f"pid {pid}"


def ifindexes(host_links: Sequence[dict[str, Any]]) -> dict[int, str]:
    out: dict[int, str] = {}
    for x in host_links:
        index, name = x.get("ifindex"), x.get("ifname")
        if isinstance(index, int) and isinstance(name, str):
            out[index] = name
    return out


def covered(name: str, patterns: Sequence[str]) -> str | None:
    return next((p for p in patterns if iface_covers(p, name)), None)


def judge(interfaces: Sequence[str], bypasses: Sequence[Bypass], patterns: Sequence[str],
          exceptions: Sequence[str], guard: bool) -> Finding:
    blocked_by = "the pattern(s) " + ", ".join(patterns)
    if guard:
        blocked_by += " and the guard of every interface"
    expected = f"every container interface is blocked ({blocked_by}) or a declared exception"
    states: list[str] = []
    open_: list[str] = []
    for name in interfaces:
        if covered(name, exceptions):
            states.append(f"{name}: declared exception")
        elif covered(name, patterns):
            states.append(f"{name}: blocked")
        elif guard:
            states.append(f"{name}: blocked by the guard")
        else:
            states.append(f"{name}: OPEN")
            open_.append(name)
    problems = []
    if open_:
        hint = " or ".join(sorted({"br-+" if n.startswith("br-") else n for n in open_}))
        problems.append(
            f"{', '.join(open_)} carr{'ies' if len(open_) == 1 else 'y'} container traffic that nothing "
            f"blocks: containers there reach IMDS; add {hint} to imds.interfaces, turn "
            "imds.guard_all_interfaces on, or declare it in imds.allow_interfaces")
    for b in bypasses:
        if covered(b.parent, exceptions):
            states.append(f"{b.container}: {b.kind} {b.interface} on {b.parent} (declared exception)")
            continue
        states.append(f"{b.container}: {b.kind} {b.interface} on {b.parent}: OPEN")
        problems.append(
            f"{b.container} has {b.kind} {b.interface}, a child of {b.parent}: its traffic leaves "
            f"{b.parent} past every netfilter rule of the host and reaches IMDS; no rule can close it "
            f"(use a bridge network, or declare {b.parent} in imds.allow_interfaces)")
    actual = "; ".join(states) if states else "no container interfaces"
    if problems:
        return Finding(CHECK, DRIFT, expected, actual, "; ".join(problems))
    return Finding(CHECK, OK, expected, actual, "every path from a container interface is closed or declared")


class PathsComponent(Base):
    wakes_on = PATHS
    name = "imds.paths"
    slow = True
    checks = (CHECK, EXCEPTIONS)

    def __init__(self, patterns: tuple[str, ...], exceptions: tuple[str, ...], guard: bool,
                 state_dir: str, imds: str = "169.254.169.254",
                 scanner: NamespaceScanner | None = None,
                 uplink: Callable[[str], str | None] = route_interface,
                 host_links: Callable[[], list[dict[str, Any]]] = links):
        self.patterns = patterns
        self.exceptions = exceptions
        self.guard = guard
        self.host_links = host_links
        self.imds = imds
        self.scanner = scanner or NamespaceScanner()
        self.uplink = uplink
        self.since_file = os.path.join(state_dir, "exceptions.json")

    def _since(self) -> dict[str, str]:
        return {k: v for k, v in read_json_state(self.since_file).items() if isinstance(v, str)}

    def inspect(self) -> Inspection:
        try:
            host = self.host_links()
        except RuntimeFailure as exc:
            return Inspection((Finding(CHECK, WARN, detail=f"cannot list the host's interfaces: {exc}; "
                                       "which interfaces carry container traffic is unknown"),))
        interfaces = container_interfaces(host, self.uplink(self.imds))
        bypasses = self.scanner.scan(ifindexes(host))
        findings = [judge(interfaces, bypasses, self.patterns, self.exceptions, self.guard)]
        since = self._since()
        wanted = {e: since.get(e) for e in self.exceptions}
        if self.exceptions:
            listed = []
            for e in self.exceptions:
                on = [n for n in interfaces if covered(n, (e,))]
                where = f" ({', '.join(on)})" if on and on != [e] else ""
                listed.append(f"{e}{where} since {wanted[e] or 'not yet recorded'}")
            findings.append(Finding(
                EXCEPTIONS, WARN, "no interface is let through to IMDS", "; ".join(listed),
                "declared in imds.allow_interfaces: containers on these interfaces reach IMDS "
                "and the instance role's credentials" + ("" if self.guard else
                                                         " (the guard of every interface is off)")))
        if set(since) != set(self.exceptions):  # a new exception, or a withdrawn one
            new = {e: v or utc_now() for e, v in wanted.items()}
            return Inspection(tuple(findings), ("record since when each exception is declared",),
                              frozenset(), new)
        return Inspection(tuple(findings))

    def execute(self, inspection: Inspection) -> None:
        if not isinstance(inspection.plan, dict):
            return
        write_json_state(self.since_file, inspection.plan)
