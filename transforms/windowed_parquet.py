"""Windowed Parquet files for the streaming job: one file per window pane, named by window and pane.

Not ``WriteToParquet(triggering_frequency=...)``: in Beam 2.77 its sink keeps a
single file handle for all of a bundle's open writers
(``parquetio._ParquetSink.open`` stores ``self._file_handle``), so when two
windows close in the same bundle (a watermark jump, a drained backlog, the end
of a replay) one file is left without its footer, and the error is swallowed
(``iobase._WriteWindowedBundleDoFn.finish_bundle``). Nor ``fileio.WriteToFiles``:
it names files without the pane (``pane=None``), so a late pane overwrites the
window's on-time file. A pane is one GroupByKey firing, written here as one
file whose name is a function of window and pane only, so a retried write
replaces its own file and nothing else.
"""
from __future__ import annotations

import uuid

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms import trigger, window
from apache_beam.utils.timestamp import Duration

# A row reaches its window after the watermark only through clock skew (its
# event time is when it was decided); up to a day late it is written in a late
# pane, not dropped.
ALLOWED_LATENESS = Duration(seconds=86_400)


def pane_file_name(win, pane) -> str:
    """``part-<window start>-<window end>-pane<i>.parquet``, times in UTC."""
    start, end = (t.to_utc_datetime().strftime("%Y-%m-%dT%H:%M:%S") for t in (win.start, win.end))
    return f"part-{start}-{end}-pane{pane.index}.parquet"


class WritePaneFn(beam.DoFn):
    """(key, rows of one pane) -> that pane's Parquet file, written to a temporary name then renamed."""

    def __init__(self, folder: str, schema: pa.Schema):
        self._folder = folder
        self._schema = schema

    def process(self, element, win=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
        _, rows = element
        table = pa.Table.from_pylist(list(rows), schema=self._schema)
        name = pane_file_name(win, pane)
        final = FileSystems.join(self._folder, name)
        temp = FileSystems.join(self._folder, f".{name}.{uuid.uuid4().hex}.tmp")
        with FileSystems.create(temp) as handle:
            pq.write_table(table, handle)
        FileSystems.rename([temp], [final])
        yield final


class WriteWindowedParquet(beam.PTransform):
    """Rows -> one Parquet file per window of ``window_s`` seconds (and per late pane)."""

    def __init__(self, folder: str, schema: pa.Schema, window_s: int):
        super().__init__()
        self._folder = folder
        self._schema = schema
        self._window_s = window_s

    def expand(self, rows):
        return (
            rows
            | "Window" >> beam.WindowInto(
                window.FixedWindows(self._window_s),
                trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
                accumulation_mode=trigger.AccumulationMode.DISCARDING,
                allowed_lateness=ALLOWED_LATENESS,
            )
            | "OneKey" >> beam.Map(lambda row: (None, row))
            | "Pane" >> beam.GroupByKey()
            | "WriteFile" >> beam.ParDo(WritePaneFn(self._folder, self._schema))
        )
