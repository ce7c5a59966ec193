"""Vectorised features: exact quotients against ``int / int``, and whole tables against
``extract_packed`` member for member (hand-picked edge cases and hypothesis)."""
from __future__ import annotations

import datetime as dt
import math
import random
import sys

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from lantern import features as F
from lantern.exact_quotient import from_signed_bytes, from_signed_limbs, quotients
from lantern.feature_table import COLUMNS, feature_arrays
from lantern.features import BUY, GIFT, REDEEM, Transaction

AS_OF = dt.date(2026, 11, 24)
TINY = sys.float_info.min  # the smallest normal double


def python_quotient(x: int, scale: int, n: int) -> float | None:
    """``int / int`` as lantern.features divides; None where the kernel must decline (subnormal, overflow)."""
    try:
        value = (x << scale) / n if scale >= 0 else x / (n << -scale)
    except OverflowError:
        return None
    if x and abs(value) < TINY:
        return None
    return value


def kernel(cases: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    width = max((abs(x).bit_length() + 8) // 8 for x, _, _ in cases)
    data = np.array([list(x.to_bytes(width, "big", signed=True)) for x, _, _ in cases], dtype=np.uint8)
    magnitude, negative = from_signed_bytes(data)
    return quotients(magnitude, negative, np.array([s for _, s, _ in cases]), np.array([n for *_, n in cases]))


def check(cases):
    values, answered = kernel(cases)
    for (x, scale, n), value, ok in zip(cases, values, answered, strict=True):
        expected = python_quotient(x, scale, n)
        if expected is None:
            assert not ok, (x, scale, n)
        else:
            assert ok, (x, scale, n)
            assert value == expected and math.copysign(1, value) == math.copysign(1, expected), (x, scale, n)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(-(1 << 300), 1 << 300), st.integers(-1200, 1000),
                          st.integers(1, (1 << 31) - 1)), min_size=1, max_size=20))
def test_quotients_round_as_int_division(cases):
    check(cases)


def test_quotients_at_ties_and_edges():
    rnd = random.Random(7)
    cases = [(0, -1074, 3), (1, 0, 1), (-1, 0, 1), ((1 << 53) - 1, 0, 1), (1 << 53, 0, 3)]
    for _ in range(300):  # exact halfway points, both ways, and one unit either side
        n = rnd.choice([2, 4, 6, 8, 10, 1 << 20])
        mantissa = (1 << 53) + rnd.getrandbits(52)
        for x in (mantissa * n + n // 2, mantissa * n + n // 2 + 1, mantissa * n + n // 2 - 1):
            cases += [(x, 0, n), (-x, -40, n)]
    cases += [(1, -1074, 2), (3, -1074, 1), (1, 971, 1), ((1 << 53) - 1, 971, 1), (1 << 53, 971, 1)]
    check(cases)


def test_signed_limbs_carry_and_negate():
    rnd = random.Random(3)
    parts = np.array([[rnd.randint(-(1 << 40), 1 << 40) for _ in range(4)] for _ in range(500)], dtype=np.int64)
    magnitude, negative = from_signed_limbs(parts)
    values, answered = quotients(magnitude, negative, 0, np.full(len(parts), 3))
    assert answered.all()
    for row, value in zip(parts.tolist(), values, strict=True):
        assert value == sum(v << (32 * k) for k, v in enumerate(row)) / 3


def ts(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc).timestamp()) * 1_000_000


def table_of(members: list[list[Transaction]]) -> pa.Array:
    packed = []
    for txns in members:
        acc = F.create()
        for txn in txns:
            F.add(acc, txn)
        packed.append(F.pack(acc))
    return pa.array(packed, pa.binary())


def assert_same_as_extract_packed(members, names=F.SPEC_FEATURES):
    packed = table_of(members)
    n, columns = feature_arrays(packed, AS_OF, names)
    for row, data in enumerate(packed.to_pylist()):
        count, features = F.extract_packed(data, AS_OF, names)
        assert n[row] == count
        got = {name: columns[name][row].as_py() for name in names}
        if features is None:
            assert set(got.values()) == {None}
        else:
            assert got == features, row
            for name, value in features.items():  # the sign of a zero too
                assert math.copysign(1, got[name]) == math.copysign(1, value)


def test_hand_picked_members():
    day = ts("2026-11-20 10:00:00")
    members = [
        [],  # a member-only member: nulls
        [Transaction(day, BUY, 100.0, 1.5)],
        [Transaction(day, GIFT, -0.0, 0.1), Transaction(day + 1, REDEEM, 0.2, 0.7)],
        [Transaction(day + i, BUY, 0.1 * i, 12.34 + i) for i in range(7)],  # sums needing more than 53 bits
        [Transaction(day, BUY, 1e300, 1e-300), Transaction(day - 1, BUY, -1e300, 3.0),
         Transaction(day - 2, GIFT, 5e-324, 1.0)],  # last three far apart: the Python path answers
        [Transaction(day, BUY, 1.7e308, 1.0), Transaction(day + 5, BUY, 1.7e308, 1.0)],  # total past the range
        [Transaction(ts("1969-12-31 23:00:00"), REDEEM, -5.0, 0.0)],  # before the epoch: floor, not truncation
        # means that underflow: int / int gives -0.0 for a negative one, and so must the columns
        [Transaction(day, BUY, -5e-324, -5e-324), Transaction(day + 1, GIFT, 0.0, 0.0)],
        [Transaction(day, BUY, -5e-324, 5e-324), Transaction(day + 1, GIFT, 0.0, 0.0),
         Transaction(day + 2, GIFT, 0.0, 0.0)],
    ]
    assert_same_as_extract_packed(members)
    assert_same_as_extract_packed(members, tuple(COLUMNS))


transactions = st.lists(
    st.builds(
        Transaction,
        st.integers(ts("2019-01-01 00:00:00"), ts("2026-11-24 00:00:00")),
        st.sampled_from((BUY, GIFT, REDEEM)),
        st.one_of(st.floats(-1e6, 1e6, allow_nan=False).map(lambda v: round(v, 2)),
                  st.floats(allow_nan=False, allow_infinity=False)),
        st.one_of(st.floats(0, 1e4, allow_nan=False), st.integers(0, 500).map(float)),
    ),
    max_size=8,
)


@settings(max_examples=100, deadline=None)
@given(st.lists(transactions, min_size=1, max_size=12))
def test_random_members_match_extract_packed(members):
    assert_same_as_extract_packed(members, tuple(COLUMNS))


def test_an_array_slice_reads_its_own_records():
    members = [[Transaction(ts("2026-11-20 10:00:00"), BUY, float(i), 1.0)] for i in range(1, 6)]
    packed = table_of(members).slice(2)
    n, columns = feature_arrays(packed, AS_OF)
    assert n.tolist() == [1, 1, 1]
    assert columns["AVG_POINTS_BOUGHT"].to_pylist() == [3.0, 4.0, 5.0]


def test_every_registered_feature_has_a_column_form():
    assert set(COLUMNS) == set(F.REGISTRY)
