"""imds.host_network: host-network ECS task containers, found by their cgroup, and (mode
`block`) an OUTPUT rule that drops their traffic to IMDS.

A host-network container shares the host's network namespace: no FORWARD or PREROUTING
rule ever sees its packets, and the ECS agent (in system.slice, host network too) needs
IMDS. What tells them apart is the cgroup: the agent puts each task under
ecstasks.slice (cgroup v2) or /ecs (v1). `-m cgroup --path` resolves the path when the
rule is inserted and holds on to that cgroup: the rule is only ever inserted live (a
boot file naming a cgroup that does not exist yet would fail the whole restore), and
inserted again when systemd has made the slice afresh (its inode changed).

So that no task runs before the rule: under systemd, a missing ecstasks.slice is
started through systemd (`systemctl start`, never a mkdir behind its back) and the
rule bound to it before the daemon says it is ready, which is before ecs.service
starts (ecs-harden.service is ordered before it). The daemon watches the cgroup root
(daemon.sources.SliceSource): a slice removed is made again and a slice made afresh is
bound again at once, not at the next resync.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ecs_harden import proc
from ecs_harden.atomic import read_json_state, write_json_state
from ecs_harden.component import PATHS, Base, Inspection
from ecs_harden.errors import RuntimeFailure
from ecs_harden.firewall.backend import Backend, DeleteAt, Insert, Op, binary, describe
from ecs_harden.firewall.rule import Network, Rule
from ecs_harden.imds.block import leading_copies
from ecs_harden.imds.dockerview import (
    container_name,
    docker_root,
    host_network_task_containers,
    read_untrusted,
)
from ecs_harden.imds.netns import PROC, process_namespaces
from ecs_harden.report import DRIFT, OK, WARN, Finding

CHECK = "imds.host_network"
COMMENT = "ecs-harden: block IMDS from host-network ECS tasks"
CGROUP_ROOT = "/sys/fs/cgroup"
TASK_SLICE = "ecstasks.slice"
CHAIN = "OUTPUT"
_V2 = re.compile(r"^0::(?:/\.\.)*/ecstasks\.slice/ecstasks-([^/]+)\.slice/(?:.*?)([0-9a-f]{64})")
# Seen from another cgroup namespace (nsenter, a container) a path starts with "/..".
_V1 = re.compile(r":(?:/\.\.)*/ecs/([^/]+)/(?:.*?)([0-9a-f]{64})")


@dataclass(frozen=True)
class HostTask:
    container: str  # the full container id
    task: str
    name: str | None = None  # the ECS container name (or Docker's), when Docker's files say
    # In the task cgroups (ecstasks.slice, /ecs), where the cgroup rule can match it; a
    # task container Docker names but outside them (task limits off) cannot be covered.
    in_task_cgroup: bool = True

    def label(self) -> str:
        who = f"{self.name} ({self.container[:12]})" if self.name else f"container {self.container[:12]}"
        return f"{who} of task {self.task}" + ("" if self.in_task_cgroup else " (outside the task cgroups)")


def cgroup_v2(root: str = CGROUP_ROOT) -> bool:
    return os.path.exists(os.path.join(root, "cgroup.controllers"))


def systemd_booted() -> bool:
    """sd_booted(3): this host runs systemd as its init."""
    return os.path.isdir("/run/systemd/system")


def start_task_slice() -> None:
    """ecstasks.slice through systemd, as the agent's task slices get it (systemd owns the
    tree: a directory made behind its back would be removed or fought over)."""
    done = proc.run(["systemctl", "start", TASK_SLICE], timeout=30, check=False)
    if done.returncode != 0:
        raise RuntimeFailure(f"systemctl start {TASK_SLICE} failed (exit {done.returncode}): "
                             f"{(done.stderr or done.stdout).strip()[:300]}")


def host_network_tasks(proc_dir: str = PROC) -> list[HostTask]:
    """Every task container in our network namespace: by cgroup (the processes sharing
    our namespace in a task's cgroup), and by Docker's own view (running containers in
    the host network with an ECS task's labels), which also finds the tasks outside the
    task cgroups."""
    own, by_pid = process_namespaces(proc_dir)
    found: dict[str, str] = {}
    for pid, ino in by_pid.items():
        if own is None or ino != own:
            continue
        text = read_untrusted(os.path.join(proc_dir, str(pid), "cgroup"), cap=1 << 16)
        for line in (text or b"").decode("utf-8", errors="replace").splitlines():
            m = _V2.match(line) or _V1.search(line)
            if m:
                found.setdefault(m.group(2), m.group(1))
                break
    docker = {c.container: c for c in host_network_task_containers() or []}
    root: list[str] = []  # Docker's data root: asked for once, and only when a name must come from its files

    def name(cid: str) -> str | None:
        labelled = docker[cid].name if cid in docker else None
        if labelled:
            return labelled
        if not root:
            root.append(docker_root())
        return container_name(root[0], cid)

    tasks = {cid: HostTask(cid, task, name(cid)) for cid, task in found.items()}
    for cid, c in docker.items():
        if cid not in tasks:
            tasks[cid] = HostTask(cid, c.task, name(cid), in_task_cgroup=False)
    return [tasks[cid] for cid in sorted(tasks)]


def rule_args(address: Network) -> tuple[str, ...]:
    return ("-d", str(address), "-m", "cgroup", "--path", TASK_SLICE,
            "-m", "comment", "--comment", COMMENT, "-j", "DROP")


def is_ours(rule: Rule) -> bool:
    return rule.target == "DROP" and rule.has_comment(COMMENT)


class HostNetworkComponent(Base):
    # PATHS, not FIREWALL: a task starting changes no netfilter rule (and a resync skips
    # the firewall while the nf_tables generation stands), but it may make the slice.
    wakes_on = PATHS
    name = CHECK

    def __init__(
        self,
        mode: str,
        backends: Mapping[int, Callable[[], Backend]],
        addresses: dict[int, Network],
        state_dir: str,
        *,
        cgroup_root: str = CGROUP_ROOT,
        tasks: Callable[[], list[HostTask]] = host_network_tasks,
        make_slice: Callable[[], None] | None = None,
    ):
        self.bound_file = os.path.join(state_dir, "host-network.json")
        self.mode = mode
        self._factories = backends
        self._backends: dict[int, Backend] = {}
        self.addresses = addresses
        self.cgroup_root = cgroup_root
        self.tasks = tasks
        # None: no systemd to make the slice with; the rule goes in when a task makes it
        self.make_slice = make_slice if make_slice is not None else (
            start_task_slice if cgroup_root == CGROUP_ROOT and systemd_booted() else None)

    def backend(self, family: int) -> Backend:
        if family not in self._backends:
            self._backends[family] = self._factories[family]()
        return self._backends[family]

    def _slice_inode(self) -> int | None:
        try:
            return os.stat(os.path.join(self.cgroup_root, TASK_SLICE)).st_ino
        except OSError:
            return None

    def _load_bound(self) -> dict[int, int]:
        """The slice inode our rules were inserted against, this boot (the state file)."""
        loaded = read_json_state(self.bound_file)
        if loaded.get("boot_id") != boot_id():
            return {}
        bound = loaded.get("bound")
        return {int(k): v for k, v in bound.items() if isinstance(v, int)} if isinstance(bound, dict) else {}

    def _save_bound(self, bound: dict[int, int]) -> None:
        by_family = {str(k): v for k, v in bound.items()}
        write_json_state(self.bound_file, {"boot_id": boot_id(), "bound": by_family})

    def expected(self) -> str:
        if self.mode == "block":
            return (f"no host-network task container reaches IMDS (filter {CHAIN} drops traffic to IMDS "
                    f"from cgroup {TASK_SLICE})")
        return f"no host-network task container (imds.host_network: {self.mode})"

    def inspect(self) -> Inspection[_Plan]:
        tasks = self.tasks()
        names = "; ".join(t.label() for t in tasks)
        v2 = cgroup_v2(self.cgroup_root)
        inode = self._slice_inode() if v2 else None
        ops: dict[int, list[Op]] = {}
        wanted: dict[int, bool] = {}
        problems: list[str] = []
        bound = self._load_bound()
        make = self.mode == "block" and v2 and inode is None and self.make_slice is not None
        if make:
            problems.append(f"no {TASK_SLICE}: a task started now would run before the rule is bound to it")
        for family, address in self.addresses.items():
            ours, top = self._rules(family)
            want = wanted[family] = self.mode == "block" and (inode is not None or make)
            # not on top, or inserted against a slice that has since been made afresh
            fresh = want and (not any(i < top for i, _ in ours) or bound.get(family) != inode)
            planned: list[Op] = []
            if fresh:
                planned.append(Insert(CHAIN, 1, rule_args(address)))
            keep = None if fresh or not want else next(i for i, _ in ours if i < top)
            stale = [(i, r) for i, r in ours if i != keep]
            ops[family] = planned + [DeleteAt(CHAIN, i + 1, r) for i, r in stale]
            if want and not any(i < top for i, _ in ours):
                problems.append(f"no rule at the top of ip{'' if family == 4 else '6'}tables {CHAIN} drops "
                                f"traffic to {address} from {TASK_SLICE}")
            elif fresh and not make:
                problems.append(f"the ip{'' if family == 4 else '6'}tables {CHAIN} rule was inserted against "
                                f"an earlier {TASK_SLICE} (systemd made it afresh): it matches nothing now")
        changes = ((f"systemctl start {TASK_SLICE}",) if make else ()) + tuple(
            f"{binary(f)} {describe(op)}" for f, fops in ops.items() for op in fops)
        finding = self._judge(tasks, names, v2, inode, problems)
        plan = _Plan(ops, inode, wanted, make) if changes else None
        return Inspection((finding,), changes, frozenset({CHECK}) if changes else frozenset(), plan)

    def _rules(self, family: int) -> tuple[list[tuple[int, Rule]], int]:
        chain = self.backend(family).snapshot()(CHAIN)
        rules = chain.rules if chain else ()
        return [(i, r) for i, r in enumerate(rules) if is_ours(r)], leading_copies(rules, (), is_ours)

    def _judge(self, tasks: Sequence[HostTask], names: str, v2: bool, inode: int | None,
               problems: list[str]) -> Finding:
        actual = names or "no host-network task container"
        if self.mode == "block":
            if not v2:
                status = DRIFT if tasks else WARN
                return Finding(CHECK, status, self.expected(), actual,
                               "imds.host_network: block needs cgroup v2 (this host has v1: its task "
                               "cgroups under /ecs cannot be matched by path)"
                               + (": these containers reach IMDS" if tasks else ""))
            outside = [t.label() for t in tasks if not t.in_task_cgroup]
            if outside:
                problems = [*problems, f"{'; '.join(outside)} can reach IMDS: the rule matches "
                            f"{TASK_SLICE} only, and these task containers run outside it (ECS task "
                            "resource limits off?)"]
            if problems:
                return Finding(CHECK, DRIFT, self.expected(), actual, "; ".join(problems)
                               + (f": {names} reach IMDS" if tasks and not outside else ""))
            if inode is None:
                return Finding(CHECK, OK, self.expected(), actual,
                               f"no {TASK_SLICE} yet: no task runs; the rule goes in when it appears")
            return Finding(CHECK, OK, self.expected(), actual,
                           (f"{names}: cannot reach IMDS" if tasks else "no host-network task container")
                           + "; the ECS agent and the host's own processes keep IMDS")
        if not tasks:
            return Finding(CHECK, OK, self.expected(), actual, "no host-network task container")
        if self.mode == "allow":
            return Finding(CHECK, WARN, self.expected(), actual,
                           f"{names} can reach IMDS and the instance role (imds.host_network: allow)")
        return Finding(CHECK, DRIFT, self.expected(), actual,
                       f"{names} can reach IMDS and the instance role: host-network containers share the "
                       "host's network, no FORWARD rule sees them; set imds.host_network: block (cgroup v2) "
                       "or run them in bridge or awsvpc mode")

    def execute(self, inspection: Inspection[_Plan]) -> None:
        plan = inspection.plan
        if plan is None:
            return
        bound = self._load_bound()
        inode = plan.inode
        if plan.make_slice and self.make_slice is not None:
            self.make_slice()
            inode = self._slice_inode()
            if inode is None:
                raise RuntimeFailure(f"systemd started {TASK_SLICE} but {self.cgroup_root}/{TASK_SLICE} "
                                     "is not there")
        for family, ops in plan.ops.items():
            inserts = [op for op in ops if isinstance(op, Insert)]
            if inserts:
                self.backend(family).commit(inserts)
                if inode is not None:
                    bound[family] = inode
                    self._save_bound(bound)
            if [op for op in ops if isinstance(op, DeleteAt)]:
                # positions from a fresh read: the insert above moved them
                ours, top = self._rules(family)
                keep = next((i for i, _ in ours if i < top), None) if plan.wanted[family] else None
                deletes: list[Op] = [DeleteAt(CHAIN, i + 1, r) for i, r in ours if i != keep]
                if deletes:
                    self.backend(family).commit(deletes)

    def remove(self) -> list[str]:
        out = []
        for family in self.addresses:
            ours, _ = self._rules(family)
            ops: list[Op] = [DeleteAt(CHAIN, i + 1, r) for i, r in ours]
            if ops:
                self.backend(family).commit(ops)
            out += [f"{binary(family)} {describe(op)}" for op in ops]
        return out


@dataclass(frozen=True)
class _Plan:
    ops: dict[int, list[Op]]
    inode: int | None
    wanted: dict[int, bool]
    make_slice: bool = False


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""
