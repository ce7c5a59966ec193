"""Streaming messages -> the batch parser: one export line, or a JSON object with the same fields.

A Pub/Sub message has no header, so its layout is the partner's five columns in
their configured order (member id, timestamp, type, points, revenue): exactly
the line a partner's export would hold for it. A message that starts with
``{`` is a JSON object keyed by the partner's column names instead. Both end in
the batch ``parse_fields`` rules and reason codes, through ``ParseLineFn``.
"""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping

from lantern.errors import ConfigError
from lantern.partner import Columns, InputConfig
from transforms.parse import REASONS, FileLayout, ParseLineFn, Rejected, end_of_day_us

MALFORMED_JSON = "MALFORMED_JSON"  # a message that starts with "{" but is not a JSON object
FIELDS = ("member_id", "timestamp", "type", "points", "revenue")


def message_layout(config: InputConfig) -> FileLayout:
    """The layout of a header-less message: the partner's ``header_columns`` if it has them,
    else its five columns in configured order. A message equal to that header is skipped."""
    names = config.header_columns or [getattr(config.columns, f) for f in FIELDS]
    missing = [getattr(config.columns, f) for f in FIELDS if getattr(config.columns, f) not in names]
    if missing:
        raise ConfigError(f"input.header_columns has no column {missing[0]!r} (see input.columns)")
    index = {f: names.index(getattr(config.columns, f)) for f in FIELDS}
    return FileLayout(config.delimiter.join(names).encode("utf-8"), len(names), **index)


def _text(value) -> str:
    """A JSON value as the export would spell it; anything odd fails the export's own checks."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)  # NaN and Infinity (accepted by json) fail as NON_FINITE_NUMBER
    return json.dumps(value)


def json_fields(text: str, columns: Columns, layout: FileLayout) -> list[str]:
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise Rejected(MALFORMED_JSON, f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise Rejected(MALFORMED_JSON, "not a JSON object")
    fields = [""] * layout.n_fields
    for name in FIELDS:
        fields[getattr(layout, name)] = _text(obj.get(getattr(columns, name)))
    return fields


class ParseMessageFn(ParseLineFn):
    """(source, raw message) -> (member id, Transaction | None), or a dead-letter row.

    ``as_of=None`` means "today" for a stream that runs for days: a transaction
    is AFTER_AS_OF when it is dated after the UTC date it is parsed on.
    """

    def __init__(
        self,
        layouts: dict[str, FileLayout],
        columns: Columns,
        delimiter: str,
        timestamp_formats: Iterable[str],
        as_of: dt.date | None,
        type_codes: Mapping[str, int] | None = None,
    ):
        self._fixed_as_of = as_of
        self._today = as_of or dt.datetime.now(dt.timezone.utc).date()
        super().__init__(layouts, delimiter, timestamp_formats, self._today, reasons=(*REASONS, MALFORMED_JSON),
                         type_codes=type_codes)
        self._columns = columns

    def process(self, element: tuple[str, bytes]):
        if self._fixed_as_of is None:
            today = dt.datetime.now(dt.timezone.utc).date()
            if today != self._today:
                self._today, self._last_day_us = today, end_of_day_us(today)
        return super().process(element)

    def fields(self, text: str, layout: FileLayout) -> list[str]:
        if text.lstrip().startswith("{"):
            return json_fields(text, self._columns, layout)
        return super().fields(text, layout)

