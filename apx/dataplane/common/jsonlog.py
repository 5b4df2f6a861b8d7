"""JSON-lines logging for the dataplane services; called once by each service's ``main``.

One object per line on stderr: ``time`` (UTC, milliseconds), ``level``,
``logger``, ``service``, ``message``, every ``extra={...}`` field the caller
passed, and ``error`` with the traceback when there is one. Plain text is kept
for local runs (``json_logs=False``). Either way every finished line goes
through ``redact.RedactingFormatter``: a Redis URL with a password inside an
exception text or an ``extra`` field leaves the process as ``user:***@``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from .redact import RedactingFormatter

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}
_NOISY = ("grpc", "asyncio", "redis", "google", "urllib3", "aiohttp.access")


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        seconds = int(record.created)
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "service": self.service,
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_"):
                entry[name] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(service: str, level: str = "INFO", json_logs: bool = True) -> None:
    """Route the root logger to stderr, as JSON lines unless ``json_logs`` is false."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = (
        JsonFormatter(service)
        if json_logs
        else logging.Formatter(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s")
    )
    handler.setFormatter(RedactingFormatter(formatter))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def env_flag(value: str | None, default: bool) -> bool:
    """Parse a boolean environment variable (``1/true/yes/on`` and ``0/false/no/off``)."""
    if value is None or not value.strip():
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}
