"""Per-member streaming state: the batch ``MemberFeaturesFn`` accumulator, updated one transaction at a time.

The stream keeps, for each member, exactly the accumulator the batch job builds
with ``CombinePerKey(MemberFeaturesFn)``, and folds each new transaction in with
that CombineFn's own ``add_input``; features come from its ``extract_output``.
There is one implementation of the math, so a member's last streamed features
equal the batch job's for the same rows, whatever the arrival order.

State per member is constant size (the accumulator: counts, two exact sums,
three transactions; plus a small ``MemberMeta``), plus the identities of the
transactions it folded within the idle window (``SeenIds``: 16 bytes each, at most
``MAX_SEEN_IDS``), so a redelivered or re-published transaction is a duplicate,
dead-lettered as ``DUPLICATE`` and not folded twice. Two timers bound its life and
its cost:

- debounce (processing time): the first transaction after an emission arms it;
  transactions that arrive before it fires are folded in silently, so a burst
  produces one update and one set of endpoint calls.
- idle (event time): ``last transaction time + idle timeout``. When the
  watermark passes it, a pending update is flushed and the member's state is
  cleared; a later transaction starts the member afresh.

Every update leaves with the timestamp the runner gives a timer's output: on the
portable runners that is the hold of the element that armed the debounce (its
arrival time, never the transaction's own time), so one member's late
transactions hold no other member's results. When the watermark reaches the end
(a drain), the idle timers fire and flush every pending update.

State of a layout version this code cannot read (``lantern.state_version``) is
never misread and never stops the stream: the transaction is dead-lettered as
``UNKNOWN_STATE_VERSION`` with the one-line refusal as its detail.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import logging
import struct
import time
from collections.abc import Callable
from typing import NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Duration, Timestamp

from lantern.features import LAST3, N, live
from lantern.state_version import StateVersionError, framed, payload
from transforms import NAMESPACE
from transforms.features import CompactAccumulatorCoder, MemberFeaturesFn, StatelessCoder
from transforms.messages import Arrival
from transforms.parse import DEAD_LETTER, dead_letter_row

log = logging.getLogger(__name__)

DUPLICATE = "DUPLICATE"  # a transaction its member's state has already folded
UNKNOWN_STATE_VERSION = "UNKNOWN_STATE_VERSION"  # the member's state was written by an unknown layout
STATE_REASONS = (DUPLICATE, UNKNOWN_STATE_VERSION)
MAX_SEEN_IDS = 4096  # transaction ids remembered per member (the newest, within the idle window)


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


class SeenIds(NamedTuple):
    """The transactions a member's state has folded, as (transaction time, 64-bit id hash), oldest first."""

    entries: tuple[tuple[int, int], ...] = ()

    def __contains__(self, key: int) -> bool:
        return any(h == key for _, h in self.entries)

    def add(self, ts_us: int, key: int, horizon_us: int) -> SeenIds:
        """With (ts_us, key), without ids older than ``horizon_us``, at most ``MAX_SEEN_IDS`` (the newest)."""
        entries = sorted((*(e for e in self.entries if e[0] >= horizon_us), (ts_us, key)))
        return SeenIds(tuple(entries[-MAX_SEEN_IDS:]))


def id_hash(txn_id: str) -> int:
    """A transaction identity as 64 bits (a collision within one member's window is ~n²/2⁶⁵)."""
    return int.from_bytes(hashlib.blake2b(txn_id.encode("utf-8"), digest_size=8).digest(), "big")


class SeenIdsCoder(StatelessCoder):
    """``SeenIds`` as 16 bytes per id behind the state layout version."""

    _ENTRY = struct.Struct(">qQ")

    def encode(self, seen: SeenIds) -> bytes:
        return framed(b"".join(self._ENTRY.pack(*e) for e in seen.entries))

    def decode(self, data: bytes) -> SeenIds:
        body = payload(data, "a member's transaction ids")
        return SeenIds(tuple(self._ENTRY.iter_unpack(body)))


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _utc(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc)


class MemberUpdatesFn(beam.DoFn):
    """(member id, ``Arrival``), keyed -> (member id, summary) updates, debounced; duplicates and
    transactions whose state cannot be read leave as dead letters (tagged ``DEAD_LETTER``).
    A (member id, packed accumulator) element seeds the member's state from a batch run's
    (``--streaming --incremental-from``).

    The summary is the batch ``MemberFeaturesFn`` output (``N_TRANSACTIONS``,
    ``FEATURES``) plus when it was computed, for which as-of date, and since when
    its first transaction had been waiting, so the sink can report latency.

    ``timer_clock`` gives the processing time the debounce timer is set from
    (seconds since the epoch). It is ``time.time`` in a real stream; a test on
    TestStream, whose simulated processing time starts at 0, passes ``lambda: 0.0``.
    """

    ACC = ReadModifyWriteStateSpec("features_accumulator", CompactAccumulatorCoder())
    META = ReadModifyWriteStateSpec("meta", MemberMetaCoder())
    SEEN = ReadModifyWriteStateSpec("seen_ids", SeenIdsCoder())
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
        self.duplicates = Metrics.counter(NAMESPACE, "stream_duplicates")
        self.unreadable = Metrics.counter(NAMESPACE, "stream_unknown_state_version")
        self.seeded = Metrics.counter(NAMESPACE, "stream_members_seeded")

    def _features_fn(self, now: float) -> MemberFeaturesFn:
        """The batch CombineFn for the update's as-of date: fixed, or the UTC date when it is emitted."""
        as_of = self._as_of or _utc(now).date()
        if self._fn_as_of != as_of:
            self._fn_as_of, self._fn = as_of, MemberFeaturesFn(as_of, self._names)
        return self._fn

    def process(
        self,
        element: tuple[str, Arrival],
        acc_state=beam.DoFn.StateParam(ACC),
        meta_state=beam.DoFn.StateParam(META),
        seen_state=beam.DoFn.StateParam(SEEN),
        debounce=beam.DoFn.TimerParam(DEBOUNCE),
        idle=beam.DoFn.TimerParam(IDLE),
    ):
        member_id, arrival = element
        if isinstance(arrival, bytes):  # a batch run's accumulator for this member (--incremental-from)
            yield from self._seed(member_id, arrival, acc_state, meta_state, debounce, idle)
            return
        txn = arrival.txn
        try:
            acc = acc_state.read()
            if txn is not None:
                meta = meta_state.read()
                seen = seen_state.read() if arrival.txn_id is not None else None
        except StateVersionError as exc:
            self.unreadable.inc()
            yield self._dead_letter(arrival, UNKNOWN_STATE_VERSION, str(exc))
            return
        if txn is None:
            # A member-only row changes no feature. A member the stream holds no
            # transactions for gets its NO_TRANSACTIONS row at once (no calls).
            self.member_only.inc()
            if acc is None:
                now = time.time()
                fn = self._features_fn(now)
                yield member_id, self._summary(fn, fn.create_accumulator(), now, now, 0)
            return
        meta = meta or MemberMeta(0.0, 0, -(1 << 63))
        if arrival.txn_id is not None:
            key, seen = id_hash(arrival.txn_id), seen or SeenIds()
            if key in seen:
                self.duplicates.inc()
                yield self._dead_letter(arrival, DUPLICATE, f"transaction {arrival.txn_id} was already folded")
                return
            horizon = max(meta.last_event_us, txn.ts_us) - self._idle.micros
            seen_state.write(seen.add(txn.ts_us, key, horizon))
        acc_state.write(self._fn.add_input(acc or self._fn.create_accumulator(), txn))
        self.folded.inc()
        if txn.ts_us > meta.last_event_us:
            meta = meta._replace(last_event_us=txn.ts_us)
            idle.set(Timestamp(micros=txn.ts_us) + self._idle)
        if not meta.pending_since:
            meta = meta._replace(pending_since=time.time())
            debounce.set(Timestamp(self._timer_clock()) + self._debounce)
        meta_state.write(meta)

    def _seed(self, member_id: str, packed: bytes, acc_state, meta_state, debounce, idle):
        """Fold a batch run's accumulator into the member's state, with the same merge as the shuffle's.

        The stream then picks up where the batch left off: the next update of the member counts
        every row the batch folded. A seed emits nothing by itself, unless the member's updates
        have already left without it (its transactions arrived first): then one more update follows.
        """
        try:
            held = acc_state.read()
            meta = meta_state.read() or MemberMeta(0.0, 0, -(1 << 63))
        except StateVersionError as exc:
            self._unreadable(member_id, exc)
            return
        seed = live(packed)
        if not seed[N]:  # a member with only member-only rows in the batch: nothing to hold
            return
        self.seeded.inc()
        acc_state.write(live(self._fn.merge_accumulators([held or self._fn.create_accumulator(), seed])))
        last_us = seed[LAST3][0][0]
        if last_us > meta.last_event_us:
            meta = meta._replace(last_event_us=last_us)
            idle.set(Timestamp(micros=last_us) + self._idle)
        if held is not None and held[N] and meta.updates and not meta.pending_since:
            meta = meta._replace(pending_since=time.time())
            debounce.set(Timestamp(self._timer_clock()) + self._debounce)
        meta_state.write(meta)
        yield from ()

    @staticmethod
    def _dead_letter(arrival: Arrival, reason: str, detail: str):
        return beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter_row(arrival.source, arrival.data, reason, detail))

    @on_timer(DEBOUNCE)
    def on_debounce(
        self,
        key=beam.DoFn.KeyParam,
        acc_state=beam.DoFn.StateParam(ACC),
        meta_state=beam.DoFn.StateParam(META),
    ):
        try:
            meta = meta_state.read()
            if meta is not None and meta.pending_since:
                yield self._emit(key, acc_state, meta_state, meta)
        except StateVersionError as exc:  # armed by an older job: its idle timer clears the state
            self._unreadable(key, exc)

    @on_timer(IDLE)
    def on_idle(
        self,
        key=beam.DoFn.KeyParam,
        acc_state=beam.DoFn.StateParam(ACC),
        meta_state=beam.DoFn.StateParam(META),
        seen_state=beam.DoFn.StateParam(SEEN),
        debounce=beam.DoFn.TimerParam(DEBOUNCE),
    ):
        try:
            meta = meta_state.read()
            if meta is not None and meta.pending_since:
                yield self._emit(key, acc_state, meta_state, meta)  # flush: an update is never lost
        except StateVersionError as exc:
            self._unreadable(key, exc)
        acc_state.clear()
        meta_state.clear()
        seen_state.clear()
        debounce.clear()
        self.cleared.inc()

    def _unreadable(self, member_id: str, exc: StateVersionError) -> None:
        self.unreadable.inc()
        log.error("member %s: %s", member_id, exc)

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
