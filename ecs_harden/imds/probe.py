"""imds.probe: proof on the real host, not rules. From a throwaway network namespace
attached like a container to each bridge (a veth on it: no image, no Docker API), and
under imds.host_network: block from a process in the task cgroup, a TCP connect to IMDS
(v4, v6) must fail and one to the credentials endpoint must succeed. Nothing beyond the
connect is ever sent.

A bridge's namespace belongs to one thread of our own process (probe_netns: no
interpreter is started for it, never bind-mounted): when the thread ends, or the
process is killed, the kernel takes the namespace and the veth pair with it. The task
cgroup's probe is a child process (a cgroup holds processes), killed with us
(PR_SET_PDEATHSIG).

"Blocked" means one of our DROP rules took the probe's packets: our DROP is silent, so
no answer alone proves nothing (loss, delay, a dead route look the same). The packet
counters of our DROP rules where the probe's packets meet them first (raw PREROUTING
for the bridges, filter OUTPUT for the task cgroup) are read before and after; a path
that got no answer counts as blocked only when they moved by at least the packets the
probe sent there. Otherwise the probe tries once more, and then says it cannot tell
(`warn`). A container trying IMDS at the same moment can only add to the counters:
then a DROP of ours is demonstrably taking traffic to IMDS at that moment.

One probe at a time per host: the gate never probes, and `check`, `apply` and the
daemon take the probe lock (an flock next to the reconcile lock) around a whole run,
its clean-up of leftovers included, so none deletes another's veths in flight. `check`
reuses the daemon's probe when it is recent (saying so); `check --fresh` probes now.

The probe's address is one no container decides: the highest of the bridge's subnet
(Docker allocates from the bottom) that Docker has not given a running container (its
API), that is not in the bridge's neighbour table as in use (reachable, being probed,
permanent: a container's gratuitous ARPs only make stale entries, which do not count),
and that nobody answers an ARP probe (RFC 5227, from the probe's own namespace) for at
probe time. Docker's own NAT treats it as a container's.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import ipaddress
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Tuple, Union

from ecs_harden import lock, proc
from ecs_harden.attempts import own
from ecs_harden.component import PATHS, Base, Inspection
from ecs_harden.errors import RuntimeFailure
from ecs_harden.firewall.evaluate import iface_covers
from ecs_harden.firewall.xtables_cli import WAIT_SECONDS, XtablesCli
from ecs_harden.imds import probe_child
from ecs_harden.imds.dockerview import container_addresses
from ecs_harden.imds.hostnet import CGROUP_ROOT, TASK_SLICE, cgroup_v2
from ecs_harden.imds.paths import ip_json
from ecs_harden.imds.probe_netns import STEP_TIMEOUT, NetnsProbe, ip_batch
from ecs_harden.report import DRIFT, OK, WARN, Finding
from ecs_harden.statusfile import observed_age, read_status

CHECK = "imds.probe"
PREFIX, PEER = "ecsh-p", "ecsh-q"
CGROUP_DIR = "ecs-harden-probe"
CREDENTIALS = ("169.254.170.2", 80)
CANDIDATES = 8  # addresses offered to the child's ARP check, best first
TRIES = 4096  # addresses looked at below the top of a subnet
# neighbour states of an address in use; STALE, FAILED, INCOMPLETE are anyone's to make
IN_USE = {"REACHABLE", "DELAY", "PROBE", "PERMANENT", "NOARP"}
DAD_WAIT = 3.0  # Duplicate Address Detection takes 1-2 s (a random delay, then one probe)
EVERY = 300.0  # the daemon's probe: at most this often while the bridges stay the same
ATTEMPTS = 2  # a path with no answer and no count is probed this many times in all
OURS = ("ecs-harden: block IMDS",)  # the comments of our DROP rules (containers, every interface, tasks)
_COUNT = re.compile(r" -c (\d+) \d+")
LOCK_TIMEOUT = 20.0  # a probe takes about a second; two are never queued behind a third for long
CHILD = os.path.abspath(probe_child.__file__)
Iface = Union[ipaddress.IPv4Interface, ipaddress.IPv6Interface]


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def bridges(tentative_out: set[str] | None = None) -> dict[str, dict[int, Iface]]:
    """Bridge -> its IPv4 address and its first global IPv6 address (with prefix); the
    bridges whose IPv6 address is still tentative are added to tentative_out."""
    out: dict[str, dict[int, Iface]] = {}
    for link in ip_json("addr", "show", "type", "bridge"):
        name = link.get("ifname")
        if not isinstance(name, str) or "UP" not in (link.get("flags") or []):
            continue  # administratively down: nothing passes it
        found: dict[int, Iface] = {}
        for a in link.get("addr_info") or []:
            if a.get("scope") != "global" or "local" not in a:
                continue
            if a.get("dadfailed"):
                continue  # never usable
            iface = ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}")
            first = found.setdefault(iface.version, iface) == iface
            if first and a.get("tentative") and tentative_out is not None:
                tentative_out.add(name)
        out[name] = found
    return out


def tentative(bridge: str) -> bool:
    return any(a.get("tentative") and a.get("scope") == "global"
               for link in ip_json("-6", "addr", "show", "dev", bridge) for a in link.get("addr_info") or [])


def settled(names: Sequence[str], wait: float = DAD_WAIT) -> None:
    """Wait (at most `wait`) until no bridge's global IPv6 address is tentative: on a
    bridge with no port, Duplicate Address Detection starts only when the probe's veth
    gives it a carrier, and until it ends the bridge answers no neighbour solicitation
    (a container's IPv6 could not leave either: the probe would only see silence)."""
    deadline = time.monotonic() + wait
    pending = [n for n in names if tentative(n)]
    while pending and time.monotonic() < deadline:
        time.sleep(0.1)
        pending = [n for n in pending if tentative(n)]


def pick(own: Iface, taken: set[str], tries: int = TRIES, count: int = CANDIDATES) -> list[str]:
    """The highest free addresses of own's network, best first, as address/prefix."""
    net = own.network
    top = int(net.broadcast_address) - (1 if own.version == 4 else 0)
    out: list[str] = []
    for n in range(top, max(top - tries, int(net.network_address)), -1):
        candidate = ipaddress.ip_address(n)
        if candidate != own.ip and str(candidate) not in taken:
            out.append(f"{candidate}/{net.prefixlen}")
            if len(out) == count:
                break
    return out


def in_use(neighbours: Sequence[dict[str, Any]]) -> set[str]:
    """The addresses of neighbour entries in a state that says somebody has them."""
    return {str(x.get("dst")) for x in neighbours
            if isinstance(x, dict) and IN_USE & set(x.get("state") or [])}


TASK_CGROUP = "the task cgroup"


def first_drop(family: int, where: str) -> tuple[int, str, str]:
    """Where a probe's packet meets our DROP rules first: raw PREROUTING from a bridge
    (the guard, the docker+ copy), filter OUTPUT from the task cgroup."""
    return (family, "filter", "OUTPUT") if where == TASK_CGROUP else (family, "raw", "PREROUTING")


def drop_counts(places: Sequence[tuple[int, str, str]]) -> dict[tuple[int, str, str], int]:
    """Packets our DROP rules have taken, per (family, table, chain); a place that cannot
    be read is left out (nothing it took can then be counted)."""
    argvs = [[XtablesCli(f).binary, "-w", WAIT_SECONDS, "-t", table, "-v", "-S", chain]
             for f, table, chain in places]
    out: dict[tuple[int, str, str], int] = {}
    for place, done in zip(places, proc.run_many(argvs, timeout=15)):
        if done.returncode != 0:
            continue
        out[place] = sum(int(m.group(1)) for line in done.stdout.splitlines()
                         if line.startswith("-A ") and line.rstrip().endswith("-j DROP")
                         and any(c in line for c in OURS) and (m := _COUNT.search(line)))
    return out


def probe_lock_path() -> str:
    """Beside the reconcile lock (its directory's checks, its test override)."""
    return os.path.join(os.path.dirname(lock.default_path()), "probe.lock")


def leftovers() -> None:
    """Host ends named like ours: only an older version, killed midway, leaves one (a pair
    made from a thread's namespace goes with it)."""
    for link in ip_json("link", "show"):
        name = link.get("ifname")
        if isinstance(name, str) and name.startswith(PREFIX):
            proc.run(["ip", "link", "del", name], check=False, timeout=5)


@dataclass
class Child:
    """The task cgroup's probe: a process (a cgroup holds processes, not threads), started,
    told what to do, read."""

    argv: Sequence[str]
    popen: subprocess.Popen[str] | None = None

    def start(self) -> int:
        self.popen = subprocess.Popen(
            list(self.argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, preexec_fn=_die_with_parent, close_fds=True, env=proc.child_env())
        if self._line() != "ready":
            raise RuntimeFailure("the probe's child did not start")
        return self.popen.pid

    def _line(self, timeout: float = STEP_TIMEOUT) -> str:
        assert self.popen is not None and self.popen.stdout is not None
        ready, _, _ = select.select([self.popen.stdout], [], [], timeout)
        return self.popen.stdout.readline().strip() if ready else ""

    def send(self, cfg: dict[str, Any]) -> None:
        assert self.popen is not None and self.popen.stdin is not None
        self.popen.stdin.write(json.dumps(cfg) + "\n")
        self.popen.stdin.flush()

    def read(self) -> dict[str, Any]:
        line = self._line()
        try:
            loaded = json.loads(line) if line else {"error": "the probe's child gave no answer"}
        except ValueError:
            loaded = {"error": f"the probe's child said {line[:100]!r}"}
        return loaded if isinstance(loaded, dict) else {"error": "bad answer"}

    def stop(self) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()
        for pipe in (self.popen.stdin, self.popen.stdout):
            if pipe is not None:
                pipe.close()


@dataclass(frozen=True)
class Path_:
    where: str  # "docker0", TASK_CGROUP
    outcomes: dict[str, str]
    error: str | None = None
    addresses: tuple[str, ...] = ()  # the probe's own, as chosen in its namespace


def _path(where: str, answer: dict[str, Any]) -> Path_:
    chosen = answer.get("addresses")
    chosen = chosen.values() if isinstance(chosen, dict) else ()
    return Path_(where, answer.get("outcomes") or {}, answer.get("error"),
                 tuple(str(a).split("/")[0] for a in chosen))


Place = Tuple[int, str, str]
_cleaned = False  # leftovers of an older version looked for, once a process


class Prober:
    """Runs the probes: every bridge's (a thread's namespace) and the task cgroup's (a
    child process) side by side."""

    def __init__(self, imds: dict[int, str], *, task_cgroup: bool, cgroup_root: str = CGROUP_ROOT):
        self.imds = imds
        self.task_cgroup = task_cgroup
        self.cgroup_root = cgroup_root
        self._allocated: set[str] | None = None
        self._tentative: set[str] = set()

    def allocated(self) -> set[str]:
        """Docker's containers' addresses, asked once a run (none when Docker is down)."""
        if self._allocated is None:
            self._allocated = container_addresses() or set()
        return self._allocated

    def run(self) -> list[Path_]:
        with lock.ReconcileLock(probe_lock_path(), timeout=LOCK_TIMEOUT):
            return self._run()

    def _run(self) -> list[Path_]:
        global _cleaned
        self._allocated = None
        if not _cleaned:
            leftovers()
            _cleaned = True
        self._tentative = set()
        found = bridges(self._tentative)
        done: dict[str, Path_] = {}
        for attempt in range(ATTEMPTS):
            judged = self._once(found, skip=set(done))
            for p in judged:
                if not _undecided(p) or attempt == ATTEMPTS - 1:
                    done[p.where] = p
            if not any(_undecided(p) for p in judged):
                break
        return sorted(done.values(), key=lambda p: p.where)

    def _once(self, found: dict[str, dict[int, Iface]], skip: set[str]) -> list[Path_]:
        """One probe of every path not in skip, judged by the counters of our DROP rules."""
        threads: list[tuple[str, NetnsProbe]] = []
        paths: list[Path_] = []
        child: Child | None = None
        cleanup: Callable[[], None] | None = None
        try:
            for n, (bridge, addrs) in enumerate(sorted(found.items())):
                if 4 not in addrs or bridge in skip:
                    continue  # no address to be a container of (an L2-only bridge), or decided
                try:
                    threads.append((bridge, self._bridge(n, bridge, addrs)))
                except RuntimeFailure as exc:
                    paths.append(Path_(bridge, {}, str(exc)))
            for _, t in threads:
                t.start()
            made = [(bridge, t) for bridge, t in threads if t.made()]
            if made:
                ip_batch([f"link set {t.host} master {bridge} up" for bridge, t in made])
                settled([bridge for bridge, t in made if "v6" in t.cfg and bridge in self._tentative])
            cg_cfg: dict[str, Any] | None = None
            if self.task_cgroup and TASK_CGROUP not in skip:
                try:
                    child, cg_cfg, cleanup = self._cgroup()
                except (RuntimeFailure, OSError) as exc:
                    paths.append(Path_(TASK_CGROUP, {}, str(exc)))
            places = self._places([(b, t.cfg) for b, t in made] + ([(TASK_CGROUP, cg_cfg)] if cg_cfg else []))
            before = drop_counts(places)
            # the candidates' connects are ours, not a container's attempts (attempts.own)
            mine = [str(a).split("/")[0] for _, t in threads for f in ("v4", "v6")
                    for a in t.cfg.get(f, {}).get("candidates", ())]
            with own.probing(mine + ([own.CGROUP] if cg_cfg else [])):
                for _, t in threads:
                    t.go()
                if child is not None and cg_cfg is not None:
                    child.send(cg_cfg)
                answers = [_path(TASK_CGROUP, child.read())] if child is not None else []
                for bridge, t in threads:
                    t.join(STEP_TIMEOUT)
                    answers.append(_path(bridge, t.result))
                after = drop_counts(places)
        finally:
            for _, t in threads:
                t.go()  # a thread still waiting ends now
            if threads:
                ip_batch([f"link del {t.host}" for _, t in threads], force=True)
            if child is not None:
                child.stop()
            if cleanup is not None:
                cleanup()
        return paths + self._account(answers, before, after)

    def _places(self, cfgs: Sequence[tuple[str, dict[str, Any]]]) -> list[Place]:
        """Where the probe's packets meet our DROP rules first."""
        out: list[Place] = []
        for where, cfg in cfgs:
            for family in self.imds:
                place = first_drop(family, where)
                if (cfg.get("iface") is None or f"v{family}" in cfg) and place not in out:
                    out.append(place)
        return out

    def _account(self, answers: list[Path_], before: dict[Place, int],
                 after: dict[Place, int]) -> list[Path_]:
        """Each IMDS target that got no answer becomes "dropped" when our DROP rules where
        it went counted at least as many packets as were sent there without an answer,
        else "no answer (...)": the path is undecided."""
        silent: list[tuple[int, Path_, str, Place]] = []
        sent: dict[Place, int] = {}
        for i, p in enumerate(answers):
            for family, address in self.imds.items():
                key = f"{address}:80"
                if p.error is None and p.outcomes.get(key) not in (None, "connected"):
                    place = first_drop(family, p.where)
                    silent.append((i, p, key, place))
                    sent[place] = sent.get(place, 0) + 1
        took = {place: place in before and place in after and after[place] - before[place] >= n
                for place, n in sent.items()}
        outcomes = [dict(p.outcomes) for p in answers]
        for i, p, key, place in silent:
            outcomes[i][key] = "dropped" if took[place] else f"no answer ({p.outcomes[key]})"
        return [Path_(p.where, o, p.error, p.addresses) for p, o in zip(answers, outcomes)]

    def _bridge(self, n: int, bridge: str, addrs: dict[int, Iface]) -> NetnsProbe:
        taken = in_use(ip_json("neigh", "show", "dev", bridge)) | self.allocated()
        cfg: dict[str, Any] = {"iface": f"{PEER}{n}", "targets": [[*CREDENTIALS]]}
        for family in (4, 6):
            own = addrs.get(family)
            candidates = pick(own, taken) if own is not None else []
            if own is not None and candidates and family in self.imds:
                cfg[f"v{family}"] = {"candidates": candidates, "gateway": str(own.ip)}
                cfg["targets"].append([self.imds[family], 80])
        if "v4" not in cfg:
            raise RuntimeFailure(f"no free address on {bridge}")
        return NetnsProbe(f"{PREFIX}{n}", f"{PEER}{n}", cfg)

    def _cgroup(self) -> tuple[Child, dict[str, Any], Callable[[], None]]:
        path = os.path.join(self.cgroup_root, TASK_SLICE, CGROUP_DIR)
        os.makedirs(path, exist_ok=True)
        child = Child([sys.executable, "-I", "-S", CHILD])

        def cleanup() -> None:
            with contextlib.suppress(OSError):
                os.rmdir(path)

        try:
            pid = child.start()
            with open(os.path.join(path, "cgroup.procs"), "w") as fh:
                fh.write(str(pid))
        except BaseException:
            child.stop()
            cleanup()
            raise
        return child, {"iface": None, "targets": [[a, 80] for a in self.imds.values()]}, cleanup


def _undecided(p: Path_) -> bool:
    return any(str(v).startswith("no answer") for v in p.outcomes.values())


def judge(paths: Sequence[Path_], imds: dict[int, str], exceptions: Sequence[str] = ()) -> Finding:
    expected = (f"from each bridge, a connect to {' and '.join(imds.values())} fails and one to "
                f"{CREDENTIALS[0]} succeeds")
    reached: list[str] = []
    unsure: list[str] = []
    states: list[str] = []
    for p in paths:
        if p.error:
            unsure.append(f"{p.where}: the probe could not run ({p.error})")
            states.append(f"{p.where}: not probed")
            continue
        got = [a for a in imds.values() if p.outcomes.get(f"{a}:80") == "connected"]
        silent = {a: p.outcomes.get(f"{a}:80") for a in imds.values()
                  if p.outcomes.get(f"{a}:80") not in (None, "connected", "dropped")}
        creds = p.outcomes.get(f"{CREDENTIALS[0]}:{CREDENTIALS[1]}")
        declared = any(iface_covers(e, p.where) for e in exceptions)
        if got and not declared:
            reached.append(f"from {p.where} a connection to {', '.join(got)} was accepted")
        if silent and not declared:
            what = ", ".join(f"{a}: {v}" for a, v in silent.items())
            unsure.append(f"from {p.where} {what}, and no DROP rule of ours counted the probe's packets: "
                          "loss, delay or a dead route look the same, so the block is not proven from there")
        if creds is not None and creds != "connected" and p.where != TASK_CGROUP:
            unsure.append(f"from {p.where} the credentials endpoint did not answer ({creds}): the "
                          "probe's path may be broken (is the ECS agent up?), so its IMDS result proves less")
        seen = (("reached (declared exception)" if declared else "REACHED") if got
                else "undecided" if silent else "blocked")
        source = f" (from {', '.join(p.addresses)})" if p.addresses else ""
        creds_seen = "" if creds is None else f", credentials {creds}"
        states.append(f"{p.where}: IMDS {seen}{creds_seen}{source}")
    actual = "; ".join(states) if states else "no bridge with an address to probe"
    if reached:
        return Finding(CHECK, DRIFT, expected, actual,
                       "; ".join(reached) + ": IMDS is reachable whatever the ruleset says (nftables rules "
                       "of another tool, Docker's nftables backend, a bridge not seen?)")
    if unsure:
        return Finding(CHECK, WARN, expected, actual, "; ".join(unsure))
    return Finding(CHECK, OK, expected, actual,
                   "proved from each bridge: its connects to IMDS were taken by a DROP rule of ours, the "
                   "credentials endpoint answered" if paths else "no bridge to probe yet")


class ProbeComponent(Base):
    """imds.probe. every > 0 (the daemon): a result is kept that long while the bridges
    and their addresses stay the same (one `ip` a resync), and the probe runs again at
    once when they change; every = 0 (`apply`, `check --fresh`): it runs every time."""

    wakes_on = PATHS
    name = CHECK
    slow = True

    def __init__(self, imds: dict[int, str], *, task_cgroup: Callable[[], bool],
                 exceptions: Sequence[str] = (),
                 prober: Callable[[bool], Sequence[Path_]] | None = None,
                 recent: Callable[[], Finding | None] | None = None,
                 every: float = 0.0, clock: Callable[[], float] = time.monotonic,
                 layout: Callable[[], object] = lambda: bridges()):
        self.imds = imds
        self.recent = recent
        self.exceptions = tuple(exceptions)
        self.task_cgroup = task_cgroup
        self.prober = prober or (lambda cg: Prober(self.imds, task_cgroup=cg).run())
        self.every, self.clock, self.layout = every, clock, layout
        self._kept: tuple[float, object, Finding] | None = None

    def inspect(self) -> Inspection[None]:
        reused = self.recent() if self.recent is not None else None
        if reused is not None:
            return Inspection((reused,))
        cg = self.task_cgroup()
        try:
            key = (self.layout(), cg) if self.every > 0 else None
        except (RuntimeFailure, OSError):
            key = None
        if self._kept is not None and key is not None:
            at, kept_key, finding = self._kept
            if kept_key == key and self.clock() - at < self.every:
                return Inspection((finding,))
        try:
            paths = self.prober(cg)
        except (RuntimeFailure, OSError) as exc:
            self._kept = None
            return Inspection((Finding(CHECK, WARN, detail=f"the probe could not run: {exc}"),))
        found = judge(paths, self.imds, self.exceptions)
        if key is not None and found.status in (OK, DRIFT):
            stamp = time.strftime("%H:%M:%SZ", time.gmtime())
            found = dataclasses.replace(found, detail=f"{found.detail} (probed at {stamp}; again within "
                                                      f"{self.every:g}s, at once when a bridge changes)")
            self._kept = (self.clock(), key, found)
        else:
            self._kept = None  # undecided or not run: probed again at the next look
        return Inspection((found,))

    def execute(self, inspection: Inspection[None]) -> None:
        return None


def task_cgroup_probed(mode: str, cgroup_root: str = CGROUP_ROOT) -> bool:
    return mode == "block" and cgroup_v2(cgroup_root) and os.path.isdir(os.path.join(cgroup_root, TASK_SLICE))


def daemon_probe(status_file: str, *, within: float) -> Finding | None:
    """The running daemon's imds.probe finding when it looked no more than `within`
    seconds ago, its detail saying whose and when; None otherwise (no daemon, an old or
    unreadable status file, a probe it could not run)."""
    try:
        data, age = read_status(status_file)
    except (OSError, ValueError):
        return None
    if age > within:
        return None  # no heartbeat: no daemon
    for f in data.get("findings") or []:
        if not isinstance(f, dict) or f.get("check") != CHECK or f.get("status") not in (OK, DRIFT):
            continue
        seen = observed_age(f)
        if seen is None or seen > within:
            return None
        whose = f"(the daemon's probe, {seen:.0f}s ago; `check --fresh` probes now)"
        return Finding(CHECK, str(f["status"]), str(f.get("expected", "")), str(f.get("actual", "")),
                       f"{f.get('detail', '')} {whose}")
    return None
