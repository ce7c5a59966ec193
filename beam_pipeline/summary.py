"""What a launcher that waits adds to a run: Beam's metrics, and the run.json fields only they give.

The run accounts for itself (``beam_pipeline.finalize``); the runner's metrics
reach only the process that waits for the job. That process writes them to
``metrics/metrics.parquet`` and adds to run.json the steps' seconds, the requests
per endpoint and the adaptive limits (``with_metrics``). Also here: the run.json
fields known at launch (``launch_fields``), shared by the batch job and a retry.
"""
from __future__ import annotations

import json
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter

from beam_pipeline import console, finalize, outputs
from beam_pipeline.accounting import AccountingError
from beam_pipeline.launch import EXIT_UNEXPECTED, Launch
from beam_pipeline.outputs import join
from lantern.partner import PartnerConfig
from lantern.run_record import package_versions  # noqa: F401 - streaming's run.json takes it from here
from transforms import NAMESPACE
from transforms.input_files import InputFile
from transforms.results import LATENCY_COLUMNS
from transforms.timing import BUNDLE_MS

log = logging.getLogger(__name__)

METRICS_SCHEMA = pa.schema(
    [
        ("NAMESPACE", pa.string()),
        ("NAME", pa.string()),
        ("STEP", pa.string()),
        ("KIND", pa.string()),
        ("VALUE", pa.float64()),
        ("COUNT", pa.int64()),
        ("SUM", pa.float64()),
        ("MIN", pa.float64()),
        ("MAX", pa.float64()),
        ("MEAN", pa.float64()),
    ]
)


def _value(result):
    return result.committed if result.committed is not None else result.attempted


def metric_rows(pipeline_result) -> list[dict]:
    """Every counter, distribution and gauge the run reported, one row each, then Beam's execution times."""
    query = pipeline_result.metrics().query(MetricsFilter())
    rows = []
    for kind in ("counters", "distributions", "gauges"):
        for res in query.get(kind, []):
            value = _value(res)
            row = {
                "NAMESPACE": res.key.metric.namespace,
                "NAME": res.key.metric.name,
                "STEP": res.key.step,
                "KIND": kind[:-1],
                "VALUE": None, "COUNT": None, "SUM": None, "MIN": None, "MAX": None, "MEAN": None,
            }
            if kind == "counters":
                row["VALUE"] = float(value)
            elif kind == "gauges":
                row["VALUE"] = float(value.value) if value is not None else None
            elif value is not None:
                row.update(COUNT=value.count, SUM=float(value.sum), MIN=float(value.min),
                           MAX=float(value.max), MEAN=float(value.mean) if value.count else None)
            rows.append(row)
    rows.sort(key=lambda r: (r["NAMESPACE"], r["NAME"], r["STEP"]))
    return rows + execution_rows(pipeline_result)


def write_metrics(rows: list[dict], staging: str) -> None:
    path = join(staging, "metrics", "metrics.parquet")
    with FileSystems.create(path) as handle:
        pq.write_table(pa.Table.from_pylist(rows, schema=METRICS_SCHEMA), handle)


def read_parts(folder: str, columns: list[str] | None = None) -> pa.Table:
    paths = sorted(m.path for m in FileSystems.match([join(folder, "*.parquet")])[0].metadata_list)
    tables = []
    for path in paths:
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            tables.append(pq.read_table(handle, columns=columns))
    if not tables:
        raise AccountingError(f"no Parquet files were written under {folder}")
    return pa.concat_tables(tables)


def counter_totals(rows: list[dict]) -> Counter:
    """The pipeline's counters summed over steps, by name."""
    totals: Counter = Counter()
    for row in rows:
        if row["KIND"] == "counter" and row["NAMESPACE"] == NAMESPACE:
            totals[row["NAME"]] += int(row["VALUE"])
    return totals


def latency_percentiles(results: pa.Table) -> dict:
    """run.json's ``latency_ms`` from a results table: per entry of ``LATENCY_COLUMNS`` (each
    endpoint's call, its wait for slots and its time on the wire) whose column the table has."""
    out = {}
    for kind, name in LATENCY_COLUMNS.items():
        if name not in results.column_names:
            continue
        column = results.column(name).drop_null()
        if len(column) == 0:
            out[kind] = {}
            continue
        p50, p95, p99 = pc.quantile(column, q=[0.5, 0.95, 0.99]).to_pylist()
        out[kind] = {"p50": round(p50, 3), "p95": round(p95, 3), "p99": round(p99, 3),
                     "mean": round(pc.mean(column).as_py(), 3), "max": round(pc.max(column).as_py(), 3),
                     "count": len(column)}
    return out


# Beam's own per-transform execution time (the SDK's state sampler), exclusive of
# downstream fused steps; the local runner reports it, Dataflow's result does not.
EXECUTION_MSECS = "execution_msecs"
_EXECUTION_METRICS = frozenset(
    f"metric:pardo_execution_time:{phase}_bundle_msecs:v1" for phase in ("start", "process", "finish")
)


def execution_rows(pipeline_result) -> list[dict]:
    """Milliseconds each transform spent executing, one metrics row per transform that spent any."""
    monitoring = getattr(pipeline_result, "monitoring_metrics", None)
    if monitoring is None:
        return []
    totals: dict[str, float] = defaultdict(float)
    for res in monitoring().query(MetricsFilter()).get("counters", []):
        if res.key.metric.namespace == "beam" and res.key.metric.name in _EXECUTION_METRICS and res.key.step:
            totals[res.key.step] += float(_value(res) or 0)
    return [
        {"NAMESPACE": "beam", "NAME": EXECUTION_MSECS, "STEP": step, "KIND": "counter", "VALUE": msecs,
         "COUNT": None, "SUM": None, "MIN": None, "MAX": None, "MEAN": None}
        for step, msecs in sorted(totals.items()) if msecs > 0
    ]


def _under(step: str, transform: str) -> bool:
    return step == transform or step.startswith(transform + "/")


def timed_steps(steps: list[dict], rows: list[dict]) -> list[dict]:
    """run.json's steps (with their element counts) with seconds and throughput from the metrics.

    Seconds are Beam's execution time of the step's transforms when the runner reports one for the
    step (``seconds_source: execution_time``); otherwise the sum of the
    bundle times of the step's timed DoFn (``bundle_ms``), which includes the
    time of steps fused after it, and steps without a timed DoFn get null.
    """
    execution = [r for r in rows if r["NAMESPACE"] == "beam" and r["NAME"] == EXECUTION_MSECS]
    bundles = [r for r in rows if r["KIND"] == "distribution" and r["NAME"] == BUNDLE_MS and r["SUM"] is not None]
    out = []
    for step in steps:
        timed = [r["VALUE"] for r in execution if _under(r["STEP"], step["transform"])]
        source = "execution_time"
        if not timed:  # a step too quick for the state sampler, or a runner without execution times
            timed, source = [r["SUM"] for r in bundles if _under(r["STEP"], step["transform"])], BUNDLE_MS
        secs = round(sum(timed) / 1000, 3) if timed else None
        elements = step["elements"]
        out.append({**step, "seconds": secs, "per_second": round(elements / secs, 1) if secs else None,
                    "seconds_source": source if secs is not None else None})
    return out


def with_metrics(summary: dict, rows: list[dict], launcher_seconds: float) -> dict:
    """run.json with what only the runner's metrics say: the steps' seconds, requests, adaptive limits."""
    out = {**summary, "steps": timed_steps(summary["steps"], rows), "requests": requests(rows),
           "launcher_wall_seconds": launcher_seconds}
    limits = concurrency_limits(rows)
    if limits:
        out["concurrency_limit"] = limits
    return out


def requests(rows: list[dict]) -> dict:
    """Per endpoint: calls by outcome (``throttled``: refused by the throttler) and retries, from the counters."""
    out: dict[str, dict[str, int]] = {}
    for name, value in counter_totals(rows).items():
        if name.startswith("requests_"):
            kind, outcome = name[len("requests_"):].split("_", 1)
            out.setdefault(kind, {})[outcome] = value
        elif name.startswith("retries_"):
            out.setdefault(name[len("retries_"):], {})["retries"] = value
    return dict(sorted(out.items()))


LIMIT_PREFIX = "concurrency_limit_"


def concurrency_limits(rows: list[dict]) -> dict:
    """Per endpoint: the adaptive limit on calls in flight over the run (mean, min, max of the
    values sampled about twice a second per worker), from the ``concurrency_limit_*`` distributions."""
    totals: dict[str, list] = {}
    for row in rows:
        name = row["NAME"]
        if row["KIND"] == "distribution" and row["NAMESPACE"] == NAMESPACE and name.startswith(LIMIT_PREFIX) \
                and row["COUNT"]:
            count, total, low, high = totals.get(name[len(LIMIT_PREFIX):], (0, 0.0, math.inf, -math.inf))
            totals[name[len(LIMIT_PREFIX):]] = (count + row["COUNT"], total + row["SUM"],
                                                min(low, row["MIN"]), max(high, row["MAX"]))
    return {kind: {"mean": round(total / count, 1), "min": int(low), "max": int(high), "samples": count}
            for kind, (count, total, low, high) in sorted(totals.items())}


_SECRET_WORDS = ("token", "secret", "password", "passwd", "credential", "api_key", "apikey", "auth", "private")
REDACTED = "<redacted>"


def redact(options: dict) -> dict:
    """Options fit to publish: secret-looking keys masked, passwords removed from URLs."""
    out = {}
    for key, value in options.items():
        if any(word in key.lower().replace("-", "_") for word in _SECRET_WORDS) and value not in (None, False):
            out[key] = REDACTED
        elif isinstance(value, str) and "@" in value and "://" in value:
            parts = urlsplit(value)
            host = parts.hostname or ""
            host += f":{parts.port}" if parts.port else ""
            out[key] = urlunsplit(parts._replace(netloc=host))
        else:
            out[key] = value
    return out


def value_counts(values: Iterable) -> dict:
    """How often each value occurs (nulls left out), by value."""
    return dict(sorted(Counter(v for v in values if v is not None).items(), key=lambda kv: str(kv[0])))


def launch_fields(
    launch: Launch,
    partner: PartnerConfig,
    partner_source: str,
    as_of: str,
    inputs: Iterable[tuple],
    cli_args: dict,
    retry_of: tuple[str, str] | None = None,
    incremental_from: tuple[str, str] | None = None,
) -> dict:
    """The run.json fields of a batch or ``--retry-failed`` run known when it is launched.

    ``retry_of`` is the retried run's id and output folder; ``incremental_from`` the base run's.
    """
    fields = {
        "run_id": launch.run_id,
        "partner": partner.name,
        "partner_source": partner_source,
        "partner_features": list(partner.feature_names),
        "as_of": as_of,
        "runner": launch.runner,
        "started_at": launch.start.at.isoformat(),
        "inputs": [InputFile(*f).as_json() for f in inputs],
        "output": launch.output,
        "options": {
            "endpoint_base_url": redact({"url": partner.endpoints.base_url})["url"],
            "cli": redact(cli_args),
            "pipeline": redact(launch.options.get_all_options(drop_default=True, retain_unknown_options=True)),
        },
    }
    if retry_of is not None:
        fields.update(retry_of=retry_of[0], retry_of_output=retry_of[1])
    if incremental_from is not None:
        fields.update(incremental_from=incremental_from[0], incremental_from_output=incremental_from[1])
    return json.loads(json.dumps(fields, default=str))  # plain JSON values: the job carries them to its last step


def conclude(launch: Launch, result, failure: BaseException | None) -> tuple[int, dict | None]:
    """The exit code and run.json of a job that ended, from the run.json it wrote.

    With the job's result, the runner's metrics go to ``metrics/`` beside that run.json,
    and the run.json gets what only they say (steps' seconds, requests, adaptive limits).
    Exit 1 (the accounting does not close) returns no summary: its error is logged.
    """
    record = finalize.read_outcome(launch.output, launch.staging, launch.run_id)
    if record is None:
        if failure is not None:
            raise failure
        raise RuntimeError(f"run {launch.run_id} ended without writing run.json in {launch.output} "
                           f"or {launch.staging}")
    if failure is not None and record.get("published", True):
        raise failure  # the job failed after the run was published: not the run's doing
    folder = launch.output if record.get("published", True) else launch.staging
    rows = None
    if result is not None:
        try:
            rows = metric_rows(result)
        except Exception as exc:  # noqa: BLE001 - a failed job's runner may not answer; the run is decided already
            log.warning("run %s: the runner's metrics could not be read: %s", launch.run_id, exc)
    if rows is not None:
        write_metrics(rows, folder)
        record = with_metrics(record, rows, launch.wall_seconds())
        outputs.replace_json(outputs.join(folder, outputs.RUN_JSON), record)
    for step in record["steps"]:
        log.info("%s", console.step_line(step), extra={"step": step})
    code = record["exit_code"]
    if code == EXIT_UNEXPECTED:
        log.error("%s", record["error"])
        return code, None
    if record.get("published", True):
        log.info("run %s finished in %.1fs: %s", launch.run_id, record["wall_seconds"],
                 console.format_summary(record).replace("\n", "; "), extra={"accounting": record["accounting"]})
    return code, record
