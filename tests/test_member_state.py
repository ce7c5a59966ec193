"""Per-member streaming state: the accumulator coder, and idle members cleared by their timer."""
from __future__ import annotations

import datetime as dt
import sys

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.testing import test_stream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue
from hypothesis import given, settings
from hypothesis import strategies as st

from lantern import features
from lantern.features import SPEC_FEATURES, Transaction
from transforms.features import CompactAccumulatorCoder as AccumulatorCoder
from transforms.member_state import MemberMeta, MemberMetaCoder, MemberUpdatesFn

DAY_US = 86_400_000_000
finite = st.floats(allow_nan=False, allow_infinity=False)
transactions = st.builds(
    Transaction,
    ts_us=st.integers(0, 253_402_300_799_000_000),  # through 9999-12-31
    type_code=st.sampled_from([features.BUY, features.GIFT, features.REDEEM]),
    points=finite,
    revenue=finite,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(transactions, max_size=12))
def test_accumulator_coder_round_trips_exact_sums(txns):
    acc = features.create()
    for txn in txns:
        features.add(acc, txn)
    coder = AccumulatorCoder()
    decoded = coder.decode(coder.encode(acc))
    assert decoded == acc
    # Through Beam's coder machinery too (what the runner uses for state).
    impl = coder.get_impl()
    assert impl.decode(impl.encode(acc)) == acc


def test_accumulator_coder_handles_extreme_sums_and_stays_small():
    acc = features.create()
    for i in range(5000):
        sign = -1 if i % 3 else 1
        features.add(acc, Transaction(i * DAY_US, i % 3, sign * sys.float_info.max, 5e-324 * (i + 1)))
    assert acc[features.POINTS].bit_length() > 2000  # far beyond 64-bit coders
    encoded = AccumulatorCoder().encode(acc)
    assert AccumulatorCoder().decode(encoded) == acc
    assert len(encoded) < 700  # constant size per member: it does not grow with the 5,000 rows


def test_meta_coder_round_trips():
    meta = MemberMeta(1_764_000_000.25, 7, -(1 << 63))
    assert MemberMetaCoder().decode(MemberMetaCoder().encode(meta)) == meta


def _txn(member: str, day: int, points: float) -> TimestampedValue:
    ts = day * DAY_US
    return TimestampedValue((member, Transaction(ts, features.BUY, points, 1.0)), ts / 1e6)


def _seq_and_n(kv):
    member_id, summary = kv
    return member_id, summary["UPDATE_SEQ"], summary["N_TRANSACTIONS"]


def _assert_updates(stream, expected) -> None:
    """Run MemberUpdatesFn (30 idle days, 5 s debounce) over a TestStream; check (member, seq, n)."""
    fn = MemberUpdatesFn(dt.date(2030, 1, 1), SPEC_FEATURES, debounce_s=5, idle_days=30,
                         timer_clock=lambda: 0.0)
    with beam.Pipeline(runner=BundleBasedDirectRunner(), options=PipelineOptions(["--streaming"])) as p:
        updates = p | stream | beam.ParDo(fn).with_input_types(beam.typehints.KV[str, object]) | beam.Map(_seq_and_n)
        assert_that(updates, equal_to(expected))


def test_idle_members_are_cleared_and_start_afresh():
    """200 members go idle (watermark passes their last transaction + 30 days) and are cleared:
    their next transaction makes a first update with one transaction. A member that stays
    active keeps its history."""
    idle = [f"idle{i:03d}" for i in range(200)]
    stream = (
        test_stream.TestStream()
        .add_elements([_txn(m, 1, 10.0) for m in idle] + [_txn("active", 1, 10.0)])
        .advance_processing_time(10)
        .add_elements([_txn("active", 40, 20.0)])
        .advance_processing_time(10)
        .advance_watermark_to(45 * 86_400)  # idle members' timers (day 31) fire; active's (day 70) not
        .add_elements([_txn(m, 50, 30.0) for m in idle] + [_txn("active", 50, 30.0)])
        .advance_processing_time(10)
        .advance_watermark_to_infinity()
    )
    expected = [(m, 1, 1) for m in idle] * 2 + [("active", 1, 1), ("active", 2, 2), ("active", 3, 3)]
    _assert_updates(stream, expected)


def test_late_transactions_count_and_member_only_rows_follow_the_rule():
    """A transaction older than the watermark by more than the idle timeout is still emitted,
    then its member is cleared; a member-only row gives NO_TRANSACTIONS only to a member
    the stream holds no transactions for."""
    stream = (
        test_stream.TestStream()
        .add_elements([_txn("kept", 40, 1.0)])
        .advance_processing_time(10)
        .advance_watermark_to(45 * 86_400)
        .add_elements([_txn("late", 2, 5.0), TimestampedValue(("kept", None), 45 * 86_400),
                       TimestampedValue(("only", None), 45 * 86_400)])
        .advance_processing_time(10)
        .add_elements([_txn("late", 3, 7.0)])  # the member was cleared: starts afresh
        .advance_processing_time(10)
        .advance_watermark_to_infinity()
    )
    _assert_updates(stream, [("kept", 1, 1), ("late", 1, 1), ("late", 1, 1), ("only", 0, 0)])
