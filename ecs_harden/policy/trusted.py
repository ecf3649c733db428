"""Reading the policy file as the daemon does: where it is, and only from a file and
directories that root alone can change (no gap between the check and the read)."""

from __future__ import annotations

import errno
import os
import stat

import yaml

from ecs_harden.errors import PolicyError
from ecs_harden.policy.schema import DEFAULT_PATH, ENV_VAR, Policy, ReportPolicy
from ecs_harden.policy.yamlread import parse


def resolve_path(cli_path: str | None) -> tuple[str, bool]:
    """The policy path and whether it was named explicitly (then it must exist)."""
    if cli_path:
        return cli_path, True
    env = os.environ.get(ENV_VAR)
    if env:
        return env, True
    return DEFAULT_PATH, False


class UntrustedPolicy(PolicyError):
    """A policy file ecs-harden refuses to read at all (not root's, writable by others,
    a symlink): nothing in it is used, not even where the status file is."""


def load(cli_path: str | None = None) -> Policy:
    path, explicit = resolve_path(cli_path)
    data = read_trusted(path, explicit=explicit)
    return Policy() if data is None else parse(data, source=path)


def read_trusted(path: str, *, explicit: bool = True) -> bytes | None:
    """The policy's bytes, read from a descriptor opened with O_NOFOLLOW and checked with
    fstat (no gap between check and read), below directories that only root can change;
    None for a missing default file."""
    from ecs_harden.trust import untrusted_directories

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        if explicit:
            raise PolicyError(f"{path}: policy file not found") from None
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UntrustedPolicy(
                f"{path}: refusing a policy that is a symlink; install the file itself there"
            ) from None
        raise PolicyError(f"{path}: cannot read policy: {exc.strerror}") from None
    try:
        _check_ownership(path, os.fstat(fd))
        why = untrusted_directories(path)
        if why:
            raise UntrustedPolicy(f"{path}: refusing the policy: {why}")
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read policy: {exc.strerror}") from None
    finally:
        os.close(fd)


def salvage_status_file(cli_path: str | None = None) -> str:
    """Where the daemon writes its status, from a policy that does not load: its
    report.status_file if the YAML still says so plainly, else the default. Only from a
    file that passed the ownership checks (read_trusted): never from a refused one."""
    path, _ = resolve_path(cli_path)
    try:
        data = read_trusted(path)
        value = yaml.safe_load(data or b"")["report"]["status_file"]
    except Exception:  # any way of being broken means: fall back to the default
        return ReportPolicy.status_file
    return value if isinstance(value, str) and os.path.isabs(value) else ReportPolicy.status_file


def _check_ownership(path: str, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise UntrustedPolicy(f"{path}: policy is not a regular file")
    if st.st_uid != 0:
        raise UntrustedPolicy(
            f"{path}: refusing a policy owned by uid {st.st_uid}; it must be owned by root"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UntrustedPolicy(
            f"{path}: refusing a policy writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run chmod go-w {path}"
        )




def read_plain(path: str) -> bytes:
    """A staged copy's bytes, for `validate FILE` only: no trust checks, never a symlink's
    target read as if it were the file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise PolicyError(f"{path}: policy file not found") from None
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read policy: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PolicyError(f"{path}: policy is not a regular file")
        chunks: list[bytes] = []
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read policy: {exc.strerror}") from None
    finally:
        os.close(fd)
