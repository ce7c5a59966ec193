"""Per-bundle processing time of a DoFn, as a Beam distribution, for throughput per step."""
from __future__ import annotations

import time

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms import NAMESPACE

BUNDLE_MS = "bundle_ms"


class TimedDoFn(beam.DoFn):
    """Records wall milliseconds per bundle under the step's own metric key."""

    def start_bundle(self):
        self._bundle_t0 = time.perf_counter()

    def finish_bundle(self):
        if not hasattr(self, "_bundle_ms"):
            self._bundle_ms = Metrics.distribution(NAMESPACE, BUNDLE_MS)
        self._bundle_ms.update(int((time.perf_counter() - self._bundle_t0) * 1000))
