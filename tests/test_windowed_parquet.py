"""Windowed Parquet files: rows spread over shards, written by window of processing time and at the end."""
from __future__ import annotations

import re

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_stream
from apache_beam.transforms.window import TimestampedValue

from beam_pipeline.runners import streaming_local_runner
from transforms import windowed_parquet
from transforms.windowed_parquet import BufferedRowCoder, WriteWindowedParquet, file_name, shard_of

SCHEMA = pa.schema([("ID", pa.string()), ("N", pa.int64())])
NAME = re.compile(r"part-(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)-(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)-shard(\d\d)-(\d{6})\.parquet")


def _rows(start: int, n: int) -> list[TimestampedValue]:
    return [TimestampedValue({"ID": f"M{i}", "N": i}, 1_000 + i) for i in range(start, start + n)]


def _write(stream, tmp_path, shards: int) -> list[tuple[str, list[dict]]]:
    with beam.Pipeline(runner=streaming_local_runner(), options=PipelineOptions(["--streaming"])) as p:
        p | stream | WriteWindowedParquet(str(tmp_path), SCHEMA, 60, "ID", shards, clock=lambda: 0.0)
    assert not list(tmp_path.glob(".*.tmp"))  # every file was renamed into place
    return [(f.name, pq.read_table(f).to_pylist()) for f in sorted(tmp_path.glob("part-*.parquet"))]


def test_rows_spread_over_shards_each_written_once_in_complete_files(tmp_path):
    stream = (
        test_stream.TestStream()
        .add_elements(_rows(0, 200))
        .advance_processing_time(61)  # each shard's window ends: its rows are written
        .add_elements(_rows(200, 50))
        .advance_watermark_to_infinity()  # the end (a drain): the rest is written without the clock
    )
    files = _write(stream, tmp_path, shards=8)
    written = sorted(row["N"] for _, rows in files for row in rows)
    assert written == list(range(250))  # nothing lost, nothing twice
    names = [NAME.fullmatch(name) for name, _ in files]
    assert all(names)
    assert len({m.group(3) for m in names}) == 8  # no single key: every shard wrote
    for match, (_, rows) in zip(names, files, strict=True):
        assert {shard_of(r["ID"], 8) for r in rows} == {int(match.group(3))}
    first_flush = {row["N"] for m, (_, rows) in zip(names, files, strict=True) if m.group(4) == "000000"
                   for row in rows}
    assert first_flush == set(range(200))  # written at the end of the window, before the rest arrived


def test_a_full_buffer_is_written_without_waiting(tmp_path, monkeypatch):
    monkeypatch.setattr(windowed_parquet, "MAX_BUFFERED_ROWS", 10)
    stream = test_stream.TestStream().add_elements(_rows(0, 25)).advance_watermark_to_infinity()
    files = _write(stream, tmp_path, shards=1)
    assert [len(rows) for _, rows in files] == [10, 10, 5]


def test_file_names_and_buffered_rows():
    assert file_name(1_764_000_000, 60, 3, 12) == "part-2025-11-24T16:00:00-2025-11-24T16:01:00-shard03-000012.parquet"
    coder = BufferedRowCoder()
    assert coder.decode(coder.encode((1.5, {"ID": "M1"}))) == (1.5, {"ID": "M1"})
    assert shard_of("M1", 16) == shard_of("M1", 16) < 16
