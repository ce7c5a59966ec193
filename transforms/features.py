"""Member features as a Beam ``CombineFn``, and the coders that carry its accumulators.

The math (exact sums, the three most recent transactions, the feature registry,
the packed layout) is ``lantern.features``; this module only wires it into Beam.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import apache_beam as beam
import pyarrow as pa
from apache_beam import coders
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from lantern.feature_table import members_table, summaries
from lantern.features import (
    SPEC_FEATURES,
    N,
    Transaction,
    add,
    at_rest,
    create,
    extract,
    extract_packed,
    live,
    merge,
    pack,
    unpack,
)
from lantern.state_fold import fold_shard
from lantern.state_manifest import STATE_SCHEMA
from lantern.state_version import framed, payload
from transforms import NAMESPACE

# Distribution: members merged per shard key, the merge's working set (bounded by lantern.member_table.shards_for).
SHARD_MEMBERS = "shard_members"

_EMPTY = create()
STATE = "state"  # the tag of the (MEMBER_ID, ACC) tables every batch run writes to state/
UNCHANGED = "unchanged"  # --changed-only: the tag of (shard, table) of members without rows today
STATE_COUNTS = "state_counts"  # the tag of each shard's counts (a dict): what became of the state's members
# What became of each member of the state (a full run's members are all new).
STATE_MEMBERS, CARRIED_OVER, UPDATED, NEW = (
    "members", "members_carried_over", "members_updated", "members_new")


class StatelessCoder(coders.Coder):
    """A coder with no parameters: deterministic, and equal to any other instance of its class."""

    def is_deterministic(self) -> bool:
        return True

    def __eq__(self, other):
        return type(self) is type(other)

    def __hash__(self):
        return hash(type(self))


class CompactAccumulatorCoder(StatelessCoder):
    """Live accumulators as packed bytes and back: what the streaming job keeps in
    state per member, read back to be updated. Versioned (``lantern.state_version``)."""

    def encode(self, acc: list) -> bytes:
        return framed(pack(acc))

    def decode(self, data: bytes) -> list:
        return unpack(payload(data, "a member's feature accumulator"))


class PackedAccumulatorCoder(StatelessCoder):
    """The batch shuffle's coder: accumulators at rest stay packed bytes.

    Between the lifted partial combine and the final merge, the local runner keeps
    every accumulator in memory as the coder decodes it. Decoding to the packed
    bytes (not to the live list) keeps that at ~150 bytes per accumulator instead
    of ~1,000, and unpacks each once, in the merge, instead of twice. Versioned like
    every state coder (``lantern.state_version``).
    """

    def encode(self, acc: list | bytes) -> bytes:
        return framed(at_rest(acc))

    def decode(self, data: bytes) -> bytes:
        return payload(data, "a shuffled feature accumulator")


class MemberFeaturesFn(beam.CombineFn):
    """Folds ``Transaction | None`` values (None = a member-only row) into a member summary.

    The output is ``{"N_TRANSACTIONS": n, "FEATURES": {...} | None}`` so members
    without transactions still reach the results with status NO_TRANSACTIONS.
    """

    def __init__(self, as_of: dt.date, names: Iterable[str] = SPEC_FEATURES):
        self._as_of = as_of
        self._names = tuple(names)

    @property
    def as_of(self) -> dt.date:
        return self._as_of

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    def create_accumulator(self) -> list:
        return create()

    def add_input(self, acc: list | bytes, value: Transaction | bytes | None) -> list | bytes:
        """A transaction, None (a member-only row), or a packed partial accumulator (the block reader's)."""
        if isinstance(value, bytes):
            if isinstance(acc, list) and acc == _EMPTY:
                return value  # most members: their one partial accumulator, passed on still packed
            return merge((live(acc), unpack(value)))
        acc = live(acc)
        if value is not None:
            add(acc, value)
        return acc

    def add_inputs(self, acc: list | bytes, values: Iterable[Transaction | bytes | None]) -> list | bytes:
        for value in values:
            acc = self.add_input(acc, value)
        return acc

    def merge_accumulators(self, accs: Iterable[list | bytes]) -> list:
        accs = list(accs)
        if len(accs) == 1:  # most members: one partial accumulator, nothing to merge (kept packed)
            return accs[0]
        return merge(live(acc) for acc in accs)

    def compact(self, acc: list | bytes) -> bytes:
        # Called on every accumulator that leaves the partial combine for the shuffle.
        return at_rest(acc)

    def get_accumulator_coder(self) -> coders.Coder:
        return PackedAccumulatorCoder()

    def extract_output(self, acc: list | bytes) -> dict:
        if isinstance(acc, bytes):  # most members: read straight from the packed partial accumulator
            n, features = extract_packed(acc, self._as_of, self._names)
            return {"N_TRANSACTIONS": n, "FEATURES": features}
        return {"N_TRANSACTIONS": acc[N], "FEATURES": extract(acc, self._as_of, self._names)}


# Members per table leaving the combine with ``batched``: a bundle's shards are gathered up to this
# many members, so the column work (a few hundred numpy and Arrow calls per table) is paid per
# table of tens of thousands of members, not per shard of a few hundred.
TABLE_MEMBERS = 1 << 15


class CombineMemberShardsFn(beam.DoFn):
    """(shard, batches of (member, packed partial accumulator)) -> the shards' members with their features,
    and (tagged ``STATE``) the shard's merged accumulators as a (MEMBER_ID, ACC) table.

    The block reader's shuffle: each bundle sends its members' accumulators in one batch per
    shard (``lantern.member_table.shard_batches``), so the shuffle moves batches, not members.
    Here a shard's batches are merged (a member's accumulators from several bundles, or from a
    base state and today's rows, combined with ``MemberFeaturesFn``) and the features of its
    members are computed at once, as columns (``lantern.feature_table``), with the digits
    ``CombinePerKey(MemberFeaturesFn)`` gives. With ``batched``, the shards of a bundle leave as
    ``members_table``s of about ``TABLE_MEMBERS`` members; otherwise member by member, as
    (member, summary) pairs. With ``changed_only``, members without rows today leave instead
    as (shard, members_table), tagged ``UNCHANGED``.
    """

    def __init__(self, fn: MemberFeaturesFn, batched: bool = False, table_members: int = TABLE_MEMBERS,
                 changed_only: bool = False):
        self._fn = fn
        self._batched = batched
        self._table_members = table_members
        self._shard_members = Metrics.distribution(NAMESPACE, SHARD_MEMBERS)
        self._changed_only = changed_only

    def _merge(self, parts: list[bytes]) -> bytes:
        return at_rest(self._fn.merge_accumulators(parts))

    def start_bundle(self):
        self._held: list[tuple[pa.Array, pa.Array]] = []  # merged shards waiting to become one table
        self._held_members = 0

    def process(self, element: tuple[int, Iterable[bytes]]):
        shard, batches = element
        folded = fold_shard(batches, self._merge)
        ids, packed = folded.ids, folded.accs
        self._shard_members.update(len(ids))
        yield beam.pvalue.TaggedOutput(STATE_COUNTS, {STATE_MEMBERS: len(ids), CARRIED_OVER: folded.carried,
                                                      UPDATED: folded.updated, NEW: folded.new})
        if len(ids):
            yield beam.pvalue.TaggedOutput(STATE, pa.Table.from_arrays([ids, packed], schema=STATE_SCHEMA))
        if self._changed_only and not folded.changed.all():
            unchanged = pa.array(~folded.changed)
            yield beam.pvalue.TaggedOutput(UNCHANGED, (shard, members_table(
                ids.filter(unchanged), packed.filter(unchanged), self._fn.as_of, self._fn.names)))
            changed = pa.array(folded.changed)
            ids, packed = ids.filter(changed), packed.filter(changed)
        if not self._batched:
            yield from summaries(members_table(ids, packed, self._fn.as_of, self._fn.names), self._fn.names)
            return
        self._held.append((ids, packed))
        self._held_members += len(ids)
        if self._held_members >= self._table_members:
            yield self._table()

    def finish_bundle(self):
        if self._held:
            yield GlobalWindows.windowed_value_at_end_of_window(self._table())

    def _table(self) -> pa.Table:
        held, self._held, self._held_members = self._held, [], 0
        ids = pa.concat_arrays([part[0] for part in held])
        packed = pa.concat_arrays([part[1] for part in held])
        return members_table(ids, packed, self._fn.as_of, self._fn.names)


class AccumulatorsFn(beam.CombineFn):
    """``MemberFeaturesFn`` with its accumulator as the output, packed: the line reader's combine,
    whose members then go both to their features and to the state."""

    def __init__(self, fn: MemberFeaturesFn):
        self._fn = fn

    def create_accumulator(self):
        return self._fn.create_accumulator()

    def add_input(self, acc, value):
        return self._fn.add_input(acc, value)

    def add_inputs(self, acc, values):
        return self._fn.add_inputs(acc, values)

    def merge_accumulators(self, accs):
        return self._fn.merge_accumulators(accs)

    def compact(self, acc):
        return self._fn.compact(acc)

    def get_accumulator_coder(self) -> coders.Coder:
        return self._fn.get_accumulator_coder()

    def extract_output(self, acc) -> bytes:
        return at_rest(acc)


class SummaryAndStateFn(beam.DoFn):
    """(member, packed accumulator) -> (member, summary), and (tagged ``STATE``) the member's state row."""

    def __init__(self, fn: MemberFeaturesFn):
        self._fn = fn

    def process(self, element: tuple[str, bytes]):
        member, acc = element
        yield beam.pvalue.TaggedOutput(STATE_COUNTS, {STATE_MEMBERS: 1, NEW: 1})
        yield beam.pvalue.TaggedOutput(STATE, {"MEMBER_ID": member, "ACC": acc})
        yield member, self._fn.extract_output(acc)
