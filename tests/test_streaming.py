"""The streaming job on TestStream against a real uvicorn server, checked against the batch job.

Interleaved transactions for many members arrive out of order and in bursts,
as export lines and as JSON objects. After the stream ends, every member's last
update must equal the batch job's results row for the same rows, and every
update with transactions must carry an offer.
"""
from __future__ import annotations

import datetime as dt
import json
import random
from collections import Counter, defaultdict

import apache_beam as beam
import jsonschema
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pvalue import TaggedOutput
from apache_beam.testing import test_stream
from apache_beam.transforms.window import TimestampedValue

from beam_pipeline import cli, generate, summary
from beam_pipeline.runners import streaming_local_runner
from beam_pipeline.streaming import StreamConfig, build_stream, read_lines, replay_events, simulated_clock
from lantern.features import SPEC_FEATURES
from lantern.partner import load_named
from tests.test_run_summary import SCHEMA as RUN_SCHEMA
from transforms.messages import ParseMessageFn, message_layout

AS_OF = dt.date(2026, 11, 24)
SOURCE = "pubsub:projects/demo/subscriptions/transactions"
COMPARED = [*SPEC_FEATURES, "N_TRANSACTIONS", "ATS_PREDICTION", "RESP_PREDICTION", "OFFER", "STATUS"]


def _as_json(line: str) -> str:
    """The line as a JSON object keyed by the column names (a line of the wrong width stays a line)."""
    values = line.split(",")
    return json.dumps(dict(zip(generate.HEADER, values))) if len(values) == len(generate.HEADER) else line


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """200 generated rows (members with many transactions, member-only rows, bad rows) and the batch run's results."""
    lines = list(generate.rows(200, seed=21, rows_per_member=6))
    lines += ["X1,not-a-date,buy,1,1", ",2024-01-01 00:00:00,buy,1,1", "X2,2024-01-01 00:00:00,buy,1"]
    folder = tmp_path_factory.mktemp("stream")
    path = folder / "export.csv"
    path.write_text(",".join(generate.HEADER) + "\n" + "\n".join(lines) + "\n")
    return folder, path, lines


@pytest.fixture(scope="module")
def batch(export, server_url):
    folder, path, _ = export
    code, run = cli.run(["--input", str(path), "--output", str(folder / "batch"), "--endpoint-url", server_url,
                         "--as-of", AS_OF.isoformat(), "--log-level", "WARNING"])
    assert code == 0
    rows = pq.read_table(folder / "batch" / "results").to_pylist()
    dead = pq.read_table(folder / "batch" / "dead_letter").column("REASON").to_pylist()
    return {row["MEMBER_ID"]: row for row in rows}, Counter(dead)


def _bursts(lines: list[str], rng: random.Random) -> list[list[bytes]]:
    """Shuffled (so out of event-time order), every third valid-looking line as JSON, cut into bursts."""
    messages = [(_as_json(line) if i % 3 == 0 else line).encode() for i, line in enumerate(lines)]
    messages.append(b'{"MEMBER_ID": "X3", ')  # stream only: MALFORMED_JSON
    rng.shuffle(messages)
    bursts, i = [], 0
    while i < len(messages):
        size = rng.choice([5, 20, 60])
        bursts.append(messages[i:i + size])
        i += size
    return bursts


def _valid_member(parse: ParseMessageFn, raw: bytes) -> str | None:
    """The member a message holds a valid transaction for (what the stream must fold), else None."""
    out = list(parse.process((SOURCE, raw)))
    if not out or isinstance(out[0], TaggedOutput) or out[0][1].txn is None:
        return None
    return out[0][0]


def test_stream_last_updates_equal_the_batch_job(export, batch, server_url, tmp_path):
    _, _, lines = export
    expected, batch_dead = batch
    partner = load_named("default").with_endpoint_url(server_url)
    layout = message_layout(partner.input)
    layouts = {SOURCE: layout}
    bursts = _bursts(lines, random.Random(5))
    debounce_s = 5.0

    stream = test_stream.TestStream()
    arrival = 1_795_000_000.0  # arrival (publish) times; event time becomes the transaction's own
    for n, burst in enumerate(bursts):
        stream = stream.add_elements([TimestampedValue((SOURCE, raw), arrival + n) for raw in burst])
        if n == len(bursts) // 2:
            # The watermark passes 2021 half-way: older transactions that arrive later are late, and still count.
            stream = stream.advance_watermark_to(dt.datetime(2021, 1, 1, tzinfo=dt.timezone.utc).timestamp())
        stream = stream.advance_processing_time(debounce_s + 1)
    stream = stream.advance_watermark_to_infinity()

    cfg = StreamConfig(partner, AS_OF, str(tmp_path / "results"), str(tmp_path / "dead_letter"),
                       debounce_s=debounce_s, idle_days=36_500, window_s=60, timer_clock=simulated_clock)
    with beam.Pipeline(runner=streaming_local_runner(), options=PipelineOptions(["--streaming"])) as p:
        build_stream(p | stream, layouts, cfg)

    rows = summary.read_parts(str(tmp_path / "results")).to_pylist()
    dead = summary.read_parts(str(tmp_path / "dead_letter"), ["REASON"]).column("REASON").to_pylist()

    # Same rows rejected for the same reasons as the batch job, plus the broken JSON message.
    assert Counter(dead) == batch_dead + Counter({"MALFORMED_JSON": 1})

    # Every member's last update equals its batch results row, digit for digit.
    last = {}
    for row in sorted(rows, key=lambda r: r["UPDATE_SEQ"]):
        last[row["MEMBER_ID"]] = row
    assert set(last) == set(expected)
    for member_id, row in last.items():
        assert {k: row[k] for k in COMPARED} == {k: expected[member_id][k] for k in COMPARED}, member_id

    # Every update with transactions has an offer; one update per burst that touched the member (debounce).
    updates = [r for r in rows if r["N_TRANSACTIONS"] > 0]
    assert all(r["STATUS"] == "OK" and r["OFFER"] in ("OFFER_1", "OFFER_2") for r in updates)
    parse = ParseMessageFn(layouts, partner.input.columns, partner.input.delimiter,
                           partner.input.timestamp_formats, AS_OF)
    bursts_per_member: dict[str, int] = defaultdict(int)
    for burst in bursts:
        for member_id in {_valid_member(parse, raw) for raw in burst} - {None}:
            bursts_per_member[member_id] += 1
    assert Counter(r["MEMBER_ID"] for r in updates) == Counter(bursts_per_member)
    n_transactions = sum(row["N_TRANSACTIONS"] for row in expected.values() if row["N_TRANSACTIONS"])
    assert len(updates) < n_transactions  # bursts were collapsed

    # Latency from a transaction reaching its member's state to the offer (wall clock; no simulated debounce).
    latency = sorted(r["TXN_TO_OFFER_MS"] for r in updates)
    assert all(ms >= 0 for ms in latency)
    print(f"\ntransaction -> offer ms over {len(latency)} updates: p50 {latency[len(latency) // 2]:.0f}, "
          f"p95 {latency[int(len(latency) * 0.95)]:.0f}, max {latency[-1]:.0f}")


def test_replay_events_paces_lines_by_rate():
    lines = [("f.csv", b"header")] + [("f.csv", f"M{i},2024-01-01 00:00:00,buy,1,1".encode()) for i in range(7)]
    events = replay_events(lines, rate=2.0, step_s=2.0, start=1000.0)._events
    added = [e for e in events if isinstance(e, test_stream.ElementEvent)]
    assert [len(e.timestamped_values) for e in added] == [4, 4]  # 2 lines/s * 2 s per step
    assert [tv.timestamp.micros / 1e6 for tv in added[1].timestamped_values] == [1002.0, 1002.5, 1003.0, 1003.5]
    assert isinstance(events[-1], test_stream.WatermarkEvent)


def test_cli_replay_publishes_a_streaming_run(export, batch, server_url, tmp_path):
    _, path, _ = export
    expected, batch_dead = batch
    out = tmp_path / "out"
    code, run = cli.run(["--streaming", "--input", str(path), "--output", str(out), "--endpoint-url", server_url,
                         "--as-of", AS_OF.isoformat(), "--rate", "100", "--debounce-seconds", "2",
                         "--log-level", "WARNING"])
    assert code == 0
    saved = json.loads((out / "run.json").read_text())
    assert saved["streaming"] is True and saved["accounting"]["members"] == len(expected)
    jsonschema.Draft202012Validator(RUN_SCHEMA).validate(saved)
    assert saved["accounting"]["dead_letter_rows"] == sum(batch_dead.values())
    assert saved["accounting"]["rows_replayed"] == len(read_lines([str(path)])) - 1
    rows = pq.read_table(out / "results").to_pylist()
    last = {r["MEMBER_ID"]: r for r in sorted(rows, key=lambda r: r["UPDATE_SEQ"])}
    assert {m: r["OFFER"] for m, r in last.items()} == {m: r["OFFER"] for m, r in expected.items()}
    assert cli.format_summary(run).startswith(f"outputs: {out}")


def test_bigquery_rows_and_schema_follow_the_parquet_schema():
    from beam_pipeline.streaming import bigquery_row, bigquery_schema
    from transforms.results import stream_results_schema

    schema = bigquery_schema(stream_results_schema(SPEC_FEATURES))
    fields = dict(f.split(":") for f in schema.split(","))
    assert fields["MEMBER_ID"] == "STRING" and fields["DAYS_SINCE_LAST_TRANSACTION"] == "INT64"
    assert fields["AS_OF"] == "DATE" and fields["DECIDED_AT"] == "TIMESTAMP" and fields["OFFER"] == "STRING"
    assert fields["TXN_TO_OFFER_MS"] == "FLOAT64"
    when = dt.datetime(2026, 11, 25, 10, 0, tzinfo=dt.timezone.utc)
    assert bigquery_row({"AS_OF": AS_OF, "DECIDED_AT": when, "N": 1}) == {
        "AS_OF": "2026-11-24", "DECIDED_AT": "2026-11-25T10:00:00+00:00", "N": 1}


@pytest.mark.parametrize("args, message", [
    (["--streaming"], "exactly one of --subscription"),
    (["--streaming", "--input", "x.csv", "--subscription", "projects/p/subscriptions/s"], "exactly one of"),
    (["--streaming", "--subscription", "projects/p/subscriptions/s", "--idle-days", "0"], "must be > 0"),
    (["--streaming", "--input", "x.csv", "--id-attribute", "txn"], "--id-attribute reads a Pub/Sub attribute"),
    (["--streaming", "--input", "x.csv", "--runner", "DataflowRunner"], "a streaming replay runs locally"),
    ([], "required: --input"),
])
def test_streaming_usage_errors_exit_2_with_one_line(args, message, tmp_path, capsys):
    assert cli.main([*args, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_replay_refuses_a_folder_that_holds_a_run(export, tmp_path, capsys):
    _, path, _ = export
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text("{}")
    assert cli.main(["--streaming", "--input", str(path), "--output", str(out), "--skip-preflight"]) == 2
    assert "already holds a run (run.json)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]


def _line_message(member: str, when: dt.datetime, points: int = 100) -> str:
    return f"{member},{when:%Y-%m-%d %H:%M:%S},buy,{points},2.5"


def _run_stream(stream, tmp_path, partner, **overrides) -> tuple[list[dict], list[dict], list[str]]:
    """build_stream over a TestStream; (results rows, dead letters, result file names in write order per shard)."""
    settings = {"debounce_s": 5.0, "idle_days": 30, "window_s": 60, "timer_clock": simulated_clock, "shards": 1}
    settings.update(overrides)
    cfg = StreamConfig(partner, AS_OF, str(tmp_path / "results"), str(tmp_path / "dead_letter"), **settings)
    with beam.Pipeline(runner=streaming_local_runner(), options=PipelineOptions(["--streaming"])) as p:
        build_stream(p | stream, {SOURCE: message_layout(partner.input)}, cfg)
    files = sorted(p.name for p in (tmp_path / "results").glob("part-*.parquet"))
    rows = summary.read_parts(str(tmp_path / "results")).to_pylist() if files else []
    dead = (summary.read_parts(str(tmp_path / "dead_letter")).to_pylist()
            if list((tmp_path / "dead_letter").glob("part-*.parquet")) else [])
    return rows, dead, files


def test_a_member_three_days_late_holds_back_no_other_members_results(server_url, tmp_path):
    """B's transactions run three days behind (its publisher stamps them with their own time, and
    the watermark waits for it); A's update is still decided and written in the next window of
    processing time, not when the watermark finally moves at the end of the stream."""
    partner = load_named("default").with_endpoint_url(server_url)
    now = dt.datetime(2026, 11, 20, 10, 0, tzinfo=dt.timezone.utc)
    late = now - dt.timedelta(days=3)
    stream = (
        test_stream.TestStream()
        .advance_watermark_to(late.timestamp() - 1)  # held there by B until the end
        .add_elements([TimestampedValue((SOURCE, _line_message("A", now).encode()), now.timestamp()),
                       TimestampedValue((SOURCE, _line_message("B", late).encode()), late.timestamp())])
        .advance_processing_time(10)  # debounce: both updates decided
        .advance_processing_time(60)  # the sink's window ends in processing time: A's file is written
        .add_elements([TimestampedValue((SOURCE, _line_message("C", now).encode()), now.timestamp())])
        .advance_processing_time(10)
        .advance_processing_time(60)
        .advance_watermark_to_infinity()
    )
    rows, dead, files = _run_stream(stream, tmp_path, partner)
    assert not dead
    assert [f.rsplit("-", 1)[1] for f in files] == ["000000.parquet", "000001.parquet"]  # one shard, two flushes
    first, second = (pq.read_table(tmp_path / "results" / f).column("MEMBER_ID").to_pylist() for f in files)
    assert sorted(first) == ["A", "B"] and second == ["C"]  # A was written before the watermark moved
    assert all(r["STATUS"] == "OK" for r in rows)


def test_drain_loses_no_pending_update(server_url, tmp_path):
    """The watermark reaches the end while every member's update is still pending (its debounce never
    fired: a drain): each update is emitted by the idle flush, called and written."""
    partner = load_named("default").with_endpoint_url(server_url)
    now = dt.datetime(2026, 11, 20, 10, 0, tzinfo=dt.timezone.utc)
    members = [f"D{i:02d}" for i in range(30)]
    messages = [TimestampedValue((SOURCE, _line_message(m, now - dt.timedelta(hours=i), i + 1).encode()),
                                 now.timestamp() + i) for i, m in enumerate(members)]
    stream = test_stream.TestStream().add_elements(messages).advance_watermark_to_infinity()
    rows, dead, _ = _run_stream(stream, tmp_path, partner, debounce_s=3600, shards=4)
    assert not dead
    assert sorted(r["MEMBER_ID"] for r in rows) == members  # one update each, none lost
    assert all(r["STATUS"] == "OK" and r["OFFER"] and r["N_TRANSACTIONS"] == 1 for r in rows)
    assert {r["MEMBER_ID"]: r["AVG_POINTS_BOUGHT"] for r in rows} == {m: float(i + 1) for i, m in enumerate(members)}


def test_replay_with_a_transaction_id_column_folds_each_transaction_once(server_url, tmp_path):
    """A partner naming a transaction-id column: a re-published transaction (same id, again later)
    is a DUPLICATE dead letter and changes no feature."""
    base = load_named("default").with_endpoint_url(server_url)
    partner = base.model_copy(update={"input": base.input.model_copy(update={"transaction_id_column": "TXN_ID"})})
    now = dt.datetime(2026, 11, 20, 10, 0, tzinfo=dt.timezone.utc)
    first = [f"{_line_message('M1', now, 100)},T1", f"{_line_message('M1', now, 300)},T2"]
    stream = (
        test_stream.TestStream()
        .add_elements([TimestampedValue((SOURCE, line.encode()), now.timestamp()) for line in first])
        .advance_processing_time(10)
        .add_elements([TimestampedValue((SOURCE, first[0].encode()), now.timestamp() + 60)])  # re-published
        .advance_processing_time(10)
        .advance_watermark_to_infinity()
    )
    rows, dead, _ = _run_stream(stream, tmp_path, partner)
    assert [(r["UPDATE_SEQ"], r["N_TRANSACTIONS"], r["AVG_POINTS_BOUGHT"]) for r in rows] == [(1, 2, 200.0)]
    assert [(d["REASON"], d["RAW_LINE"]) for d in dead] == [("DUPLICATE", first[0])]
