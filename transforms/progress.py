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

from apache_beam.metrics import Metrics

from transforms import NAMESPACE

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
    with _lock:
        _counts[MEMBERS_CALLED] = _counts.get(MEMBERS_CALLED, 0) + 1
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
