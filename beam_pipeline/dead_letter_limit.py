"""A run that rejects too much fails loudly: dead letters as a share of the rows read, against a limit.

A partner file that misreads an export (the wrong delimiter, a type spelling it
does not list) turns most rows into dead letters, and the run would otherwise end
"fine" with a handful of members. Past the limit the run exits 4 and is not
published: its outputs stay in the staging folder the error line names. Below the
limit, any dead letter at all adds a note to the summary line.

The limit is ``--max-dead-letter-ratio`` or the partner's ``input.max_dead_letter_ratio``
(0.05 by default); 1.0 turns the check off.
"""
from __future__ import annotations

from typing import NamedTuple

import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from beam_pipeline.outputs import RUN_JSON, join, write_json
from lantern.errors import ConfigError
from lantern.partner import PartnerConfig
from lantern.run_record import RunSummary, to_json

OFF = 1.0
TOP_REASONS = 3
_EXAMPLE_CHARS = 120


class Verdict(NamedTuple):
    """How the run's dead letters compare with the limit."""

    ratio: float  # dead letters / rows read (0 when nothing was read)
    limit: float
    exceeded: bool

    def as_json(self) -> dict:
        return {"ratio": self.ratio, "limit": self.limit, "exceeded": self.exceeded}


def limit_for(cli_value: float | None, partner: PartnerConfig) -> float:
    """The command line wins over the partner file; both must lie in [0, 1]."""
    if cli_value is None:
        return partner.input.max_dead_letter_ratio
    if not 0.0 <= cli_value <= 1.0:
        raise ConfigError(f"--max-dead-letter-ratio {cli_value:g} is not between 0 and 1 (1 turns the check off)")
    return cli_value


def judge(accounting: dict, limit: float) -> Verdict:
    rows, dead = accounting["rows_read"], accounting["dead_letter_rows"]
    ratio = dead / rows if rows else 0.0
    return Verdict(ratio, limit, limit < OFF and ratio > limit)


def top_reasons(reasons: dict[str, int], n: int = TOP_REASONS) -> list[tuple[str, int]]:
    """The most frequent reasons first; equal counts by name, so the line is the same every run."""
    return sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def first_example(dead_letter_dir: str, reason: str) -> dict | None:
    """The first dead-letter row with ``reason``, read a batch at a time (the folder may be large)."""
    paths = sorted(m.path for m in FileSystems.match([join(dead_letter_dir, "*.parquet")])[0].metadata_list)
    for path in paths:
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            for batch in pq.ParquetFile(handle).iter_batches(columns=["SOURCE", "RAW_LINE", "REASON", "DETAIL"]):
                for row in batch.to_pylist():
                    if row["REASON"] == reason:
                        return row
    return None


def _short(text: str) -> str:
    return text if len(text) <= _EXAMPLE_CHARS else text[:_EXAMPLE_CHARS] + "..."


def failure_line(verdict: Verdict, accounting: dict, reasons: dict[str, int], example: dict | None,
                 staging: str) -> str:
    """One line: the ratio against the limit, the top reasons, one example, where the outputs are."""
    top = ", ".join(f"{reason} {count}" for reason, count in top_reasons(reasons))
    line = (
        f"{accounting['dead_letter_rows']} of {accounting['rows_read']} rows are dead letters "
        f"(ratio {verdict.ratio:.3g}), above the limit {verdict.limit:g} "
        f"(--max-dead-letter-ratio, partner input.max_dead_letter_ratio); top reasons: {top}"
    )
    if example is not None:
        line += (f"; e.g. {_short(example['RAW_LINE'])!r} in {example['SOURCE']}: "
                 f"{example['REASON']}: {_short(example['DETAIL'])}")
    return line + f"; the run is not published, its outputs are in {staging}"


def note(verdict: Verdict) -> str | None:
    """The summary line's note for a run with dead letters below the limit; None without any.

    A note, not a warning: the run is within what the partner allows, and a word
    that sounds like trouble for a ratio far under the limit teaches people to ignore it."""
    if verdict.exceeded or verdict.ratio == 0:
        return None
    if verdict.limit >= OFF:
        return f"note: dead-letter ratio {verdict.ratio:.3g}, no limit set"
    return f"note: dead-letter ratio {verdict.ratio:.3g}, under the limit {verdict.limit:g}"


def hold_back(record: RunSummary, verdict: Verdict, staging: str) -> RunSummary:
    """Leave the run in its staging folder with its run.json, and put the one-line reason in the record."""
    reasons = record.dead_letter_reasons
    example = None
    if reasons:
        example = first_example(join(staging, "dead_letter"), top_reasons(reasons, 1)[0][0])
    line = failure_line(verdict, record.accounting.model_dump(), reasons, example, staging)
    held = record.model_copy(update={"published": False, "staging": staging, "error": line})
    write_json(join(staging, RUN_JSON), to_json(held))  # the CLI prints the line itself, on stderr
    return held
