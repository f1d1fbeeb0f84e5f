"""Structured logging: JSON lines for launchd, systemd and log shippers; readable lines on a terminal.

uvicorn's and the libraries' stdlib logging goes through the same renderer, so every line of the
daemon's output has the same shape: timestamp, level, event, logger.
"""

from __future__ import annotations

import logging
import re
import sys

import structlog

_QUERY_TOKEN = re.compile(r"([?&](?:token|key|access_token)=)[^&\s\"']*", re.IGNORECASE)


class RedactTokens(logging.Filter):
    """uvicorn logs each WebSocket's path with its query string: a `?token=` (or a Gemini SDK's `?key=`,
    `?access_token=`) must never reach the logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            message = record.getMessage()
            redacted = _QUERY_TOKEN.sub(r"\1<redacted>", message)
            if redacted != message:
                record.msg, record.args = redacted, ()
        return True


class ClientFaultsAsWarnings(logging.Filter):
    """uvicorn logs a text frame of invalid UTF-8 as an error with a traceback, though it answers it as it
    should (close 1007): that is the client's fault, one a hostile client can repeat at will, so a warning."""

    MESSAGES = frozenset({"Invalid UTF-8 sequence received from client."})

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "uvicorn.error" and record.msg in self.MESSAGES:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


def configure_logging(level: str = "info", log_format: str = "auto") -> None:
    json_lines = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactTokens())
    handler.addFilter(ClientFaultsAsWarnings())
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    *([structlog.processors.format_exc_info] if json_lines else []), renderer],
    ))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
