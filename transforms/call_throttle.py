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
"""
from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

from apache_beam.io.components.util import MovingSum

WINDOW_MS = 60_000
BUCKET_MS = 1_000
OVERLOAD_RATIO = 2.0


class CompletedCallThrottler:
    """Refuses calls with the SRE formula over the calls completed in the last ``window_ms``."""

    def __init__(self, window_ms: int = WINDOW_MS, bucket_ms: int = BUCKET_MS, overload_ratio: float = OVERLOAD_RATIO,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None):
        self._calls = MovingSum(window_ms, bucket_ms)
        self._accepted = MovingSum(window_ms, bucket_ms)
        self._ratio = overload_ratio
        self._clock = clock
        self._random = rng or random.Random()
        self._lock = threading.Lock()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def refusal_probability(self) -> float:
        now = self._now_ms()
        with self._lock:
            if not self._calls.has_data(now):
                return 0.0
            calls, accepted = self._calls.sum(now), self._accepted.sum(now)
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
            self._calls.add(now, 1)
            if accepted:
                self._accepted.add(now, 1)
