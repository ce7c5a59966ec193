"""Dict rows -> Parquet files, the Arrow tables built column-wise a few thousand rows at a time.

Not ``WriteToParquet``: in Beam 2.77 its ``_RowDictionariesToArrowTable`` moves
every value into its column list with a Python loop that also asks pyarrow for
the column's field (``schema.field(i)``) once per row and column: about 15 us a
row for the results, seconds of a features-only run. Here a chunk of rows
becomes a record batch in one pyarrow call (``RecordBatch.from_pylist``, which
also turns a column missing from a row into a null, as WriteToParquet does);
measured against ``itemgetter`` + ``zip`` + ``pa.array`` per column it was the
cheaper of the two. The bundle's record batches become one table, written by
``WriteToParquetBatched`` through the same sink, so file names, schema and row
groups (one per bundle, up to ``TABLE_BYTES``) are those WriteToParquet wrote.
"""
from __future__ import annotations

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.parquetio import WriteToParquetBatched
from apache_beam.transforms.window import GlobalWindows

from transforms.table_coder import ArrowTableCoder  # noqa: F401 - registers the coder of table elements

# Rows held as Python dicts before they become one Arrow record batch: big enough
# that pyarrow's per-call cost vanishes, small enough to stay in the CPU cache.
BATCH_ROWS = 4096
# A bundle's record batches are written as one table (one row group) up to this size,
# as WriteToParquet does; past it the table is emitted and a new one begun.
TABLE_BYTES = 64 * 1024 * 1024


class RowsToTablesFn(beam.DoFn):
    """Rows (dicts, or Arrow tables of them) of the global window -> one Arrow table per bundle
    (or per ``table_bytes``)."""

    def __init__(self, schema: pa.Schema, batch_rows: int = BATCH_ROWS, table_bytes: int = TABLE_BYTES):
        self._schema = schema
        self._batch_rows = batch_rows
        self._table_bytes = table_bytes

    def start_bundle(self):
        self._rows: list[dict] = []
        self._batches: list[pa.RecordBatch] = []
        self._bytes = 0

    def process(self, row):
        if isinstance(row, pa.Table):  # rows already as columns (the block reader's batched runs)
            table = row.select(self._schema.names).cast(self._schema)
            self._batches.extend(table.to_batches())
            self._bytes += table.nbytes
        else:
            self._rows.append(row)
        if len(self._rows) >= self._batch_rows:
            self._convert()
        if self._bytes >= self._table_bytes:
            yield self._take_table()

    def finish_bundle(self):
        if self._rows:
            self._convert()
        if self._batches:
            yield GlobalWindows.windowed_value_at_end_of_window(self._take_table())

    def _convert(self):
        batch = pa.RecordBatch.from_pylist(self._rows, schema=self._schema)
        self._rows = []
        self._batches.append(batch)
        self._bytes += batch.nbytes

    def _take_table(self) -> pa.Table:
        out = pa.Table.from_batches(self._batches, schema=self._schema)
        self._batches, self._bytes = [], 0
        return out


class WriteParquetRows(beam.PTransform):
    """Dict rows -> ``<prefix>-SSSSS-of-NNNNN.parquet`` files; no rows still gives one empty file."""

    def __init__(self, file_path_prefix: str, schema: pa.Schema, batch_rows: int = BATCH_ROWS,
                 table_bytes: int = TABLE_BYTES):
        super().__init__()
        self._prefix = file_path_prefix
        self._schema = schema
        self._to_tables = RowsToTablesFn(schema, batch_rows, table_bytes)

    def expand(self, rows):
        return (
            rows
            | "ToArrow" >> beam.ParDo(self._to_tables).with_output_types(pa.Table)
            | "Write" >> WriteToParquetBatched(self._prefix, self._schema, file_name_suffix=".parquet")
        )
