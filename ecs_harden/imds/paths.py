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
    loaded = ip_objects(done)
    if loaded is None:
        raise RuntimeFailure(f"`ip -j {' '.join(args)}` gave no list: {done.stderr.strip()[:200]}")
    return loaded


def ip_objects(done: proc.Completed) -> list[dict[str, Any]] | None:
    """What `ip -j` printed, as a list of objects; None when it printed no list."""
    try:
        # strict=False: `ip -j` prints a control byte of an alias or name as it is
        loaded = json.loads(done.stdout, strict=False) if done.returncode == 0 else None
    except ValueError:
        return None
    return [x for x in loaded if isinstance(x, dict)] if isinstance(loaded, list) else None


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


@dataclass(frozen=True)
class Scan:
    """What one scan found: the bypassing links, the namespaces whose listing could not
    be read (named: never taken as empty), and how many were not looked at yet (the
    budget ran out: the next scan starts with them)."""

    bypasses: tuple[Bypass, ...] = ()
    unreadable: tuple[str, ...] = ()
    unseen: int = 0


class NamespaceScanner:
    """Looks into each network namespace but the host's for bypassing links: BATCH at a
    time (one `nsenter` + `ip` each), at most BUDGET_COUNT namespaces and BUDGET_SECONDS
    a scan, the never-seen first, then the longest unseen. A namespace already looked at
    is looked at again only after RESCAN seconds; one whose listing failed, at the next
    scan. A user with thousands of namespaces delays the full picture by a few scans,
    never a reconcile or the daemon's watchdog (the scan runs beside the loop)."""

    BATCH = 16
    BUDGET_COUNT = 1000
    BUDGET_SECONDS = 5.0

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

    def scan(self, host_names: dict[int, str]) -> Scan:
        start = self.clock()
        current = self.namespaces()
        self._seen = {k: v for k, v in self._seen.items() if k in current}
        due = sorted((ino for ino in current
                      if ino not in self._seen or start - self._seen[ino][0] >= RESCAN),
                     key=lambda ino: (ino in self._seen, self._seen.get(ino, (0.0, []))[0]))
        unreadable: list[str] = []
        looked = 0
        while due[looked:] and looked < self.BUDGET_COUNT and self.clock() - start < self.BUDGET_SECONDS:
            batch = due[looked:looked + min(self.BATCH, self.BUDGET_COUNT - looked)]
            looked += len(batch)
            pids = [current[ino] for ino in batch]
            argvs = [["nsenter", f"--net={self.proc}/{pid}/ns/net", "--", "ip", "-j", "-d", "link", "show"]
                     for pid in pids]
            for ino, pid, done in zip(batch, pids, proc.run_many(argvs, timeout=5)):
                found = self._bypasses(pid, done, host_names)
                if found is not None:
                    self._seen[ino] = (self.clock(), found)
                elif self._same_namespace(pid, ino):  # not a container that just exited
                    unreadable.append(f"pid {pid} ({container_of(self.proc, pid)})")
        bypasses = [b for _, found in self._seen.values() for b in found]
        unseen = sum(1 for ino in due[looked:] if ino not in self._seen)
        return Scan(tuple(sorted(bypasses, key=lambda b: (b.pid, b.interface))), tuple(unreadable), unseen)

    def _same_namespace(self, pid: int, ino: int) -> bool:
        try:
            return os.stat(os.path.join(self.proc, str(pid), "ns", "net")).st_ino == ino
        except OSError:
            return False

    def _bypasses(self, pid: int, done: proc.Completed, host_names: dict[int, str]) -> list[Bypass] | None:
        """The bypassing links of one listing; None when it could not be read."""
        loaded = ip_objects(done)
        if loaded is None:
            return None
        out = []
        for link in loaded:
            kind = kind_of(link)
            if kind not in BYPASS_KINDS or "link_netnsid" not in link:
                continue  # a child of a link in its own namespace stays behind that namespace
            index = link.get("link_index")
            parent = host_names.get(index, f"ifindex {index}") if isinstance(index, int) else "?"
            name = link.get("ifname")
            out.append(Bypass(pid, container_of(self.proc, pid), shown(name), str(kind), parent))
        return out


def shown(value: object) -> str:
    """A name from someone else's namespace, as a report line may hold it: control
    characters escaped, at most 64 characters."""
    text = value if isinstance(value, str) else repr(value)
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)[:64]


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
          exceptions: Sequence[str], guard: bool, scan: Scan | None = None) -> Finding:
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
    unsure = []
    if scan is not None and scan.unreadable:
        unsure.append(f"{len(scan.unreadable)} network namespace(s) could not be listed, so a macvlan/ipvlan "
                      f"child there would not be seen: {', '.join(scan.unreadable[:5])}"
                      + (" ..." if len(scan.unreadable) > 5 else ""))
    if scan is not None and scan.unseen:
        unsure.append(f"{scan.unseen} network namespace(s) not looked at yet (the scan's budget of "
                      f"{NamespaceScanner.BUDGET_COUNT} namespaces and {NamespaceScanner.BUDGET_SECONDS:g} s "
                      "ran out: the next scans go on with them)")
    if problems:
        return Finding(CHECK, DRIFT, expected, actual, "; ".join(problems + unsure))
    if unsure:
        return Finding(CHECK, WARN, expected, actual, "; ".join(unsure))
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

    def inspect(self) -> Inspection[dict[str, str]]:
        try:
            host = self.host_links()
        except RuntimeFailure as exc:
            return Inspection((Finding(CHECK, WARN, detail=f"cannot list the host's interfaces: {exc}; "
                                       "which interfaces carry container traffic is unknown"),))
        interfaces = container_interfaces(host, self.uplink(self.imds))
        scan = self.scanner.scan(ifindexes(host))
        findings = [judge(interfaces, scan.bypasses, self.patterns, self.exceptions, self.guard, scan)]
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

    def execute(self, inspection: Inspection[dict[str, str]]) -> None:
        if inspection.plan is not None:
            write_json_state(self.since_file, inspection.plan)
