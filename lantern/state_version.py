"""The layout version of everything the pipeline keeps as coded state: one number, in one place.

Every state and accumulator coder (``transforms.features``, ``transforms.member_state``)
writes one leading byte, ``STATE_VERSION``, before its payload, and reads a payload only
through ``payload``: state written by a layout this code does not know is refused with one
readable line (``StateVersionError``), never misread. docs/streaming.md ("Upgrading a running
stream") describes how a layout change is rolled out.
"""
from __future__ import annotations

from lantern.errors import ConfigError

STATE_VERSION = 1  # bump when any coded layout changes, and keep a reader for the old one
_HEADER = bytes((STATE_VERSION,))


class StateVersionError(ConfigError):
    """Coded state of a layout version this code cannot read: read at launch (a state folder), the CLI
    prints it as one line and exits 2; met by a running stream, the transaction is dead-lettered."""


def framed(payload_bytes: bytes) -> bytes:
    """The payload behind the current version byte."""
    return _HEADER + payload_bytes


def version_of(data: bytes) -> int:
    if not data:
        raise StateVersionError("empty state: no layout version byte")
    return data[0]


def payload(data: bytes, what: str, readable: tuple[int, ...] = (STATE_VERSION,)) -> bytes:
    """The payload of ``data`` if its version is one of ``readable``, else a one-line refusal."""
    version = version_of(data)
    if version not in readable:
        raise StateVersionError(
            f"{what} was written with state layout version {version}; this version of Lantern reads "
            f"{', '.join(map(str, readable))} (docs/streaming.md, upgrading a running stream)")
    return data[1:]
