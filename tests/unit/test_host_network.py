"""imds.host_network: host-network task containers by cgroup, and the OUTPUT rule of block."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from ecs_harden.errors import RuntimeFailure
from ecs_harden.imds import dockerview, hostnet
from ecs_harden.imds.hostnet import HostNetworkComponent, HostTask, host_network_tasks
from tests.unit.test_imds_plan import V4, FakeBackend

CID = "a" * 64
OTHER = "b" * 64
RULE = ('-d 169.254.169.254/32 -m cgroup --path ecstasks.slice -m comment --comment '
        '"ecs-harden: block IMDS from host-network ECS tasks" -j DROP')


def fake_proc(tmp_path: Path) -> Path:
    """/proc with: a host-network task (v2 cgroup), the agent (system.slice), a bridge
    task (own namespace), and a v1 host-network task."""
    proc = tmp_path / "proc"
    host_ns = tmp_path / "ns-host"
    other_ns = tmp_path / "ns-other"
    host_ns.write_text("")
    other_ns.write_text("")
    cgroups = {
        "self": "0::/system.slice/ecs-harden.service\n",
        "10": f"0::/ecstasks.slice/ecstasks-1234.slice/docker-{CID}.scope\n",
        "11": f"0::/system.slice/docker-{OTHER}.scope\n",
        "12": f"0::/ecstasks.slice/ecstasks-9999.slice/docker-{OTHER}.scope\n",
        "13": f"4:memory:/ecs/5678/{'c' * 64}\n1:name=systemd:/ecs/5678/{'c' * 64}\n",
    }
    for pid, text in cgroups.items():
        (proc / pid / "ns").mkdir(parents=True)
        (proc / pid / "cgroup").write_text(text)
        os.symlink(other_ns if pid == "12" else host_ns, proc / pid / "ns" / "net")
    return proc


def test_host_network_tasks_are_found_by_cgroup_in_the_host_namespace(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostnet, "docker_root", lambda: str(tmp_path / "docker"))
    monkeypatch.setattr(hostnet, "host_network_task_containers", lambda: None)  # Docker not answering
    tasks = host_network_tasks(str(fake_proc(tmp_path)))
    assert tasks == [HostTask(CID, "1234"), HostTask("c" * 64, "5678")]


def test_dockers_own_view_names_the_task_containers_outside_the_task_cgroups(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ECS task resource limits off, a host-network task sits in system.slice: the
    cgroup finds nothing there (OTHER, pid 11), Docker's labels do; under block the rule
    cannot cover it: drift naming it."""
    monkeypatch.setattr(hostnet, "docker_root", lambda: str(tmp_path / "docker"))
    monkeypatch.setattr(hostnet, "host_network_task_containers", lambda: [
        dockerview.TaskContainer(OTHER, "77aa", "shipper"), dockerview.TaskContainer(CID, "1234", None)])
    tasks = host_network_tasks(str(fake_proc(tmp_path)))
    assert HostTask(OTHER, "77aa", "shipper", in_task_cgroup=False) in tasks
    assert HostTask(CID, "1234") in tasks  # found by its cgroup: covered
    c, _ = component(tmp_path, "block", tasks)
    (f,) = c.inspect().findings
    assert f.status == "drift"
    assert "shipper (bbbbbbbbbbbb) of task 77aa (outside the task cgroups) can reach IMDS" in f.detail


def test_the_container_name_comes_from_the_ecs_label(tmp_path: Path) -> None:
    d = tmp_path / "containers" / CID
    d.mkdir(parents=True)
    (d / "config.v2.json").write_text(
        '{"Name": "/ecs-web-1-web-abc", "Config": {"Labels": {"com.amazonaws.ecs.container-name": "web"}}}')
    assert dockerview.container_name(str(tmp_path), CID) == "web"
    assert dockerview.container_name(str(tmp_path), OTHER) is None


def test_files_under_dockers_root_are_untrusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A FIFO where config.v2.json should be (it blocked `check` until killed), a link, a
    JSON that is no object, a file past the cap: no name, at once, no exception."""
    for cid, make in ((CID, "fifo"), (OTHER, "list"), ("c" * 64, "link"), ("d" * 64, "huge")):
        d = tmp_path / "containers" / cid
        d.mkdir(parents=True)
        target = d / "config.v2.json"
        if make == "fifo":
            os.mkfifo(target)
        elif make == "list":
            target.write_text("[]")
        elif make == "link":
            (tmp_path / "elsewhere.json").write_text('{"Name": "/x"}')
            target.symlink_to(tmp_path / "elsewhere.json")
        else:
            target.write_bytes(b" " * (dockerview.CAP + 1))
        assert dockerview.container_name(str(tmp_path), cid) is None, make
    # the data root is Docker's answer, else daemon.json (a FIFO there: not read), never a process
    monkeypatch.setattr(dockerview, "api", lambda path: None)
    fifo = tmp_path / "daemon.json"
    os.mkfifo(fifo)
    monkeypatch.setattr(dockerview, "DAEMON_JSON", str(fifo))
    assert dockerview.docker_root() == "/var/lib/docker"
    monkeypatch.setattr(dockerview, "api", lambda path: {"DockerRootDir": "/data/docker"})
    assert dockerview.docker_root() == "/data/docker"


def component(tmp_path: Path, mode: str, tasks: list[HostTask], text: str = "-P OUTPUT ACCEPT\n",
              slice_: bool = True) -> tuple[HostNetworkComponent, FakeBackend]:
    root = tmp_path / "cgroup"
    root.mkdir(exist_ok=True)
    (root / "cgroup.controllers").write_text("cpu memory\n")
    if slice_:
        (root / "ecstasks.slice").mkdir(exist_ok=True)
    be = FakeBackend(text)
    return HostNetworkComponent(mode, {4: lambda: be}, {4: V4}, str(tmp_path / "state"),
                                cgroup_root=str(root), tasks=lambda: tasks), be


def ours(be: FakeBackend) -> list[str]:
    return [ln for ln in be.text.splitlines() if "host-network ECS tasks" in ln]


def test_report_names_each_host_network_container_as_drift(tmp_path: Path) -> None:
    c, _ = component(tmp_path, "report", [HostTask(CID, "1234", "web")])
    (f,) = c.inspect().findings
    assert f.status == "drift" and "web (aaaaaaaaaaaa) of task 1234 can reach IMDS" in f.detail
    assert c.inspect().changes == ()
    c, _ = component(tmp_path, "allow", [HostTask(CID, "1234")])
    assert c.inspect().findings[0].status == "warn"
    c, _ = component(tmp_path, "report", [])
    assert c.inspect().findings[0].status == "ok"


def test_block_inserts_the_rule_once_and_again_when_the_slice_is_made_afresh(tmp_path: Path) -> None:
    c, be = component(tmp_path, "block", [HostTask(CID, "1234")])
    first = c.inspect()
    assert first.findings[0].status == "drift"
    c.execute(first)
    assert ours(be) == [f"-A OUTPUT {RULE}"]
    again = c.inspect()
    assert again.changes == () and again.findings[0].status == "ok"
    assert "cannot reach IMDS" in again.findings[0].detail
    # another command (a fresh component) agrees: the binding is kept in the state dir
    c2 = HostNetworkComponent("block", {4: lambda: be}, {4: V4}, str(tmp_path / "state"),
                              cgroup_root=str(tmp_path / "cgroup"), tasks=lambda: [])
    assert c2.inspect().changes == ()
    # systemd removed the empty slice and made it again: the old rule matches nothing
    # (the old directory is kept under another name, so the new one has another inode)
    (tmp_path / "cgroup" / "ecstasks.slice").rename(tmp_path / "cgroup" / "gone")
    (tmp_path / "cgroup" / "ecstasks.slice").mkdir()
    stale = c.inspect()
    assert stale.findings[0].status == "drift" and "earlier ecstasks.slice" in stale.findings[0].detail
    c.execute(stale)
    assert ours(be) == [f"-A OUTPUT {RULE}"]
    assert c.inspect().changes == ()


def test_no_slice_no_rule_and_another_mode_takes_ours_out(tmp_path: Path) -> None:
    c, be = component(tmp_path, "block", [], slice_=False)
    assert c.inspect().changes == () and c.inspect().findings[0].status == "ok"
    c, be = component(tmp_path, "report", [], text=f"-P OUTPUT ACCEPT\n-A OUTPUT {RULE}\n")
    c.execute(c.inspect())
    assert ours(be) == []


def test_block_on_cgroup_v1_says_it_cannot(tmp_path: Path) -> None:
    c, _ = component(tmp_path, "block", [HostTask(CID, "1234")])
    os.remove(tmp_path / "cgroup" / "cgroup.controllers")
    (f,) = c.inspect().findings
    assert f.status == "drift" and "needs cgroup v2" in f.detail


def serve_once(path: Path, answer: bytes | None) -> threading.Thread:
    """A unix socket that answers one request with answer (None: reads, never answers)."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)

    def run() -> None:
        conn, _ = srv.accept()
        conn.recv(4096)
        if answer is not None:
            conn.sendall(answer)
            conn.close()
        else:
            time.sleep(5.0)
            conn.close()
        srv.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_dockers_api_is_asked_with_a_timeout_and_a_cap(tmp_path: Path) -> None:
    ok = tmp_path / "ok.sock"
    serve_once(ok, b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"DockerRootDir": "/d"}')
    assert dockerview.api("/info", sockets=(str(tmp_path / "none.sock"), str(ok))) == {"DockerRootDir": "/d"}
    bad = tmp_path / "bad.sock"
    serve_once(bad, b"HTTP/1.0 500 Internal Server Error\r\n\r\n{}")
    assert dockerview.api("/info", sockets=(str(bad),)) is None
    mute = tmp_path / "mute.sock"
    serve_once(mute, None)
    t0 = time.monotonic()
    assert dockerview.api("/info", sockets=(str(mute),), timeout=0.2) is None
    assert time.monotonic() - t0 < 3.0  # the timeout, not the server (5 s), ended it


def test_task_cgroups_seen_from_another_cgroup_namespace_are_found() -> None:
    """From a cgroup namespace of its own (nsenter, a container), /proc/PID/cgroup starts
    the path with /.. segments."""
    assert hostnet._V1.search("8:pids:/../ecs/1234/" + CID).groups() == ("1234", CID)  # type: ignore[union-attr]
    assert hostnet._V2.match(f"0::/../ecstasks.slice/ecstasks-9.slice/docker-{CID}.scope").groups() == ("9", CID)  # type: ignore[union-attr]
    assert hostnet._V1.search("8:pids:/system.slice/docker-" + CID) is None


def test_block_makes_a_missing_slice_through_systemd_before_binding_the_rule(tmp_path: Path) -> None:
    """Under systemd no task may start before the rule: a missing ecstasks.slice is made
    (by systemd: here a stand-in), and the rule bound to it, in the same repair; removed,
    it is made again and the rule bound to the new one."""
    c, be = component(tmp_path, "block", [], slice_=False)
    made: list[Path] = []

    def make() -> None:
        made.append(tmp_path / "cgroup" / "ecstasks.slice")
        made[-1].mkdir()

    c.make_slice = make
    first = c.inspect()
    assert first.findings[0].status == "drift" and "no ecstasks.slice" in first.findings[0].detail
    assert first.changes[0] == "systemctl start ecstasks.slice" and ours(be) == []
    c.execute(first)
    assert len(made) == 1 and ours(be) == [f"-A OUTPUT {RULE}"]
    assert c.inspect().changes == () and c.inspect().findings[0].status == "ok"
    made[0].rename(tmp_path / "cgroup" / "gone")  # stopped: its cgroup is gone
    again = c.inspect()
    assert again.findings[0].status == "drift" and again.changes[0] == "systemctl start ecstasks.slice"
    c.execute(again)
    assert len(made) == 2 and ours(be) == [f"-A OUTPUT {RULE}"]  # the rule of the dead slice went
    assert c.inspect().changes == ()
    # a slice systemd did not make after all: an error naming it, no rule for nothing
    made[1].rmdir()
    c.make_slice = lambda: None
    with pytest.raises(RuntimeFailure, match="is not there"):
        c.execute(c.inspect())


def test_the_slice_watch_wakes_for_the_task_slice_only(tmp_path: Path) -> None:
    from ecs_harden.component import PATHS
    from ecs_harden.daemon.sources import slice_source
    from ecs_harden.daemon.wakeups import Wake
    from ecs_harden.policy import ImdsPolicy, Policy

    root = tmp_path / "cgroup"
    root.mkdir()
    assert slice_source(Policy(imds=ImdsPolicy(host_network="block")), str(root)) is None  # not v2
    (root / "cgroup.controllers").write_text("")
    assert slice_source(Policy(), str(root)) is None  # report: nothing to bind
    source = slice_source(Policy(imds=ImdsPolicy(host_network="block")), str(root))
    assert source is not None
    try:
        (root / "system.slice").mkdir()
        wake = Wake()
        source.readable(0.0, wake)
        assert not wake
        for change in ((root / "ecstasks.slice").mkdir, (root / "ecstasks.slice").rmdir):
            change()
            wake = Wake()
            source.readable(0.0, wake)
            assert wake.groups == {PATHS}
    finally:
        source.close()
