"""``--changed-only``: members without rows today keep the base run's decision instead of being called again.

The feature step sends members whose accumulator did not change (no rows today)
here, a table per shard, with their features as of today. The base run's results
are read and cut by the same member shards; a shard's unchanged members and its
previous rows meet in one ``CoGroupByKey`` (a few hundred groups, not one per
member), and each unchanged member with transactions whose previous status was
``OK`` gets that row's predictions and offer, no call, and
``DECISION_CARRIED_OVER`` true. Every other unchanged member (previously
``FAILED`` or ``FEATURES_ONLY``, or without transactions) goes back to the
endpoint step like a changed one.
"""
from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.parquetio import ReadFromParquetBatched
from apache_beam.metrics import Metrics

from lantern.feature_table import summaries
from lantern.member_table import SHARDS
from transforms import NAMESPACE
from transforms.results import DECISION_CARRIED_OVER, OK

RECALL = "recall"  # the tag of unchanged members that are called after all
MEMBERS_DECISION_CARRIED = "members_decision_carried_over"
_KEPT = ("ATS_PREDICTION", "RESP_PREDICTION", "OFFER", "STATUS")


def by_shard(table: pa.Table, shards: int = SHARDS) -> Iterable[tuple[int, pa.Table]]:
    """A table with a MEMBER_ID column -> (shard, its rows of that shard), shards as ``shard_of``."""
    ids = table.column("MEMBER_ID").to_pylist()
    shard = np.fromiter((zlib.crc32(m.encode()) % shards for m in ids), dtype=np.int64, count=len(ids))
    order = np.argsort(shard, kind="stable")
    bounds = np.flatnonzero(np.diff(shard[order])) + 1
    for rows in np.split(order, bounds):
        if len(rows):
            yield int(shard[rows[0]]), table.take(pa.array(rows))


class PreviousDecisionsFn(beam.DoFn):
    """A table of the base run's results -> (shard, its MEMBER_ID and decision columns), cut into the
    run's ``shards`` as the feature step's members are."""

    def __init__(self, shards: int):
        self._shards = shards

    def process(self, table: pa.Table):
        yield from by_shard(table.select(["MEMBER_ID", *_KEPT]), self._shards)


def carry(unchanged: pa.Table, previous: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(members carried: their features and the previous decision, members to call after all)."""
    joined = unchanged.join(previous, "MEMBER_ID", join_type="left outer")
    keep = pc.and_(pc.greater(joined.column("N_TRANSACTIONS"), 0),
                   pc.fill_null(pc.equal(joined.column("STATUS"), OK), False))
    carried = joined.filter(keep)
    carried = carried.append_column("ATTEMPTS", pa.array(np.zeros(carried.num_rows, dtype=np.int64))).append_column(
        DECISION_CARRIED_OVER, pa.array(np.ones(carried.num_rows, dtype=bool)))
    recall = joined.filter(pc.invert(keep)).select(unchanged.column_names)
    return carried, recall


class CarryDecisionsFn(beam.DoFn):
    """(shard, {"members": [unchanged tables], "previous": [decision tables]}) -> carried results tables,
    and (tagged ``RECALL``) the members to call after all: tables with ``batched``, else (member, summary)."""

    def __init__(self, feature_names: Sequence[str], batched: bool):
        self._names = tuple(feature_names)
        self._batched = batched
        self.carried = Metrics.counter(NAMESPACE, MEMBERS_DECISION_CARRIED)

    def process(self, element):
        _, groups = element
        members = list(groups["members"])
        if not members:
            return
        unchanged = pa.concat_tables(members)
        previous = list(groups["previous"])
        previous = pa.concat_tables(previous) if previous else pa.table(
            {"MEMBER_ID": pa.array([], pa.string()), **{name: pa.array([], pa.string()) for name in _KEPT}})
        carried, recall = carry(unchanged, previous)
        self.carried.inc(carried.num_rows)
        if carried.num_rows:
            yield carried
        if recall.num_rows:
            if self._batched:
                yield beam.pvalue.TaggedOutput(RECALL, recall)
            else:
                for pair in summaries(recall, self._names):
                    yield beam.pvalue.TaggedOutput(RECALL, pair)


class CarryDecisions(beam.PTransform):
    """Unchanged members by shard -> carried results tables (main) and members to call (``RECALL``)."""

    def __init__(self, results_pattern: str, feature_names: Sequence[str], batched: bool, shards: int = SHARDS):
        super().__init__()
        self._pattern = results_pattern
        self._shards = shards
        self._fn = CarryDecisionsFn(feature_names, batched)

    def expand(self, unchanged):
        previous = (
            unchanged.pipeline
            | "ReadPrevious" >> ReadFromParquetBatched(self._pattern, validate=False,
                                                       columns=["MEMBER_ID", *_KEPT])
            | "ByShard" >> beam.ParDo(PreviousDecisionsFn(self._shards))
        )
        return (
            {"members": unchanged, "previous": previous}
            | "Join" >> beam.CoGroupByKey()
            | "Carry" >> beam.ParDo(self._fn).with_outputs(RECALL, main="carried")
        )
