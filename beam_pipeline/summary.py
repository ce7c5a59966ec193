"""After the run: Beam metrics to Parquet, the accounting check, and ``run.json``.

The accounting is computed twice, from the Beam counters and from the Parquet
files actually written, and the two must agree: a run whose outputs do not add
up fails loudly instead of publishing.
"""
from __future__ import annotations

import logging
from collections import Counter, defaultdict
from importlib import metadata

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter

from beam_pipeline.outputs import join
from beam_pipeline.pipeline import MEMBERS_WITH_FEATURES
from transforms import NAMESPACE
from transforms.results import FAILED, NO_TRANSACTIONS, OK
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
    """Every counter, distribution and gauge the run reported, one row each."""
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
    return rows


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
    if sum(statuses.values()) != members or set(statuses) - {OK, NO_TRANSACTIONS, FAILED}:
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
        out[kind] = {"p50": round(p50, 3), "p95": round(p95, 3), "p99": round(p99, 3), "count": len(column)}
    return out


# (step label in run.json, Beam step name prefix of its DoFn, counter giving its element count)
STEPS = (
    ("parse", "Parse", "rows_read"),
    ("call_endpoints", "DecideOffers", "members_called"),
    ("result_rows", "ToResultRow", "members"),
)


def steps(rows: list[dict], acc: dict) -> list[dict]:
    seconds: dict[str, float] = defaultdict(float)
    for row in rows:
        if row["KIND"] == "distribution" and row["NAME"] == BUNDLE_MS and row["SUM"] is not None:
            for label, prefix, _ in STEPS:
                if row["STEP"].startswith(prefix):
                    seconds[label] += row["SUM"] / 1000
    counts = {
        "rows_read": acc["rows_read"],
        "members_called": acc["members_ok"] + acc["members_failed"],
        "members": acc["members"],
    }
    out = []
    for label, _, counter in STEPS:
        secs = round(seconds[label], 3)
        elements = counts[counter]
        out.append({"name": label, "elements": elements, "seconds": secs,
                    "per_second": round(elements / secs, 1) if secs else None})
    return out


def package_versions() -> dict:
    names = ("apache-beam", "pyarrow", "requests", "urllib3", "pydantic", "fastapi", "uvicorn")
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
