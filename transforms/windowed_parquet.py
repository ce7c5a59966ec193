"""Windowed Parquet files for the streaming job: rows buffered per shard, written every window.

Rows are spread over ``shards`` keys (a hash of one column, the member id for
results), so no window's rows meet on one key. Each shard buffers its rows in
state and writes them when its window ends in processing time, and once more
when the watermark reaches the end of the global window: a drain, or the end of
a replay. No event-time window and no allowed lateness are involved, so an update
emitted by a timer during a drain (after the watermark has reached the end) is
still written: nothing can be "too late" for this sink.

Each flush writes one file per window a buffered row was received in, named
``part-<window start>-<window end>-shard<NN>-<seq>.parquet`` (UTC), ``seq``
counting the shard's files in state: a retried flush reads the same state and
writes the same names, so it replaces its own files and nothing else. A file is
written to a temporary name then renamed, so a reader never sees half of one.

Not ``WriteToParquet(triggering_frequency=...)``: in Beam 2.77 its sink keeps a
single file handle for all of a bundle's open writers, so when two windows close
in one bundle one file is left without its footer. Nor ``fileio.WriteToFiles``,
which names files without the pane.
"""
from __future__ import annotations

import pickle
import time
import uuid
import zlib
from collections import defaultdict
from collections.abc import Callable

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp

from lantern.state_version import framed, payload
from transforms import NAMESPACE
from transforms.features import StatelessCoder

DEFAULT_SHARDS = 16
MAX_BUFFERED_ROWS = 20_000  # a shard writes at once past this many rows, whatever the clock says


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def file_name(window_start: int, window_s: int, shard: int, seq: int) -> str:
    """``part-<window start>-<window end>-shard<NN>-<seq>.parquet``, times in UTC."""
    return f"part-{_utc(window_start)}-{_utc(window_start + window_s)}-shard{shard:02d}-{seq:06d}.parquet"


def shard_of(value, shards: int) -> int:
    """A stable shard for a value (not Python's salted ``hash``): the same on every worker."""
    return zlib.crc32(str(value).encode("utf-8")) % shards


class BufferedRowCoder(StatelessCoder):
    """(received at, row) as pickled bytes behind the state layout version."""

    def encode(self, value) -> bytes:
        return framed(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))

    def decode(self, data: bytes):
        return pickle.loads(payload(data, "a buffered output row"))  # noqa: S301 - rows this job buffered itself


class FileCountCoder(StatelessCoder):
    def encode(self, value: int) -> bytes:
        return framed(value.to_bytes(8, "big"))

    def decode(self, data: bytes) -> int:
        return int.from_bytes(payload(data, "a shard's file count"), "big")


class WriteShardFn(beam.DoFn):
    """(shard, row) -> rows buffered in the shard's state, written as Parquet files by window.

    ``clock`` is the processing time the flush timer is set from: ``time.time`` in a real
    stream; a TestStream, whose simulated processing time starts at 0, passes ``lambda: 0.0``.
    The window a row belongs to is always the wall-clock time it reached the sink.
    """

    ROWS = BagStateSpec("rows", BufferedRowCoder())
    COUNT = ReadModifyWriteStateSpec("buffered", FileCountCoder())
    FILES = ReadModifyWriteStateSpec("files", FileCountCoder())
    FLUSH = TimerSpec("flush", TimeDomain.REAL_TIME)
    END = TimerSpec("end", TimeDomain.WATERMARK)

    def __init__(self, folder: str, schema: pa.Schema, window_s: int, clock: Callable[[], float] = time.time):
        self._folder = folder
        self._schema = schema
        self._window_s = window_s
        self._clock = clock
        self.files = Metrics.counter(NAMESPACE, "stream_files_written")

    def process(
        self,
        element,
        rows=beam.DoFn.StateParam(ROWS),
        count=beam.DoFn.StateParam(COUNT),
        files=beam.DoFn.StateParam(FILES),
        flush=beam.DoFn.TimerParam(FLUSH),
        end=beam.DoFn.TimerParam(END),
    ):
        shard, row = element
        rows.add((time.time(), row))
        buffered = (count.read() or 0) + 1
        if buffered == 1:
            now = self._clock()
            flush.set(Timestamp((now // self._window_s + 1) * self._window_s))
            end.set(GlobalWindow().max_timestamp())
        if buffered >= MAX_BUFFERED_ROWS:
            yield from self._flush(shard, rows, count, files)
            flush.clear()
            return
        count.write(buffered)

    @on_timer(FLUSH)
    def on_flush(self, key=beam.DoFn.KeyParam, rows=beam.DoFn.StateParam(ROWS),
                 count=beam.DoFn.StateParam(COUNT), files=beam.DoFn.StateParam(FILES)):
        yield from self._flush(key, rows, count, files)

    @on_timer(END)
    def on_end(self, key=beam.DoFn.KeyParam, rows=beam.DoFn.StateParam(ROWS),
               count=beam.DoFn.StateParam(COUNT), files=beam.DoFn.StateParam(FILES),
               flush=beam.DoFn.TimerParam(FLUSH)):
        yield from self._flush(key, rows, count, files)
        flush.clear()

    def _flush(self, shard: int, rows, count, files):
        by_window: dict[int, list[dict]] = defaultdict(list)
        for received, row in rows.read():
            by_window[int(received // self._window_s) * self._window_s].append(row)
        rows.clear()
        count.clear()
        if not by_window:
            return
        seq = files.read() or 0
        for start in sorted(by_window):
            yield self._write(by_window[start], file_name(start, self._window_s, shard, seq))
            seq += 1
        files.write(seq)

    def _write(self, rows: list[dict], name: str) -> str:
        table = pa.Table.from_pylist(rows, schema=self._schema)
        final = FileSystems.join(self._folder, name)
        temp = FileSystems.join(self._folder, f".{name}.{uuid.uuid4().hex}.tmp")
        with FileSystems.create(temp) as handle:
            pq.write_table(table, handle)
        FileSystems.rename([temp], [final])
        self.files.inc()
        return final


class WriteWindowedParquet(beam.PTransform):
    """Rows -> Parquet files per window of ``window_s`` seconds, from ``shards`` shards keyed on ``shard_column``."""

    def __init__(self, folder: str, schema: pa.Schema, window_s: int, shard_column: str,
                 shards: int = DEFAULT_SHARDS, clock: Callable[[], float] = time.time):
        super().__init__()
        self._folder = folder
        self._schema = schema
        self._window_s = window_s
        self._column = shard_column
        self._shards = shards
        self._clock = clock

    def expand(self, rows):
        column, shards = self._column, self._shards
        return (
            rows
            | "Shard" >> beam.Map(lambda row: (shard_of(row.get(column), shards), row)).with_output_types(
                beam.typehints.KV[int, beam.typehints.Any])
            | "WriteShards" >> beam.ParDo(WriteShardFn(self._folder, self._schema, self._window_s, self._clock))
        )
