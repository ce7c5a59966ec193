"""The streaming job: each transaction updates its member's features and, debounced, the offer.

Same parser, same feature CombineFn, same endpoint DoFns and retry rules, same
dead letters as the batch job; what differs is the source (Pub/Sub, or a
replay of an export through TestStream), per-member state instead of
``CombinePerKey``, and windowed Parquet files instead of one published folder.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream

from beam_pipeline import incremental, inputs, launch, outputs, preflight, summary
from beam_pipeline.outputs import join
from beam_pipeline.pipeline import DECIDE_OFFERS, PARSE, TO_RESULT_ROW, WRITE_DEAD_LETTERS, WRITE_RESULTS, DecideOffers
from beam_pipeline.runners import LOCAL_NAMES, streaming_local_runner
from lantern.errors import ConfigError
from lantern.partner import PartnerConfig
from lantern.run_record import ReplaySummary
from transforms.member_state import MemberUpdatesFn
from transforms.member_state_io import ReadBaseMembers
from transforms.messages import Message, ParseMessageFn, message_layout
from transforms.parse import BOM, DEAD_LETTER, FileLayout
from transforms.results import DEAD_LETTER_SCHEMA, ToStreamResultRowFn, feature_columns, stream_results_schema
from transforms.windowed_parquet import DEFAULT_SHARDS, WriteWindowedParquet

log = logging.getLogger(__name__)


def simulated_clock() -> float:
    """Processing time for debounce timers under TestStream, whose simulated clock starts at 0."""
    return 0.0


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    partner: PartnerConfig
    as_of: dt.date | None  # None: the UTC date at the moment each update is computed
    results: str  # folder of the windowed result files
    dead_letters: str  # folder of the windowed dead-letter files
    debounce_s: float = 5.0
    idle_days: float = 30.0
    window_s: int = 60
    bigquery_table: str | None = None
    timer_clock: Callable[[], float] = time.time
    id_attribute: str | None = None  # the publisher's transaction id attribute (ReadFromPubSub id_label)
    shards: int = DEFAULT_SHARDS  # keys each output folder's rows are spread over


class MemberUpdates(beam.PTransform):
    """(member id, Arrival) -> debounced (member id, summary) updates from per-member state, and the
    transactions state refused (duplicates, unreadable state) as dead letters.

    Elements keep their arrival timestamp (Pub/Sub's publish time, a replay's pace): the
    transaction's own time drives only the idle timer, so a member's late transactions hold no
    watermark and no other member's results (docs/streaming.md).
    """

    def __init__(self, cfg: StreamConfig):
        super().__init__()
        self._cfg = cfg

    def expand(self, transactions):
        cfg = self._cfg
        fn = MemberUpdatesFn(cfg.as_of, cfg.partner.feature_names, cfg.debounce_s, cfg.idle_days, cfg.timer_clock)
        return transactions | "MemberState" >> beam.ParDo(fn).with_outputs(DEAD_LETTER, main="updates")


def bigquery_row(row: dict) -> dict:
    """A results row as JSON-safe values for BigQuery streaming inserts."""
    return {k: v.isoformat() if isinstance(v, (dt.date, dt.datetime)) else v for k, v in row.items()}


def bigquery_schema(schema: pa.Schema) -> str:
    """The results Parquet schema as a BigQuery schema string (NAME:TYPE,...)."""

    def kind(t) -> str:
        if pa.types.is_string(t):
            return "STRING"
        if pa.types.is_integer(t):
            return "INT64"
        if pa.types.is_floating(t):
            return "FLOAT64"
        if pa.types.is_date(t):
            return "DATE"
        if pa.types.is_timestamp(t):
            return "TIMESTAMP"
        raise ValueError(f"no BigQuery type for {t}")

    return ",".join(f"{field.name}:{kind(field.type)}" for field in schema)


def build_stream(messages, layouts: dict[str, FileLayout], cfg: StreamConfig, base_state: tuple[str, ...] = ()):
    """``Message``s (or (source, raw bytes) pairs) -> windowed result and dead-letter files; returns the result rows.

    ``base_state``: a batch run's state files (``--incremental-from``), whose accumulators seed the members' state.
    """
    partner = cfg.partner
    parse = ParseMessageFn(
        layouts, partner.input.columns, partner.input.delimiter, partner.input.timestamp_formats, cfg.as_of,
        type_codes=partner.input.type_codes(), partner=partner.name, id_attribute=cfg.id_attribute,
        transaction_id_column=partner.input.transaction_id_column,
    )
    parsed = messages | PARSE >> beam.ParDo(parse).with_output_types(
        beam.typehints.KV[str, Any]).with_outputs(DEAD_LETTER, main="transactions")
    schema = stream_results_schema(partner.feature_names)
    transactions = parsed.transactions
    if base_state:
        seeds = messages.pipeline | "ReadBaseState" >> ReadBaseMembers(base_state).with_output_types(
            beam.typehints.KV[str, Any])
        transactions = (transactions, seeds) | "WithBaseState" >> beam.Flatten()
    updates = transactions | "MemberUpdates" >> MemberUpdates(cfg)
    rows = (
        updates.updates
        | DECIDE_OFFERS >> DecideOffers(partner)
        | TO_RESULT_ROW >> beam.ParDo(ToStreamResultRowFn(feature_columns(partner.feature_names), partner.name))
    )
    rows | WRITE_RESULTS >> WriteWindowedParquet(cfg.results, schema, cfg.window_s, "MEMBER_ID", cfg.shards,
                                                 cfg.timer_clock)
    (
        (parsed[DEAD_LETTER], updates[DEAD_LETTER])
        | "DeadLetters" >> beam.Flatten()
        | WRITE_DEAD_LETTERS >> WriteWindowedParquet(cfg.dead_letters, DEAD_LETTER_SCHEMA, cfg.window_s,
                                                     "RAW_LINE", cfg.shards, cfg.timer_clock)
    )
    if cfg.bigquery_table:
        write_bigquery(rows, cfg.bigquery_table, schema)
    return rows


def write_bigquery(rows, table: str, schema: pa.Schema, test_client=None):
    """Result rows streamed into a BigQuery table of the results' columns (created if needed)."""
    from apache_beam.io.gcp.bigquery import BigQueryDisposition, WriteToBigQuery

    return (
        rows
        | "ToBigQueryRow" >> beam.Map(bigquery_row)
        | "WriteBigQuery" >> WriteToBigQuery(
            table, schema=bigquery_schema(schema),
            create_disposition=BigQueryDisposition.CREATE_IF_NEEDED,
            write_disposition=BigQueryDisposition.WRITE_APPEND,
            method=WriteToBigQuery.Method.STREAMING_INSERTS,
            test_client=test_client,
        )
    )


def replay_events(lines: Iterable[tuple[str, bytes]], rate: float, step_s: float, start: float) -> TestStream:
    """An export replayed as a stream: ``rate`` lines per second of simulated processing time.

    Lines arrive in file order, ``rate * step_s`` per step; processing time then
    advances by ``step_s`` (the debounce interval, so a member's rows within one
    step make one update). Each line is stamped with its arrival time; the
    watermark stays behind until the replay ends, so no transaction is late.
    """
    per_step = max(1, round(rate * step_s))
    stream = TestStream()
    batch: list = []
    for i, line in enumerate(lines):
        batch.append(beam.window.TimestampedValue(line, start + i / rate))
        if len(batch) == per_step:
            stream = stream.add_elements(batch).advance_processing_time(step_s)
            batch = []
    if batch:
        stream = stream.add_elements(batch).advance_processing_time(step_s)
    return stream.advance_processing_time(step_s).advance_watermark_to_infinity()


def read_lines(paths: Iterable[str]) -> list[tuple[str, bytes]]:
    """Every physical line of the files, as (file, raw bytes), the way the batch job reads them."""
    out = []
    for path in paths:
        with open(path, "rb") as handle:
            data = handle.read()
        out.extend((path, line) for line in data.split(b"\n")[: -1 if data.endswith(b"\n") else None])
    return out


def pubsub_messages(p, subscription: str, id_attribute: str | None = None, local: bool = True):
    """Pub/Sub messages as ``Message``s; needs apache-beam[gcp], imported only here.

    ``id_attribute`` is also handed to ReadFromPubSub as ``id_label`` where the runner
    supports it (Dataflow deduplicates re-published messages on it); the local runner
    refuses ``id_label``, and the member state deduplicates on every runner anyway.
    """
    try:
        from apache_beam.io.gcp.pubsub import ReadFromPubSub
        from google.cloud import pubsub  # noqa: F401 - the client ReadFromPubSub needs
    except ImportError:
        raise ConfigError("--subscription needs the Pub/Sub client: pip install 'apache-beam[gcp]==2.77.0'") from None
    try:
        read = ReadFromPubSub(subscription=subscription, with_attributes=True,
                              id_label=None if local else id_attribute)
    except ValueError as exc:
        raise ConfigError(f"--subscription {subscription}: {exc} (expected projects/PROJECT/subscriptions/NAME)") \
            from None
    source = f"pubsub:{subscription}"
    return (
        p
        | "ReadPubSub" >> read
        | "ToMessage" >> beam.Map(
            lambda m: Message(source, m.data, dict(m.attributes or {}), m.message_id or None))
    ), source


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("streaming (docs/streaming.md)")
    group.add_argument("--streaming", action="store_true",
                       help="run the streaming job: Pub/Sub (--subscription) or a replay of --input")
    group.add_argument("--subscription", help="Pub/Sub subscription projects/P/subscriptions/S")
    group.add_argument("--rate", type=float, default=100.0,
                       help="replay of --input: lines per second of simulated time (default 100)")
    group.add_argument("--debounce-seconds", type=float, default=5.0,
                       help="wait this long after a member's first new transaction before calling (default 5)")
    group.add_argument("--idle-days", type=float, default=30.0,
                       help="clear a member's state after this many days of event time without a transaction")
    group.add_argument("--window-seconds", type=int, default=60,
                       help="one set of result files per window of this many seconds (default 60)")
    group.add_argument("--bigquery-table", help="also stream result rows to PROJECT:DATASET.TABLE")
    group.add_argument("--id-attribute",
                       help="Pub/Sub attribute holding the publisher's transaction id: messages with the same "
                            "value are one transaction (ReadFromPubSub id_label; duplicates are not folded)")


def _check(args: argparse.Namespace) -> None:
    if bool(args.subscription) == bool(args.input):
        raise ConfigError("--streaming needs exactly one of --subscription (Pub/Sub) or --input (a replay)")
    if getattr(args, "changed_only", False):
        raise ConfigError("--changed-only is for batch runs: a stream calls the endpoints only for members "
                          "with new transactions anyway")
    if args.id_attribute and not args.subscription:
        raise ConfigError("--id-attribute reads a Pub/Sub attribute: it needs --subscription")
    if args.rate <= 0 or args.debounce_seconds < 0 or args.idle_days <= 0 or args.window_seconds <= 0:
        raise ConfigError("--rate, --idle-days and --window-seconds must be > 0, --debounce-seconds >= 0")


def run(
    args: argparse.Namespace, beam_args: list[str], partner: PartnerConfig, partner_source: str,
    as_of: dt.date | None, start: launch.Start,
) -> tuple[int, dict]:
    """Start the stream. A replay runs to its end and publishes like a batch run; Pub/Sub runs until cancelled."""
    _check(args)
    options = PipelineOptions(beam_args)
    options.view_as(StandardOptions).streaming = True
    local = options.view_as(StandardOptions).runner in LOCAL_NAMES
    layouts: dict[str, FileLayout] = {}
    files = []
    replay = bool(args.input)
    if replay:
        if not local or any("://" in p for p in [*args.input, args.output]):
            raise ConfigError("a streaming replay runs locally (DirectRunner, local files and --output); "
                              "on Dataflow use --subscription")
        files, layouts = inputs.inspect_inputs([os.path.abspath(p) for p in args.input], partner, partner_source)
        _check_id_column(layouts, partner)
        launch.check_output(args.output, args.overwrite, beam_args)
    else:
        outputs.check_writable(args.output)  # a live stream appends windows to what the folder holds
    state = incremental.plan([(f.path, f.size_bytes) for f in files], partner.name, args.output,
                             args.incremental_from) if args.incremental_from else None
    if not args.skip_preflight:
        preflight.check_endpoints(partner)

    # A replay ends, so it stages and publishes like the batch job; a live stream appends windows.
    launched = launch.prepare(options, partner.name, args.output, start, staged=replay)
    cfg = StreamConfig(
        partner, as_of, join(launched.staging, "results"), join(launched.staging, "dead_letter"),
        args.debounce_seconds, args.idle_days, args.window_seconds, args.bigquery_table,
        simulated_clock if replay else time.time, args.id_attribute,
    )
    pipeline = beam.Pipeline(runner=streaming_local_runner() if local else None, options=options)
    rows_replayed = 0
    if replay:
        lines = read_lines(f.path for f in files)
        rows_replayed = sum(1 for source, raw in lines if not _is_header(raw, layouts[source]))
        step = args.debounce_seconds or 1 / args.rate
        messages = pipeline | "Replay" >> replay_events(lines, args.rate, step, time.time())
    else:
        messages, source = pubsub_messages(pipeline, args.subscription, args.id_attribute, local)
        layouts = {source: message_layout(partner.input)}
    build_stream(messages, layouts, cfg, state.base_paths if state else ())
    log.info("stream %s: partner=%s source=%s output=%s as_of=%s runner=%s debounce=%ss idle=%sd",
             launched.run_id, partner.name, args.subscription or ",".join(args.input), launched.output,
             as_of or "today (UTC, per update)", launched.runner, args.debounce_seconds, args.idle_days)
    result = pipeline.run()
    if not replay:
        log.info("streaming job submitted (%s); results land in %s every %ss", launched.runner, launched.output,
                 args.window_seconds)
        if local:
            result.wait_until_finish()
        return launch.EXIT_OK, {"streaming": True, "run_id": launched.run_id, "output": launched.output,
                                "runner": launched.runner}
    result.wait_until_finish()
    record = replay_record(result, launched, partner, as_of, args, rows_replayed, state.base if state else None)
    return launch.finish(launched, record, launch.exit_code(record.accounting.updates_failed), args.overwrite)


def _check_id_column(layouts: dict[str, FileLayout], partner: PartnerConfig) -> None:
    """A replay's files must hold the partner's transaction-id column, if it names one."""
    column = partner.input.transaction_id_column
    for path, layout in layouts.items():
        names = (layout.header or b"").decode("utf-8").split(partner.input.delimiter)
        if column and column not in names:
            raise ConfigError(f"{path}: no column {column!r} (input.transaction_id_column); columns are: "
                              f"{', '.join(names)}")


def _is_header(raw: bytes, layout: FileLayout) -> bool:
    line = raw[len(BOM):] if raw.startswith(BOM) else raw
    return line.rstrip(b"\r\n") == layout.header


def _base_transactions(base, members: Iterable[str]) -> int:
    """Transactions a base state holds for these members (a seeded stream's updates count them too)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from lantern.feature_table import Accumulators

    wanted = pa.array(list(members), pa.string())
    total = 0
    for path in base.paths:
        table = pq.read_table(path)
        table = table.filter(pc.is_in(table.column("MEMBER_ID"), value_set=wanted))
        total += int(Accumulators(table.column("ACC")).n.sum()) if table.num_rows else 0
    return total


def replay_record(result, launched: launch.Launch, partner: PartnerConfig, as_of: dt.date | None,
                  args: argparse.Namespace, rows_replayed: int, base=None) -> ReplaySummary:
    """The replay's run.json, counted from the files written.

    The bundle-based DirectRunner keeps the first bundle's metrics scope for a
    step on each worker thread (``StateSampler.scoped_state`` caches it), so its
    user counters undercount in streaming mode; the metrics file is kept for the
    distributions, and the accounting below comes from the outputs instead.
    """
    import pyarrow.compute as pc

    staging = launched.staging
    summary.write_metrics(summary.metric_rows(result), staging)
    results = summary.read_parts(join(staging, "results"))
    dead_folder = join(staging, "dead_letter")
    os.makedirs(dead_folder, exist_ok=True)  # a window without dead letters writes no file
    n_dead = summary.read_parts(dead_folder, ["REASON"]).num_rows if os.listdir(dead_folder) else 0
    last: dict[str, dict] = {}
    for row in sorted(results.select(["MEMBER_ID", "UPDATE_SEQ", "N_TRANSACTIONS"]).to_pylist(),
                      key=lambda r: r["UPDATE_SEQ"]):
        last[row["MEMBER_ID"]] = row
    transactions = sum(row["N_TRANSACTIONS"] for row in last.values())
    if base is not None:  # the seeded members' updates count the base's transactions too: not replayed rows
        transactions -= _base_transactions(base, last)
    statuses = results.column("STATUS").to_pylist()
    latency = results.column("TXN_TO_OFFER_MS").drop_null()
    quantiles = pc.quantile(latency, q=[0.5, 0.95, 0.99]).to_pylist() if len(latency) else []
    return ReplaySummary(
        streaming=True,
        run_id=launched.run_id,
        partner=partner.name,
        as_of=as_of.isoformat() if as_of else None,
        runner=launched.runner,
        started_at=launched.start.at.isoformat(),
        finished_at=dt.datetime.now(dt.timezone.utc).isoformat(),
        wall_seconds=launched.wall_seconds(),
        replay={"rate_per_s": args.rate, "debounce_s": args.debounce_seconds, "idle_days": args.idle_days},
        accounting={
            "rows_replayed": rows_replayed,
            "transactions": transactions,
            "dead_letter_rows": n_dead,
            "member_only_rows": rows_replayed - transactions - n_dead,
            "members": len(last),
            "updates": results.num_rows,
            "updates_ok": statuses.count("OK"),
            "updates_no_transactions": statuses.count("NO_TRANSACTIONS"),
            "updates_failed": statuses.count("FAILED"),
        },
        # quantiles is empty when no member got an offer: then so is this
        txn_to_offer_ms=dict(zip(("p50", "p95", "p99"), (round(q, 1) for q in quantiles), strict=False)),
        latency_ms=summary.latency_percentiles(results),
        output=launched.output,
        versions=summary.package_versions(),
        incremental_from=base.manifest.run_id if base is not None else None,
    )
