"""The live stream's real source and sink paths on the local runner.

Pub/Sub: ``ReadFromPubSub`` itself (``--subscription``) with ``google.cloud.pubsub.SubscriberClient``
patched, as Beam's own ``pubsub_test`` does: an export published line by line in shuffled
event-time order, one message delivered twice. The stream's last updates must equal the batch job's.
BigQuery: ``WriteToBigQuery`` (streaming inserts) with a fake client that creates the table from
the schema the sink sends and checks every inserted row against it.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import random
import threading
import time
from collections import Counter
from typing import ClassVar
from unittest import mock

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_stream
from apache_beam.transforms.window import TimestampedValue

from beam_pipeline.runners import streaming_local_runner
from beam_pipeline.streaming import StreamConfig, build_stream, pubsub_messages, simulated_clock, write_bigquery
from lantern.errors import ConfigError
from lantern.partner import load_named
from tests.test_streaming import AS_OF, COMPARED, batch, export  # noqa: F401 - shared fixtures
from transforms.messages import message_layout
from transforms.results import stream_results_schema

SUBSCRIPTION = "projects/lantern-demo/subscriptions/transactions"


class FakeSubscriber:
    """``pubsub.SubscriberClient``: hands out queued messages, at most ``max_messages`` per pull."""

    queue: ClassVar[list] = []
    acked: ClassVar[list] = []
    lock = threading.Lock()

    @staticmethod
    def subscription_path(project, name):
        return f"projects/{project}/subscriptions/{name}"

    def pull(self, subscription, max_messages, timeout):
        from google.cloud import pubsub

        with self.lock:
            batch, FakeSubscriber.queue[:] = self.queue[:max_messages], self.queue[max_messages:]
        response = pubsub.types.PullResponse()
        for ack_id, message_id, data, published in batch:
            received = pubsub.types.ReceivedMessage(ack_id=ack_id)
            received.message = pubsub.types.PubsubMessage(data=data, message_id=message_id)
            received.message.publish_time = published
            response.received_messages.append(received)
        return response

    def acknowledge(self, subscription, ack_ids):
        self.acked.extend(ack_ids)

    def close(self):
        pass


def _last_updates(folder) -> dict[str, dict]:
    last: dict[str, dict] = {}
    for path in sorted(folder.glob("part-*.parquet")):
        for row in pq.read_table(path).to_pylist():
            if row["MEMBER_ID"] not in last or row["UPDATE_SEQ"] > last[row["MEMBER_ID"]]["UPDATE_SEQ"]:
                last[row["MEMBER_ID"]] = row
    return last


def _dead(tmp_path) -> list[str]:
    return [row["REASON"] for path in (tmp_path / "dead_letter").glob("part-*.parquet")
            for row in pq.read_table(path).to_pylist()]


def test_subscription_path_with_a_redelivery_equals_the_batch_job(dataflow_extra, export, batch,  # noqa: F811
                                                                  server_url, tmp_path):
    _, _, lines = export
    expected, batch_dead = batch
    rng = random.Random(3)
    shuffled = list(lines)
    rng.shuffle(shuffled)  # out of event-time order
    published = dt.datetime.now(dt.timezone.utc)
    messages = [(f"ack-{i}", f"m-{i}", line.encode(), published) for i, line in enumerate(shuffled)]
    redelivered = next(m for m in messages if m[2].split(b",")[1][:2] == b"20" and m[2].count(b",") == 4)
    messages.insert(len(messages) - 7, ("ack-again", *redelivered[1:]))  # at-least-once: the same message id
    FakeSubscriber.queue[:] = messages
    FakeSubscriber.acked[:] = []

    partner = load_named("default").with_endpoint_url(server_url)
    cfg = StreamConfig(partner, AS_OF, str(tmp_path / "results"), str(tmp_path / "dead_letter"), debounce_s=0.2,
                       idle_days=36_500, window_s=1, shards=4)
    with mock.patch("google.cloud.pubsub.SubscriberClient", FakeSubscriber):
        p = beam.Pipeline(runner=streaming_local_runner(), options=PipelineOptions(["--streaming"]))
        source_messages, source = pubsub_messages(p, SUBSCRIPTION)
        build_stream(source_messages, {source: message_layout(partner.input)}, cfg)
        result = p.run()
        try:
            deadline = time.monotonic() + 120
            want = {m: r["N_TRANSACTIONS"] for m, r in expected.items()}
            n_dead = sum(batch_dead.values()) + 1
            while time.monotonic() < deadline:
                last = _last_updates(tmp_path / "results")
                if {m: r["N_TRANSACTIONS"] for m, r in last.items()} == want and len(_dead(tmp_path)) >= n_dead:
                    break
                time.sleep(0.2)
        finally:
            result.cancel()

    last = _last_updates(tmp_path / "results")
    assert set(last) == set(expected)
    for member_id, row in last.items():
        assert {k: row[k] for k in COMPARED} == {k: expected[member_id][k] for k in COMPARED}, member_id
    assert Counter(_dead(tmp_path)) == batch_dead + Counter({"DUPLICATE": 1})
    assert len(FakeSubscriber.acked) == len(messages)


def test_a_bad_subscription_is_one_line(dataflow_extra):
    with pytest.raises(ConfigError, match="expected projects/PROJECT/subscriptions/NAME"):
        pubsub_messages(beam.Pipeline(), "projects/x/subscriptions/s")


class FakeBigQuery:
    """The BigQuery client ``WriteToBigQuery`` talks to: tables.Get (404), tables.Insert (keeps the
    schema) and insert_rows_json (checks each row against that schema)."""

    schema: ClassVar[dict[str, str]] = {}
    rows: ClassVar[list] = []
    problems: ClassVar[list] = []

    def __init__(self):
        self.tables = self

    def Get(self, request):  # the apitools client's method name
        from apitools.base.py.exceptions import HttpError

        raise HttpError({"status": 404}, b"not found", "https://bigquery.googleapis.com/")

    def Insert(self, request):
        FakeBigQuery.schema.update({f.name: f.type for f in request.table.schema.fields})
        return request.table

    def insert_rows_json(self, table, json_rows, row_ids=None, **_):
        for row in json_rows:
            json.dumps(row, allow_nan=False)  # what the HTTP API would be sent
            for name, value in row.items():
                kind = self.schema.get(name)
                if kind is None or not _fits(kind, value):
                    FakeBigQuery.problems.append((name, kind, value))
        FakeBigQuery.rows.extend(json_rows)
        return []


def _fits(kind: str, value) -> bool:
    if value is None:
        return True
    if kind == "STRING":
        return isinstance(value, str)
    if kind == "INT64":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "FLOAT64":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "DATE":
        return isinstance(value, str) and dt.date.fromisoformat(value) is not None
    if kind == "TIMESTAMP":
        return isinstance(value, str) and dt.datetime.fromisoformat(value).tzinfo is not None
    return False


def test_bigquery_rows_fit_the_table_the_sink_creates(dataflow_extra, server_url, tmp_path):
    partner = load_named("default").with_endpoint_url(server_url)
    FakeBigQuery.schema.clear(), FakeBigQuery.rows.clear(), FakeBigQuery.problems.clear()
    when = dt.datetime(2026, 11, 20, 10, 0, tzinfo=dt.timezone.utc)
    lines = [f"M{i},{when:%Y-%m-%d %H:%M:%S},buy,{i},1.5" for i in range(5)] + ["M9,,,,"]  # M9: no transactions
    stream = (test_stream.TestStream()
              .add_elements([TimestampedValue(("s", line.encode()), when.timestamp()) for line in lines])
              .advance_processing_time(10).advance_watermark_to_infinity())
    cfg = StreamConfig(partner, AS_OF, str(tmp_path / "results"), str(tmp_path / "dead_letter"),
                       timer_clock=simulated_clock, shards=2)
    layouts = {"s": message_layout(partner.input)}
    with beam.Pipeline(runner=streaming_local_runner(), options=PipelineOptions(["--streaming"])) as p:
        rows = build_stream(p | stream, layouts, cfg)
        write_bigquery(rows, "lantern-demo:lantern.offers", stream_results_schema(partner.feature_names),
                       test_client=FakeBigQuery())
    schema = stream_results_schema(partner.feature_names)
    assert list(FakeBigQuery.schema) == schema.names
    assert FakeBigQuery.problems == []
    assert sorted(r["MEMBER_ID"] for r in FakeBigQuery.rows) == [f"M{i}" for i in range(5)] + ["M9"]
    assert {r["STATUS"] for r in FakeBigQuery.rows} == {"OK", "NO_TRANSACTIONS"}
