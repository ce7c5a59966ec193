"""A run's output folder, read and checked before anything is drawn or written.

The report refuses, in one line, a folder that is not a finished run's output:
no ``run.json`` (a run still pending says so), a ``run.json`` that is not a
Lantern run summary, a run held back (not published), or parts missing or of
another shape. It reads batch, ``--retry-failed``, incremental and streaming
outputs; a streaming output has one row per member update, which the report
also reduces to each member's latest.
"""
from __future__ import annotations

import dataclasses
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from beam_pipeline.outputs import RUN_JSON, join
from lantern.comparison import one_row_per_member

# The results columns the report reads: a folder whose results lack them is not this product's.
RESULT_COLUMNS = ("MEMBER_ID", "N_TRANSACTIONS", "OFFER", "STATUS")
STREAM_COLUMNS = ("UPDATE_SEQ", "DECIDED_AT", "TXN_TO_OFFER_MS")
DEAD_LETTER_COLUMNS = ("SOURCE", "RAW_LINE", "REASON", "DETAIL")
BATCH, RETRY, INCREMENTAL, STREAMING = "batch", "retry", "incremental", "streaming"
# A windowed file's name (transforms/windowed_parquet.py): part-START-END-shardNN-SEQ.parquet
# (or -paneN.parquet, as earlier streams wrote them); START and END are UTC times.
WINDOW_FILE = re.compile(r"part-(?P<start>\d{4}-\d\d-\d\dT[\d:]+)-(?P<end>\d{4}-\d\d-\d\dT[\d:]+)-"
                         r"(?:shard(?P<shard>\d+)-\d+|pane\d+)\.parquet$")


class ReportError(RuntimeError):
    """The folder is not a finished run's output: the one line the CLI prints (exit 2)."""


@dataclasses.dataclass
class Run:
    output: str  # the folder as given
    summary: dict  # run.json
    kind: str  # batch, retry, incremental or streaming
    results: pa.Table  # one row per member (a stream: each member's latest update)
    updates: pa.Table | None  # a stream's every update; None for batch outputs
    windows: list[dict]  # a stream's result files: window start and end (None if unnamed), file, rows
    dead: pa.Table | None
    metrics: pa.Table | None

    @property
    def streaming(self) -> bool:
        return self.kind == STREAMING


def kind_of(summary: dict, output: str) -> str:
    if summary.get("streaming"):
        return STREAMING
    if summary.get("retry_of"):
        return RETRY
    if any(k.startswith("incremental") for k in summary) or _exists(join(output, "state")):
        return INCREMENTAL
    return BATCH


def _exists(path: str) -> bool:
    try:
        return FileSystems.exists(path)
    except Exception:  # noqa: BLE001 - a filesystem that cannot tell: treat as absent
        return False


def _parts(folder: str) -> list[str]:
    matched = FileSystems.match([join(folder, "*.parquet")])[0].metadata_list
    return sorted(m.path for m in matched)


def _read(path: str) -> pa.Table:
    with FileSystems.open(path, compression_type="uncompressed") as handle:
        return pq.read_table(handle)


def _read_folder(output: str, part: str, required: tuple[str, ...], optional: bool = False
                 ) -> tuple[pa.Table | None, list[tuple[str, pa.Table]]]:
    paths = _parts(join(output, part))
    if not paths:
        if optional:
            return None, []
        raise ReportError(f"{output}/{part} has no Parquet files: not a complete run output")
    try:
        tables = [(p, _read(p)) for p in paths]
        table = pa.concat_tables([t for _, t in tables], promote_options="default")
    except (OSError, pa.ArrowException) as exc:
        raise ReportError(f"{output}/{part} cannot be read as Parquet: {str(exc).splitlines()[0]}") from None
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise ReportError(f"{output}/{part} lacks {', '.join(missing)}: not a Lantern run's output")
    return table, tables


def _summary(output: str) -> dict:
    path = join(output, RUN_JSON)
    if not _exists(path):
        pending = FileSystems.match([join(output, "_staging-*/*")])[0].metadata_list if _exists(output) else []
        if pending:
            staging = pending[0].path.replace("\\", "/").rsplit("/", 2)[-2]
            raise ReportError(f"{output} has no {RUN_JSON} yet: its run is pending or failed ({staging})")
        raise ReportError(f"{output} has no {RUN_JSON}: not the output folder of a finished run")
    try:
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            summary = json.loads(handle.read().decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path} is not JSON: {str(exc).splitlines()[0]}") from None
    needed = ("run_id", "partner", "accounting", "wall_seconds")
    if not isinstance(summary, dict) or any(k not in summary for k in needed):
        raise ReportError(f"{path} is not a Lantern run summary (it needs {', '.join(needed)})")
    if summary.get("published") is False:
        raise ReportError(f"{output} holds a run that was not published (exit code {summary.get('exit_code')}): "
                          f"{summary.get('error') or 'see its run.json'}")
    return summary


def load_run(output: str) -> Run:
    """Read and check everything the report needs; raises ReportError with the one line to print."""
    summary = _summary(output)
    kind = kind_of(summary, output)
    required = RESULT_COLUMNS + (STREAM_COLUMNS if kind == STREAMING else ())
    results, files = _read_folder(output, "results", required)
    # A stream's window without a dead letter writes no file; a batch run always writes one.
    dead, _ = _read_folder(output, "dead_letter", DEAD_LETTER_COLUMNS, optional=kind == STREAMING)
    metrics, _ = _read_folder(output, "metrics", (), optional=True)
    updates, windows = None, []
    if kind == STREAMING:
        updates = results
        results = one_row_per_member(results)
        for path, table in files:
            match = WINDOW_FILE.search(path)
            windows.append({"start": match["start"] if match else None, "end": match["end"] if match else None,
                            "file": path.replace("\\", "/").rsplit("/", 1)[-1], "table": table})
    return Run(output, summary, kind, results, updates, windows, dead, metrics)
