"""Structured logging, with a last line of defence against secrets in log lines."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# Any run of 5+ digits (a code, an account or phone number) that reached a log line anyway.
_DIGIT_RUN = re.compile(r"(?<![\w.:])\+?\d[\d\- ]{3,}\d(?![\w.:])")


def _mask(text: str) -> str:
    return _DIGIT_RUN.sub(lambda m: "*" * max(len(m.group()) - 2, 1) + m.group()[-2:], text)


def scrub_digits(
    _logger: object, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Mask long digit runs in every string value of a log event."""
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = _mask(value)
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
            event[key] = _mask(str(value))
    return event


def configure_logging(*, json: bool, level: str = "INFO") -> None:
    """Route structlog and stdlib logging through one pipeline."""
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            scrub_digits,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries log through stdlib logging (SQLAlchemy, aiosqlite, httpx …): the same scrubbing
    # and rendering, so a DEBUG level never prints a full phone or account number either.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                scrub_digits,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if getattr(h, "_eirc", False) is False]
    handler._eirc = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    # Libraries speak up only on warnings, unless the operator asked for DEBUG (SQLAlchemy would
    # otherwise log every statement at INFO).
    root.setLevel(logging.DEBUG if level.upper() == "DEBUG" else logging.WARNING)
