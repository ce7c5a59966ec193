"""The live progress registry: the DoFns count into it as they count into Beam's metrics."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline

from tests.scripted_server import ScriptedServer
from tests.test_endpoints import FAST as ENDPOINT_TEST_PARTNER
from tests.test_endpoints import FEATURES
from transforms import NAMESPACE, progress
from transforms import endpoints as E

FAST = ENDPOINT_TEST_PARTNER.model_copy(update={"calls": ENDPOINT_TEST_PARTNER.calls.model_copy(update={
    "concurrency": 4, "batch_size": 5})})


def test_endpoint_calls_count_live_progress_and_beam_latency(local_runner):
    members = [(f"m{i}", {"N_TRANSACTIONS": i % 3, "FEATURES": FEATURES}) for i in range(12)]
    progress.reset()
    with ScriptedServer() as server:
        server.post("/ml/ats/predict", status=503, body="busy")  # first ATS call is retried once
        server.post("/ml/ats/predict", json={"prediction": 900.0})
        server.post("/ml/resp/predict", json={"prediction": 0.5})
        server.post("/offer/assign", json={"offer": "OFFER_2"})
        p = TestPipeline(runner=local_runner)
        _ = p | beam.Create(members) | E.CallEndpoints(FAST.with_endpoint_url(server.url))
        result = p.run()
        result.wait_until_finish()

    snap = progress.snapshot()
    assert snap[progress.MEMBERS_CALLED] == 12
    assert snap[progress.TRANSACTIONS_DONE] == sum(i % 3 for i in range(12))
    assert (snap["requests_ats_ok"], snap["requests_resp_ok"], snap["requests_offer_ok"]) == (12, 12, 12)
    assert snap["retries_ats"] == 1
    distributions = {r.key.metric.name: r.committed for r in
                     result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["distributions"]}
    assert {k: distributions[f"latency_ms_{k}"].count for k in ("ats", "resp", "offer")} == {
        "ats": 12, "resp": 12, "offer": 12}
    # Each endpoint's limit on calls in flight: in Beam and live, never above the ceiling of 4.
    limits = {k: distributions[f"concurrency_limit_{k}"] for k in ("ats", "resp", "offer")}
    assert all(d.count >= 1 and 1 <= d.min <= d.max <= 4 for d in limits.values())
    assert all(1 <= snap[f"concurrency_limit_{k}"] <= 4 for k in ("ats", "resp", "offer"))


def test_progress_counter_counts_in_beam_and_in_the_registry(local_runner):
    class CountFn(beam.DoFn):
        def __init__(self):
            self.seen = progress.counter("seen")

        def process(self, element):
            self.seen.inc(element)
            yield element

    progress.reset()
    p = TestPipeline(runner=local_runner)
    _ = p | beam.Create([1, 2, 3, 4]) | beam.ParDo(CountFn())
    result = p.run()
    result.wait_until_finish()
    beam_total = sum(r.committed for r in result.metrics().query(
        MetricsFilter().with_namespace(NAMESPACE).with_name("seen"))["counters"])
    assert beam_total == 10 and progress.snapshot()["seen"] == 10
    progress.reset()
    assert progress.snapshot() == {}


def test_tally_hands_counts_over_in_blocks_and_on_flush(local_runner):
    class CountFn(beam.DoFn):
        def __init__(self):
            self.tally = progress.Tally(("lines", "chars"), live=("lines",), every=3)

        def process(self, element):
            self.tally.counts["lines"] += 1
            self.tally.counts["chars"] += len(element)
            self.tally.line()
            yield element

        def finish_bundle(self):
            self.tally.flush()

    progress.reset()
    p = TestPipeline(runner=local_runner)
    _ = p | beam.Create(["a", "bb", "ccc", "dddd", "eeeee"]) | beam.ParDo(CountFn())
    result = p.run()
    result.wait_until_finish()
    totals = {r.key.metric.name: r.committed for r in result.metrics().query(
        MetricsFilter().with_namespace(NAMESPACE))["counters"]}
    assert totals == {"lines": 5, "chars": 15}
    assert progress.snapshot() == {"lines": 5}  # only the live counts feed the heartbeat
    progress.reset()


def test_tally_flushes_every_n_lines_without_waiting_for_the_bundle():
    progress.reset()
    tally = progress.Tally(("lines",), live=("lines",), every=2)
    for expected in (0, 2, 2, 4):
        tally.counts["lines"] += 1
        tally.line()
        if expected:
            assert progress.snapshot()["lines"] == expected
    progress.reset()
