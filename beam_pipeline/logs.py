"""Log set-up of the launcher: plain text for a terminal, JSON lines for Cloud Logging.

A JSON line carries ``severity`` and ``message``, the two fields Cloud Logging
reads from a structured line, plus any ``extra={...}`` fields of the call (the
heartbeat puts its numbers there), so logs can be filtered by value.
Beam's and urllib3's own INFO chatter is hidden unless the level is DEBUG: an
operator wants the pipeline's lines, not the runner's internals.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import sys

FORMATS = ("text", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUIET_LOGGERS = ("apache_beam", "urllib3", "uvicorn", "matplotlib")

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, severity, logger, message, the extra fields, the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "severity": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


# Logged by ``import apache_beam`` itself (apache_beam.io imports its BigQuery module) on every
# install without the GCP extra, although nothing of BigQuery is used unless a GCP feature is.
_UNUSED_GCP_CLIENTS = "apitools not found, and bigquery client libraries are not available"


class UnusedGcpClientsFilter(logging.Filter):
    """Drops Beam's import-time warning about BigQuery clients a local install does not have."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "root" and str(record.msg).startswith(_UNUSED_GCP_CLIENTS))


def hide_unused_gcp_client_warning() -> None:
    """Install the filter on the root logger, before Beam is imported: the warning is logged
    through ``logging.warning``, the root logger's own record, so a filter there sees it."""
    root = logging.getLogger()
    if not any(isinstance(f, UnusedGcpClientsFilter) for f in root.filters):
        root.addFilter(UnusedGcpClientsFilter())


def _is_default_console(handler: logging.Handler) -> bool:
    return type(handler) is logging.StreamHandler and handler.stream in (sys.stderr, sys.stdout)


def configure(level: str = "INFO", fmt: str = "text", stream=None) -> None:
    """Send the root logger's records to ``stream`` (stderr) as ``fmt`` lines at ``level``.

    Replaces the handler an earlier call installed and the plain stderr handler
    ``logging.basicConfig`` adds when a library logs at import (Beam does), so no
    line is written twice; other handlers (pytest's, a file) stay.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.lantern = True
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "lantern", False) or _is_default_console(h)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    quiet = logging.DEBUG if level == "DEBUG" else logging.WARNING
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(quiet)
