"""The notify protocol: path and abstract sockets, watchdog interval."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from ecs_harden.daemon.notify import Notifier


def test_abstract_socket_receives_ready() -> None:
    name = f"ecs-harden-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(b"\0" + name.encode())
        s.settimeout(2)
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        n.ready("all good")
        msg = s.recv(4096).decode().split("\n")
    assert "READY=1" in msg and "STATUS=all good" in msg and f"MAINPID={os.getpid()}" in msg


def test_path_socket_and_stopping(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(path))
        s.settimeout(2)
        n = Notifier({"NOTIFY_SOCKET": str(path)})
        n.watchdog()
        n.stopping()
        assert s.recv(100) == b"WATCHDOG=1"
        assert s.recv(100) == b"STOPPING=1"


def test_watchdog_interval_is_half_of_usec() -> None:
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval == 15.0
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    assert Notifier({}).watchdog_interval is None


def test_without_socket_nothing_is_sent() -> None:
    n = Notifier({})
    assert not n.enabled and n.send("READY=1") is False


def test_a_receiver_that_stops_reading_never_stalls_the_daemon(tmp_path: Path) -> None:
    """The queue fills (net.unix.max_dgram_qlen, 10 here by default): what does not fit
    is dropped at once, and what was queued is intact. Before, each message waited 2 s."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(path))
        n = Notifier({"NOTIFY_SOCKET": str(path)})
        t0 = time.monotonic()
        sent = [n.send("WATCHDOG=1") for _ in range(300)]
        elapsed = time.monotonic() - t0
        assert sent.count(False) > 0 and sent[0] is True  # the queue filled, then dropped
        assert elapsed < 30  # generous: 300 sends blocking 2 s each would take 10 minutes
        s.settimeout(2)
        assert s.recv(100) == b"WATCHDOG=1"
