"""A token bucket shared by the threads of one worker, for partners that cap requests per second."""
from __future__ import annotations

import threading
import time


class RateLimiter:
    """At most ``rate`` acquisitions per second on average, bursts up to ``burst``.

    Each worker process has its own bucket, so the partner-wide rate is this
    times the number of workers (documented in the README).
    """

    def __init__(self, rate: float, burst: float | None = None, clock=time.monotonic, sleep=time.sleep):
        self._rate = rate
        self._capacity = burst if burst is not None else max(1.0, rate / 10)
        self._tokens = self._capacity
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Take one token, sleeping until one is available; returns the seconds waited."""
        wait = self.reserve()
        if wait:
            self._sleep(wait)
        return wait

    def reserve(self) -> float:
        """Take one token now; returns how long the caller must wait before using it
        (an event loop awaits that instead of blocking its thread)."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self._capacity, self._tokens + (now - self._last) * self._rate)
            self._last = now
            self._tokens -= 1
            return -self._tokens / self._rate if self._tokens < 0 else 0.0
