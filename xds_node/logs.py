"""Logging setup shared by the CLI and every server worker: level, text or JSON lines, access log.

JSON lines (``log_format = "json"``) are for log shippers (journald, Loki, Splunk, CloudWatch):
one object per record with time, level, logger and message, via the maintained python-json-logger.
uvicorn is told not to configure logging itself, so its records (including the access log, when
``access_log = true``) go through the same handler in the same format.
"""

from __future__ import annotations

import logging
import sys

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _plain(record: logging.LogRecord) -> bool:
    """Drop uvicorn's terminal-colour copy of a message (escape codes in a JSON log are noise)."""
    record.__dict__.pop("color_message", None)
    return True


def setup_logging(level: str = "info", fmt: str = "text", *, access_log: bool = False) -> None:
    """Configure the root logger once per process (a later call replaces the handler)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                                           rename_fields={"asctime": "time", "levelname": "level",
                                                          "name": "logger"}))
    else:
        handler.setFormatter(logging.Formatter(_TEXT))
    handler.addFilter(_plain)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    if level != "debug":
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise
        logging.getLogger("alembic").setLevel(logging.WARNING)  # xds_node.migrations says what changed
    # uvicorn's own loggers propagate to ours; the access log only on demand
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.INFO if access_log else logging.WARNING)
    logging.getLogger("uvicorn.error").setLevel(max(logging.INFO, root.level))
