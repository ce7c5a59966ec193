"""Errors a user can fix, shared by every layer so none needs another's error type."""
from __future__ import annotations


class ConfigError(Exception):
    """A start-up problem the user can fix (a partner file, a flag, an input): the CLI prints it
    as one line and exits 2."""
