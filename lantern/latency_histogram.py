"""Latency percentiles from a mergeable summary: a sparse histogram of logarithmic buckets.

A run's latency percentiles are computed where the rows are (on each worker, per
bundle) and merged in any order, so no machine ever holds every member's latency.
Bucket ``i`` holds the values in ``[GROWTH**i, GROWTH**(i+1))``; a percentile is
reported as its bucket's geometric midpoint (clamped to the smallest and largest
value seen), so it is within ``RELATIVE_ERROR`` (0.5%) of the exact value at the
same rank. ``count``, ``max`` and ``mean`` are exact (``mean`` up to the order in
which floating-point sums are merged). The number of buckets grows with the
spread of the values, not their count: about 230 per decade of milliseconds.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

GROWTH = 1.01
RELATIVE_ERROR = (math.sqrt(GROWTH) - 1)  # the midpoint's worst distance to a bucket's edge, relative
_LOG_GROWTH = math.log(GROWTH)
ZERO = -(1 << 40)  # the bucket of values <= 0 (a latency is never negative; a clock may say 0)
PERCENTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
DIGITS = 3
PENDING = 4096
SPAN = 1 << 16  # the widest range of bucket indices counted with one array


class LogHistogram:
    """Counts of values per logarithmic bucket, with their exact count, sum, min and max."""

    __slots__ = ("_pending", "buckets", "count", "high", "low", "total")

    def __init__(self):
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.total = 0.0
        self.low = math.inf
        self.high = -math.inf
        self._pending: list[float] = []  # values added one by one, bucketed PENDING at a time

    def __getstate__(self):
        self._fold()
        return self.buckets, self.count, self.total, self.low, self.high

    def __setstate__(self, state):
        self.buckets, self.count, self.total, self.low, self.high = state
        self._pending = []

    def add_one(self, value: float) -> None:
        self._pending.append(value)
        if len(self._pending) >= PENDING:
            self._fold()

    def _fold(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, []
            self.add_array(np.array(pending, dtype=np.float64))

    def add_array(self, values: np.ndarray) -> None:
        """Values (NaN left out: a member that was not called has no latency)."""
        values = np.asarray(values, dtype=np.float64)
        values = values[~np.isnan(values)]
        if not len(values):
            return
        positive = values[values > 0]
        buckets = self.buckets
        zeros = len(values) - len(positive)
        if zeros:
            buckets[ZERO] = buckets.get(ZERO, 0) + zeros
        if len(positive):
            # the buckets of a batch span a few hundred indices: counted by offset, not sorted
            index = np.floor(np.log(positive) / _LOG_GROWTH).astype(np.int64)
            first, last = int(index.min()), int(index.max())
            if last - first < SPAN:
                counts = np.bincount(index - first)
                offsets = np.flatnonzero(counts)
                keys, counts = (offsets + first).tolist(), counts[offsets].tolist()
            else:  # a spread too wide to count by offset (any value, however extreme, still counts)
                keys, counts = (a.tolist() for a in np.unique(index, return_counts=True))
            for key, n in zip(keys, counts, strict=True):
                buckets[key] = buckets.get(key, 0) + n
        self.count += len(values)
        self.total += float(values.sum())
        self.low = min(self.low, float(values.min()))
        self.high = max(self.high, float(values.max()))

    def add(self, values: Iterable[float | None]) -> None:
        self.add_array(np.array([math.nan if v is None else v for v in values], dtype=np.float64))

    def merge(self, other: LogHistogram) -> LogHistogram:
        other._fold()
        buckets = self.buckets
        for key, n in other.buckets.items():
            buckets[key] = buckets.get(key, 0) + n
        self.count += other.count
        self.total += other.total
        self.low = min(self.low, other.low)
        self.high = max(self.high, other.high)
        return self

    def quantile(self, q: float) -> float:
        """The value at rank ``q * (count - 1)`` (0-based, as ``pyarrow.compute.quantile``), to within
        ``RELATIVE_ERROR``."""
        self._fold()
        if not self.count:
            raise ValueError("no values")
        rank = math.floor(q * (self.count - 1))
        seen = 0
        for key in sorted(self.buckets):
            seen += self.buckets[key]
            if seen > rank:
                value = 0.0 if key == ZERO else GROWTH ** (key + 0.5)
                return min(max(value, self.low), self.high)
        return self.high

    def summary(self) -> dict:
        """run.json's percentiles, mean, max and count in ms; ``{}`` when there is no value."""
        self._fold()
        if not self.count:
            return {}
        out = {name: round(self.quantile(q), DIGITS) for name, q in PERCENTILES}
        out.update(mean=round(self.total / self.count, DIGITS), max=round(self.high, DIGITS), count=self.count)
        return out
