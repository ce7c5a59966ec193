"""Member features (SPEC §2) as a constant-memory accumulator and a Beam ``CombineFn``.

Sums are kept as exact integers (each float scaled by 2**1074, which is exact for
every finite double), so a mean is the correctly rounded value of the true sum
divided by n. That makes the output independent of row order and of how Beam
splits and merges accumulators: same rows in, same digits out.

Accumulator layout (a list, so pickling and coders stay cheap)::

    [n, points_sum, revenue_sum, n_buy, n_gift, n_redeem, last3]

``last3`` holds up to three ``(ts_us, points, revenue, type_code)`` tuples,
the most recent first. "Most recent" is the larger tuple: timestamp first,
then, for equal timestamps, larger points, larger revenue, larger type code.
The order is total, so ties never depend on input order.
"""
from __future__ import annotations

import datetime as dt
import math
import struct
from collections.abc import Callable, Iterable
from typing import NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam import coders

BUY, GIFT, REDEEM = 0, 1, 2
TYPE_CODES = {"buy": BUY, "gift": GIFT, "redeem": REDEEM}
TYPE_NAMES = {code: name for name, code in TYPE_CODES.items()}

_SCALE_BITS = 1074  # 2**-1074 is the smallest positive double: every double is k * 2**-1074.
_US_PER_DAY = 86_400_000_000
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()

N, POINTS, REVENUE, N_BUY, N_GIFT, N_REDEEM, LAST3 = range(7)


class Transaction(NamedTuple):
    """One valid transaction; ``ts_us`` is microseconds since the Unix epoch, UTC."""

    ts_us: int
    type_code: int
    points: float
    revenue: float


def exact(value: float) -> int:
    """The float as an integer multiple of 2**-1074: exact, so sums never round."""
    num, den = value.as_integer_ratio()
    return num << (_SCALE_BITS + 1 - den.bit_length())


def exact_mean(total: int, n: int) -> float:
    # int / int is correctly rounded in CPython, however large the operands.
    return total / (n << _SCALE_BITS)


def exact_total(total: int) -> float:
    """The sum as the nearest float; past the float range, infinity with its sign
    (two rows near 1.8e308 are valid input and must not stop the job)."""
    try:
        return total / (1 << _SCALE_BITS)
    except OverflowError:
        return math.inf if total > 0 else -math.inf


def create() -> list:
    return [0, 0, 0, 0, 0, 0, ()]


_EMPTY = create()


def add(acc: list, txn: Transaction) -> list:
    ts_us, type_code, points, revenue = txn
    acc[N] += 1
    acc[POINTS] += exact(points)
    acc[REVENUE] += exact(revenue)
    acc[N_BUY + type_code] += 1
    acc[LAST3] = push_recent(acc[LAST3], (ts_us, points, revenue, type_code))
    return acc


def push_recent(last3: tuple, entry: tuple) -> tuple:
    """``last3`` (most recent first) with ``entry`` in its place, three at most.

    Runs once per transaction: comparisons only, no sort (a sort of four tuples
    was ~6% of a features-only run's profile samples).
    """
    if len(last3) == 3:
        a, b, c = last3
        if entry <= c:
            return last3
    elif not last3:
        return (entry,)
    elif len(last3) == 1:
        (a,) = last3
        return (entry, a) if entry > a else (a, entry)
    else:
        a, b = last3
    if entry > a:
        return (entry, a, b)
    if entry > b:
        return (a, entry, b)
    return (a, b, entry)


def merge(accs: Iterable[list]) -> list:
    out = create()
    last3: tuple = ()
    for acc in accs:
        for i in range(LAST3):
            out[i] += acc[i]
        last3 += tuple(acc[LAST3])
    out[LAST3] = tuple(sorted(last3, reverse=True)[:3])
    return out


def days_between(ts_us: int, as_of: dt.date) -> int:
    """Whole calendar days from the UTC date of ``ts_us`` to ``as_of``."""
    return as_of.toordinal() - (_EPOCH_ORDINAL + ts_us // _US_PER_DAY)


def _last3_mean(acc: list, field: int) -> float:
    last3 = acc[LAST3]
    return exact_mean(sum(exact(entry[field]) for entry in last3), len(last3))


# The feature registry: one pure function of (accumulator, as-of date) each.
# A partner file names the features it wants; only those are computed and sent.
FeatureFn = Callable[[list, dt.date], float]
REGISTRY: dict[str, FeatureFn] = {
    "AVG_POINTS_BOUGHT": lambda acc, _: exact_mean(acc[POINTS], acc[N]),
    "AVG_REVENUE_USD": lambda acc, _: exact_mean(acc[REVENUE], acc[N]),
    "LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT": lambda acc, _: _last3_mean(acc, 1),
    "LAST_3_TRANSACTIONS_AVG_REVENUE_USD": lambda acc, _: _last3_mean(acc, 2),
    "PCT_BUY_TRANSACTIONS": lambda acc, _: acc[N_BUY] / acc[N],
    "PCT_GIFT_TRANSACTIONS": lambda acc, _: acc[N_GIFT] / acc[N],
    "PCT_REDEEM_TRANSACTIONS": lambda acc, _: acc[N_REDEEM] / acc[N],
    "DAYS_SINCE_LAST_TRANSACTION": lambda acc, as_of: days_between(acc[LAST3][0][0], as_of),
    # Beyond SPEC §2: proof that a partner can ask for more without code changes.
    "N_TRANSACTIONS": lambda acc, _: acc[N],
    "TOTAL_REVENUE_USD": lambda acc, _: exact_total(acc[REVENUE]),
    "TOTAL_POINTS_BOUGHT": lambda acc, _: exact_total(acc[POINTS]),
}

SPEC_FEATURES = (
    "AVG_POINTS_BOUGHT",
    "AVG_REVENUE_USD",
    "LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT",
    "LAST_3_TRANSACTIONS_AVG_REVENUE_USD",
    "PCT_BUY_TRANSACTIONS",
    "PCT_GIFT_TRANSACTIONS",
    "PCT_REDEEM_TRANSACTIONS",
    "DAYS_SINCE_LAST_TRANSACTION",
)
INTEGER_FEATURES = frozenset({"DAYS_SINCE_LAST_TRANSACTION", "N_TRANSACTIONS"})


def extract(acc: list, as_of: dt.date, names: Iterable[str] = SPEC_FEATURES) -> dict | None:
    """The requested features, or None for a member with no transactions."""
    if not acc[N]:
        return None
    return {name: REGISTRY[name](acc, as_of) for name in names}


def compute(
    transactions: Iterable[Transaction], as_of: dt.date, names: Iterable[str] = SPEC_FEATURES
) -> dict | None:
    """One pass over a member's transactions; the reference the CombineFn must match."""
    acc = create()
    for txn in transactions:
        add(acc, txn)
    return extract(acc, as_of, names)


_COUNTS = struct.Struct(">qqqqB")  # n, n_buy, n_gift, n_redeem, len(last3)
_SUM = struct.Struct(">HH")  # trailing zero bits, bytes of the odd part
_ENTRY = struct.Struct(">qddB")  # ts_us, points, revenue, type code


def _pack_sum(total: int) -> bytes:
    # An exact sum is a ~1,100-bit integer whose low ~1,000 bits are zeros (the
    # scale 2**1074): store the odd part and the shift, a few bytes for real data.
    shift = (total & -total).bit_length() - 1 if total else 0
    odd = total >> shift
    raw = odd.to_bytes((odd.bit_length() + 8) // 8, "big", signed=True)
    return _SUM.pack(shift, len(raw)) + raw


def _unpack_sum(data: bytes, pos: int) -> tuple[int, int]:
    shift, size = _SUM.unpack_from(data, pos)
    pos += _SUM.size
    return int.from_bytes(data[pos:pos + size], "big", signed=True) << shift, pos + size


class StatelessCoder(coders.Coder):
    """A coder with no parameters: deterministic, and equal to any other instance of its class."""

    def is_deterministic(self) -> bool:
        return True

    def __eq__(self, other):
        return type(self) is type(other)

    def __hash__(self):
        return hash(type(self))


def pack(acc: list) -> bytes:
    """The accumulator in ~100 bytes (pickle takes ~400; the live list ~1,000 in memory).
    The layout is fixed, so stored state does not depend on Python's pickle format."""
    last3 = acc[LAST3]
    return b"".join([
        _COUNTS.pack(acc[N], acc[N_BUY], acc[N_GIFT], acc[N_REDEEM], len(last3)),
        _pack_sum(acc[POINTS]),
        _pack_sum(acc[REVENUE]),
        *(_ENTRY.pack(*entry) for entry in last3),
    ])


def unpack(data: bytes) -> list:
    n, n_buy, n_gift, n_redeem, count = _COUNTS.unpack_from(data, 0)
    points, pos = _unpack_sum(data, _COUNTS.size)
    revenue, pos = _unpack_sum(data, pos)
    last3 = tuple(_ENTRY.unpack_from(data, pos + i * _ENTRY.size) for i in range(count))
    return [n, points, revenue, n_buy, n_gift, n_redeem, last3]


def at_rest(acc: list | bytes) -> bytes:
    """An accumulator as it crosses the shuffle: packed, once."""
    return acc if isinstance(acc, bytes) else pack(acc)


def live(acc: list | bytes) -> list:
    """An accumulator to work on: packed ones (at rest, see ``MemberFeaturesFn.compact``) unpacked."""
    return unpack(acc) if isinstance(acc, bytes) else acc


class CompactAccumulatorCoder(StatelessCoder):
    """Live accumulators as packed bytes and back: what the streaming job keeps in
    state per member, read back to be updated."""

    def encode(self, acc: list) -> bytes:
        return pack(acc)

    def decode(self, data: bytes) -> list:
        return unpack(data)


class PackedAccumulatorCoder(StatelessCoder):
    """The batch shuffle's coder: accumulators at rest stay packed bytes.

    Between the lifted partial combine and the final merge, the local runner keeps
    every accumulator in memory as the coder decodes it. Decoding to the packed
    bytes (not to the live list) keeps that at ~150 bytes per accumulator instead
    of ~1,000, and unpacks each once, in the merge, instead of twice.
    """

    def encode(self, acc: list | bytes) -> bytes:
        return at_rest(acc)

    def decode(self, data: bytes) -> bytes:
        return data


class MemberFeaturesFn(beam.CombineFn):
    """Folds ``Transaction | None`` values (None = a member-only row) into a member summary.

    The output is ``{"N_TRANSACTIONS": n, "FEATURES": {...} | None}`` so members
    without transactions still reach the results with status NO_TRANSACTIONS.
    """

    def __init__(self, as_of: dt.date, names: Iterable[str] = SPEC_FEATURES):
        self._as_of = as_of
        self._names = tuple(names)

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
        if len(accs) == 1:  # most members: one partial accumulator, nothing to merge
            return live(accs[0])
        return merge(live(acc) for acc in accs)

    def compact(self, acc: list | bytes) -> bytes:
        # Called on every accumulator that leaves the partial combine for the shuffle.
        return at_rest(acc)

    def get_accumulator_coder(self) -> coders.Coder:
        return PackedAccumulatorCoder()

    def extract_output(self, acc: list | bytes) -> dict:
        acc = live(acc)
        return {"N_TRANSACTIONS": acc[N], "FEATURES": extract(acc, self._as_of, self._names)}


# --- Folding columns: many transactions at once, into the same accumulators -------------------

_LIMB_BITS = 32
_LIMB_MASK = (1 << _LIMB_BITS) - 1
_WINDOW = 6  # limbs per sum kept in int64 columns: 192 bits around the values first seen
_CHUNK = 1 << 20  # rows per vectorised step: limb sums stay below 2**52, exact in a float64 bincount
_NO_TS = np.iinfo(np.int64).min  # an empty last-3 slot: older than any transaction


def limbs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each finite double as three signed 32-bit limbs: ``value * 2**1074 ==
    sum(limb[k] << 32 * (index + k))``. Returns (index, limbs of shape (n, 3)).

    ``np.frexp`` gives ``value = m * 2**(e - 53)`` with an integer ``m`` below 2**53;
    shifting ``m`` by ``(e - 53 + 1074) % 32`` spreads it over three limbs of 32 bits, so
    sums of limbs stay exact in int64 for more than 2**30 rows.
    """
    frac, exp = np.frexp(values)
    mant = (frac * float(1 << 53)).astype(np.int64)
    pos = exp.astype(np.int64) + (1074 - 53)
    # Subnormals: frexp normalises them below 2**-1074; their mantissa has the zeros to give back.
    under = pos < 0
    if under.any():
        mant = np.where(under, mant >> np.minimum(-pos, 63), mant)
        pos = np.maximum(pos, 0)
    index = pos >> 5
    shift = (pos & 31).astype(np.uint64)
    mag = np.abs(mant).astype(np.uint64)
    low = (mag & np.uint64(_LIMB_MASK)) << shift
    high = ((mag >> np.uint64(32)) << shift) + (low >> np.uint64(32))
    out = np.empty((len(values), 3), dtype=np.int64)
    out[:, 0] = (low & np.uint64(_LIMB_MASK)).astype(np.int64)
    out[:, 1] = (high & np.uint64(_LIMB_MASK)).astype(np.int64)
    out[:, 2] = (high >> np.uint64(32)).astype(np.int64)
    out *= np.sign(mant)[:, None]
    return index, out


def _greater(a: tuple, b: tuple) -> np.ndarray:
    """Row-wise ``a > b`` for (ts, points, revenue, type) column tuples: the last-3 order."""
    ts_a, p_a, r_a, t_a = a
    ts_b, p_b, r_b, t_b = b
    return (ts_a > ts_b) | ((ts_a == ts_b) & (
        (p_a > p_b) | ((p_a == p_b) & ((r_a > r_b) | ((r_a == r_b) & (t_a > t_b))))))


class MemberTable:
    """Accumulators of many members as columns: the batch reader's fold of a whole bundle.

    Rows arrive as numpy columns; one vectorised group-by per call folds them into
    per-member counts, exact sums (int64 limbs, see ``limbs``) and the three most recent
    transactions. ``drain`` hands back one packed accumulator per member (``pack``), the
    format ``MemberFeaturesFn`` merges, equal to folding the same rows one by one with
    ``add``. Memory grows with the members held, not with the rows folded.
    """

    def __init__(self, capacity: int = 1024):
        self._ids = pa.array([], pa.string())  # member of each slot
        self._alloc(capacity)
        self._base: int | None = None  # limb index of column 0 of the sums
        self._outside: dict[int, list[int]] = {}  # slot -> [points, revenue] parts beyond the window

    def _alloc(self, capacity: int) -> None:
        self._counts = np.zeros((capacity, 4), dtype=np.int64)  # n, n_buy, n_gift, n_redeem
        self._sums = np.zeros((2, capacity, _WINDOW), dtype=np.int64)  # points, revenue
        self._ts = np.full((capacity, 3), _NO_TS, dtype=np.int64)
        self._points = np.full((capacity, 3), -np.inf)
        self._revenue = np.full((capacity, 3), -np.inf)
        self._types = np.full((capacity, 3), -1, dtype=np.int64)

    def _grow(self, needed: int) -> None:
        size = len(self._counts)
        if needed <= size:
            return
        old = (self._counts, self._sums, self._ts, self._points, self._revenue, self._types)
        self._alloc(max(needed, 2 * size))
        self._counts[:size], self._ts[:size], self._points[:size] = old[0], old[2], old[3]
        self._revenue[:size], self._types[:size] = old[4], old[5]
        self._sums[:, :size] = old[1]

    def __len__(self) -> int:
        return len(self._ids)

    def slots(self, members) -> np.ndarray:
        """The slot of each of ``members`` (distinct ids; a list or a pyarrow string array), new ones appended.

        One hash lookup in Arrow per call, so members cost no Python per row.
        """
        members = members if isinstance(members, pa.Array) else pa.array(members, pa.string())
        held = len(self._ids)
        found = pc.index_in(members, value_set=self._ids) if held else pa.nulls(len(members), pa.int32())
        new = found.is_null().to_numpy(zero_copy_only=False)
        out = found.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        if new.any():
            out[new] = held + np.arange(int(new.sum()))
            self._ids = pa.concat_arrays([self._ids, members.filter(pa.array(new))])
            self._grow(len(self._ids))
        return out

    def add_members(self, members) -> None:
        """Members seen without a transaction (member-only rows): they get an accumulator with n=0."""
        members = members if isinstance(members, pa.Array) else pa.array(members, pa.string())
        self.slots(pc.unique(members))

    def add(self, members: list[str], codes: np.ndarray, ts: np.ndarray, types: np.ndarray,
            points: np.ndarray, revenue: np.ndarray) -> None:
        """Fold transactions: row i is member ``members[codes[i]]`` (``members`` distinct)."""
        slots = self.slots(members)
        for start in range(0, len(codes), _CHUNK):
            part = slice(start, start + _CHUNK)
            self._fold(slots, codes[part], ts[part], types[part], points[part], revenue[part])

    def _fold(self, slots, codes, ts, types, points, revenue) -> None:
        if not len(codes):
            return
        g = len(slots)
        self._counts[slots, 0] += np.bincount(codes, minlength=g)
        by_type = np.bincount(codes * 3 + types, minlength=3 * g).reshape(g, 3)
        self._counts[slots, 1:] += by_type
        for field, values in enumerate((points, revenue)):
            self._fold_sum(field, slots, codes, values)
        self._fold_last3(slots, codes, ts, types, points, revenue)

    def _fold_sum(self, field: int, slots, codes, values) -> None:
        index, parts = limbs(values)
        nonzero = values != 0
        if self._base is None:
            if not nonzero.any():
                return
            self._base = max(int(index[nonzero].min()) - 1, 0)
        col = index - self._base
        inside = (col >= 0) & (col + 3 <= _WINDOW)
        for row in np.flatnonzero(nonzero & ~inside):  # rare: values far from the first ones seen
            slot = int(slots[codes[row]])
            self._outside.setdefault(slot, [0, 0])[field] += exact(float(values[row]))
        keep = nonzero & inside
        g = len(slots)
        flat = (codes[keep] * _WINDOW + col[keep])[:, None] + np.arange(3)
        sums = np.bincount(flat.ravel(), weights=parts[keep].ravel().astype(np.float64), minlength=g * _WINDOW)
        self._sums[field, slots] += sums.reshape(g, _WINDOW).astype(np.int64)

    def _fold_last3(self, slots, codes, ts, types, points, revenue) -> None:
        # Ascending by (member, ts, points, revenue, type): a member's last three rows are its most recent.
        order = np.lexsort((ts, codes))
        same = (codes[order[1:]] == codes[order[:-1]]) & (ts[order[1:]] == ts[order[:-1]])
        if same.any():  # equal timestamps within a member: the full order decides
            order = np.lexsort((types, revenue, points, ts, codes))
        sorted_codes = codes[order]
        ends = np.flatnonzero(np.append(sorted_codes[1:] != sorted_codes[:-1], True)) + 1
        starts = np.append(0, ends[:-1])
        present = sorted_codes[starts]  # the codes that have rows, ascending
        new = []
        for k in range(3):
            pos = ends - 1 - k
            valid = pos >= starts
            take = order[np.where(valid, pos, 0)]
            new.append((np.where(valid, ts[take], _NO_TS), np.where(valid, points[take], -np.inf),
                        np.where(valid, revenue[take], -np.inf), np.where(valid, types[take], -1)))
        target = slots[present]
        old = [(self._ts[target, k], self._points[target, k], self._revenue[target, k], self._types[target, k])
               for k in range(3)]
        # Merge two lists sorted most recent first, keep three.
        i = np.zeros(len(target), dtype=np.int64)
        j = np.zeros(len(target), dtype=np.int64)
        merged = []
        for _ in range(3):
            a = tuple(np.choose(np.minimum(i, 2), [old[k][f] for k in range(3)]) for f in range(4))
            b = tuple(np.choose(np.minimum(j, 2), [new[k][f] for k in range(3)]) for f in range(4))
            a = tuple(np.where(i < 3, a[f], (_NO_TS, -np.inf, -np.inf, -1)[f]) for f in range(4))
            b = tuple(np.where(j < 3, b[f], (_NO_TS, -np.inf, -np.inf, -1)[f]) for f in range(4))
            from_a = ~_greater(b, a)
            merged.append(tuple(np.where(from_a, a[f], b[f]) for f in range(4)))
            i += from_a
            j += ~from_a
        for k, (t, p, r, ty) in enumerate(merged):
            self._ts[target, k], self._points[target, k] = t, p
            self._revenue[target, k], self._types[target, k] = r, ty

    def _limb_bytes(self, field: int, rows: slice) -> np.ndarray:
        """Members' exact sums (in window units) as little-endian two's complement bytes, one row each."""
        parts = self._sums[field, rows].copy()
        for k in range(_WINDOW - 1):  # carry: limbs 0..W-2 in [0, 2**32), the top one signed
            carry = parts[:, k] >> _LIMB_BITS
            parts[:, k] -= carry << _LIMB_BITS
            parts[:, k + 1] += carry
        n = len(parts)
        return np.concatenate([parts[:, :-1].astype("<u4").view(np.uint8).reshape(n, -1),
                               parts[:, -1:].astype("<i8").view(np.uint8).reshape(n, -1)], axis=1)

    def drain(self) -> Iterable[tuple[str, bytes]]:
        """(member, packed accumulator) for every member held; the table is empty afterwards."""
        n = len(self._ids)
        ids = self._ids.to_pylist()
        packed: list[bytes] = []
        for start in range(0, n, 1 << 16):
            rows = slice(start, min(start + (1 << 16), n))
            last3 = tuple(a[rows] for a in (self._ts, self._points, self._revenue, self._types))
            sums = [(self._limb_bytes(f, rows), _LIMB_BITS * (self._base or 0)) for f in (0, 1)]
            packed += pack_columns(self._counts[rows], sums, last3)
        for slot, extra in self._outside.items():  # rare: rebuilt from the exact parts in Python
            acc = unpack(packed[slot])
            acc[POINTS] += extra[0]
            acc[REVENUE] += extra[1]
            packed[slot] = pack(acc)
        self.__init__()
        return zip(ids, packed, strict=True)


_CTZ = np.array([0] + [(i & -i).bit_length() - 1 for i in range(1, 256)], dtype=np.int64)
_BITLEN = np.array([i.bit_length() for i in range(256)], dtype=np.int64)
_COUNTS_DTYPE = np.dtype([("n", ">i8"), ("buy", ">i8"), ("gift", ">i8"), ("redeem", ">i8"), ("k", "u1")])
_ENTRY_DTYPE = np.dtype([("ts", ">i8"), ("points", ">f8"), ("revenue", ">f8"), ("type", "u1")])
_SUM_HEAD_DTYPE = np.dtype([("shift", ">u2"), ("size", ">u2")])


def _odd_parts(data: np.ndarray, base_shift: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_pack_sum`` for many sums at once. ``data``: (n, w) little-endian two's complement bytes
    of each sum divided by 2**base_shift. Returns (shift, size, big-endian odd part right-aligned in w bytes)."""
    n, w = data.shape
    nonzero = data != 0
    any_bit = nonzero.any(axis=1)
    first = np.argmax(nonzero, axis=1)
    rows = np.arange(n)
    bits = _CTZ[data[rows, first]]
    shift = np.where(any_bit, 8 * first + bits + base_shift, 0)
    sign = np.where(data[:, -1] >= 128, 255, 0).astype(np.uint16)
    cols = np.arange(w + 1)[None, :] + first[:, None]
    wide = np.where(cols < w, data[rows[:, None], np.minimum(cols, w - 1)], sign[:, None]).astype(np.uint16)
    odd = (((wide[:, :-1] >> bits[:, None]) | (wide[:, 1:] << (8 - bits[:, None]))) & 255).astype(np.uint8)
    magnitude = np.where(sign[:, None] == 255, ~odd, odd)
    magnitude[:, 0] |= (sign == 255).astype(np.uint8)  # -odd == ~odd + 1 == ~odd | 1 for an odd number
    top = w - 1 - np.argmax(magnitude[:, ::-1] != 0, axis=1)
    bit_length = np.where((magnitude != 0).any(axis=1), 8 * top + _BITLEN[magnitude[rows, top]], 0)
    return shift, (bit_length + 8) // 8, odd[:, ::-1]


def pack_columns(counts: np.ndarray, sums: list[tuple[np.ndarray, int]], last3: tuple) -> list[bytes]:
    """``pack`` for many accumulators given as columns, byte for byte: counts (n, 4), the two sums
    as (bytes, base shift) for ``_odd_parts``, last3 as (ts, points, revenue, type) arrays of (n, 3)."""
    n = len(counts)
    k = np.minimum(counts[:, 0], 3)
    head = np.empty(n, dtype=_COUNTS_DTYPE)
    head["n"], head["buy"], head["gift"], head["redeem"], head["k"] = (*counts.T, k)
    entries = np.empty((n, 3), dtype=_ENTRY_DTYPE)
    for name, column in zip(("ts", "points", "revenue", "type"), last3, strict=True):
        entries[name] = column
    parts, sizes = [], []
    for data, base_shift in sums:
        shift, size, odd = _odd_parts(data, base_shift)
        sum_head = np.empty(n, dtype=_SUM_HEAD_DTYPE)
        sum_head["shift"], sum_head["size"] = shift, size
        parts.append((sum_head.view(np.uint8).reshape(n, -1), odd))
        sizes.append(size)
    head_bytes = head.view(np.uint8).reshape(n, -1)
    entry_bytes = entries.view(np.uint8).reshape(n, -1)
    width = parts[0][1].shape[1]
    # Records of one shape (sum sizes, entries) have one length: each shape is one fixed-width copy.
    shape = (sizes[0] * 64 + sizes[1]) * 4 + k
    order = np.argsort(shape, kind="stable")
    bounds = np.flatnonzero(np.diff(shape[order])) + 1
    out: list[bytes] = [b""] * n
    for rows in np.split(order, bounds):
        if not len(rows):
            continue
        size_p, size_r, n_last = int(sizes[0][rows[0]]), int(sizes[1][rows[0]]), int(k[rows[0]])
        (head_p, odd_p), (head_r, odd_r) = parts
        block = np.concatenate([head_bytes[rows], head_p[rows], odd_p[rows, width - size_p:],
                                head_r[rows], odd_r[rows, width - size_r:],
                                entry_bytes[rows, :_ENTRY_DTYPE.itemsize * n_last]], axis=1)
        size = block.shape[1]
        flat = block.tobytes()
        for i, row in enumerate(rows.tolist()):
            out[row] = flat[i * size:(i + 1) * size]
    return out
