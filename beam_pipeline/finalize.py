"""The run's last step, inside the pipeline: check the accounting, write run.json, publish or hold back.

It runs once, on one worker, after every write has completed: Beam's own pattern
for "after the sink" (``WriteImpl``'s ``FinalizeWrite``), a DoFn on a single
impulse element whose side inputs are the writes' outputs (the files each wrote)
and the run's counts (``transforms.run_counts``). So the same step closes a run on
the local runner, the portable runner and Dataflow, whether or not the launcher
waits:

- the accounting does not close: ``run.json`` (exit code 1, ``published: false``,
  ``error``) is written in the staging folder and the step fails the job with that line;
- too many dead letters: the same with exit code 4 (``dead_letter_limit.hold_back``);
- otherwise ``run.json`` (exit code 0, or 3 with FAILED members) is staged and the
  staging folder published into the output, run.json last (``outputs.publish``).

A runner may run the step again (a retried bundle). A run already published is
left as it is; a run already held back fails again with the same line; a
publication cut short resumes where it stopped. Nothing here holds a member: the
counts are a few numbers each, the files are read for their Parquet footers only.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from beam_pipeline import dead_letter_limit, outputs, run_folder
from lantern.run_record import RunSummary, package_versions, to_json
from transforms.run_counts import CountRun, ListFn

log = logging.getLogger(__name__)

WRITTEN_PREFIX = "written:"  # a write's file names among the counts
EXIT_OK, EXIT_UNFIT, EXIT_FAILED_MEMBERS, EXIT_TOO_MANY_DEAD_LETTERS = 0, 1, 3, 4


class FinalizeError(RuntimeError):
    """The run is not published (its accounting does not close, or too many dead letters): the job fails."""


@dataclasses.dataclass
class Accounts:
    """An accountant's answer: the accounting, what does not add up, and the run.json fields it fills."""

    accounting: dict
    problems: list[str]
    offers: dict
    dead_letter_reasons: dict
    latency_ms: dict
    steps: list[dict]
    fields: dict = dataclasses.field(default_factory=dict)  # more run.json fields (e.g. the member state's)


class _HeldBackFilter(logging.Filter):
    """Drops the runner's own log of a FinalizeError (with its traceback): the launcher says it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, FinalizeError) or FinalizeError.__name__ in record.getMessage())


# The loggers a runner reports a failed bundle on: the local runner's, and the root logger, where the
# portable runner relays its job service's messages.
RUNNER_LOGGERS = ("apache_beam.runners.common", "apache_beam.runners.worker.bundle_processor",
                  "apache_beam.runners.worker.sdk_worker", "apache_beam.runners.portability.fn_api_runner.fn_runner",
                  "apache_beam.runners.portability.portable_runner", "")


@contextlib.contextmanager
def runner_quiet_about_held_back_runs():
    """While a launcher runs the job in-process: a run held back is one line on stderr, not a traceback."""
    quiet = _HeldBackFilter()
    loggers = [logging.getLogger(name) for name in RUNNER_LOGGERS]
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)


class Accountant(Protocol):
    def account(self, facts: Mapping[str, Any], written: Mapping[str, int]) -> Accounts:
        """The accounting from the run's counts and the rows each write put in its files."""


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What the last step needs to know, fixed at launch."""

    run_id: str
    output: str
    staging: str
    overwrite: bool
    fields: dict  # run.json's fields known at launch (partner, inputs, options, started_at, ...)
    accountant: Accountant
    dead_letter_max: float | None = None  # None: no dead-letter limit (a retry carries its run's over)


def rows_written(paths: Iterable[str]) -> int:
    """Rows in Parquet files, from their footers."""
    total = 0
    for path in paths:
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            total += pq.ParquetFile(handle).metadata.num_rows
    return total


def gather(gathered: Mapping[str, Any]) -> tuple[dict, dict[str, list[str]]]:
    """The combined counts and file names -> (counts by name, files written by write)."""
    facts = {name: value for name, value in gathered.items() if not name.startswith(WRITTEN_PREFIX)}
    files = {name[len(WRITTEN_PREFIX):]: list(value) for name, value in gathered.items()
             if name.startswith(WRITTEN_PREFIX)}
    return facts, files


def read_outcome(output: str, staging: str, run_id: str) -> dict | None:
    """The run.json of run ``run_id``: published in ``output``, or held in ``staging``; None if neither."""
    published = outputs.read_json(outputs.join(output, outputs.RUN_JSON))
    if published is not None and published.get("run_id") == run_id:
        return published
    staged = outputs.read_json(outputs.join(staging, outputs.RUN_JSON))
    if staged is not None and staged.get("run_id") == run_id:
        return staged
    return None


def _record(plan: RunPlan, accounts: Accounts, code: int, verdict: dead_letter_limit.Verdict | None = None
            ) -> RunSummary:
    now = dt.datetime.now(dt.timezone.utc)
    started = dt.datetime.fromisoformat(plan.fields["started_at"])
    return RunSummary(
        **plan.fields,
        finished_at=now.isoformat(),
        wall_seconds=round(max((now - started).total_seconds(), 0.0), 3),
        exit_code=code,
        accounting=accounts.accounting,
        offers=accounts.offers,
        dead_letter_reasons=accounts.dead_letter_reasons,
        steps=accounts.steps,
        latency_ms=accounts.latency_ms,
        dead_letter_limit=verdict.as_json() if verdict is not None else None,
        versions=package_versions(),
        published=True,
        **accounts.fields,
    )


def finalize(plan: RunPlan, gathered: Mapping[str, Any]) -> dict:
    """Account for the run and publish it (or hold it back and raise); returns its run.json.

    ``gathered``: each count by name, and each write's file names under ``WRITTEN_PREFIX + name``.
    """
    published = outputs.read_json(outputs.join(plan.output, outputs.RUN_JSON))
    if published is not None and published.get("run_id") == plan.run_id:
        log.info("run %s is already published in %s", plan.run_id, plan.output)
        return published
    staged_summary = outputs.join(plan.staging, outputs.RUN_JSON)
    staged = outputs.read_json(staged_summary)
    if staged is not None and staged.get("run_id") == plan.run_id:
        if staged.get("published") is False:
            raise FinalizeError(staged["error"])
        if FileSystems.exists(outputs.join(plan.staging, outputs.PUBLISHING)):
            return _publish(plan, staged)  # a publication cut short: finish it with the run.json it began
    facts, files = gather(gathered)
    written = {name: rows_written(paths) for name, paths in files.items()}
    accounts = plan.accountant.account(facts, written)
    if accounts.problems:
        line = "accounting does not close: " + "; ".join(accounts.problems)
        record = _record(plan, accounts, EXIT_UNFIT).model_copy(
            update={"published": False, "staging": plan.staging, "error": line})
        outputs.write_json(staged_summary, to_json(record))
        raise FinalizeError(line)
    code = EXIT_FAILED_MEMBERS if accounts.accounting["members_failed"] else EXIT_OK
    verdict = None
    if plan.dead_letter_max is not None:
        verdict = dead_letter_limit.judge(accounts.accounting, plan.dead_letter_max)
        if verdict.exceeded:
            record = _record(plan, accounts, EXIT_TOO_MANY_DEAD_LETTERS, verdict)
            raise FinalizeError(dead_letter_limit.hold_back(record, verdict, plan.staging).error)
    record = _record(plan, accounts, code, verdict)
    summary = to_json(record)
    outputs.write_json(staged_summary, summary)
    return _publish(plan, summary)


def _publish(plan: RunPlan, summary: dict) -> dict:
    clear = (lambda: run_folder.clear(plan.output, keep=plan.staging)) if plan.overwrite else None
    outputs.publish(plan.staging, plan.output, clear)
    log.info("run %s published in %s (exit code %d)", plan.run_id, plan.output, summary["exit_code"])
    return summary


class FinalizeFn(beam.DoFn):
    """On the one element of the run's counts and written files: ``finalize``."""

    def __init__(self, plan: RunPlan):
        self._plan = plan

    def process(self, gathered: dict):
        started = time.perf_counter()
        summary = finalize(self._plan, gathered)
        seconds = time.perf_counter() - started
        log.info("run %s: the last step took %.3f s", self._plan.run_id, seconds, extra={"finalize_seconds": seconds})
        yield summary["exit_code"]


class Finalize(beam.PTransform):
    """The run's last step; runs once, after every count in ``counts`` and every write in ``writes``.

    ``counts``: name -> (a PCollection, the CombineFn that counts it); ``writes``: name -> the
    PCollection of the file names a write produced (``WriteToParquetBatched``; a write always
    names at least one file). All are combined into one element (``transforms.run_counts.CountRun``),
    which exists only once every one of them is complete: the step that receives it runs once,
    on one worker, after every write has finished. (Beam's ``WriteImpl`` waits for its writes the
    same way, with the writes' outputs as side inputs of a step on one element; one combine
    instead of a combine, an impulse and a side input saves the job two stages.) Another output
    is awaited and accounted for by adding it to either mapping.
    """

    def __init__(self, plan: RunPlan, counts: Mapping[str, tuple[beam.PCollection, beam.CombineFn]],
                 writes: Mapping[str, beam.PCollection]):
        super().__init__()
        self._plan = plan
        self._counts = dict(counts)
        self._writes = dict(writes)

    def expand(self, pbegin):
        awaited = {**self._counts, **{WRITTEN_PREFIX + name: (pcoll, ListFn()) for name, pcoll in self._writes.items()}}
        return (
            pbegin
            | "Count" >> CountRun(awaited)
            | "Finalize" >> beam.ParDo(FinalizeFn(self._plan))
        )
