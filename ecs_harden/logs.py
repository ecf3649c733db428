"""structlog set-up: events on stderr, JSON lines unless a person is watching."""

from __future__ import annotations

import logging
import sys
from typing import Any

# structlog is imported when a log is set up or asked for: `ecs-harden gate` (the ECS
# agent's ExecStartPre) logs nothing and must start fast.

LEVELS = ("debug", "info", "warning", "error", "critical")


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
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get(name: str) -> Any:
    import structlog

    return structlog.get_logger(name)
