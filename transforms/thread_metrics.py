"""Beam metrics updated from threads other than the DoFn's own, such as the endpoints' event loop.

A Beam counter reports into the metrics container of the thread that runs the
DoFn; an ``inc()`` made in another thread has no container and is silently lost.
The endpoint calls run on the client's event-loop thread, so their counters and
latencies are tallied here, under a lock, and ``flush`` reports them from the
DoFn's thread.
"""
from __future__ import annotations

import threading
from collections import Counter, defaultdict

from apache_beam.metrics import Metrics

from transforms import progress


class PooledMetrics:
    """Counters and distributions of one namespace, safe to update from any thread."""

    def __init__(self, namespace: str):
        self._namespace = namespace
        self._lock = threading.Lock()
        self._counts: Counter = Counter()
        self._values: defaultdict[str, list[int]] = defaultdict(list)

    def counter(self, name: str) -> _Counter:
        return _Counter(self, name)

    def distribution(self, name: str) -> _Distribution:
        return _Distribution(self, name)

    def _inc(self, name: str, n: int) -> None:
        with self._lock:
            self._counts[name] += n
        progress.add(name, n)  # live, for the heartbeat (requests/s) before the flush

    def _update(self, name: str, value: int) -> None:
        with self._lock:
            self._values[name].append(value)

    def flush(self) -> None:
        """Report everything tallied so far; call from the thread that runs the DoFn."""
        with self._lock:
            counts, self._counts = self._counts, Counter()
            values, self._values = self._values, defaultdict(list)
        for name, n in counts.items():
            Metrics.counter(self._namespace, name).inc(n)
        for name, updates in values.items():
            dist = Metrics.distribution(self._namespace, name)
            for value in updates:
                dist.update(value)


class _Counter:
    def __init__(self, owner: PooledMetrics, name: str):
        self._owner, self._name = owner, name

    def inc(self, n: int = 1) -> None:
        self._owner._inc(self._name, n)


class _Distribution:
    def __init__(self, owner: PooledMetrics, name: str):
        self._owner, self._name = owner, name

    def update(self, value: int) -> None:
        self._owner._update(self._name, value)
