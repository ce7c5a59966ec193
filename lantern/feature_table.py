"""Features of many members at once, straight from their packed accumulators.

``lantern.features.extract_packed`` reads one member's accumulator in Python; after
the block reader's shuffle a shard holds thousands of them in one Arrow column, and
reading them one by one was the largest Python cost left in a features-only run. Here
the packed records are cut into columns with numpy and every feature is computed over
the columns, with the means divided exactly (``lantern.exact_quotient``): the same
digits ``extract_packed`` gives, member for member. The rare member the vectorised
path does not answer (a mean past the normal float range, a sum beyond the float range,
last three values too far apart in magnitude to align) takes ``extract_packed``.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from lantern.exact_quotient import from_signed_bytes, from_signed_limbs, quotients
from lantern.features import EPOCH_ORDINAL, INTEGER_FEATURES, SCALE_BITS, SPEC_FEATURES, US_PER_DAY, extract_packed
from lantern.member_table import PACKED_COUNTS, PACKED_ENTRY, PACKED_SUM_HEAD, limbs

_LAST3_LIMBS = 8  # limbs of an aligned sum of the last three; wider spreads take the Python path
_TINY = np.finfo(np.float64).tiny


class Accumulators:
    """Packed accumulators (``lantern.features.pack``) as columns: counts, exact sums as limbs, last three."""

    def __init__(self, packed: pa.Array):
        packed = packed.combine_chunks() if isinstance(packed, pa.ChunkedArray) else packed
        m = len(packed)
        self.size = m
        offsets = np.frombuffer(packed.buffers()[1], dtype=np.int32)[packed.offset:packed.offset + m + 1]
        raw = packed.buffers()[2]
        data = np.frombuffer(raw, dtype=np.uint8) if raw is not None else np.empty(0, dtype=np.uint8)
        # Padding: fixed-width reads past a record's end stay inside the array (those bytes are masked).
        data = np.concatenate([data[:offsets[-1] if m else 0], np.zeros(3 * PACKED_ENTRY.itemsize + 8, dtype=np.uint8)])
        start = offsets[:-1].astype(np.int64)
        counts = self._read(data, start, PACKED_COUNTS)
        self.n = counts["n"].astype(np.int64)
        self.by_type = np.stack([counts["buy"], counts["gift"], counts["redeem"]], axis=1).astype(np.int64)
        self.k = counts["k"].astype(np.int64)
        pos = start + PACKED_COUNTS.itemsize
        self.sums = []
        for _ in range(2):  # points, revenue: (magnitude limbs, negative, scale of the last limb 0)
            head = self._read(data, pos, PACKED_SUM_HEAD)
            shift, size = head["shift"].astype(np.int64), head["size"].astype(np.int64)
            pos = pos + PACKED_SUM_HEAD.itemsize
            self.sums.append((*self._signed(data, pos, size), shift - SCALE_BITS))
            pos = pos + size
        entries = self._read(data, pos, PACKED_ENTRY, 3)
        self.last_ts = entries["ts"].astype(np.int64)
        self.last_points = entries["points"].astype(np.float64)
        self.last_revenue = entries["revenue"].astype(np.float64)

    @staticmethod
    def _read(data: np.ndarray, start: np.ndarray, dtype: np.dtype, count: int = 1) -> np.ndarray:
        """``count`` records of ``dtype`` at each offset in ``start``: shape (m,), or (m, count)."""
        width = dtype.itemsize * count
        # Rows of a sliding-window view: one contiguous copy per record, not an index per byte.
        block = np.lib.stride_tricks.sliding_window_view(data, width)[start]
        records = np.ascontiguousarray(block).view(dtype)
        return records.reshape(len(start)) if count == 1 else records.reshape(len(start), count)

    @staticmethod
    def _signed(data: np.ndarray, start: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        width = int(size.max()) if len(size) else 1
        negative = data[start] >= 128
        first = start + size - width  # right-aligned in ``width`` bytes
        if len(first) and first.min() < 0:  # rare: a wide sum near the front; room before the first record
            data, first = np.concatenate([np.zeros(width, dtype=np.uint8), data]), first + width
        block = np.lib.stride_tricks.sliding_window_view(data, width)[first]
        before = np.arange(width)[None, :] < (width - size)[:, None]  # left of a shorter record: its sign
        block = np.where(before, np.where(negative, 255, 0)[:, None], block).astype(np.uint8)
        return from_signed_bytes(block)


def _normal(values: np.ndarray) -> np.ndarray:
    """Results the float fast paths may give as they are: finite, and zero or normal (a subnormal
    result may have been rounded twice)."""
    size = np.abs(values)
    return np.isfinite(values) & ((size >= _TINY) | (values == 0))


def _mean(sums: tuple, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sum / n correctly rounded. Most sums fit in 53 bits: then one float division (IEEE rounds it
    correctly) and an exact power-of-two scaling give the answer; the rest take ``quotients``."""
    magnitude, negative, scale = sums
    low = magnitude[:, 0].astype(np.float64)
    small = np.ones(len(n), dtype=bool)
    if magnitude.shape[1] > 1:  # below 2**53: exact in a double
        low += np.ldexp(magnitude[:, 1].astype(np.float64), 32)
        small = (magnitude[:, 1] < (1 << 21)) & ~magnitude[:, 2:].any(axis=1)
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        values = np.ldexp(np.where(negative, -low, low) / np.maximum(n, 1), np.clip(scale, -2000, 2000)) + 0.0
    # A zero is only taken as it is when the sum is zero: a tiny negative mean that underflows is
    # -0.0 for ``int / int``, and the ``+ 0.0`` above has made it 0.0.
    done = small & _normal(values) & ((values != 0) | (low == 0)) & (n >= 1)
    rest = ~done & (n >= 1)
    if not rest.any():
        return values, done
    exact, answered = quotients(magnitude[rest], negative[rest], np.broadcast_to(scale, len(n))[rest], n[rest])
    values[rest] = exact
    done[rest] = answered
    return values, done


def _last3_mean(values: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The exact mean of each row's first ``k`` values (at most three), correctly rounded.

    Where the float sum is exact (TwoSum finds no error) one division gives the answer; other
    rows are summed exactly in limbs and divided with ``quotients``."""
    used = np.arange(3)[None, :] < k[:, None]
    a, b, c = (np.where(used[:, i], values[:, i], 0.0) for i in range(3))
    with np.errstate(over="ignore", invalid="ignore"):
        ab, ab_err = _two_sum(a, b)
        total, total_err = _two_sum(ab, c)
        mean = total / np.maximum(k, 1) + 0.0
    done = (ab_err == 0) & (total_err == 0) & _normal(mean) & ((mean != 0) | (total == 0)) & (k > 0)
    rest = ~done & (k > 0)
    if not rest.any():
        return mean, done
    exact, answered = _last3_exact(values[rest], k[rest])
    mean[rest] = exact
    done[rest] = answered
    return mean, done


def _two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a + b rounded, the rounding error) exactly, for finite sums (Knuth)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _last3_exact(values: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = len(k)
    used = np.arange(3)[None, :] < k[:, None]
    flat = np.where(used, values, 0.0).ravel()
    index, parts = limbs(flat)
    index = index.reshape(m, 3)
    parts = parts.reshape(m, 3, 3)
    nonzero = used & (flat.reshape(m, 3) != 0)
    big = np.iinfo(np.int64).max
    base = np.where(nonzero, index, big).min(axis=1)
    base = np.where(base == big, 0, base)
    offset = np.where(nonzero, index - base[:, None], 0)
    answered = (offset.max(axis=1) + 3 <= _LAST3_LIMBS) & (k > 0)
    offset = np.where(answered[:, None], offset, 0)
    acc = np.zeros((m, _LAST3_LIMBS), dtype=np.int64)
    rows = np.arange(m)
    for e in range(3):
        weight = nonzero[:, e]
        for j in range(3):
            acc[rows, offset[:, e] + j] += np.where(weight, parts[:, e, j], 0)
    magnitude, negative = from_signed_limbs(acc)
    out, ok = quotients(magnitude, negative, 32 * base - SCALE_BITS, np.maximum(k, 1))
    return out, ok & answered


def _days_since(acc: Accumulators, as_of: dt.date) -> tuple[np.ndarray, np.ndarray]:
    return as_of.toordinal() - (EPOCH_ORDINAL + acc.last_ts[:, 0] // US_PER_DAY), np.ones(acc.size, dtype=bool)


def _share(column: int) -> Callable:
    return lambda acc, _: (acc.by_type[:, column] / np.maximum(acc.n, 1), np.ones(acc.size, dtype=bool))


def _total(field: int) -> Callable:
    return lambda acc, _: _mean(acc.sums[field], np.ones(acc.size, dtype=np.int64))


# The vectorised twin of lantern.features.REGISTRY: (values, answered) per feature.
COLUMNS: dict[str, Callable[[Accumulators, dt.date], tuple[np.ndarray, np.ndarray]]] = {
    "AVG_POINTS_BOUGHT": lambda acc, _: _mean(acc.sums[0], acc.n),
    "AVG_REVENUE_USD": lambda acc, _: _mean(acc.sums[1], acc.n),
    "LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT": lambda acc, _: _last3_mean(acc.last_points, acc.k),
    "LAST_3_TRANSACTIONS_AVG_REVENUE_USD": lambda acc, _: _last3_mean(acc.last_revenue, acc.k),
    "PCT_BUY_TRANSACTIONS": _share(0),
    "PCT_GIFT_TRANSACTIONS": _share(1),
    "PCT_REDEEM_TRANSACTIONS": _share(2),
    "DAYS_SINCE_LAST_TRANSACTION": _days_since,
    "N_TRANSACTIONS": lambda acc, _: (acc.n.copy(), np.ones(acc.size, dtype=bool)),
    "TOTAL_REVENUE_USD": _total(1),
    "TOTAL_POINTS_BOUGHT": _total(0),
}


def feature_arrays(packed: pa.Array, as_of: dt.date, names: tuple[str, ...] = SPEC_FEATURES,
                   ) -> tuple[np.ndarray, dict[str, pa.Array]]:
    """(N_TRANSACTIONS per member, {feature: Arrow column}) for packed accumulators; a member without
    transactions has nulls. Equal, value for value, to ``extract_packed`` on each accumulator."""
    acc = Accumulators(packed)
    active = acc.n > 0
    columns: dict[str, np.ndarray] = {}
    slow = np.zeros(acc.size, dtype=bool)
    for name in names:
        if name not in COLUMNS:
            raise KeyError(f"feature {name!r} has no column form")
        values, answered = COLUMNS[name](acc, as_of)
        columns[name] = values
        slow |= active & ~answered
    if slow.any():  # rare: the exact Python path, member by member
        as_python = packed.combine_chunks() if isinstance(packed, pa.ChunkedArray) else packed
        for row in np.flatnonzero(slow).tolist():
            _, features = extract_packed(as_python[row].as_py(), as_of, names)
            for name in names:
                columns[name][row] = features[name]
    mask = ~active
    out = {}
    for name in names:
        kind = pa.int64() if name in INTEGER_FEATURES else pa.float64()
        values = columns[name]
        values = values.astype(np.int64) if kind == pa.int64() else values.astype(np.float64)
        out[name] = pa.array(values, kind, mask=mask)
    return acc.n, out


def members_table(ids: pa.Array, packed: pa.Array, as_of: dt.date, names: tuple[str, ...] = SPEC_FEATURES) -> pa.Table:
    """Members and their features as one table: MEMBER_ID, N_TRANSACTIONS, then ``names`` (but
    N_TRANSACTIONS, already there); a member without transactions has null features."""
    n, columns = feature_arrays(packed, as_of, names)
    columns.pop("N_TRANSACTIONS", None)
    return pa.table({"MEMBER_ID": ids, "N_TRANSACTIONS": pa.array(n, pa.int64()), **columns})


def summaries(table: pa.Table, names: tuple[str, ...] = SPEC_FEATURES) -> list[tuple[str, dict]]:
    """A ``members_table`` as (member, {"N_TRANSACTIONS": n, "FEATURES": {...} | None}) pairs, the
    summaries ``MemberFeaturesFn.extract_output`` gives, for the steps that take members one by one."""
    counts = table.column("N_TRANSACTIONS").to_pylist()
    columns = [counts if name == "N_TRANSACTIONS" else table.column(name).to_pylist() for name in names]
    return [
        (member, {"N_TRANSACTIONS": n, "FEATURES": dict(zip(names, values, strict=True)) if n else None})
        for member, n, values in zip(table.column("MEMBER_ID").to_pylist(), counts, zip(*columns, strict=True), strict=True)
    ]
