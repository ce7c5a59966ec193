"""After the run: Beam metrics to Parquet, the accounting check, and the ``run.json`` record.

The accounting is computed twice, from the Beam counters and from the Parquet
files actually written, and the two must agree: a run whose outputs do not add
up fails loudly instead of publishing.
"""
from __future__ import annotations

import datetime as dt
import logging
import math
import platform
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter

from beam_pipeline.dead_letter_limit import Verdict
from beam_pipeline.launch import Launch
from beam_pipeline.outputs import join
from beam_pipeline.pipeline import (
    DECIDE_OFFERS,
    MEMBER_FEATURES,
    MEMBERS_WITH_FEATURES,
    PARSE,
    READ_EXPORTS,
    TO_RESULT_ROW,
    WRITE_DEAD_LETTERS,
    WRITE_RESULTS,
)
from lantern.partner import PartnerConfig
from lantern.run_record import RunSummary
from transforms import NAMESPACE
from transforms.input_files import InputFile
from transforms.parse import MEMBER_ACCUMULATORS
from transforms.results import FAILED, FEATURES_ONLY, NO_TRANSACTIONS, OK
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


class AccountingError(RuntimeError):
    """The outputs do not account for every row and member: never publish such a run."""


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


class Collected(NamedTuple):
    """What a finished run wrote, read back for its accounting."""

    rows: list[dict]  # metrics rows
    results: pa.Table
    dead_letters: pa.Table  # the REASON column


def collect(pipeline_result, staging: str) -> Collected:
    """Write the run's metrics beside its outputs and read back its results and dead-letter reasons."""
    rows = metric_rows(pipeline_result)
    write_metrics(rows, staging)
    results = read_parts(join(staging, "results"))
    return Collected(rows, results, read_parts(join(staging, "dead_letter"), columns=["REASON"]))


def counter_totals(rows: list[dict]) -> Counter:
    """The pipeline's counters summed over steps, by name."""
    totals: Counter = Counter()
    for row in rows:
        if row["KIND"] == "counter" and row["NAMESPACE"] == NAMESPACE:
            totals[row["NAME"]] += int(row["VALUE"])
    return totals


def accounting(counters: Counter, results: pa.Table, dead_letters: pa.Table) -> dict:
    statuses = Counter(results.column("STATUS").to_pylist())
    members = results.num_rows
    acc = {
        "rows_read": counters["rows_read"],
        "header_lines": counters["header_lines"],
        "transactions": counters["transactions"],
        "member_only_rows": counters["member_only_rows"],
        "dead_letter_rows": dead_letters.num_rows,
        "members": members,
        "members_ok": statuses[OK],
        "members_no_transactions": statuses[NO_TRANSACTIONS],
        "members_failed": statuses[FAILED],
        "members_features_only": statuses[FEATURES_ONLY],
    }
    problems = []
    if acc["rows_read"] != acc["transactions"] + acc["member_only_rows"] + acc["dead_letter_rows"]:
        problems.append(
            f"rows_read {acc['rows_read']} != transactions {acc['transactions']} + member_only_rows "
            f"{acc['member_only_rows']} + dead_letter_rows {acc['dead_letter_rows']}"
        )
    if counters["dead_letter_rows"] != dead_letters.num_rows:
        problems.append(f"dead-letter counter {counters['dead_letter_rows']} != rows written {dead_letters.num_rows}")
    if MEMBERS_WITH_FEATURES in counters and counters[MEMBERS_WITH_FEATURES] != members:
        problems.append(f"{counters[MEMBERS_WITH_FEATURES]} members had features but {members} results rows were written")
    distinct = pc.count_distinct(results.column("MEMBER_ID")).as_py()
    if distinct != members:
        problems.append(f"{members - distinct} member(s) have more than one results row")
    if sum(statuses.values()) != members or set(statuses) - {OK, NO_TRANSACTIONS, FAILED, FEATURES_ONLY}:
        problems.append(f"unexpected statuses {dict(statuses)}")
    if problems:
        raise AccountingError("accounting does not close: " + "; ".join(problems))
    return acc


def latency_percentiles(results: pa.Table) -> dict:
    out = {}
    for kind in ("ats", "resp", "offer"):
        column = results.column(f"{kind.upper()}_LATENCY_MS").drop_null()
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


class Step(NamedTuple):
    name: str  # label in run.json
    transform: str  # top-level transform label (pipeline.py)
    unit: str  # what an element is
    elements: Callable[[dict], int]  # its element count, from the accounting
    # Where the block reader folds rows before the step: (unit, counter of its elements) then.
    prefolded: tuple[str, str] | None = None


STEPS = (
    Step("read", READ_EXPORTS, "lines", lambda a: a["rows_read"] + a["header_lines"]),
    Step("parse", PARSE, "rows", lambda a: a["rows_read"]),
    # The line reader sends every row to the combine; the block reader about one accumulator per member.
    Step("features", MEMBER_FEATURES, "rows", lambda a: a["transactions"] + a["member_only_rows"],
         prefolded=("accumulators", MEMBER_ACCUMULATORS)),
    Step("call_endpoints", DECIDE_OFFERS, "members", lambda a: a["members_ok"] + a["members_failed"]),
    Step("result_rows", TO_RESULT_ROW, "members", lambda a: a["members"]),
    Step("write_results", WRITE_RESULTS, "rows", lambda a: a["members"]),
    Step("write_dead_letters", WRITE_DEAD_LETTERS, "rows", lambda a: a["dead_letter_rows"]),
)


def _under(step: str, transform: str) -> bool:
    return step == transform or step.startswith(transform + "/")


def steps(rows: list[dict], acc: dict, table: tuple[Step, ...] = STEPS) -> list[dict]:
    """Elements, seconds and throughput per step.

    Seconds are Beam's execution time of the step's transforms when the runner
    reports it (``seconds_source: execution_time``); otherwise the sum of the
    bundle times of the step's timed DoFn (``bundle_ms``), which includes the
    time of steps fused after it, and steps without a timed DoFn get null.
    """
    execution = [r for r in rows if r["NAMESPACE"] == "beam" and r["NAME"] == EXECUTION_MSECS]
    bundles = [r for r in rows if r["KIND"] == "distribution" and r["NAME"] == BUNDLE_MS and r["SUM"] is not None]
    source = "execution_time" if execution else BUNDLE_MS
    counted = counter_totals(rows)
    out = []
    for step in table:
        timed = [r["VALUE"] for r in execution if _under(r["STEP"], step.transform)] if execution else [
            r["SUM"] for r in bundles if _under(r["STEP"], step.transform)]
        secs = round(sum(timed) / 1000, 3) if timed else None
        unit, elements = step.unit, step.elements(acc)
        if step.prefolded and step.prefolded[1] in counted:
            unit, elements = step.prefolded[0], counted[step.prefolded[1]]
        out.append({"name": step.name, "transform": step.transform, "unit": unit, "elements": elements,
                    "seconds": secs, "per_second": round(elements / secs, 1) if secs else None,
                    "seconds_source": source if secs is not None else None})
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


def package_versions() -> dict:
    names = ("offer-pipeline", "apache-beam", "pyarrow", "numpy", "requests", "urllib3", "aiohttp", "pydantic",
             "fastapi", "uvicorn", "pyyaml")
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def value_counts(values: Iterable) -> dict:
    """How often each value occurs (nulls left out), by value."""
    return dict(sorted(Counter(v for v in values if v is not None).items(), key=lambda kv: str(kv[0])))


def run_record(
    launch: Launch,
    partner: PartnerConfig,
    partner_source: str,
    as_of: str,
    code: int,
    acc: dict,
    rows: list[dict],
    results: pa.Table,
    dead_letters: pa.Table,
    inputs: Iterable[tuple],
    cli_args: dict,
    step_table: tuple[Step, ...] = STEPS,
    called: pa.Table | None = None,
    verdict: Verdict | None = None,
    retry_of: tuple[str, str] | None = None,
) -> RunSummary:
    """The run.json record of a batch or ``--retry-failed`` run, from its metrics and the files it wrote.

    ``called`` holds the results rows whose endpoints this run called (all of
    them unless given); ``retry_of`` is the retried run's id and output folder.
    """
    return RunSummary(
        run_id=launch.run_id,
        retry_of=retry_of and retry_of[0],
        retry_of_output=retry_of and retry_of[1],
        partner=partner.name,
        partner_source=partner_source,
        partner_features=list(partner.feature_names),
        as_of=as_of,
        runner=launch.runner,
        started_at=launch.start.at.isoformat(),
        finished_at=dt.datetime.now(dt.timezone.utc).isoformat(),
        wall_seconds=launch.wall_seconds(),
        exit_code=code,
        accounting=acc,
        offers=value_counts(results.column("OFFER").to_pylist()),
        dead_letter_reasons=value_counts(dead_letters.column("REASON").to_pylist()),
        dead_letter_limit=verdict.as_json() if verdict is not None else None,
        steps=steps(rows, acc, step_table),
        latency_ms=latency_percentiles(results if called is None else called),
        requests=requests(rows),
        concurrency_limit=concurrency_limits(rows) or None,
        inputs=[InputFile(*f).as_json() for f in inputs],
        output=launch.output,
        options={
            "endpoint_base_url": redact({"url": partner.endpoints.base_url})["url"],
            "cli": redact(cli_args),
            "pipeline": redact(launch.options.get_all_options(drop_default=True, retain_unknown_options=True)),
        },
        versions=package_versions(),
    )
