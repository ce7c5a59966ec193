"""Log set-up: JSON lines carry severity, message and the call's extra fields; Beam's chatter is hidden."""
from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from beam_pipeline import logs


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name in logs.QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)


def test_json_lines_for_cloud_logging(restore_logging):
    stream = io.StringIO()
    logs.configure("INFO", "json", stream=stream)
    logging.getLogger("lantern.test").info("rows %d", 5, extra={"progress": {"percent": 12.5}})
    try:
        raise ValueError("bad")
    except ValueError:
        logging.getLogger("lantern.test").exception("failed")
    first, second = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert first["severity"] == "INFO" and first["message"] == "rows 5" and first["logger"] == "lantern.test"
    assert first["progress"] == {"percent": 12.5} and first["time"].endswith("+00:00")
    assert second["severity"] == "ERROR" and "ValueError: bad" in second["exception"]


def test_replaces_the_handler_basic_config_added_at_import(restore_logging, capsys):
    root = logging.getLogger()
    root.addHandler(logging.StreamHandler(sys.stderr))  # what logging.warning() at import leaves behind
    logs.configure("INFO", "text")
    logs.configure("INFO", "text")  # twice: still one line per record
    logging.getLogger("lantern.test").info("once")
    assert capsys.readouterr().err.count("once") == 1


def test_text_format_level_and_quiet_beam(restore_logging):
    stream = io.StringIO()
    logs.configure("WARNING", "text", stream=stream)
    logging.getLogger("lantern.test").info("hidden")
    logging.getLogger("lantern.test").warning("shown")
    logging.getLogger("apache_beam.runners").warning("beam warning")
    logs.configure("INFO", "text", stream=stream)
    logging.getLogger("apache_beam.runners").info("beam info stays hidden")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "WARNING lantern.test: shown" in lines[0] and "beam warning" in lines[1]
    logs.configure("DEBUG", "text", stream=stream)
    logging.getLogger("apache_beam.runners").debug("beam debug shown")
    assert "beam debug shown" in stream.getvalue()
