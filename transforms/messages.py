"""Streaming messages -> the batch parser: one export line, or a JSON object with the same fields.

A Pub/Sub message has no header, so its layout is the partner's five columns in
their configured order (member id, timestamp, type, points, revenue), then its
transaction-id column if it names one: exactly the line a partner's export would
hold for it. A message that starts with ``{`` is a JSON object keyed by the
partner's column names instead. Both end in the batch ``parse_fields`` rules and
reason codes, through ``ParseLineFn``.

Each parsed transaction leaves with its identity (``Arrival.txn_id``), which the
member's state uses to drop duplicates: the partner's transaction id if the
message carries one, else the publisher's id attribute (``--id-attribute``), else
the Pub/Sub message id (the same for every redelivery of one message). A replay of
an export has none of these unless the partner names a transaction-id column, so
by default it folds every row, as the batch job does.
"""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import apache_beam as beam

from lantern.errors import ConfigError
from lantern.features import Transaction
from lantern.partner import Columns, InputConfig
from transforms.parse import DEAD_LETTER, REASONS, FileLayout, ParseLineFn, Rejected, dead_letter_row, end_of_day_us

MALFORMED_JSON = "MALFORMED_JSON"  # a message that starts with "{" but is not a JSON object
UNKNOWN_ATTRIBUTE = "UNKNOWN_ATTRIBUTE"  # a message attribute the stream does not read
UNKNOWN_PARTNER = "UNKNOWN_PARTNER"  # a message whose `partner` attribute names another partner's layout
UNKNOWN_FORMAT = "UNKNOWN_FORMAT"  # a `format` attribute other than csv or json
MESSAGE_REASONS = (MALFORMED_JSON, UNKNOWN_ATTRIBUTE, UNKNOWN_PARTNER, UNKNOWN_FORMAT)
FIELDS = ("member_id", "timestamp", "type", "points", "revenue")

# Attributes a message may carry: `partner` (must name the job's partner), `format` (csv or
# json, else the first character decides), the --id-attribute, and Pub/Sub's own `googclient_*`.
PARTNER_ATTRIBUTE, FORMAT_ATTRIBUTE = "partner", "format"
FORMATS = ("csv", "json")


class Message(NamedTuple):
    """One message as the stream reads it, whatever its source."""

    source: str  # pubsub:SUBSCRIPTION, or the replayed file
    data: bytes
    attributes: Mapping[str, str] = {}
    message_id: str | None = None  # Pub/Sub's; the same for every redelivery


class Arrival(NamedTuple):
    """A parsed message on its way to its member's state."""

    txn: Transaction | None  # None: a member-only row
    txn_id: str | None  # the transaction's identity, for duplicates; None: never a duplicate
    source: str
    data: bytes  # the raw message, for a dead letter written later (a duplicate)


def message_layout(config: InputConfig) -> FileLayout:
    """The layout of a header-less message: the partner's ``header_columns`` if it has them,
    else its five columns in configured order, then its transaction-id column if any.
    A message equal to that header is skipped."""
    names = config.header_columns or [getattr(config.columns, f) for f in FIELDS]
    if config.transaction_id_column and config.transaction_id_column not in names:
        names = [*names, config.transaction_id_column]
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


def json_object(text: str) -> dict:
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise Rejected(MALFORMED_JSON, f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise Rejected(MALFORMED_JSON, "not a JSON object")
    return obj


def json_fields(obj: dict, columns: Columns, layout: FileLayout) -> list[str]:
    fields = [""] * layout.n_fields
    for name in FIELDS:
        fields[getattr(layout, name)] = _text(obj.get(getattr(columns, name)))
    return fields


class ParseMessageFn(ParseLineFn):
    """``Message`` -> (member id, ``Arrival``), or a dead-letter row.

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
        partner: str | None = None,
        id_attribute: str | None = None,
        transaction_id_column: str | None = None,
    ):
        self._fixed_as_of = as_of
        self._today = as_of or dt.datetime.now(dt.timezone.utc).date()
        super().__init__(layouts, delimiter, timestamp_formats, self._today, reasons=(*REASONS, *MESSAGE_REASONS),
                         type_codes=type_codes)
        self._columns = columns
        self._partner = partner
        self._id_attribute = id_attribute
        self._id_column = transaction_id_column
        self._id_index = {source: self._column_index(layout) for source, layout in layouts.items()}

    def _column_index(self, layout: FileLayout) -> int | None:
        if not self._id_column or layout.header is None:
            return None
        names = layout.header.decode("utf-8").split(self._delimiter)
        return names.index(self._id_column) if self._id_column in names else None

    def process(self, element: Message | tuple[str, bytes]):
        message = element if isinstance(element, Message) else Message(*element)
        if self._fixed_as_of is None:
            today = dt.datetime.now(dt.timezone.utc).date()
            if today != self._today:
                self._today, self._last_day_us = today, end_of_day_us(today)
        refused = self._refused(message.attributes)
        if refused is not None:
            self.tally.line()
            self.tally.counts["rows_read"] += 1
            self.tally.counts["dead_letter_rows"] += 1
            self.tally.counts[self.by_reason[refused.reason]] += 1
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter_row(
                message.source, message.data, refused.reason, str(refused)))
            return
        self._format = message.attributes.get(FORMAT_ATTRIBUTE)
        self._txn_id = None
        for out in super().process((message.source, message.data)):
            if isinstance(out, beam.pvalue.TaggedOutput):
                yield out
                continue
            member_id, txn = out
            yield member_id, Arrival(txn, self._identity(message) if txn is not None else None,
                                     message.source, message.data)

    def _refused(self, attributes: Mapping[str, str]) -> Rejected | None:
        for name, value in attributes.items():
            if name == PARTNER_ATTRIBUTE:
                if self._partner is not None and value != self._partner:
                    return Rejected(UNKNOWN_PARTNER, f"message for partner {value!r}; this stream reads "
                                                     f"{self._partner!r}")
            elif name == FORMAT_ATTRIBUTE:
                if value not in FORMATS:
                    return Rejected(UNKNOWN_FORMAT, f"format {value!r}: expected csv or json")
            elif name != self._id_attribute and not name.startswith("googclient_"):
                return Rejected(UNKNOWN_ATTRIBUTE, f"unknown attribute {name!r} (read: partner, format"
                                                   f"{', ' + self._id_attribute if self._id_attribute else ''})")
        return None

    def _identity(self, message: Message) -> str | None:
        if self._txn_id:
            return f"txn:{self._txn_id}"
        if self._id_attribute and message.attributes.get(self._id_attribute):
            return f"attr:{message.attributes[self._id_attribute]}"
        if message.message_id:
            return f"msg:{message.message_id}"
        return None

    def fields(self, text: str, layout: FileLayout) -> list[str]:
        as_json = text.lstrip().startswith("{") if self._format is None else self._format == "json"
        if as_json:
            obj = json_object(text)
            if self._id_column:
                self._txn_id = _text(obj.get(self._id_column)).strip() or None
            return json_fields(obj, self._columns, layout)
        fields = super().fields(text, layout)
        index = self._id_index.get(self._source)
        if index is not None and index < len(fields):
            self._txn_id = fields[index].strip() or None
        return fields

    def parse_line(self, source: str, raw: bytes):
        self._source = source
        return super().parse_line(source, raw)
