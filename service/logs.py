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
from datetime import UTC, datetime

from service.config import LogFormat, Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
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
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(ExportToolingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
