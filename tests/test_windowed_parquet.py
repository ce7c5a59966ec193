"""Windowed Parquet files: several windows closing in one bundle, and a late pane, all readable."""
from __future__ import annotations

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_stream
from apache_beam.transforms.window import TimestampedValue

from beam_pipeline.runners import streaming_local_runner
from transforms.windowed_parquet import WriteWindowedParquet

SCHEMA = pa.schema([("N", pa.int64()), ("WHERE", pa.string())])


def test_every_window_and_late_pane_gets_its_own_complete_file(tmp_path):
    on_time = [TimestampedValue({"N": i, "WHERE": "on_time"}, 10 * i) for i in range(30)]  # 5 windows of 60 s
    stream = (
        test_stream.TestStream()
        .add_elements(on_time)
        .advance_watermark_to(1000)  # all five windows close together
        .add_elements([TimestampedValue({"N": 100, "WHERE": "late"}, 5)])  # behind the watermark: a late pane
        .advance_processing_time(5)
        .advance_watermark_to_infinity()
    )
    with beam.Pipeline(runner=streaming_local_runner(), options=PipelineOptions(["--streaming"])) as p:
        p | stream | WriteWindowedParquet(str(tmp_path), SCHEMA, window_s=60)

    files = sorted(tmp_path.glob("part-*.parquet"))
    tables = [pq.read_table(f) for f in files]  # every file has its footer
    rows = [row for t in tables for row in t.to_pylist()]
    assert sorted(r["N"] for r in rows) == [*range(30), 100]
    assert len(files) == 6  # five windows, and the late row in a second pane of the first window
