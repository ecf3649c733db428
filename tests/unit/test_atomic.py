"""write_atomic and read_bytes through symlinks."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ecs_harden.atomic import DanglingLink, read_bytes, write_atomic


def test_write_through_a_link_replaces_the_target_in_its_own_directory(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    target = tmp_path / "b" / "file"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    link = tmp_path / "a" / "link"
    link.symlink_to("../b/file")
    inode = target.stat().st_ino
    write_atomic(str(link), b"new")
    assert link.is_symlink() and os.readlink(link) == "../b/file"
    assert target.read_bytes() == b"new" and target.stat().st_ino != inode  # replaced, not rewritten
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["link"]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["file"]
    assert read_bytes(str(link)) == b"new"


def test_dangling_link_is_refused_for_reading_and_writing(tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone" / "file")
    with pytest.raises(DanglingLink) as err:
        read_bytes(str(link))
    assert str(link) in str(err.value) and str(tmp_path / "gone" / "file") in str(err.value)
    with pytest.raises(DanglingLink):
        write_atomic(str(link), b"x")
    assert link.is_symlink() and not (tmp_path / "gone").exists()


def test_link_loop_is_refused(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.symlink_to(b)
    b.symlink_to(a)
    with pytest.raises(DanglingLink):
        write_atomic(str(a), b"x")


def test_missing_plain_file_reads_as_none_and_is_created(tmp_path: Path) -> None:
    path = tmp_path / "new"
    assert read_bytes(str(path)) is None
    write_atomic(str(path), b"x", mode=0o600)
    assert path.read_bytes() == b"x" and stat.S_IMODE(path.stat().st_mode) == 0o600
