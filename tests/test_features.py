"""Features: hand-worked cases, order independence, and merge over any split."""
from __future__ import annotations

import datetime as dt
import random

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given, settings
from hypothesis import strategies as st

from lantern import features as F
from lantern.features import BUY, GIFT, REDEEM, Transaction
from transforms.features import MemberFeaturesFn

AS_OF = dt.date(2026, 11, 24)


def ts(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc).timestamp()) * 1_000_000


def test_fewer_than_three_transactions():
    out = F.compute(
        [Transaction(ts("2026-11-20 10:00:00"), BUY, 100.0, 1.5),
         Transaction(ts("2026-11-22 09:00:00"), GIFT, 300.0, 2.5)],
        AS_OF,
    )
    assert out == {
        "AVG_POINTS_BOUGHT": 200.0,
        "AVG_REVENUE_USD": 2.0,
        "LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT": 200.0,
        "LAST_3_TRANSACTIONS_AVG_REVENUE_USD": 2.0,
        "PCT_BUY_TRANSACTIONS": 0.5,
        "PCT_GIFT_TRANSACTIONS": 0.5,
        "PCT_REDEEM_TRANSACTIONS": 0.0,
        "DAYS_SINCE_LAST_TRANSACTION": 2,
    }


def test_last_three_are_the_most_recent_and_negative_points_count():
    txns = [
        Transaction(ts("2020-01-01 00:00:00"), BUY, 1000.0, 10.0),   # oldest: only in the overall mean
        Transaction(ts("2021-01-01 00:00:00"), REDEEM, -600.0, 0.0),
        Transaction(ts("2022-01-01 00:00:00"), BUY, 300.0, 3.0),
        Transaction(ts("2023-01-01 23:59:59"), GIFT, 900.0, 6.0),
    ]
    out = F.compute(txns, AS_OF)
    assert out["AVG_POINTS_BOUGHT"] == (1000 - 600 + 300 + 900) / 4
    assert out["AVG_REVENUE_USD"] == 19.0 / 4
    assert out["LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT"] == 200.0
    assert out["LAST_3_TRANSACTIONS_AVG_REVENUE_USD"] == 3.0
    assert out["PCT_BUY_TRANSACTIONS"] == 0.5
    assert out["PCT_GIFT_TRANSACTIONS"] == 0.25
    assert out["PCT_REDEEM_TRANSACTIONS"] == 0.25
    # 2023-01-01 -> 2026-11-24: whole calendar days between the UTC dates.
    assert out["DAYS_SINCE_LAST_TRANSACTION"] == (AS_OF - dt.date(2023, 1, 1)).days


def test_one_type_only():
    out = F.compute([Transaction(ts("2026-01-01 00:00:00"), REDEEM, -500.0, 0.0)] * 3, AS_OF)
    assert out["PCT_REDEEM_TRANSACTIONS"] == 1.0
    assert out["PCT_BUY_TRANSACTIONS"] == out["PCT_GIFT_TRANSACTIONS"] == 0.0
    assert out["AVG_POINTS_BOUGHT"] == -500.0


def test_equal_timestamps_break_ties_by_a_fixed_rule():
    same = ts("2025-06-01 12:00:00")
    txns = [Transaction(same, BUY, p, 1.0) for p in (100.0, 400.0, 200.0, 300.0)]
    out = F.compute(txns, AS_OF)
    # Larger points count as more recent on a tie: 400, 300, 200.
    assert out["LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT"] == 300.0
    for perm in (txns[::-1], txns[1:] + txns[:1]):
        assert F.compute(perm, AS_OF) == out


def test_same_day_is_zero_days():
    out = F.compute([Transaction(ts("2026-11-24 23:59:59"), BUY, 1.0, 1.0)], AS_OF)
    assert out["DAYS_SINCE_LAST_TRANSACTION"] == 0


def test_no_transactions_gives_none():
    assert F.compute([], AS_OF) is None


def test_means_are_exact_where_naive_sums_round():
    # 0.1 + 0.2 + 0.3 in float is 0.6000000000000001; the exact mean of the three doubles rounds to 0.2.
    txns = [Transaction(ts(f"2026-01-0{i + 1} 00:00:00"), BUY, 1.0, r) for i, r in enumerate((0.1, 0.2, 0.3))]
    assert F.compute(txns, AS_OF)["AVG_REVENUE_USD"] == 0.2
    assert F.compute(txns[::-1], AS_OF)["AVG_REVENUE_USD"] == 0.2


def test_registry_extras():
    txns = [Transaction(ts("2026-01-01 00:00:00"), BUY, 100.0, 2.5),
            Transaction(ts("2026-01-02 00:00:00"), GIFT, 50.0, 1.25)]
    out = F.compute(txns, AS_OF, ["N_TRANSACTIONS", "TOTAL_REVENUE_USD", "TOTAL_POINTS_BOUGHT"])
    assert out == {"N_TRANSACTIONS": 2, "TOTAL_REVENUE_USD": 3.75, "TOTAL_POINTS_BOUGHT": 150.0}


transactions = st.lists(
    st.builds(
        Transaction,
        st.integers(ts("2019-01-01 00:00:00"), ts("2026-11-24 00:00:00")).map(lambda v: v - v % 1_000_000),
        st.sampled_from((BUY, GIFT, REDEEM)),
        st.floats(-1e6, 1e6, allow_nan=False).map(lambda v: round(v, 2)),
        st.floats(0, 1e4, allow_nan=False),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(transactions, st.randoms(use_true_random=False))
def test_merge_over_random_splits_equals_one_pass(txns, rnd):
    one_pass = F.compute(txns, AS_OF)
    shuffled = list(txns)
    rnd.shuffle(shuffled)
    cuts = sorted(rnd.sample(range(len(shuffled) + 1), k=min(3, len(shuffled) + 1)))
    parts = [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, len(shuffled)], strict=True)]
    fn = MemberFeaturesFn(AS_OF)
    accs = [fn.add_inputs(fn.create_accumulator(), part) for part in parts]
    rnd.shuffle(accs)
    merged = fn.merge_accumulators([fn.merge_accumulators(accs[:2]), *accs[2:]])
    assert fn.extract_output(merged) == {"N_TRANSACTIONS": len(txns), "FEATURES": one_pass}


def test_combine_per_key_in_beam(local_runner):
    rng = random.Random(3)
    rows = [("A", Transaction(ts(f"2026-0{m}-01 00:00:00"), rng.choice((BUY, GIFT)), 10.0 * m, 1.0)) for m in range(1, 8)]
    rows += [("B", None), ("A", None)]
    rng.shuffle(rows)
    expected = [
        ("A", {"N_TRANSACTIONS": 7, "FEATURES": F.compute([t for k, t in rows if k == "A" and t], AS_OF)}),
        ("B", {"N_TRANSACTIONS": 0, "FEATURES": None}),
    ]
    with TestPipeline(runner=local_runner) as p:
        out = p | beam.Create(rows) | beam.CombinePerKey(MemberFeaturesFn(AS_OF))
        assert_that(out, equal_to(expected))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), max_size=12))
def test_push_recent_keeps_the_three_largest_in_order(entries):
    # Small ranges, so equal entries and ties on the first field are common.
    last3: tuple = ()
    for i, entry in enumerate(entries):
        last3 = F.push_recent(last3, entry)
        assert last3 == tuple(sorted(entries[:i + 1], reverse=True)[:3])


def test_totals_past_the_float_range_are_infinite_not_an_error():
    big = 1.7e308
    txns = [Transaction(ts("2026-01-01 00:00:00"), BUY, big, -big), Transaction(ts("2026-01-02 00:00:00"), BUY, big, -big)]
    out = F.compute(txns, AS_OF, ["TOTAL_POINTS_BOUGHT", "TOTAL_REVENUE_USD", "AVG_POINTS_BOUGHT"])
    assert out == {"TOTAL_POINTS_BOUGHT": float("inf"), "TOTAL_REVENUE_USD": float("-inf"), "AVG_POINTS_BOUGHT": big}
