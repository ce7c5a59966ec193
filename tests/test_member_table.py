"""The column fold's packed records: byte for byte ``lantern.features.pack`` of the same rows."""
from __future__ import annotations

import itertools

import numpy as np

from lantern import features as F
from lantern.member_table import MemberTable, read_batch, shard_batches, shard_of


def _size(values: list[float]) -> int:
    """Bytes of the odd part of the exact sum of ``values`` (``_pack_sum``'s size field)."""
    total = sum(F.exact(v) for v in values)
    return int.from_bytes(F._pack_sum(total)[2:4], "big")


def test_records_of_every_shape_pack_as_pack_does():
    # Revenue sums whose odd parts need more than 64 bytes (values far apart in magnitude) next to
    # points sums of other sizes: every (points size, revenue size, last-3 count) is its own shape.
    candidates = [[1.0], [1.5, 2.25], [1e200, 1e-200], [1e300, 1e-300, 3.0], [1e100, 1e-100], [0.1, 0.2, 0.3],
                  [2.0 ** 515, 1.0], [256.0, 1.0]]  # (1, 65) and (2, 1) bytes: one shape if sizes were mixed
    members = {}
    for i, (points, revenue) in enumerate(itertools.product(candidates, candidates)):
        n = max(len(points), len(revenue))
        members[f"M{i}"] = [F.Transaction(1_700_000_000_000_000 + j, j % 3, (points * 3)[j], (revenue * 3)[j])
                            for j in range(n)]
    assert len({(_size([t.points for t in txns]), _size([t.revenue for t in txns])) for txns in members.values()}) > 20
    ids = list(members)
    rows = [(code, txn) for code, member in enumerate(ids) for txn in members[member]]
    table = MemberTable()
    table.add(ids, np.array([c for c, _ in rows]), np.array([t.ts_us for _, t in rows]),
              np.array([t.type_code for _, t in rows]), np.array([t.points for _, t in rows]),
              np.array([t.revenue for _, t in rows]))
    drained = list(table.drain())
    expected = {}
    for member, txns in members.items():
        acc = F.create()
        for txn in txns:
            F.add(acc, txn)
        expected[member] = F.pack(acc)
    assert dict(drained) == expected
    # and through the shuffle's batches: every member once, in its shard
    seen = {}
    for shard, batch in shard_batches(drained):
        for member, record in zip(*read_batch(batch), strict=True):
            assert shard_of(member) == shard
            seen[member] = record
    assert seen == expected


def test_a_bundles_shards_leave_the_combine_as_tables_of_about_table_members():
    import datetime as dt

    from apache_beam.pvalue import TaggedOutput

    from lantern.feature_table import summaries
    from transforms.features import CombineMemberShardsFn, MemberFeaturesFn

    table = MemberTable()
    ids = [f"M{i}" for i in range(300)]
    codes = np.arange(600) % 300
    table.add(ids, codes, 1_700_000_000_000_000 + codes * 1_000_000, codes % 3, codes * 1.5, codes * 0.25)
    table.add_members(["IDLE1", "IDLE2"])
    shards = list(shard_batches(table.drain()))
    fn = MemberFeaturesFn(dt.date(2026, 11, 24))
    def members(outputs):  # the members, not the shard's state table (tagged)
        return [out for out in outputs if not isinstance(out, TaggedOutput)]

    one_by_one = dict(pair for shard in shards for pair in members(CombineMemberShardsFn(fn).process(
        (shard[0], [shard[1]]))))
    batched = CombineMemberShardsFn(fn, batched=True, table_members=100)
    batched.start_bundle()
    tables = [t for shard in shards for t in members(batched.process((shard[0], [shard[1]])))]
    tables += [wv.value for wv in batched.finish_bundle()]
    assert all(t.num_rows >= 100 for t in tables[:-1]) and len(tables) < len(shards)
    gathered = {m: s for t in tables for m, s in summaries(t)}
    assert gathered == one_by_one and len(gathered) == 302


def test_the_shard_count_follows_the_input_size():
    from lantern.member_table import SHARD_INPUT_BYTES, SHARDS, shards_for

    assert shards_for(0) == shards_for(SHARDS * SHARD_INPUT_BYTES) == SHARDS
    assert shards_for(SHARDS * SHARD_INPUT_BYTES + 1) == SHARDS + 1
    assert shards_for(40 << 30) == 2560  # a 40 GiB export: each shard still ~16 MiB of rows
    assert shards_for(10, shard_bytes=4, minimum=1) == 3
