"""Files the agent writes: a symlink stays a link and its target is converged; a dangling
link is an error, never a new regular file; `prepare` creates what the unit must write;
an apply that cannot get the reconcile lock changes nothing."""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

from tests.cli.conftest import Harden

BLOCK = "ecs_config.ECS_AWSVPC_BLOCK_IMDS"
HOSTNET = "ecs_config.ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST"


def test_symlinked_ecs_config_stays_a_link_and_its_target_converges(harden: Harden, tmp_path: Path) -> None:
    managed = tmp_path / "cm" / "ecs.config"  # what configuration management owns
    managed.parent.mkdir()
    managed.write_bytes(b"ECS_CLUSTER=prod\nECS_AWSVPC_BLOCK_IMDS=\"true\"\n")
    os.chmod(managed, 0o640)
    os.chown(managed, 0, 4)
    harden.config.symlink_to(Path("..") / "cm" / "ecs.config")  # relative, as ln -s often is
    r = harden("apply", "--format", "json")
    assert r.findings()[BLOCK]["changed"] is True, r.stdout + r.stderr
    assert harden.config.is_symlink() and os.readlink(harden.config) == "../cm/ecs.config"
    assert managed.read_bytes() == (
        b"ECS_CLUSTER=prod\nECS_AWSVPC_BLOCK_IMDS=true\nECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST=false\n"
    )
    st = os.stat(managed)
    assert stat.S_IMODE(st.st_mode) == 0o640 and (st.st_uid, st.st_gid) == (0, 4)
    assert not [p for p in harden.config.parent.iterdir() if p.name.startswith(".ecs.config")]
    assert not [p for p in managed.parent.iterdir() if p.name != "ecs.config"]  # no temp file left
    assert harden("check").code in (0, 3) and harden("check", "--format", "json").findings()[BLOCK]["status"] == "ok"


def test_a_link_to_a_link_converges_the_final_file(harden: Harden, tmp_path: Path) -> None:
    final = tmp_path / "final.config"
    final.write_bytes(b"ECS_CLUSTER=x\n")
    middle = tmp_path / "middle.config"
    middle.symlink_to(final)
    harden.config.symlink_to(middle)
    harden("apply")
    assert middle.is_symlink() and harden.config.is_symlink()
    assert b"ECS_AWSVPC_BLOCK_IMDS=true\n" in final.read_bytes()


def test_dangling_link_is_an_error_naming_link_and_target(harden: Harden, tmp_path: Path) -> None:
    target = tmp_path / "nowhere" / "ecs.config"
    harden.config.symlink_to(target)
    for command in ("check", "apply"):
        r = harden(command, "--format", "json")
        assert r.code == 3, r.stderr
        for check in (BLOCK, HOSTNET):
            f = r.findings()[check]
            assert f["status"] == "error"
            assert str(harden.config) in f["detail"] and str(target) in f["detail"]
    assert harden.config.is_symlink() and not target.exists() and not target.parent.exists()


def test_a_symlink_in_place_of_the_status_file_is_replaced_never_followed(
    harden: Harden, tmp_path: Path
) -> None:
    victim = tmp_path / "etc-ecs" / "ecs.config"
    victim.write_bytes(b"ECS_CLUSTER=prod\nECS_ENGINE_AUTH_DATA=secret\n")
    (tmp_path / "status.json").symlink_to(victim)
    harden.write_policy("imds:\n  persist: false\nmode: report\n")
    assert harden("run", "--once").code in (0, 3)
    assert not (tmp_path / "status.json").is_symlink()
    assert '"findings"' in (tmp_path / "status.json").read_text()
    assert victim.read_bytes() == b"ECS_CLUSTER=prod\nECS_ENGINE_AUTH_DATA=secret\n"


def test_apply_waits_for_the_lock_then_gives_up_naming_the_holder(harden: Harden) -> None:
    harden.config.write_bytes(b'ECS_AWSVPC_BLOCK_IMDS="true"\n')
    before = harden.config.read_bytes()
    lock = harden.tmp / "reconcile.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{os.getpid()}\n".encode())
        r = harden("apply", env={"ECS_HARDEN_LOCK_TIMEOUT": "0.5"})
        assert r.code == 1
        assert f"pid {os.getpid()}" in r.stderr and "nothing was changed" in r.stderr
        assert harden.config.read_bytes() == before
        # check takes no lock: it still answers while another process reconciles
        assert harden("check").code == 3
    finally:
        os.close(fd)
    assert harden("apply").code in (0, 3)
    assert harden.config.read_bytes() != before


def test_prepare_creates_what_the_unit_writes(harden: Harden, tmp_path: Path) -> None:
    conf_dir = tmp_path / "fresh-etc-ecs"
    harden.policy.write_text(
        f"state_dir: {harden.state}\n"
        f"report:\n  status_file: {tmp_path}/run/status.json\n  textfile: {tmp_path}/node/ecs.prom\n"
        f"ecs_config:\n  path: {conf_dir}/ecs.config\nimds:\n  persist: false\n"
    )
    r = harden("prepare")
    assert r.code == 0, r.stderr
    assert conf_dir.is_dir() and stat.S_IMODE(conf_dir.stat().st_mode) == 0o755
    assert (tmp_path / "node").is_dir() and (tmp_path / "run").is_dir()
    assert stat.S_IMODE(harden.state.stat().st_mode) == 0o700
    assert f"created: {conf_dir}" in r.stdout
    assert harden("prepare").stdout == ""  # nothing left to create


def test_prepare_drop_in_lists_the_policys_paths_and_creates_nothing(harden: Harden, tmp_path: Path) -> None:
    harden.policy.write_text(
        f"state_dir: {tmp_path}/state\n"
        f"report:\n  status_file: {tmp_path}/run/status.json\n  textfile: {tmp_path}/node/ecs.prom\n"
        f"ecs_config:\n  path: {tmp_path}/ecs/ecs.config\nimds:\n  persist: false\n"
    )
    r = harden("prepare", "--drop-in")
    assert r.code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "[Service]" in lines
    (rw,) = [ln for ln in lines if ln.startswith("ReadWritePaths=")]
    paths = rw.split("=", 1)[1].split()
    assert paths[:4] == [f"-{tmp_path}/ecs", f"-{tmp_path}/state", f"-{tmp_path}/run", f"-{tmp_path}/node"]
    assert paths[4].endswith("/xtables.lock") and len(paths) == 5
    assert not any((tmp_path / d).exists() for d in ("ecs", "state", "run", "node"))
