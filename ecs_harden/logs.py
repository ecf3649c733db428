"""structlog set-up: events on stderr, JSON lines unless a person is watching."""

from __future__ import annotations

import logging
import sys
from typing import Any

# structlog is imported when a log is set up or asked for: `ecs-harden gate` (the ECS
# agent's ExecStartPre) logs nothing and must start fast.

LEVELS = ("debug", "info", "warning", "error", "critical")
# syslog priorities (sd-daemon(3)'s `<N>` prefixes): journald files each line at its level,
# so `journalctl -p err -u ecs-harden` shows the errors.
PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "exception": 3,
              "critical": 2, "fatal": 2}


def stderr_is_the_journal() -> bool:
    """Whether stderr is journald's stream: $JOURNAL_STREAM names its device and inode
    (systemd.exec(5)); a child that inherited the variable but not the stream does not match."""
    import os

    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(part) for part in value.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def _priority_prefix(_logger: Any, method: str, line: Any) -> Any:
    return f"<{PRIORITIES.get(method, 6)}>{line}"


def configure(fmt: str | None = None, level: str = "info") -> None:
    """fmt is 'json' or 'console'; None picks JSON unless stdout is a TTY (as SPEC says)."""
    import structlog

    if fmt is None:
        fmt = "console" if sys.stdout.isatty() else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    processors: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        renderer,
    ]
    if stderr_is_the_journal():  # never on a terminal, a pipe or in a report on stdout
        processors.append(_priority_prefix)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get(name: str) -> Any:
    import structlog

    return structlog.get_logger(name)
