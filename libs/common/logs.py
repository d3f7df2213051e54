"""Structured JSON logs: one line per event, machine-parsable, secrets never included.

Use ``log_event(logger, "order.retry", correlation_id=..., ...)``: the event name is
the message and the keyword fields become top-level JSON keys.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
# extras that only duplicate the event for terminals (uvicorn's ANSI-coloured copy of its message)
_DROPPED = {"color_message"}
# credentials this process holds, as they would be written into a JSON line: masked in every line,
# whoever logs them (ccxt's debug log of a request carries the API key header)
_SECRETS: set[str] = set()
REDACTED = "***"


def redact(*secrets: str | None) -> None:
    """Register credentials that must never appear in a log line (short values are ignored:
    masking every "a" would only destroy the log)."""
    for secret in secrets:
        if secret and len(secret) >= 6:
            # as they stand in a JSON line: the value itself, or its repr inside a logged dict/tuple
            _SECRETS.update(json.dumps(form)[1:-1] for form in (secret, repr(secret)[1:-1]))


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key not in _DROPPED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        line = json.dumps(out, default=str, separators=(",", ":"))
        for secret in _SECRETS:
            line = line.replace(secret, REDACTED)
        return line


def setup_logging(service: str, level: str | None = None) -> logging.Logger:
    """Route the root logger to stderr as JSON lines; idempotent."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("LOG_LEVEL", "INFO")).upper())
    # third-party chatter that would drown the events we care about
    for noisy in ("uvicorn.access", "nats", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger(service)


def log_event(
    logger: logging.Logger, event: str, level: int = logging.INFO, *, exc_info: bool = False, **fields: Any
) -> None:
    if logger.isEnabledFor(level):
        # LogRecord attribute names (msg, args, module ...) cannot be extra keys: prefix them
        safe = {(f"f_{k}" if k in _RESERVED else k): v for k, v in fields.items()}
        logger.log(level, event, exc_info=exc_info, extra=safe)


class RateLimitedLog:
    """Log a recurring condition (NATS down, venue down) at most once per ``interval`` seconds."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger, self.interval = logger, interval
        self._last: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}

    def __call__(self, event: str, level: int = logging.WARNING, **fields: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(event, -1e9) >= self.interval:
            self._last[event] = now
            fields["suppressed"] = self.suppressed.pop(event, 0)
            log_event(self.logger, event, level, **fields)
        else:
            self.suppressed[event] = self.suppressed.get(event, 0) + 1
