"""The compact accumulator coder is exact: decode(encode(acc)) == acc for any transactions."""
from __future__ import annotations

import datetime as dt
import sys

from hypothesis import given
from hypothesis import strategies as st

from lantern import features
from lantern.features import Transaction
from transforms.features import CompactAccumulatorCoder

finite = st.floats(allow_nan=False, allow_infinity=False)
transactions = st.lists(
    st.builds(Transaction, ts_us=st.integers(0, 2**62), type_code=st.sampled_from([0, 1, 2]),
              points=finite, revenue=finite),
    max_size=8,
)


@given(transactions)
def test_round_trip_is_exact(txns):
    acc = features.create()
    for txn in txns:
        features.add(acc, txn)
    coder = CompactAccumulatorCoder()
    assert coder.decode(coder.encode(acc)) == acc


def test_extreme_sums_survive_and_real_data_is_small():
    coder = CompactAccumulatorCoder()
    acc = features.create()
    for i in range(3):
        features.add(acc, Transaction(i, 0, sys.float_info.max, 5e-324))
    assert acc[features.POINTS].bit_length() > 1024
    assert coder.decode(coder.encode(acc)) == acc
    typical = features.create()
    for i in range(5):
        features.add(typical, Transaction(1_600_000_000_000_000 + i, i % 3, 1200.0 * i, 12.345 * i))
    assert len(coder.encode(typical)) < 160


@given(transactions, transactions)
def test_packed_accumulators_at_rest_work_in_every_combine_fn_method(first, second):
    import datetime as dt

    from transforms.features import MemberFeaturesFn, PackedAccumulatorCoder

    fn = MemberFeaturesFn(dt.date(2026, 11, 24), ["N_TRANSACTIONS", "TOTAL_POINTS_BOUGHT", "AVG_REVENUE_USD"])
    whole = fn.extract_output(fn.add_inputs(fn.create_accumulator(), first + second))
    packed = fn.compact(fn.add_inputs(fn.create_accumulator(), first))
    assert isinstance(packed, bytes) and fn.compact(packed) is packed
    coder = PackedAccumulatorCoder()
    assert coder.decode(coder.encode(packed)) == packed  # the shuffle keeps it packed
    assert coder.encode(fn.create_accumulator())[1:] == fn.compact(fn.create_accumulator())  # behind the version byte
    # Resumed, merged with a live or a packed accumulator, or extracted as it is: same answer.
    assert fn.extract_output(fn.add_inputs(packed, second)) == whole
    other = fn.add_inputs(fn.create_accumulator(), second)
    assert fn.extract_output(fn.merge_accumulators([packed, other])) == whole
    assert fn.extract_output(fn.merge_accumulators([packed, fn.compact(other)])) == whole
    if not second:
        assert fn.extract_output(packed) == whole


@given(transactions)
def test_features_read_from_packed_bytes_equal_the_unpacked_ones(txns):
    acc = features.create()
    for txn in txns:
        features.add(acc, txn)
    as_of = dt.date(2026, 11, 24)
    n, got = features.extract_packed(features.pack(acc), as_of)
    want = features.extract(acc, as_of)
    assert n == acc[features.N]
    assert repr(got) == repr(want)  # digit for digit, the sign of zero included
