"""Per-member streaming state: the batch ``MemberFeaturesFn`` accumulator, updated one transaction at a time.

The stream keeps, for each member, exactly the accumulator the batch job builds
with ``CombinePerKey(MemberFeaturesFn)``, and folds each new transaction in with
that CombineFn's own ``add_input``; features come from its ``extract_output``.
There is one implementation of the math, so a member's last streamed features
equal the batch job's for the same rows, whatever the arrival order.

State per member is constant size (the accumulator: counts, two exact sums,
three transactions; plus a small ``MemberMeta``). Two timers bound its life and
its cost:

- debounce (processing time): the first transaction after an emission arms it;
  transactions that arrive before it fires are folded in silently, so a burst
  produces one update and one set of endpoint calls.
- idle (event time): ``last transaction time + idle timeout``. When the
  watermark passes it, a pending update is flushed and the member's state is
  cleared; a later transaction starts the member afresh.
"""
from __future__ import annotations

import datetime as dt
import struct
import time
from collections.abc import Callable
from typing import NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Duration, Timestamp

from lantern.features import LAST3, Transaction
from lantern.state_version import framed, payload
from transforms import NAMESPACE
from transforms.features import CompactAccumulatorCoder, MemberFeaturesFn, StatelessCoder


class MemberMeta(NamedTuple):
    """Bookkeeping beside the accumulator (constant size)."""

    pending_since: float  # wall time of the first transaction not yet emitted; 0.0 = nothing pending
    updates: int  # updates emitted since the member's state was (re)created
    last_event_us: int  # latest transaction time seen: the idle timer is this + the idle timeout


class MemberMetaCoder(StatelessCoder):
    """``MemberMeta`` as 24 fixed bytes behind the state layout version."""

    _FORMAT = struct.Struct(">dqq")

    def encode(self, meta: MemberMeta) -> bytes:
        return framed(self._FORMAT.pack(*meta))

    def decode(self, data: bytes) -> MemberMeta:
        return MemberMeta(*self._FORMAT.unpack(payload(data, "a member's stream bookkeeping")))


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _utc(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc)


class MemberUpdatesFn(beam.DoFn):
    """(member id, Transaction | None), keyed -> (member id, summary) updates, debounced.

    The summary is the batch ``MemberFeaturesFn`` output (``N_TRANSACTIONS``,
    ``FEATURES``) plus when it was computed, for which as-of date, and since when
    its first transaction had been waiting, so the sink can report latency.

    ``timer_clock`` gives the processing time the debounce timer is set from
    (seconds since the epoch). It is ``time.time`` in a real stream; a test on
    TestStream, whose simulated processing time starts at 0, passes ``lambda: 0.0``.
    """

    ACC = ReadModifyWriteStateSpec("features_accumulator", CompactAccumulatorCoder())
    META = ReadModifyWriteStateSpec("meta", MemberMetaCoder())
    DEBOUNCE = TimerSpec("debounce", TimeDomain.REAL_TIME)
    IDLE = TimerSpec("idle", TimeDomain.WATERMARK)

    def __init__(
        self,
        as_of: dt.date | None,
        feature_names,
        debounce_s: float,
        idle_days: float,
        timer_clock: Callable[[], float] = time.time,
    ):
        self._as_of = as_of
        self._names = tuple(feature_names)
        self._debounce = Duration(seconds=debounce_s)
        self._idle = Duration(seconds=idle_days * 86_400)
        self._timer_clock = timer_clock
        self._fn_as_of = as_of or dt.date.min
        self._fn = MemberFeaturesFn(self._fn_as_of, self._names)
        self.folded = Metrics.counter(NAMESPACE, "stream_transactions_folded")
        self.member_only = Metrics.counter(NAMESPACE, "stream_member_only_rows")
        self.updates = Metrics.counter(NAMESPACE, "stream_updates_emitted")
        self.cleared = Metrics.counter(NAMESPACE, "stream_members_cleared")

    def _features_fn(self, now: float) -> MemberFeaturesFn:
        """The batch CombineFn for the update's as-of date: fixed, or the UTC date when it is emitted."""
        as_of = self._as_of or _utc(now).date()
        if self._fn_as_of != as_of:
            self._fn_as_of, self._fn = as_of, MemberFeaturesFn(as_of, self._names)
        return self._fn

    def process(
        self,
        element: tuple[str, Transaction | None],
        acc_state=beam.DoFn.StateParam(ACC),
        meta_state=beam.DoFn.StateParam(META),
        debounce=beam.DoFn.TimerParam(DEBOUNCE),
        idle=beam.DoFn.TimerParam(IDLE),
    ):
        member_id, txn = element
        if txn is None:
            # A member-only row changes no feature. A member the stream holds no
            # transactions for gets its NO_TRANSACTIONS row at once (no calls).
            self.member_only.inc()
            if acc_state.read() is None:
                now = time.time()
                fn = self._features_fn(now)
                yield member_id, self._summary(fn, fn.create_accumulator(), now, now, 0)
            return
        acc = acc_state.read() or self._fn.create_accumulator()
        acc_state.write(self._fn.add_input(acc, txn))
        self.folded.inc()
        meta = meta_state.read() or MemberMeta(0.0, 0, -(1 << 63))
        if txn.ts_us > meta.last_event_us:
            meta = meta._replace(last_event_us=txn.ts_us)
            idle.set(Timestamp(micros=txn.ts_us) + self._idle)
        if not meta.pending_since:
            meta = meta._replace(pending_since=time.time())
            debounce.set(Timestamp(self._timer_clock()) + self._debounce)
        meta_state.write(meta)

    @on_timer(DEBOUNCE)
    def on_debounce(
        self,
        key=beam.DoFn.KeyParam,
        acc_state=beam.DoFn.StateParam(ACC),
        meta_state=beam.DoFn.StateParam(META),
    ):
        meta = meta_state.read()
        if meta is not None and meta.pending_since:
            yield self._emit(key, acc_state, meta_state, meta)

    @on_timer(IDLE)
    def on_idle(
        self,
        key=beam.DoFn.KeyParam,
        acc_state=beam.DoFn.StateParam(ACC),
        meta_state=beam.DoFn.StateParam(META),
        debounce=beam.DoFn.TimerParam(DEBOUNCE),
    ):
        meta = meta_state.read()
        if meta is not None and meta.pending_since:
            yield self._emit(key, acc_state, meta_state, meta)  # flush: an update is never lost
        acc_state.clear()
        meta_state.clear()
        debounce.clear()
        self.cleared.inc()

    def _emit(self, member_id: str, acc_state, meta_state, meta: MemberMeta):
        acc = acc_state.read()
        now = time.time()
        meta_state.write(meta._replace(pending_since=0.0, updates=meta.updates + 1))
        self.updates.inc()
        return member_id, self._summary(self._features_fn(now), acc, meta.pending_since, now, meta.updates + 1)

    def _summary(self, fn: MemberFeaturesFn, acc: list, received: float, now: float, seq: int) -> dict:
        summary = fn.extract_output(acc)
        last3 = acc[LAST3]
        summary.update(
            AS_OF=self._fn_as_of,
            UPDATE_SEQ=seq,
            LAST_TRANSACTION_AT=_EPOCH + dt.timedelta(microseconds=last3[0][0]) if last3 else None,
            RECEIVED_AT=received,
            FEATURES_AT=now,
        )
        return summary
