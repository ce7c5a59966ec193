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
from collections import deque
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from lantern.features import TYPE_CODES, Transaction
from lantern.member_table import SHARDS, MemberTable, shard_batches
from transforms import progress
from transforms.run_counts import COUNTS

log = logging.getLogger(__name__)

DEAD_LETTER = "dead_letter"
# Counter: the partial accumulators the block reader hands to the combine (about one per member and bundle).
MEMBER_ACCUMULATORS = "member_accumulators"

# Reason codes of dead-letter rows (docs/contract.md, docs/failure-handling.md).
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
        counted: Iterable[str] = (),
        counts_output: bool = False,
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
        self.tally = progress.Tally((*live, "header_lines", *self.by_reason.values(), *counted), live=live)
        self._counts_output = counts_output  # each bundle's counts also leave as data, tagged COUNTS

    def finish_bundle(self):
        super().finish_bundle()
        if self._counts_output:
            return [beam.pvalue.TaggedOutput(COUNTS, WindowedValue(dict(self.tally.totals), MIN_TIMESTAMP,
                                                                   _GLOBAL_WINDOWS))]
        return None

    def process(self, element: tuple[str, bytes]):
        source, raw = element
        self.tally.line()
        self.tally.counts["bytes_read"] += len(raw) + 1
        return self.parse_line(source, raw)

    def parse_line(self, source: str, raw: bytes):
        """One line (as ``ReadFromText`` gives it) -> (member id, Transaction | None) or a tagged dead letter."""
        counts = self.tally.counts
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
        self._fn = ParseLineFn(layouts, delimiter, timestamp_formats, as_of, type_codes=type_codes, counts_output=True)

    def expand(self, lines):
        return lines | "ParseLine" >> beam.ParDo(self._fn).with_outputs(DEAD_LETTER, COUNTS, main="transactions")


# --- Parsing a block of lines at once -----------------------------------------------------------
#
# The fast path below vouches only for rows it can parse exactly as ``parse_fields`` would:
# pure printable ASCII without quotes, the layout's field count, a member id, and either no
# transaction field or four canonical ones (timestamp ``YYYY-MM-DD HH:MM:SS``, a known type,
# plain decimal numbers, finite, before the as-of date). Every other line goes through
# ``ParseLineFn.parse_line``: one rule book for reasons, details and raw lines.

_NUMBER = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,3})?$"
_TS_LEN = 19

class TimestampLayout(NamedTuple):
    """A fixed-width timestamp format the fast path reads: where the digits of year, month, day,
    hour, minute and second are (in that order), and the separator byte at each other position."""

    digits: np.ndarray
    separators: tuple[tuple[int, int], ...]  # (position, byte), the date/time separator excluded


_YMD = TimestampLayout(np.array([0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]),
                       ((4, ord("-")), (7, ord("-")), (13, ord(":")), (16, ord(":"))))
_DMY = TimestampLayout(np.array([6, 7, 8, 9, 3, 4, 0, 1, 11, 12, 14, 15, 17, 18]),
                       ((2, ord("/")), (5, ord("/")), (13, ord(":")), (16, ord(":"))))
# The first timestamp format of a partner -> (layout, whether ``T`` may separate date and time).
# strptime reads other widths too (one-digit days, say): those rows go to the line parser.
_FAST_FORMATS = {"iso": (_YMD, True), "%Y-%m-%d %H:%M:%S": (_YMD, False), "%d/%m/%Y %H:%M:%S": (_DMY, False)}
_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])
_US_PER_S = 1_000_000
_ODD = np.ones(256, dtype=bool)  # bytes the fast path leaves to the line parser: non-ASCII, controls, quotes
_ODD[32:127] = False
_ODD[[9, 10, 13]] = False
_ODD[34] = True


class Lines(NamedTuple):
    """Where each line of a block starts and ends, as ``ReadFromText`` splits it: at ``\\n``,
    a ``\\r`` just before it belonging to the separator."""

    starts: np.ndarray
    ends: np.ndarray  # content end, the separator excluded

    def raw(self, block: bytes, i: int) -> bytes:
        return block[self.starts[i]:self.ends[i]]


def split_lines(block: bytes, data: np.ndarray) -> Lines:
    newlines = np.flatnonzero(data == 10)
    starts = np.concatenate(([0], newlines + 1))
    ends = np.concatenate((newlines, [len(block)]))
    if starts[-1] == len(block):  # the block ends with a separator: no line after it
        starts, ends = starts[:-1], ends[:-1]
    crlf = np.zeros(len(ends), dtype=bool)
    crlf[:len(newlines)] = (newlines > 0) & (data[np.maximum(newlines - 1, 0)] == 13)
    crlf[:len(newlines)] &= newlines - 1 >= starts[:len(newlines)]
    return Lines(starts, ends - crlf)


def timestamps_us(text: pa.Array, allow_t: bool, layout: TimestampLayout = _YMD) -> tuple[np.ndarray, np.ndarray]:
    """Canonical ``YYYY-MM-DD HH:MM:SS`` (or with ``T`` when ``allow_t``; or another ``layout``) ->
    (valid, µs since the epoch, UTC). Anything else is not valid here (the line parser decides)."""
    n = len(text)
    valid = np.zeros(n, dtype=bool)
    out = np.zeros(n, dtype=np.int64)
    if not n:
        return valid, out
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int32, count=n + 1, offset=text.offset * 4)
    data = np.frombuffer(text.buffers()[2], dtype=np.uint8)
    right_length = np.diff(offsets) == _TS_LEN
    rows = np.flatnonzero(right_length)
    if not len(rows):
        return valid, out
    chars = data[offsets[rows][:, None] + np.arange(_TS_LEN)].astype(np.int64)
    digits = chars[:, layout.digits] - 48
    ok = ((digits >= 0) & (digits <= 9)).all(axis=1)
    for position, byte in layout.separators:
        ok &= chars[:, position] == byte
    ok &= (chars[:, 10] == 32) | ((chars[:, 10] == 84) & allow_t)
    d = np.where(ok[:, None], digits, 0)
    year = d[:, 0] * 1000 + d[:, 1] * 100 + d[:, 2] * 10 + d[:, 3]
    month, day = d[:, 4] * 10 + d[:, 5], d[:, 6] * 10 + d[:, 7]
    hour, minute, second = d[:, 8] * 10 + d[:, 9], d[:, 10] * 10 + d[:, 11], d[:, 12] * 10 + d[:, 13]
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_days = _DAYS_IN_MONTH[np.clip(month, 0, 12)] + ((month == 2) & leap)
    ok &= (year >= 1) & (month >= 1) & (month <= 12) & (day >= 1) & (day <= month_days)
    ok &= (hour < 24) & (minute < 60) & (second < 60)
    # Days since 1970-01-01 in the proleptic Gregorian calendar (H. Hinnant's days_from_civil).
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + np.where(month > 2, -3, 9)) + 2) // 5 + day - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    valid[rows] = ok
    out[rows] = (days * 86400 + hour * 3600 + minute * 60 + second) * _US_PER_S
    return valid, out


def _fast_timestamps(formats: tuple[str, ...]) -> tuple[TimestampLayout, bool] | None:
    """The first format's (layout, whether it accepts ``T``), or None: the fast path cannot
    vouch for a timestamp that the first format would read."""
    return _FAST_FORMATS.get(formats[0])


class BlockRows(NamedTuple):
    """A block's rows the fast path vouched for, and the lines it left to the line parser."""

    members: pa.Array  # distinct member ids of the transactions (strings)
    codes: np.ndarray  # per transaction: index into ``members``
    ts_us: np.ndarray
    types: np.ndarray
    points: np.ndarray
    revenue: np.ndarray
    member_only: pa.Array  # member ids of member-only rows (repeats kept)
    slow: list[bytes]  # raw lines for ``ParseLineFn.parse_line``


def _all_slow(block: bytes, lines: Lines) -> BlockRows:
    empty = np.zeros(0, dtype=np.int64)
    none = pa.array([], pa.string())
    return BlockRows(none, empty, empty, empty, np.zeros(0), np.zeros(0), none,
                     [lines.raw(block, i) for i in range(len(lines.starts))])


def parse_block(
    block: bytes, layout: FileLayout, delimiter: str, formats: tuple[str, ...], last_day_us: int,
    type_codes: Mapping[str, int] = TYPE_CODES,
) -> BlockRows:
    """Whole lines of one file -> the rows the fast path vouches for, and the other lines, raw."""
    data = np.frombuffer(block, dtype=np.uint8)
    lines = split_lines(block, data)
    fast_format = _fast_timestamps(formats)
    n_lines = len(lines.starts)
    if not n_lines:
        return _all_slow(block, lines)
    if fast_format is None or block.count(b"\r") != block.count(b"\r\n"):
        return _all_slow(block, lines)  # a lone \r ends a row for pyarrow, not for ReadFromText
    # Per line: bytes the fast path does not handle (non-ASCII, controls, quotes) and delimiters.
    starts, ends = lines.starts, lines.ends
    delims = np.flatnonzero(data == ord(delimiter))
    n_delims = np.searchsorted(delims, ends) - np.searchsorted(delims, starts)
    odd = np.flatnonzero((data > 126) | (data < 32) | (data == 34))
    odd = odd[_ODD[data[odd]]]  # not the separators and tabs
    clean = np.ones(n_lines, dtype=bool)
    clean[np.searchsorted(starts, odd, "right") - 1] = False
    empty = ends == starts
    # pyarrow makes a row of each line with the layout's field count, and of each empty line.
    as_row = (n_delims == layout.n_fields - 1) | empty
    invalid = []
    names = [f"c{i}" for i in range(layout.n_fields)]
    wanted = [names[i] for i in (layout.member_id, layout.timestamp, layout.type, layout.points, layout.revenue)]
    try:
        table = pa_csv.read_csv(
            pa.py_buffer(block),
            read_options=pa_csv.ReadOptions(column_names=names, use_threads=False, block_size=len(block) + 1),
            parse_options=pa_csv.ParseOptions(delimiter=delimiter, quote_char=False, escape_char=False,
                                              ignore_empty_lines=False, newlines_in_values=False,
                                              invalid_row_handler=lambda row: invalid.append(row) or "skip"),
            convert_options=pa_csv.ConvertOptions(column_types=dict.fromkeys(wanted, pa.binary()),
                                                  include_columns=wanted, strings_can_be_null=False),
        )
    except (pa.ArrowInvalid, ValueError):
        return _all_slow(block, lines)
    row_lines = np.flatnonzero(as_row)
    if table.num_rows != len(row_lines):
        return _all_slow(block, lines)
    fast = clean[row_lines] & ~empty[row_lines]
    rows = np.flatnonzero(fast)
    cols = [pc.utf8_trim(table.column(name).take(rows).cast(pa.string()), " \t").combine_chunks()
            for name in wanted]
    member, ts_text, type_text, points_text, revenue_text = cols
    has_member = pc.greater(pc.binary_length(member), 0)
    if layout.header is not None:  # a repeated header is the line parser's to count
        header_member = layout.header.decode("utf-8", "replace").split(delimiter)[layout.member_id].strip()
        has_member = pc.and_(has_member, pc.not_equal(member, header_member))
    has_member = has_member.to_numpy(zero_copy_only=False)
    filled = np.stack([pc.greater(pc.binary_length(c), 0).to_numpy(zero_copy_only=False)
                       for c in (ts_text, type_text, points_text, revenue_text)])
    member_only = has_member & ~filled.any(axis=0)
    candidate = has_member & filled.all(axis=0)
    ts_ok, ts_us = timestamps_us(ts_text, fast_format[1], fast_format[0])
    type_index = pc.index_in(pc.ascii_lower(type_text), value_set=pa.array(list(type_codes)))
    type_ok = type_index.is_valid().to_numpy(zero_copy_only=False)
    type_code = np.asarray(list(type_codes.values()), dtype=np.int64)[type_index.fill_null(0).to_numpy()]
    numbers = []
    ok = candidate & ts_ok & type_ok & (ts_us < last_day_us)
    for text in (points_text, revenue_text):
        plain = pc.match_substring_regex(text, _NUMBER).to_numpy(zero_copy_only=False)
        value = np.zeros(len(text))
        use = np.flatnonzero(plain & ok)
        if len(use):
            try:
                value[use] = pc.cast(text.take(use), pa.float64()).to_numpy()
            except (pa.ArrowInvalid, ValueError):
                return _all_slow(block, lines)
        ok &= plain & np.isfinite(value)
        numbers.append(value)
    txn = np.flatnonzero(ok)
    encoded = member.take(txn).dictionary_encode()
    slow = np.ones(n_lines, dtype=bool)
    slow[row_lines[rows[ok | member_only]]] = False
    slow_lines = np.flatnonzero(slow)
    return BlockRows(
        members=encoded.dictionary,
        codes=encoded.indices.to_numpy().astype(np.int64),
        ts_us=ts_us[txn], types=type_code[txn], points=numbers[0][txn], revenue=numbers[1][txn],
        member_only=member.filter(pa.array(member_only)),
        slow=[lines.raw(block, i) for i in slow_lines],
    )


PARSE_THREADS = 2  # blocks parsed at once, ahead of the fold
_GLOBAL_WINDOWS = (GlobalWindow(),)  # one tuple for every drained member: building it was ~1 µs a member


class ParseBlocksFn(ParseLineFn):
    """(file name, block of whole lines) -> (member id, packed partial accumulator), or dead letters.

    Each block is parsed in one call (``parse_block``), on a small thread pool that parses the
    next blocks while this thread folds the last one (pyarrow and numpy let go of the GIL);
    blocks are folded in the order they came. Lines the fast path does not vouch for go
    through ``parse_line``. All of a bundle's rows are folded into one ``MemberTable``,
    drained when the bundle ends (or when it holds ``max_members``): one accumulator per member
    per bundle goes to ``CombinePerKey(MemberFeaturesFn)``, not one value per row.
    """

    def __init__(self, layouts, delimiter, timestamp_formats, as_of, type_codes: Mapping[str, int] | None = None,
                 max_members: int = 4_000_000, buffer_rows: int | None = None, shards: int = SHARDS,
                 counts_output: bool = False):
        super().__init__(layouts, delimiter, timestamp_formats, as_of, type_codes=type_codes,
                         counted=(MEMBER_ACCUMULATORS,), counts_output=counts_output)
        self._max_members = max_members
        self._shards = shards
        self._buffer_rows = buffer_rows

    def setup(self):
        # Blocks are parsed ahead on other threads: pyarrow and numpy let go of the GIL for most
        # of parse_block, so a second core works while this thread folds and reads on.
        self._pool = ThreadPoolExecutor(max_workers=PARSE_THREADS, thread_name_prefix="parse-block")

    def teardown(self):
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def start_bundle(self):
        super().start_bundle()
        if getattr(self, "_pool", None) is None:  # setup() not called (a DoFn driven by hand)
            self.setup()
        self._table = MemberTable() if self._buffer_rows is None else MemberTable(buffer_rows=self._buffer_rows)
        self._ahead: deque[tuple[str, Future]] = deque()

    def process(self, element: tuple[str, bytes]):
        source, block = element
        self.tally.counts["bytes_read"] += len(block)
        self._ahead.append((source, self._pool.submit(
            parse_block, block, self._layouts[source], self._delimiter, self._formats, self._last_day_us,
            self._type_codes)))
        while len(self._ahead) > PARSE_THREADS:  # keep the threads busy, in block order
            source, parsed = self._ahead.popleft()
            yield from self._fold(source, parsed.result())

    def _fold(self, source: str, rows: BlockRows):
        """A parsed block into the bundle's table; its lines the fast path left go through parse_line."""
        counts = self.tally.counts
        table = self._table
        n_txn, n_idle = len(rows.codes), len(rows.member_only)
        counts["rows_read"] += n_txn + n_idle
        counts["transactions"] += n_txn
        counts["member_only_rows"] += n_idle
        table.add(rows.members, rows.codes, rows.ts_us, rows.types, rows.points, rows.revenue)
        table.add_members(rows.member_only)
        slow_members: dict[str, int] = {}
        slow_txns: list[tuple[int, Transaction]] = []
        for raw in rows.slow:
            for out in self.parse_line(source, raw):
                if isinstance(out, beam.pvalue.TaggedOutput):
                    yield out
                    continue
                member_id, txn = out
                code = slow_members.setdefault(member_id, len(slow_members))
                if txn is not None:
                    slow_txns.append((code, txn))
        if slow_members:
            table.add_members(list(slow_members))
            if slow_txns:
                codes, txns = zip(*slow_txns, strict=True)
                table.add(list(slow_members), np.asarray(codes, dtype=np.int64),
                          np.asarray([t.ts_us for t in txns], dtype=np.int64),
                          np.asarray([t.type_code for t in txns], dtype=np.int64),
                          np.asarray([t.points for t in txns], dtype=np.float64),
                          np.asarray([t.revenue for t in txns], dtype=np.float64))
        self.tally.flush()
        if len(table) >= self._max_members:
            table.flush()
            counts[MEMBER_ACCUMULATORS] += len(table)
            yield from shard_batches(table.drain(), self._shards)

    def finish_bundle(self):
        while self._ahead:  # the blocks still being parsed: their outputs leave as windowed values
            source, parsed = self._ahead.popleft()
            for out in self._fold(source, parsed.result()):
                if isinstance(out, beam.pvalue.TaggedOutput):
                    yield beam.pvalue.TaggedOutput(out.tag, WindowedValue(out.value, MIN_TIMESTAMP, _GLOBAL_WINDOWS))
                else:
                    yield WindowedValue(out, MIN_TIMESTAMP, _GLOBAL_WINDOWS)
        self._table.flush()
        self.tally.counts[MEMBER_ACCUMULATORS] += len(self._table)
        for batch in shard_batches(self._table.drain(), self._shards):
            yield WindowedValue(batch, MIN_TIMESTAMP, _GLOBAL_WINDOWS)
        yield from super().finish_bundle() or ()


class ParseExportBlocks(beam.PTransform):
    """(file, block) pairs -> (member id, packed partial accumulator), with dead letters as a tagged output."""

    def __init__(self, layouts, delimiter, timestamp_formats, as_of, type_codes: Mapping[str, int] | None = None,
                 shards: int = SHARDS):
        super().__init__()
        self._fn = ParseBlocksFn(layouts, delimiter, timestamp_formats, as_of, type_codes=type_codes, shards=shards,
                                 counts_output=True)

    def expand(self, blocks):
        # Typed so the shuffle carries (shard, batch) with Beam's own coders, not pickled tuples.
        parse = beam.ParDo(self._fn).with_output_types(tuple[int, bytes])
        return blocks | "ParseBlock" >> parse.with_outputs(DEAD_LETTER, COUNTS, main="transactions")
