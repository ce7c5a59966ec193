"""Live, process-local progress counts, for the launcher's heartbeat while a run is going.

Beam metrics reach the launcher only through the ``PipelineResult``, and on the
FnApiRunner ``pipeline.run()`` returns that result only when the job is done, so
Beam counters cannot drive a progress line. The DoFns therefore bump the same
counts here too, in the memory of the process they run in. With the local runner
(in-memory or multi-threaded workers) that is the launcher, and
``beam_pipeline.heartbeat`` reads them. On Dataflow or with multi-process local
workers the counts land in worker processes where nobody reads them: a few
integers, harmless; the runner's own UI shows progress there.
"""
from __future__ import annotations

import threading
from collections.abc import Iterable

from apache_beam.metrics import Metrics

from transforms import NAMESPACE
from transforms.timing import TimedDoFn

# Members whose endpoint calls are done, and their transactions: over all
# transactions, the share of the member stage that is finished.
MEMBERS_CALLED = "members_called"
TRANSACTIONS_DONE = "transactions_done"

_lock = threading.Lock()
_counts: dict[str, int] = {}


def add(name: str, n: int = 1) -> None:
    with _lock:
        _counts[name] = _counts.get(name, 0) + n


def snapshot() -> dict[str, int]:
    with _lock:
        return dict(_counts)


def reset() -> None:
    """Start from zero: one launcher process may run several pipelines (tests do)."""
    with _lock:
        _counts.clear()


def member_called(n_transactions: int) -> None:
    members_called(1, n_transactions)


def members_called(members: int, n_transactions: int) -> None:
    with _lock:
        _counts[MEMBERS_CALLED] = _counts.get(MEMBERS_CALLED, 0) + members
        _counts[TRANSACTIONS_DONE] = _counts.get(TRANSACTIONS_DONE, 0) + n_transactions


class ProgressCounter:
    """A Beam counter of the pipeline's namespace that also counts in this process's registry."""

    def __init__(self, name: str):
        self.name = name
        self._counter = Metrics.counter(NAMESPACE, name)

    def inc(self, n: int = 1) -> None:
        self._counter.inc(n)
        add(self.name, n)


def counter(name: str) -> ProgressCounter:
    return ProgressCounter(name)


class Tally:
    """Per-line counts kept as plain integers, handed to Beam (and to this process's
    registry) every ``every`` lines and when the bundle ends.

    A Beam counter's ``inc`` costs about a microsecond, and a line's whole parse
    about ten: counting each line five times directly would be a third of it.
    Counts reach the heartbeat at most ``every`` lines late.
    """

    def __init__(self, names: Iterable[str], live: Iterable[str] = (), every: int = 10_000):
        self.counts = dict.fromkeys(names, 0)
        self.totals = dict.fromkeys(self.counts, 0)  # the bundle's counts handed over so far
        self._counters = {name: Metrics.counter(NAMESPACE, name) for name in self.counts}
        self._live = frozenset(live)
        self._every = every
        self._lines = 0

    def reset(self) -> None:
        """Drop counts not handed over yet (a bundle that failed): its retry counts them again."""
        self.counts = dict.fromkeys(self.counts, 0)
        self.totals = dict.fromkeys(self.counts, 0)
        self._lines = 0

    def line(self) -> None:
        """One more line done; flushes every ``every`` lines."""
        self._lines += 1
        if self._lines >= self._every:
            self.flush()

    def flush(self) -> None:
        self._lines = 0
        counts, totals = self.counts, self.totals
        for name, n in counts.items():
            if n:
                totals[name] += n
                self._counters[name].inc(n)
                if name in self._live:
                    add(name, n)
                counts[name] = 0


class TalliedDoFn(TimedDoFn):
    """A timed DoFn whose counts go through ``self.tally`` (set in ``__init__``):
    started afresh with each bundle, handed to Beam when it ends."""

    tally: Tally

    def start_bundle(self):
        super().start_bundle()
        self.tally.reset()

    def finish_bundle(self):
        self.tally.flush()
        super().finish_bundle()


def set_value(name: str, value: int) -> None:
    """A level rather than a count (e.g. an endpoint's current limit on calls in flight)."""
    with _lock:
        _counts[name] = value
