"""structlog set-up: one event per line, JSON by default (docs/operations.md)."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}  # fmt: skip


def configure(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """(Re)configure logging; safe to call again on reload. Loggers are not
    cached, so a new level or format applies to every module at once."""
    renderer: structlog.typing.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        # One write() per event, newline included: print() wrote the event and
        # its newline apart, and a line of another process sharing the stream
        # (the successor of a SIGUSR2 hand-over, or the test reaper) could land
        # between them, leaving two events on one line (JSON no parser reads).
        logger_factory=structlog.WriteLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
