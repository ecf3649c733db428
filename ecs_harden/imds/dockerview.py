"""Docker's own view, asked of Docker: its data root and its host-network task
containers from its API (`/run/docker.sock`, a timeout, a size cap), and files under
its data root read as untrusted input. Never from a process's name or argv (anyone can
start a process called dockerd), never a read that blocks (a FIFO) or has no end.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

SOCKETS = ("/run/docker.sock", "/var/run/docker.sock")
DAEMON_JSON = "/etc/docker/daemon.json"
DEFAULT_ROOT = "/var/lib/docker"
TIMEOUT = 1.0  # imds.host_network runs in the daemon's loop: a wedged dockerd costs this, once
CAP = 4 << 20  # bytes: an answer or a file larger than this is not read
TASK_ARN = "com.amazonaws.ecs.task-arn"
CONTAINER_NAME = "com.amazonaws.ecs.container-name"


def read_untrusted(path: str, cap: int = CAP) -> bytes | None:
    """A regular file's bytes, at most cap; None for anything else (missing, a link, a
    FIFO, a device, too large, unreadable): never blocks, never follows a link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > cap:
            return None
        chunks, left = [], cap + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        return data if len(data) <= cap else None
    except OSError:
        return None
    finally:
        os.close(fd)


def load_json(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return json.loads(data.decode("utf-8", errors="replace"), strict=False)
    except ValueError:
        return None


def api(path: str, sockets: tuple[str, ...] = SOCKETS, timeout: float = TIMEOUT) -> Any:
    """GET path from Docker's API; the decoded JSON, None when Docker does not answer."""
    asked: set[tuple[int, int]] = set()
    for where in sockets:
        try:
            st = os.stat(where)
        except OSError:
            continue
        if not stat.S_ISSOCK(st.st_mode) or (st.st_dev, st.st_ino) in asked:
            continue  # /var/run is /run: one socket, asked once
        asked.add((st.st_dev, st.st_ino))
        with contextlib.suppress(OSError, ValueError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(where)
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
            raw = b""
            while len(raw) <= CAP:
                chunk = s.recv(1 << 16)
                if not chunk:
                    break
                raw += chunk
            head, _, body = raw.partition(b"\r\n\r\n")
            if len(raw) > CAP or not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n")[0]:
                return None
            return load_json(body)
    return None


def docker_root() -> str:
    """Docker's data root: its API's DockerRootDir, else daemon.json's data-root, else
    the default."""
    info = api("/info")
    if isinstance(info, dict) and isinstance(info.get("DockerRootDir"), str) and info["DockerRootDir"]:
        return str(info["DockerRootDir"])
    configured = load_json(read_untrusted(DAEMON_JSON))
    if isinstance(configured, dict) and isinstance(configured.get("data-root"), str):
        return str(configured["data-root"])
    return DEFAULT_ROOT


def container_name(root: str, cid: str) -> str | None:
    """The ECS container name (or Docker's) from the container's config.v2.json."""
    config = load_json(read_untrusted(os.path.join(root, "containers", cid, "config.v2.json")))
    if not isinstance(config, dict):
        return None
    inner = config.get("Config")
    labels = inner.get("Labels") if isinstance(inner, dict) else None
    name = labels.get(CONTAINER_NAME) if isinstance(labels, dict) else None
    if not isinstance(name, str) or not name:
        name = str(config.get("Name") or "").lstrip("/")
    return name[:128] or None


@dataclass(frozen=True)
class TaskContainer:
    container: str
    task: str
    name: str | None


def host_network_task_containers() -> list[TaskContainer] | None:
    """Running containers in the host's network with an ECS task's labels, from Docker's
    API; None when Docker does not answer."""
    query = quote(json.dumps({"network": ["host"], "status": ["running"]}, separators=(",", ":")))
    found = api(f"/containers/json?filters={query}")
    if not isinstance(found, list):
        return None
    out = []
    for c in found:
        if not isinstance(c, dict) or not isinstance(c.get("Id"), str):
            continue
        labels = c.get("Labels") if isinstance(c.get("Labels"), dict) else {}
        arn = labels.get(TASK_ARN) if isinstance(labels, dict) else None
        if not isinstance(arn, str) or not arn:
            continue
        name = labels.get(CONTAINER_NAME) if isinstance(labels, dict) else None
        task = arn.rsplit("/", 1)[-1][:64]
        out.append(TaskContainer(c["Id"], task, name[:128] if isinstance(name, str) else None))
    return out




def container_addresses() -> set[str] | None:
    """Every address Docker has given a running container, on any network (IPv4 and
    global IPv6); None when Docker does not answer."""
    found = api("/containers/json")
    if not isinstance(found, list):
        return None
    out: set[str] = set()
    for c in found:
        settings = c.get("NetworkSettings") if isinstance(c, dict) else None
        networks = settings.get("Networks") if isinstance(settings, dict) else None
        for net in (networks or {}).values() if isinstance(networks, dict) else ():
            if not isinstance(net, dict):
                continue
            for key in ("IPAddress", "GlobalIPv6Address"):
                if isinstance(net.get(key), str) and net[key]:
                    out.add(net[key])
    return out
