"""The adaptive limit on calls in flight (``transforms.concurrency_limit``), without Beam or a network."""
from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.concurrency_limit import AdaptiveLimit, Slots


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def drive(limit: AdaptiveLimit, clock: Clock, latency_s: float, n: int, dropped: bool = False) -> None:
    """n attempts with the limit fully used, each finishing ``latency_s / limit`` after the last."""
    for _ in range(n):
        clock.now += latency_s / max(limit.limit, 1)
        limit.sample(latency_s, limit.limit, dropped)


def test_grows_to_the_ceiling_while_latency_stays_at_its_floor():
    clock = Clock()
    limit = AdaptiveLimit(initial=8, max_limit=256, clock=clock)
    drive(limit, clock, 0.025, 300)
    assert limit.limit == 256 and limit.decreases == 0


def test_an_unused_limit_does_not_grow():
    clock = Clock()
    limit = AdaptiveLimit(initial=8, clock=clock)
    for _ in range(500):
        clock.now += 0.01
        limit.sample(0.025, in_flight=2)
    assert limit.limit == 8


def test_rising_latency_shrinks_the_limit_once_per_round_trip():
    clock = Clock()
    limit = AdaptiveLimit(initial=100, max_limit=256, clock=clock)
    drive(limit, clock, 0.025, 50)
    before = limit.limit
    start = clock.now
    while clock.now - start < 4.0:  # 8x the floor for 4 s: queueing at the endpoint
        drive(limit, clock, 0.200, 1)
    assert limit.limit < before / 4
    # at most one cut per round trip (0.2 s), not one per sample
    assert limit.decreases <= (clock.now - start) / 0.2 + 1


@pytest.mark.parametrize("latency_s", [0.0005, 0.025])
def test_drops_shrink_it_and_a_healthy_endpoint_grows_it_back(latency_s):
    clock = Clock()
    limit = AdaptiveLimit(initial=64, max_limit=256, clock=clock)
    drive(limit, clock, latency_s, 2000, dropped=True)  # a dead endpoint: every call fails
    assert limit.limit == 1  # never zero: one call still probes
    drive(limit, clock, latency_s, 3000)
    assert limit.limit >= 64


def test_a_fragile_endpoint_gets_a_lower_limit_than_a_healthy_one():
    import random

    rng = random.Random(3)
    clock = Clock()
    healthy, fragile = AdaptiveLimit(clock=clock), AdaptiveLimit(clock=clock)
    for _ in range(20_000):
        clock.now += 0.001
        healthy.sample(0.025, healthy.limit)
        fragile.sample(0.025, fragile.limit, dropped=rng.random() < 0.2)
    assert fragile.limit * 4 < healthy.limit


def test_the_floor_follows_an_endpoint_that_got_slower_for_good():
    clock = Clock()
    limit = AdaptiveLimit(initial=32, floor_window_s=5.0, clock=clock)
    drive(limit, clock, 0.005, 2000)
    drive(limit, clock, 0.050, 20_000)  # ten times slower from now on, for longer than two windows
    assert limit.floor_s == pytest.approx(0.050)
    assert limit.limit >= 128  # grown again at the new floor, not stuck at the bottom


def test_a_pinned_limit_never_moves():
    limit = AdaptiveLimit(initial=12, max_limit=12, fixed=True)
    for dropped in (True, False) * 100:
        limit.sample(5.0, 12, dropped)
    assert limit.limit == 12


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 5.0), st.integers(0, 600), st.booleans(), st.floats(0, 1)), max_size=300),
       st.integers(1, 8), st.integers(8, 300))
def test_the_limit_stays_within_its_bounds_whatever_happens(samples, min_limit, max_limit):
    clock = Clock()
    limit = AdaptiveLimit(initial=16, min_limit=min_limit, max_limit=max_limit, clock=clock)
    for latency, in_flight, dropped, step in samples:
        clock.now += step
        assert min_limit <= limit.sample(latency, in_flight, dropped) <= max_limit


def test_slots_admit_at_most_the_limit_and_hand_over_in_order():
    async def main():
        slots = Slots(AdaptiveLimit(initial=2, max_limit=2, fixed=True))
        order, peak = [], 0

        async def call(i):
            nonlocal peak
            in_flight = await slots.acquire()
            peak = max(peak, slots.in_flight)
            order.append(i)
            await asyncio.sleep(0.001)
            slots.release(0.001, in_flight, dropped=False)

        await asyncio.gather(*(call(i) for i in range(10)))
        return order, peak, slots.in_flight, slots.waiting

    order, peak, in_flight, waiting = asyncio.run(main())
    assert order == list(range(10)) and peak == 2 and in_flight == 0 and waiting == 0


def test_a_cancelled_waiter_gives_its_place_up():
    async def main():
        slots = Slots(AdaptiveLimit(initial=1, max_limit=1, fixed=True))
        held = await slots.acquire()
        waiter = asyncio.ensure_future(slots.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        slots.release(0.001, held, dropped=False)
        again = await asyncio.wait_for(slots.acquire(), 1)
        return again, slots.in_flight

    assert asyncio.run(main()) == (1, 1)


def test_a_retry_waits_ahead_of_calls_not_yet_sent():
    async def main():
        slots = Slots(AdaptiveLimit(initial=1, max_limit=1, fixed=True))
        held = await slots.acquire()
        order = []

        async def wait(name, first):
            await slots.acquire(first)
            order.append(name)
            slots.give_back()

        tasks = [asyncio.ensure_future(wait(f"new{i}", True)) for i in range(3)]
        await asyncio.sleep(0)
        tasks.append(asyncio.ensure_future(wait("retry", False)))
        await asyncio.sleep(0)
        slots.release(0.001, held, dropped=True)
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(main()) == ["retry", "new0", "new1", "new2"]
