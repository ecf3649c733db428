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
