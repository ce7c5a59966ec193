"""The compact accumulator coder is exact: decode(encode(acc)) == acc for any transactions."""
from __future__ import annotations

import sys

from hypothesis import given
from hypothesis import strategies as st

from transforms import features
from transforms.features import CompactAccumulatorCoder, Transaction

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
