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
from lantern.state_version import StateVersionError
from transforms.features import CompactAccumulatorCoder as AccumulatorCoder
from transforms.member_state import (
    MAX_SEEN_IDS,
    MemberMeta,
    MemberMetaCoder,
    MemberUpdatesFn,
    SeenIds,
    SeenIdsCoder,
)
from transforms.messages import Arrival
from transforms.parse import DEAD_LETTER

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


def _txn(member: str, day: int, points: float, txn_id: str | None = None, arrival_day: int | None = None):
    """A transaction on ``day``, arriving (its element timestamp) on ``arrival_day`` (default: the same day)."""
    ts = day * DAY_US
    arrival = Arrival(Transaction(ts, features.BUY, points, 1.0), txn_id, "test", f"{member},{day}".encode())
    return TimestampedValue((member, arrival), (arrival_day if arrival_day is not None else day) * 86_400)


def _member_only(member: str, day: int) -> TimestampedValue:
    return TimestampedValue((member, Arrival(None, None, "test", member.encode())), day * 86_400)


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
        .add_elements([_txn("late", 2, 5.0, arrival_day=45), _member_only("kept", 45), _member_only("only", 45)])
        .advance_processing_time(10)
        .add_elements([_txn("late", 3, 7.0, arrival_day=45)])  # the member was cleared: starts afresh
        .advance_processing_time(10)
        .advance_watermark_to_infinity()
    )
    _assert_updates(stream, [("kept", 1, 1), ("late", 1, 1), ("late", 1, 1), ("only", 0, 0)])


def _run_with_dead_letters(stream, debounce_s: float = 5, idle_days: float = 30):
    fn = MemberUpdatesFn(dt.date(2030, 1, 1), SPEC_FEATURES, debounce_s=debounce_s, idle_days=idle_days,
                         timer_clock=lambda: 0.0)
    with beam.Pipeline(runner=BundleBasedDirectRunner(), options=PipelineOptions(["--streaming"])) as p:
        out = (p | stream | beam.ParDo(fn).with_input_types(beam.typehints.KV[str, object])
               .with_outputs(DEAD_LETTER, main="updates"))
        yield out


def test_a_transaction_seen_before_is_a_duplicate_and_not_folded():
    """The same transaction id twice (a redelivery, a re-publish) folds once; the second is a
    DUPLICATE dead letter. Transactions without an id are all folded."""
    stream = (
        test_stream.TestStream()
        .add_elements([_txn("m", 1, 10.0, "msg:1"), _txn("m", 2, 20.0, "msg:2"), _txn("n", 1, 5.0)])
        .advance_processing_time(10)
        .add_elements([_txn("m", 1, 10.0, "msg:1"), _txn("m", 3, 30.0, "msg:3"), _txn("n", 1, 5.0)])
        .advance_processing_time(10)
        .add_elements([_txn("m", 2, 20.0, "msg:2")])
        .advance_processing_time(10)
        .advance_watermark_to_infinity()
    )
    for out in _run_with_dead_letters(stream):
        points = out.updates | beam.Map(lambda kv: (kv[0], kv[1]["UPDATE_SEQ"], kv[1]["N_TRANSACTIONS"],
                                                    kv[1]["FEATURES"]["AVG_POINTS_BOUGHT"]))
        assert_that(points, equal_to([("m", 1, 2, 15.0), ("m", 2, 3, 20.0), ("n", 1, 1, 5.0), ("n", 2, 2, 5.0)]))
        reasons = out[DEAD_LETTER] | beam.Map(lambda row: (row["REASON"], row["RAW_LINE"]))
        assert_that(reasons, equal_to([("DUPLICATE", "m,1"), ("DUPLICATE", "m,2")]), label="duplicates")


def test_seen_ids_are_bounded_by_the_idle_window_and_a_cap():
    seen = SeenIds()
    for day in range(40):
        seen = seen.add(day * DAY_US, day, horizon_us=(day - 30) * DAY_US)
    assert [h for _, h in seen.entries] == list(range(9, 40))  # older than 30 days: forgotten
    assert 39 in seen and 8 not in seen
    many = SeenIds(tuple((i, i) for i in range(MAX_SEEN_IDS)))
    assert len(many.add(MAX_SEEN_IDS, -1 % 2**64, horizon_us=0).entries) == MAX_SEEN_IDS
    coder = SeenIdsCoder()
    assert coder.decode(coder.encode(seen)) == seen


class _State:
    def __init__(self, value=None, error: Exception | None = None):
        self.value, self.error, self.cleared = value, error, False

    def read(self):
        if self.error:
            raise self.error
        return self.value

    def write(self, value):
        self.value = value

    def clear(self):
        self.value, self.cleared = None, True


class _Timer:
    def set(self, ts):
        self.ts = ts

    def clear(self):
        self.ts = None


def test_state_of_an_unknown_version_is_a_dead_letter_not_a_stuck_stream():
    fn = MemberUpdatesFn(dt.date(2030, 1, 1), SPEC_FEATURES, debounce_s=5, idle_days=30)
    refusal = StateVersionError("a member's feature accumulator was written with state layout version 9")
    unreadable = _State(error=refusal)
    (out,) = fn.process(("m", _txn("m", 1, 1.0, "msg:1").value[1]), unreadable, _State(), _State(), _Timer(),
                        _Timer())
    assert out.tag == DEAD_LETTER and out.value["REASON"] == "UNKNOWN_STATE_VERSION"
    assert out.value["DETAIL"] == str(refusal)
    # A timer armed by an older job clears the state it cannot read, and emits nothing.
    meta = _State(error=refusal)
    assert list(fn.on_idle("m", unreadable, meta, _State(), _Timer())) == []
    assert meta.cleared and unreadable.cleared
    assert list(fn.on_debounce("m", unreadable, _State(error=refusal))) == []
