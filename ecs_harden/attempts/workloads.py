"""Which workload had an address, and when: Docker's view, kept current from its events.

Docker's API lists each running container's addresses on every network (IPv4, global
IPv6) and its labels; the ECS agent's labels name the task (`com.amazonaws.ecs.task-arn`,
`...task-definition-family`, `...task-definition-version`, `...container-name`). The
history keeps, per address, who held it from when to when (Docker's event times), so an
attempt is attributed to whoever held the source address at the packet's time, never by a
later lookup of an address that may have been given to another container since. Labels
are a workload's own words: cut to a length, never trusted further.

The event stream (GET /events: a network's connect, when an address is given and before
the container's process runs; the container's start; the disconnect that takes the
address away, after it died) is read from a non-blocking
socket in the daemon's loop; when Docker restarts or the stream breaks it is opened again
and the list read anew (what happened meanwhile is closed at the time it was seen).
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from ecs_harden import logs
from ecs_harden.imds.dockerview import CONTAINER_NAME, SOCKETS, TASK_ARN, api

log = logs.get("ecs_harden.attempts")

FAMILY = "com.amazonaws.ecs.task-definition-family"
REVISION = "com.amazonaws.ecs.task-definition-version"
LABEL_MAX = 128
KEEP = 600.0  # seconds an ended holding is kept (windows are attributed well within it)
STREAM_CAP = 1 << 20  # bytes of one event line at most


def _label(labels: dict[str, Any], key: str) -> str:
    value = labels.get(key)
    return value[:LABEL_MAX] if isinstance(value, str) else ""


@dataclass(frozen=True)
class Workload:
    container_id: str
    name: str  # the ECS container name, else Docker's
    task_arn: str = ""
    task_family: str = ""
    revision: str = ""


def workload(c: dict[str, Any]) -> Workload | None:
    cid = c.get("Id")
    if not isinstance(cid, str) or not cid:
        return None
    found = c.get("Labels")
    labels: dict[str, Any] = found if isinstance(found, dict) else {}
    names = c.get("Names") if isinstance(c.get("Names"), list) else []
    docker_name = names[0].lstrip("/")[:LABEL_MAX] if names and isinstance(names[0], str) else cid[:12]
    return Workload(cid[:64], _label(labels, CONTAINER_NAME) or docker_name, _label(labels, TASK_ARN),
                    _label(labels, FAMILY), _label(labels, REVISION))


def addresses(c: dict[str, Any]) -> set[str]:
    settings = c.get("NetworkSettings")
    networks = settings.get("Networks") if isinstance(settings, dict) else None
    out: set[str] = set()
    for net in networks.values() if isinstance(networks, dict) else ():
        if isinstance(net, dict):
            for key in ("IPAddress", "GlobalIPv6Address"):
                if isinstance(net.get(key), str) and net[key]:
                    out.add(net[key][:64])
    return out


@dataclass
class Holding:
    since: float
    until: float | None
    workload: Workload


@dataclass
class History:
    """address -> who held it, from when to when."""

    held: dict[str, list[Holding]] = field(default_factory=dict)
    # container id -> who, when last listed: the host path names the container itself (its
    # socket's cgroup), so an id is looked up, never an address (ids are never reused)
    known: dict[str, tuple[Workload, float]] = field(default_factory=dict)
    host_network: frozenset[str] = frozenset()  # running containers in the host's network

    def container(self, container_id: str) -> Workload | None:
        found = self.known.get(container_id)
        return found[0] if found else None

    def at(self, address: str, when: float) -> Workload | None:
        best: Holding | None = None
        for h in self.held.get(address, ()):
            held_then = h.since <= when and (h.until is None or when <= h.until)
            if held_then and (best is None or h.since > best.since):
                best = h
        return best.workload if best else None

    def current(self) -> dict[str, Workload]:
        return {a: h.workload for a, hs in self.held.items() for h in hs if h.until is None}

    def seen(self, containers: list[dict[str, Any]], now: float, *,
             started: dict[str, float] | None = None) -> None:
        """Docker's list now: a holding opens for each address a container has that no
        open holding of the same container has (since its start event's time, else its
        creation, else now), and an open holding no container has any more ends now."""
        now_held: dict[str, Workload] = {}
        since: dict[str, float] = {}
        host: set[str] = set()
        for c in containers:
            w = workload(c) if isinstance(c, dict) else None
            if w is None:
                continue
            self.known[w.container_id] = (w, now)
            if network_mode(c) == "host":
                host.add(w.container_id)
            created = c.get("Created")
            start = (started or {}).get(w.container_id)
            for a in addresses(c):
                now_held[a] = w
                born = float(created) if isinstance(created, int) else now
                since[a] = start if start is not None else born
        for a, holdings in self.held.items():
            for h in holdings:
                if h.until is None and now_held.get(a) != h.workload:
                    h.until = now
        for a, w in now_held.items():
            if not any(h.until is None and h.workload == w for h in self.held.get(a, ())):
                self.held.setdefault(a, []).append(Holding(min(since[a], now), None, w))
        self.host_network = frozenset(host)
        self.prune(now)

    def ended(self, container_id: str, when: float) -> None:
        for holdings in self.held.values():
            for h in holdings:
                if h.until is None and h.workload.container_id == container_id:
                    h.until = when

    def prune(self, now: float) -> None:
        for a in list(self.held):
            kept = [h for h in self.held[a] if h.until is None or now - h.until < KEEP]
            if kept:
                self.held[a] = kept
            else:
                del self.held[a]
        for cid in [c for c, (_, when) in self.known.items() if now - when >= KEEP]:
            del self.known[cid]


def network_mode(c: dict[str, Any]) -> str:
    config = c.get("HostConfig")
    mode = config.get("NetworkMode") if isinstance(config, dict) else None
    return mode if isinstance(mode, str) else ""


def running() -> list[dict[str, Any]] | None:
    found = api("/containers/json")
    return [c for c in found if isinstance(c, dict)] if isinstance(found, list) else None


class DockerEvents:
    """Docker's container start/die events, from a non-blocking stream; `read()` gives
    (event, container id, time) for what arrived, [] when nothing did; `broken` once
    the stream ended (open it again)."""

    def __init__(self, sockets: tuple[str, ...] = SOCKETS):
        self.sock: socket.socket | None = None
        self.buffer = b""
        self.headers_done = False
        self.broken = False
        wanted = {"type": ["container", "network"], "event": ["start", "connect", "disconnect"]}
        query = quote(json.dumps(wanted, separators=(",", ":")))
        request = f"GET /events?filters={query} HTTP/1.0\r\nHost: docker\r\n\r\n".encode()
        for where in sockets:
            try:
                if not stat.S_ISSOCK(os.stat(where).st_mode):
                    continue
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(1.0)
                s.connect(where)
                s.sendall(request)
                s.setblocking(False)
                self.sock = s
                return
            except OSError:
                continue
        self.broken = True

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    def read(self) -> list[tuple[str, str, float]]:
        if self.sock is None:
            return []
        try:
            while True:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    self.close()
                    break
                self.buffer += chunk
                if len(self.buffer) > STREAM_CAP:
                    self.close()
                    break
        except BlockingIOError:
            pass
        except OSError:
            self.close()
        if not self.headers_done:
            head, found, rest = self.buffer.partition(b"\r\n\r\n")
            if not found:
                return []
            if b" 200 " not in head.split(b"\r\n")[0]:
                self.close()
                return []
            self.headers_done, self.buffer = True, rest
        out = []
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            try:
                event = json.loads(line.decode("utf-8", "replace"))
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            action, cid = event.get("Action") or event.get("status"), event.get("id")
            actor = event.get("Actor")
            attrs = actor.get("Attributes") if isinstance(actor, dict) else None
            attrs = attrs if isinstance(attrs, dict) else {}
            if event.get("Type") == "network":
                cid = attrs.get("container")
            nano = event.get("timeNano")
            when = nano / 1e9 if isinstance(nano, int) else time.time()
            if isinstance(action, str) and isinstance(cid, str):
                out.append((action, cid[:64], when))
        return out

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None
        self.broken = True


class Watcher:
    """The history kept current: the list read at start and after each start event (and
    after the stream is opened again), die events ending holdings at their time."""

    def __init__(self, history: History, clock: Callable[[], float] = time.time,
                 lister: Callable[[], list[dict[str, Any]] | None] = running,
                 opener: Callable[[], DockerEvents] = DockerEvents):
        self.history = history
        self.clock = clock
        self.lister = lister
        self.opener = opener
        self.events: DockerEvents | None = None
        self.retry_at = 0.0
        self.backoff = 1.0
        self.connected: dict[str, float] = {}  # container -> when a network gave it an address

    def fileno(self) -> int:
        return self.events.fileno() if self.events is not None else -1

    def ensure(self) -> None:
        """The stream open (or its next attempt due), then the list read."""
        now = self.clock()
        if self.events is not None and not self.events.broken:
            return
        if now < self.retry_at:
            return
        self.events = self.opener()
        if self.events.broken:
            log.debug("attempts.docker_events_unavailable", retry_in=self.backoff)
            self.retry_at, self.backoff = now + self.backoff, min(self.backoff * 2, 30.0)
            return
        self.backoff = 1.0
        self.relist({})

    def relist(self, started: dict[str, float]) -> None:
        found = self.lister()
        if found is not None:
            self.history.seen(found, self.clock(), started=started)
        log.debug("attempts.docker_listed", containers=None if found is None else len(found),
                  addresses=len(self.history.current()))

    def readable(self) -> bool:
        """Docker's events read; True when the host-network containers changed (the
        attempts table's host chain names each one's cgroup)."""
        if self.events is None:
            return False
        before = self.history.host_network
        started: dict[str, float] = {}
        ended = False
        for action, cid, when in self.events.read():
            if action == "disconnect":  # its address goes with it (after the container died)
                self.history.ended(cid, when)
                ended = ended or cid in self.history.host_network
            elif action == "connect":  # its address is given now, before its process starts
                self.connected[cid] = min(when, self.connected.get(cid, when))
            elif action == "start":
                started[cid] = self.connected.pop(cid, when)
        if started or ended:
            self.relist(started)
        return self.history.host_network != before

    def close(self) -> None:
        if self.events is not None:
            self.events.close()
            self.events = None
