"""A day's rows folded into a base state, shard by shard: the merged accumulators and what became of each member.

The base state's accumulators enter the batch shuffle as batches of their own
(``base_batches``), marked as the base's, beside the batches the day's rows were
folded into; a shard's batches are merged with the same merge as any member seen
in several bundles (``lantern.member_table.merge_tables``). Whether a member was
only in the base (carried over), in both (updated) or only in the day (new) is
read from the batches' marks, so the run can account for every member of the state.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lantern.member_table import SHARDS, merge_tables, shard_batches

ORIGIN_KEY = b"lantern.origin"
BASE = {ORIGIN_KEY: b"base"}


def base_batches(table: pa.Table, shards: int = SHARDS) -> Iterator[tuple[int, bytes]]:
    """A table of a base state (MEMBER_ID, ACC) -> (shard, batch) marked as the base's."""
    ids, accs = table.column("MEMBER_ID").to_pylist(), table.column("ACC").to_pylist()
    yield from shard_batches(zip(ids, accs, strict=True), shards, origin=BASE)


def _is_base(table: pa.Table) -> bool:
    metadata = table.schema.metadata
    return bool(metadata) and metadata.get(ORIGIN_KEY) == BASE[ORIGIN_KEY]


class FoldedShard(NamedTuple):
    ids: pa.Array
    accs: pa.Array
    changed: np.ndarray  # per member: it had rows in the day (updated or new)
    carried: int  # only in the base
    updated: int  # in the base and the day
    new: int  # only in the day


def fold_shard(batches: Iterable[bytes], merge: Callable[[list[bytes]], bytes]) -> FoldedShard:
    """A shard's batches (base-marked ones and the day's) -> merged accumulators and member counts."""
    tables = [pa.ipc.open_stream(data).read_all() for data in batches]
    base = [t.column("MEMBER_ID") for t in tables if _is_base(t)]
    day = [t.column("MEMBER_ID") for t in tables if not _is_base(t)]
    ids, accs = merge_tables(tables, merge)
    if not base:
        return FoldedShard(ids, accs, np.ones(len(ids), dtype=bool), 0, 0, len(ids))
    if not day:
        return FoldedShard(ids, accs, np.zeros(len(ids), dtype=bool), len(ids), 0, 0)
    in_day = pc.is_in(ids, value_set=pa.chunked_array(day).combine_chunks()).to_numpy(zero_copy_only=False)
    in_base = pc.is_in(ids, value_set=pa.chunked_array(base).combine_chunks()).to_numpy(zero_copy_only=False)
    updated = int((in_day & in_base).sum())
    return FoldedShard(ids, accs, in_day, int(in_base.sum()) - updated, updated, int(in_day.sum()) - updated)
