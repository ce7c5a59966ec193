"""Parse export lines into transactions; every rejected line goes to a dead-letter output.

Lines arrive as raw bytes with their file name so that non-UTF-8 bytes reject
one line instead of failing the bundle, and so that each file is read with its
own header (partners concatenate exports and reorder columns).
"""
from __future__ import annotations

import csv
import datetime as dt
import logging
import math
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import apache_beam as beam

from transforms import progress
from transforms.features import TYPE_CODES, Transaction

log = logging.getLogger(__name__)

DEAD_LETTER = "dead_letter"

# Reason codes of dead-letter rows (README "Failure handling").
MISSING_MEMBER_ID = "MISSING_MEMBER_ID"
PARTIAL_TRANSACTION = "PARTIAL_TRANSACTION"
BAD_TIMESTAMP = "BAD_TIMESTAMP"
UNKNOWN_TYPE = "UNKNOWN_TYPE"
BAD_NUMBER = "BAD_NUMBER"
NON_FINITE_NUMBER = "NON_FINITE_NUMBER"
WRONG_FIELD_COUNT = "WRONG_FIELD_COUNT"
MALFORMED_CSV = "MALFORMED_CSV"
NOT_UTF8 = "NOT_UTF8"
AFTER_AS_OF = "AFTER_AS_OF"
BLANK_LINE = "BLANK_LINE"
REASONS = (
    MISSING_MEMBER_ID, PARTIAL_TRANSACTION, BAD_TIMESTAMP, UNKNOWN_TYPE, BAD_NUMBER,
    NON_FINITE_NUMBER, WRONG_FIELD_COUNT, MALFORMED_CSV, NOT_UTF8, AFTER_AS_OF, BLANK_LINE,
)

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_NAIVE_EPOCH = dt.datetime(1970, 1, 1)
_ONE_US = dt.timedelta(microseconds=1)
BOM = b"\xef\xbb\xbf"


class FileLayout(NamedTuple):
    """What the parser needs to know about one input file, read from its header."""

    header: bytes | None  # the header line, BOM and line ending removed; None for headerless files
    n_fields: int
    member_id: int
    timestamp: int
    type: int
    points: int
    revenue: int


class Rejected(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def split_fields(line: str, delimiter: str) -> list[str]:
    if '"' not in line:
        return line.split(delimiter)
    return next(csv.reader([line], delimiter=delimiter, strict=True))


def parse_timestamp(text: str, formats: tuple[str, ...]) -> int:
    """Microseconds since the epoch, UTC. Naive times are UTC; offsets are converted."""
    for fmt in formats:
        try:
            parsed = dt.datetime.fromisoformat(text) if fmt == "iso" else dt.datetime.strptime(text, fmt)
        except ValueError:
            continue
        # Naive times are UTC: subtracting the naive epoch skips building an aware copy.
        return (parsed - (_EPOCH if parsed.tzinfo else _NAIVE_EPOCH)) // _ONE_US
    raise Rejected(BAD_TIMESTAMP, f"cannot parse timestamp {text!r}")


def end_of_day_us(as_of: dt.date) -> int:
    """The first microsecond after ``as_of`` (UTC): transactions from then on are AFTER_AS_OF."""
    day_after = dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time(), dt.timezone.utc)
    return (day_after - _EPOCH) // _ONE_US


def parse_number(text: str, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise Rejected(BAD_NUMBER, f"{column}: not a number: {text!r}") from None
    if not math.isfinite(value):
        raise Rejected(NON_FINITE_NUMBER, f"{column}: not finite: {text!r}")
    return value


def unknown_type(type_text: str, type_codes: Mapping[str, int]) -> Rejected:
    """The UNKNOWN_TYPE rejection, naming the spellings this partner accepts."""
    accepted = ", ".join(type_codes)
    return Rejected(UNKNOWN_TYPE, f"unknown transaction type {type_text!r}; accepted (any case): {accepted} "
                                  "(input.type_values)")


def parse_fields(
    fields: list[str], layout: FileLayout, formats: tuple[str, ...], last_day_us: int,
    type_codes: Mapping[str, int] = TYPE_CODES,
) -> tuple[str, Transaction | None]:
    """One row's fields -> (member id, transaction or None for a member-only row).

    ``type_codes`` is the partner's vocabulary (``InputConfig.type_codes``): trimmed,
    lower-cased spelling -> type code, so a type costs one dict lookup.
    """
    if len(fields) != layout.n_fields:
        raise Rejected(WRONG_FIELD_COUNT, f"expected {layout.n_fields} fields, got {len(fields)}")
    member_id = fields[layout.member_id].strip()
    values = [fields[layout.timestamp].strip(), fields[layout.type].strip(),
              fields[layout.points].strip(), fields[layout.revenue].strip()]
    if not member_id:
        raise Rejected(MISSING_MEMBER_ID, "member id is empty")
    if not all(values):
        if not any(values):
            return member_id, None
        missing = [name for name, v in zip(("timestamp", "type", "points", "revenue"), values, strict=True) if not v]
        raise Rejected(PARTIAL_TRANSACTION, f"missing {', '.join(missing)}")
    ts_text, type_text, points_text, revenue_text = values
    ts_us = parse_timestamp(ts_text, formats)
    type_code = type_codes.get(type_text.lower())
    if type_code is None:
        raise unknown_type(type_text, type_codes)
    points = parse_number(points_text, "points")
    revenue = parse_number(revenue_text, "revenue")
    if ts_us >= last_day_us:
        raise Rejected(AFTER_AS_OF, f"timestamp {ts_text!r} is after the as-of date")
    return member_id, Transaction(ts_us, type_code, points, revenue)


def dead_letter_row(source: str, raw: bytes, reason: str, detail: str) -> dict:
    return {
        "SOURCE": source,
        "RAW_LINE": raw.decode("utf-8", errors="backslashreplace"),
        "REASON": reason,
        "DETAIL": detail,
    }


class ParseLineFn(progress.TalliedDoFn):
    """(file name, raw line) -> (member id, Transaction | None), or a dead-letter row."""

    def __init__(
        self,
        layouts: dict[str, FileLayout],
        delimiter: str,
        timestamp_formats: Iterable[str],
        as_of: dt.date,
        reasons: Iterable[str] = REASONS,
        type_codes: Mapping[str, int] | None = None,
    ):
        self._layouts = layouts
        self._type_codes = dict(TYPE_CODES if type_codes is None else type_codes)
        self._delimiter = delimiter
        self._formats = tuple(timestamp_formats)
        self._last_day_us = end_of_day_us(as_of)
        # Counted per line in plain integers, handed to Beam in blocks (progress.Tally).
        # rows_read, bytes_read (with the input size: percent done) and the row kinds also
        # feed the heartbeat.
        live = ("rows_read", "bytes_read", "transactions", "member_only_rows", "dead_letter_rows")
        self.by_reason = {r: f"dead_letter_{r}" for r in reasons}
        self.tally = progress.Tally((*live, "header_lines", *self.by_reason.values()), live=live)

    def process(self, element: tuple[str, bytes]):
        source, raw = element
        counts = self.tally.counts
        self.tally.line()
        counts["bytes_read"] += len(raw) + 1
        layout = self._layouts[source]
        line = raw[3:] if raw.startswith(BOM) else raw
        line = line.rstrip(b"\r\n")
        if line == layout.header:
            counts["header_lines"] += 1
            return
        counts["rows_read"] += 1
        try:
            if not line.strip():
                raise Rejected(BLANK_LINE, "blank line")
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise Rejected(NOT_UTF8, f"invalid UTF-8 at byte {exc.start}") from None
            fields = self.fields(text, layout)
            member_id, txn = parse_fields(fields, layout, self._formats, self._last_day_us, self._type_codes)
        except Rejected as rej:
            counts["dead_letter_rows"] += 1
            counts[self.by_reason[rej.reason]] += 1
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter_row(source, raw, rej.reason, rej.detail))
            return
        if txn is None:
            counts["member_only_rows"] += 1
        else:
            counts["transactions"] += 1
        yield member_id, txn

    def fields(self, text: str, layout: FileLayout) -> list[str]:
        """One line's fields in the layout's column order (streaming also reads JSON here)."""
        try:
            return split_fields(text, self._delimiter)
        except csv.Error as exc:
            raise Rejected(MALFORMED_CSV, str(exc)) from None


class ParseExport(beam.PTransform):
    """Raw (file, line) pairs -> keyed transactions, with dead letters as a tagged output."""

    def __init__(self, layouts, delimiter, timestamp_formats, as_of, type_codes: Mapping[str, int] | None = None):
        super().__init__()
        self._fn = ParseLineFn(layouts, delimiter, timestamp_formats, as_of, type_codes=type_codes)

    def expand(self, lines):
        return lines | "ParseLine" >> beam.ParDo(self._fn).with_outputs(DEAD_LETTER, main="transactions")
