"""The change journal: backups are capped per file, root-only; the journal keeps every line."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from ecs_harden.journal import ChangeJournal


def test_only_the_newest_backups_of_each_file_stay(tmp_path: Path) -> None:
    journal = ChangeJournal(str(tmp_path / "state"), keep=3)
    target = tmp_path / "ecs.config"
    other = tmp_path / "ecs.config.d"  # shares the name's prefix: never pruned with it
    target.write_bytes(b"v0\n")
    other.write_bytes(b"o0\n")
    journal.replace_file(str(other), b"o0\n", b"o1\n", kind="x", summary=["other"])
    for i in range(15):  # another writer keeps reverting it, we keep repairing
        journal.replace_file(str(target), f"v{i}\n".encode(), f"v{i + 1}\n".encode(), kind="x", summary=["s"])
    backups = tmp_path / "state" / "backups"
    mine = sorted(p for p in backups.iterdir() if p.name.startswith("ecs.config.2"))
    assert sorted(p.read_bytes() for p in mine) == [b"v12\n", b"v13\n", b"v14\n"]
    assert [p.read_bytes() for p in backups.iterdir() if p.name.startswith("ecs.config.d.")] == [b"o0\n"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in backups.iterdir())
    assert stat.S_IMODE(backups.stat().st_mode) == 0o700
    lines = (tmp_path / "state" / "changes.jsonl").read_text().splitlines()
    assert len(lines) == 16 and all(json.loads(ln)["sha256_after"] for ln in lines)


def test_keep_zero_writes_no_backup(tmp_path: Path) -> None:
    journal = ChangeJournal(str(tmp_path / "state"), keep=0)
    journal.replace_file(str(tmp_path / "f"), b"old", b"new", kind="x", summary=["s"])
    assert not (tmp_path / "state" / "backups").exists()
    assert json.loads((tmp_path / "state" / "changes.jsonl").read_text())["backup"] is None
