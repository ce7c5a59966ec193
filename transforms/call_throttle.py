"""Client-side throttling of one endpoint, from the outcome of the calls that have completed.

The SRE book's adaptive throttling: over the last minute, with ``calls``
completed and ``accepted`` of them answered by the backend, a new call is
refused locally with probability ``max(0, (calls - K * accepted) / (calls + 1))``
(K = 2). So nothing is refused while more than half of the calls succeed, and a
dead endpoint is soon asked only now and then. Beam's ``ReactiveThrottler``
applies the same formula but counts a call when it is *sent* (and counts the
calls it refuses): with hundreds of calls in flight, or a few slow ones holding
slots, sent-but-unanswered calls read as failures and healthy members were
refused. Here only completed calls count, and a refusal counts for nothing.
The window keeps running totals (Beam's ``MovingSum`` adds up all its buckets
on every read): asking costs the same however many calls the window holds.
"""
from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable

WINDOW_MS = 60_000
BUCKET_MS = 1_000
OVERLOAD_RATIO = 2.0


class CompletedCallThrottler:
    """Refuses calls with the SRE formula over the calls completed in the last ``window_ms``."""

    def __init__(self, window_ms: int = WINDOW_MS, bucket_ms: int = BUCKET_MS, overload_ratio: float = OVERLOAD_RATIO,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None):
        self._bucket_ms = bucket_ms
        self._buckets_kept = -(-window_ms // bucket_ms)  # as MovingSum: a whole number of buckets
        self._window: deque[list[int]] = deque()  # [bucket, calls, accepted], oldest first
        self._calls = 0
        self._accepted = 0
        self._ratio = overload_ratio
        self._clock = clock
        self._random = rng or random.Random()
        self._lock = threading.Lock()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _expire(self, now_ms: int) -> int:
        """Drop the buckets that left the window; the current bucket's number."""
        bucket = now_ms // self._bucket_ms
        window = self._window
        oldest = bucket - self._buckets_kept
        while window and window[0][0] <= oldest:
            _, calls, accepted = window.popleft()
            self._calls -= calls
            self._accepted -= accepted
        return bucket

    def refusal_probability(self) -> float:
        now = self._now_ms()
        with self._lock:
            self._expire(now)
            calls, accepted = self._calls, self._accepted
        if not calls:
            return 0.0
        return max(0.0, (calls - self._ratio * accepted) / (calls + 1))

    def refuse(self) -> bool:
        """Whether to hold this call back; asking counts as nothing."""
        probability = self.refusal_probability()
        return probability > 0 and self._random.random() < probability

    def completed(self, accepted: bool) -> None:
        """One call completed: ``accepted`` when the backend handled it (any answer but
        429 or 5xx), false when it was overloaded or unreachable."""
        now = self._now_ms()
        with self._lock:
            bucket = self._expire(now)
            window = self._window
            if not window or window[-1][0] != bucket:
                window.append([bucket, 0, 0])
            last = window[-1]
            last[1] += 1
            self._calls += 1
            if accepted:
                last[2] += 1
                self._accepted += 1
