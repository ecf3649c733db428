"""The exceptions that the command line turns into exit codes."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_DRIFT = 3


class HardenError(Exception):
    """Base of every error ecs-harden reports itself."""

    exit_code = EXIT_FAILURE


class UsageError(HardenError):
    """Bad usage or an invalid policy: nothing was changed."""

    exit_code = EXIT_USAGE


class PolicyError(UsageError):
    """The policy file is invalid; the message names the key and the line."""


class RuntimeFailure(HardenError):
    """A tool failed, a privilege is missing, a file could not be written."""


class RefusedLink(RuntimeFailure):
    """A symlink ecs-harden will not write through: dangling, or not root's (trust)."""


UNIT = "ecs-harden.service"


def read_only_hint(directory: str) -> str:
    """Why a write may fail with EROFS on a host where the file system is writable."""
    return (
        f" (read-only file system: when {UNIT} runs this, its sandbox (ProtectSystem=strict) "
        f"must list {directory} in ReadWritePaths=; add a drop-in)"
    )
