"""How many calls to one endpoint may be in flight at once, found by watching the answers.

A fixed number is right for no endpoint: a 25 ms remote model needs many calls
in flight to be kept busy, a fragile one is pushed over by the same number.
``AdaptiveLimit`` learns it per endpoint and worker, in the manner of TCP
congestion control and Netflix's concurrency-limits:

- the latency *floor* is the lowest latency seen over the last two windows of
  ``floor_window_s`` (a window-based minimum follows an endpoint that got
  slower for good, and one that got faster at once);
- while calls succeed and latency stays under ``tolerance`` times the floor
  (plus ``slack_s``, so that a sub-millisecond floor does not turn the client's
  own scheduling jitter into a congestion signal), the limit grows: by one per
  success at first (slow start: it doubles every round trip), by one per round
  trip (one per ``limit`` successes) once congestion has been seen, and again
  by one per success after ``calm_s`` without congestion (it probes back up);
- a dropped call (no connection, 429, 5xx) multiplies the limit by
  ``drop_backoff``, a latency above the target by ``latency_backoff``, at most
  once per round trip, so a burst of failures from one overloaded moment
  counts once;
- the limit never leaves [``min_limit``, ``max_limit``]: with ``min_limit``
  >= 1 one call always goes out, and its success grows the limit again.

Pure: no I/O, no threads, a clock passed in; ``Slots`` (below) is the asyncio
gate that applies a limit to the calls of one event loop.
"""
from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable


class AdaptiveLimit:
    """An AIMD limit on calls in flight, driven by each call's latency and outcome.

    With ``fixed=True`` the limit stays at ``initial`` whatever happens (a partner
    file that pins ``calls.concurrency``).
    """

    def __init__(self, initial: int = 8, min_limit: int = 1, max_limit: int = 256, *, fixed: bool = False,
                 tolerance: float = 2.0, slack_s: float = 0.005, drop_backoff: float = 0.8,
                 latency_backoff: float = 0.9, floor_window_s: float = 5.0, calm_s: float = 2.0,
                 smoothing: float | None = None, clock: Callable[[], float] = time.monotonic):
        if not 1 <= min_limit <= max_limit:
            raise ValueError(f"need 1 <= min_limit <= max_limit, got {min_limit}, {max_limit}")
        self.min_limit, self.max_limit, self.fixed = min_limit, max_limit, fixed
        self._limit = float(min(max(initial, min_limit), max_limit))
        self.tolerance, self.slack_s = tolerance, slack_s
        self.drop_backoff, self.latency_backoff = drop_backoff, latency_backoff
        self.floor_window_s, self.calm_s, self.smoothing = floor_window_s, calm_s, smoothing
        self._clock = clock
        now = clock()
        self._window_end = now + floor_window_s
        self._min_now = math.inf  # lowest latency of the current window
        self._min_prev = math.inf  # ... and of the one before
        self._smoothed: float | None = None  # EWMA of recent latencies
        self._slow_start = True
        self._next_decrease = now  # decreases at most once per round trip
        self._last_congestion = -math.inf
        self.decreases = 0  # how many times the limit was cut, for tests and logs

    @property
    def limit(self) -> int:
        """Calls allowed in flight now: at least ``min_limit``, never zero."""
        return int(self._limit)

    @property
    def floor_s(self) -> float | None:
        floor = min(self._min_now, self._min_prev)
        return None if math.isinf(floor) else floor

    def target_s(self) -> float | None:
        """The latency above which calls are taken to queue at the endpoint."""
        floor = self.floor_s
        return None if floor is None else floor * self.tolerance + self.slack_s

    def sample(self, latency_s: float, in_flight: int, dropped: bool = False) -> int:
        """One finished attempt: its latency, the calls in flight when it was sent, and
        whether it was dropped (timeout, connection error, 429 or 5xx). Returns the new limit."""
        if self.fixed:
            return self.limit
        now = self._clock()
        if now >= self._window_end:
            self._min_prev, self._min_now = self._min_now, math.inf
            self._window_end = now + self.floor_window_s
        if not dropped:  # a refused connection or an instant 503 says nothing about the floor
            self._min_now = min(self._min_now, latency_s)
            # By default averaged over about two round trips' worth of answers (2 x limit
            # samples): one slow answer among many does not read as queueing.
            alpha = self.smoothing or 1.0 / (1.0 + 2.0 * self._limit)
            self._smoothed = latency_s if self._smoothed is None else (
                self._smoothed + alpha * (latency_s - self._smoothed))
        target = self.target_s()
        if dropped:
            self._decrease(now, self.drop_backoff, latency_s)
        elif target is not None and self._smoothed is not None and self._smoothed > target:
            self._decrease(now, self.latency_backoff, latency_s)
        elif 2 * in_flight >= self._limit:  # only grow a limit that is being used
            if not self._slow_start and now - self._last_congestion >= self.calm_s:
                self._slow_start = True
            self._limit = min(self.max_limit, self._limit + (1.0 if self._slow_start else 1.0 / self._limit))
        return self.limit

    def _decrease(self, now: float, factor: float, latency_s: float) -> None:
        self._slow_start = False
        self._last_congestion = now
        if now < self._next_decrease:
            return
        self._limit = max(float(self.min_limit), self._limit * factor)
        self.decreases += 1
        # One cut per round trip: the calls already in flight were sent under the old limit.
        self._next_decrease = now + max(latency_s, self._smoothed or 0.0)


class Slots:
    """At most ``limit.limit`` holders at once, for the tasks of one asyncio event loop.

    ``acquire`` waits its turn (first come, first served, retries first); ``release`` reports the
    attempt's latency and outcome to the limit and lets waiters in as far as the
    (possibly new) limit allows. Not thread-safe: use it from its loop only.
    """

    def __init__(self, limit: AdaptiveLimit):
        self.limit = limit
        self.in_flight = 0
        self.aside = 0  # holders no longer counted against the limit (stuck: see ``set_aside``)
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    async def acquire(self, first: bool = True) -> int:
        """Take a slot; returns the calls in flight counting this one. A retry (``first``
        false) goes before the calls not yet sent: a call already started finishes first."""
        if self.in_flight < self.limit.limit and not self._waiters:
            self.in_flight += 1
            return self.in_flight
        waiter = asyncio.get_running_loop().create_future()
        if first:
            self._waiters.append(waiter)
        else:
            self._waiters.appendleft(waiter)
        try:
            await waiter  # the slot is handed over by release (in_flight already counts it)
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._hand_back()
            else:
                self._waiters.remove(waiter)
            raise
        return self.in_flight

    def release(self, latency_s: float, in_flight: int, dropped: bool) -> None:
        self.limit.sample(latency_s, in_flight, dropped)
        self._hand_back()

    def give_back(self) -> None:
        """Release a slot that was not used for a call (nothing to report to the limit)."""
        self._hand_back()

    def set_aside(self) -> bool:
        """Stop counting a holder that has been in flight far longer than calls take against the
        limit: its slot goes to the next waiter while it runs on to its own deadline, so stuck
        calls (an answer dripping in, a server that never answers) cannot take every slot. At most
        ``max_limit`` holders are set aside at once: calls in flight stay under the limit plus
        that. True when it was set aside; finish it with ``finish_aside``."""
        if self.aside >= self.limit.max_limit:
            return False
        self.aside += 1
        self._hand_back()
        return True

    def finish_aside(self, latency_s: float | None, in_flight: int, dropped: bool) -> None:
        """A set-aside holder is done: its latency (None: nothing to report) goes to the limit."""
        self.aside -= 1
        if latency_s is not None:
            self.limit.sample(latency_s, in_flight, dropped)

    def _hand_back(self) -> None:
        self.in_flight -= 1
        while self._waiters and self.in_flight < self.limit.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)

    @property
    def waiting(self) -> int:
        return len(self._waiters)
