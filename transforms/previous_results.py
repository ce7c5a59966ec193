"""A published run's results, read back for a retry: rows to keep, and FAILED members to call again.

The results are read as Arrow tables (``ReadFromParquetBatched``, through Beam's
FileSystems, so gs:// works on Dataflow as locally). Rows that did not fail stay
tables from end to end and are written back unchanged; only the FAILED rows
become members, with the features the previous run computed, for
``CallEndpoints``.
"""
from __future__ import annotations

from collections.abc import Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.parquetio import ReadFromParquetBatched
from apache_beam.metrics import Metrics

from lantern.member_fingerprint import of_ids
from transforms import NAMESPACE
from transforms.results import FAILED

RETRY = "retry"  # the tag of the FAILED members
READ_MEMBERS = "read_members"  # the tag of each table's MemberFingerprint, taken as it is read
MEMBERS_CARRIED_OVER = "members_carried_over"
MEMBERS_TO_RETRY = "members_to_retry"


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """The table with exactly the schema's columns, in its order and types.

    A column missing from the table is an error: the caller checked the previous
    run's schema before the pipeline was built, so this means a file changed since.
    """
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise ValueError(f"previous results lack column(s) {', '.join(missing)}")
    return table.select(schema.names).cast(schema)


def member(row: dict, feature_names: Sequence[str]) -> tuple[str, dict]:
    """A FAILED results row -> (member id, summary) as the feature step hands it to CallEndpoints."""
    features = {name: row[name] for name in feature_names}
    return row["MEMBER_ID"], {"N_TRANSACTIONS": row["N_TRANSACTIONS"], "FEATURES": features}


class SplitPreviousResultsFn(beam.DoFn):
    """A table of previous results rows -> the rows that did not fail (one table, main output),
    each FAILED row as a member to call again (tagged ``RETRY``) and the fingerprint of the
    table's member IDs as read, before the split (tagged ``READ_MEMBERS``): what the retry's
    results must hold exactly."""

    def __init__(self, schema: pa.Schema, feature_names: Sequence[str]):
        self._schema = schema
        self._feature_names = tuple(feature_names)
        self.carried = Metrics.counter(NAMESPACE, MEMBERS_CARRIED_OVER)
        self.to_retry = Metrics.counter(NAMESPACE, MEMBERS_TO_RETRY)

    def process(self, table: pa.Table):
        table = conform(table, self._schema)
        yield beam.pvalue.TaggedOutput(READ_MEMBERS, of_ids(table.column("MEMBER_ID").to_pylist()))
        failed = pc.fill_null(pc.equal(table.column("STATUS"), FAILED), False)
        kept = table.filter(pc.invert(failed))
        retry = table.filter(failed)
        self.carried.inc(kept.num_rows)
        self.to_retry.inc(retry.num_rows)
        for row in retry.to_pylist():
            yield beam.pvalue.TaggedOutput(RETRY, member(row, self._feature_names))
        if kept.num_rows:
            yield kept


class ReadPreviousResults(beam.PTransform):
    """``results/*.parquet`` of a previous run -> (kept tables, members to retry).

    The result is a ``DoOutputsTuple``: ``[None]`` the kept tables, ``[RETRY]`` the members,
    ``[READ_MEMBERS]`` the fingerprints of the members read.
    """

    def __init__(self, pattern: str, schema: pa.Schema, feature_names: Sequence[str]):
        super().__init__()
        self._pattern = pattern
        self._schema = schema
        self._feature_names = feature_names

    def expand(self, pbegin):
        # validate=False: the CLI listed the files before the run (beam_pipeline/retry.py).
        return (
            pbegin
            | "Read" >> ReadFromParquetBatched(self._pattern, validate=False)
            | "Split" >> beam.ParDo(SplitPreviousResultsFn(self._schema, self._feature_names)).with_outputs(
                RETRY, READ_MEMBERS, main="kept")
        )


class CopyParquetRows(beam.PTransform):
    """Parquet files -> tables in ``schema`` (e.g. a previous run's dead letters, carried over as they are)."""

    def __init__(self, pattern: str, schema: pa.Schema):
        super().__init__()
        self._pattern = pattern
        self._schema = schema

    def expand(self, pbegin):
        schema = self._schema
        return (
            pbegin
            | "Read" >> ReadFromParquetBatched(self._pattern, validate=False)
            | "Conform" >> beam.Map(conform, schema)
            | "DropEmpty" >> beam.Filter(lambda table: table.num_rows > 0)
        )
