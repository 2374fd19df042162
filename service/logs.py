"""Logging for the API, the worker and the CLI: one handler on the root logger, plain text for
people or JSON lines for a log pipeline (`TAGFLOW_LOG_FORMAT`).

Every process configures it once at start. Uvicorn is told not to configure logging itself,
so its own loggers reach the same handler, and the service's INFO lines (a model swapped in,
a cut recalibrated) are not lost to Python's default of warnings only.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from redis.exceptions import RedisError

from service.config import LogFormat, Settings
from service.db import is_outage

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# Line breaks and other control characters, as escapes: messages carry text from requests (a
# prediction id from the path, a database's error about a value), and a line break in one
# would start a forged record, "2026-12-05 ... ERROR ..." on a line of its own. A terminal
# escape (ESC) could rewrite what a reader's terminal shows.
_CONTROL = [*range(0x20), 0x7F, 0x85, 0x2028, 0x2029]
ESCAPES = {c: chr(c).encode("unicode_escape").decode() for c in _CONTROL if c != ord("\t")}
ORT_TOOLING = f"{os.sep}onnxruntime{os.sep}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, and the
    traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`TEXT_FORMAT`, a record per line: control characters in the message are escaped (a
    traceback after it keeps its lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record).translate(ESCAPES)


class ExportToolingFilter(logging.Filter):
    """Drops what onnxruntime's Python tooling logs below ERROR.

    That tooling (the graph optimizer and the quantizer) runs once, when the encoder is exported
    on first start, and logs about 60 INFO lines on the root logger, one per tensor it leaves
    as float on purpose, plus a hint to pre-process that does not apply to this model. The
    runtime itself logs from C++, not through Python's logging, so nothing else is hidden.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or ORT_TOOLING not in record.pathname


def configure_logging(settings: Settings) -> None:
    """Replace the root logger's handlers with one to stderr in the configured format."""
    handler = logging.StreamHandler(sys.stderr)
    json_lines = settings.log_format == LogFormat.JSON
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter(TEXT_FORMAT))
    handler.addFilter(ExportToolingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)


# Work that keeps failing the same way is logged again after this long, not every round.
REPEAT_LOG_S = 60.0


def exception_line(exc: BaseException) -> str:
    """An exception as one log line: its type and the first line of its message (a database
    error's message goes on with the statement and its parameters)."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


@dataclass
class RepeatedFailures:
    """Recurring work (a background step of the API, the prediction log's flush) and how it
    has been failing: what the log has said of it, and when."""

    what: str
    logger: logging.Logger
    level: int = logging.ERROR  # of the failure lines (a recovery is INFO)
    every_s: float = REPEAT_LOG_S  # how often a failure that goes on is said again
    count: int = 0
    said: str = ""
    said_at: float = 0.0

    def failed(self, exc: Exception, *, now: float, detail: str = "") -> None:
        """Log a failure: with its traceback when it is new, a line when it is an outage (the
        database or Redis away), and a repeat at most every `every_s` (during an outage,
        each round logged a traceback: thousands of lines a minute). `detail` is appended."""
        self.count += 1
        text = exception_line(exc)
        if text == self.said and now - self.said_at < self.every_s:
            return
        # The traceback once, for a failure that is new and not an outage.
        quiet = text == self.said or is_outage(exc) or isinstance(exc, RedisError)
        repeats = f" (failing for {self.count} rounds)" if self.count > 1 else ""
        self.logger.log(
            self.level,
            "%s failed%s: %s%s",
            self.what,
            repeats,
            text,
            detail,
            exc_info=None if quiet else exc,
        )
        self.said, self.said_at = text, now

    def succeeded(self, detail: str = "") -> None:
        """The work was done: say so if it had been failing, and start counting afresh."""
        if self.count:
            self.logger.info(
                "%s works again after %d failed rounds%s", self.what, self.count, detail
            )
        self.count, self.said = 0, ""


# Keys a `RequestRefusals` remembers at most; past this it starts afresh (keys are error
# kinds and outage reasons, a handful in practice, but a reason carries a server's text).
MAX_REFUSAL_KEYS = 256


@dataclass
class RequestRefusals:
    """Lines the API logs when it refuses requests for a reason of its own (no model, an
    overload, the database away): each reason once, then at most every `every_s` with how
    many refusals went unlogged since. With no model, every 503 was a line, 1,778 in 20
    seconds under a client's retries. Used by the exception handlers, which all run on the
    event loop, so it takes no lock."""

    logger: logging.Logger
    every_s: float = REPEAT_LOG_S
    # reason -> (when it was last logged, refusals since then not logged)
    _said: dict[str, tuple[float, int]] = field(default_factory=dict)

    def refused(self, level: int, reason: str, message: str, now: float | None = None) -> None:
        """Log `message` unless `reason` was logged less than `every_s` ago (then count it)."""
        now = time.monotonic() if now is None else now
        said_at, unsaid = self._said.get(reason, (float("-inf"), 0))
        if now - said_at < self.every_s:
            self._said[reason] = (said_at, unsaid + 1)
            return
        if len(self._said) >= MAX_REFUSAL_KEYS:
            self._said.clear()
        if unsaid:
            message += f" (and {unsaid} more since its last line, not logged)"
        self.logger.log(level, "%s", message)
        self._said[reason] = (now, 0)
