"""The change journal: a backup of every file before it is replaced, and one JSON line per change."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ecs_harden.atomic import ensure_dir, fsync_dir, write_atomic
from ecs_harden.errors import RuntimeFailure


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class ChangeJournal:
    """Backups under state_dir/backups, the journal at state_dir/changes.jsonl."""

    def __init__(self, state_dir: str, keep: int = 10):
        self.state_dir = state_dir
        self.keep = keep  # backups kept per file, newest first (policy: backups)
        self.path = os.path.join(state_dir, "changes.jsonl")

    def backup(self, path: str, data: bytes) -> str | None:
        """Keep data (the file's old content) and return where it went; None with keep 0.
        Only the newest `keep` backups of each file stay: they are full copies (ecs.config
        holds ECS_ENGINE_AUTH_DATA), 0600 in a 0700 directory; the journal keeps its lines."""
        if self.keep <= 0:
            return None
        directory = os.path.join(self.state_dir, "backups")
        ensure_dir(directory)
        if os.stat(directory).st_mode & 0o077:
            os.chmod(directory, 0o700)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        base = os.path.basename(path)
        name = os.path.join(directory, f"{base}.{stamp}.{os.getpid()}.bak")
        n = 0
        while os.path.exists(name):
            n += 1
            name = os.path.join(directory, f"{base}.{stamp}.{os.getpid()}.{n}.bak")
        write_atomic(name, data, mode=0o600)
        self._prune(directory, base)
        return name

    def _prune(self, directory: str, base: str) -> None:
        """Remove all but the newest `keep` backups of the file named base."""
        mine = []
        for entry in os.scandir(directory):
            if entry.name.startswith(f"{base}.") and entry.name.endswith(".bak") and entry.is_file(
                    follow_symlinks=False):
                rest = entry.name[len(base) + 1:]
                if rest[:1].isdigit():  # base.<stamp>...: not a longer name sharing the prefix
                    mine.append((entry.stat(follow_symlinks=False).st_mtime_ns, entry.name))
        for _, name in sorted(mine, reverse=True)[self.keep:]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, name))

    def records(self) -> list[dict[str, Any]]:
        """What the journal holds, oldest first; a line that is not a JSON object (torn by
        a crash, or not ours) is skipped."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                lines = f.read().splitlines()
        except OSError:
            return []
        out = []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                out.append(entry)
        return out

    def record(self, entry: dict[str, Any]) -> None:
        ensure_dir(self.state_dir)
        line = json.dumps({"time": utc_now(), **entry}, sort_keys=True) + "\n"
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise RuntimeFailure(f"{self.path}: cannot append: {exc.strerror}") from None
        fsync_dir(self.state_dir)

    def replace_file(
        self,
        path: str,
        old: bytes | None,
        new: bytes,
        *,
        kind: str,
        summary: Sequence[str],
        mode: int = 0o600,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Back up old, write new atomically, journal it (with extra). summary must hold no secret."""
        backup = self.backup(path, old) if old is not None else None
        write_atomic(path, new, mode=mode)
        self.record(
            {
                "path": path,
                "kind": kind,
                "action": "create" if old is None else "replace",
                "backup": backup,
                "sha256_before": hashlib.sha256(old).hexdigest() if old is not None else None,
                "sha256_after": hashlib.sha256(new).hexdigest(),
                "changes": list(summary),
                **(extra or {}),
            }
        )

    def delete_file(self, path: str, old: bytes, *, kind: str, summary: Sequence[str]) -> None:
        """Back up old, remove path (the link itself if it is one), journal it."""
        backup = self.backup(path, old)
        try:
            os.unlink(path)
        except OSError as exc:
            raise RuntimeFailure(f"{path}: cannot remove: {exc.strerror}") from None
        fsync_dir(os.path.dirname(os.path.abspath(path)))
        self.record({"path": path, "kind": kind, "action": "delete", "backup": backup,
                     "sha256_before": hashlib.sha256(old).hexdigest(), "sha256_after": None,
                     "changes": list(summary)})
