"""One object per SDK process for every instance of a DoFn, closed when the last instance lets go.

A Beam worker process runs many instances of one DoFn, on threads (Dataflow runs
several per process; the local runner's ``multi_threading`` mode does too). What
must hold per process, such as the endpoint client with its rate cap, adaptive
limits and throttler, is made once here by the first instance's ``setup`` and
shared by the others. Beam's ``apache_beam.utils.shared.Shared`` does the sharing
but never closes what it shares, and keeps one object alive after its last user;
the endpoint client holds an event-loop thread and open connections, so here the
users are counted and the last ``release`` closes it.
"""
from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

_lock = threading.Lock()
_held: dict[str, list] = {}  # key -> [object, users]


class ProcessShared:
    """A handle made at pipeline construction and pickled with the DoFn: every copy of it in
    one process acquires the same object."""

    def __init__(self):
        self._key = uuid.uuid4().hex

    def acquire(self, make: Callable[[], Any]) -> Any:
        """The process's object, made by ``make`` for its first user."""
        with _lock:
            entry = _held.get(self._key)
            if entry is None:
                entry = _held[self._key] = [make(), 0]
            entry[1] += 1
            return entry[0]

    def release(self, close: Callable[[Any], None]) -> None:
        """One user fewer; the last one closes the object with ``close``."""
        with _lock:
            entry = _held.get(self._key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del _held[self._key]
        close(entry[0])

    def users(self) -> int:
        with _lock:
            entry = _held.get(self._key)
            return 0 if entry is None else entry[1]
