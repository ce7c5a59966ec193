"""``--retry-failed PREVIOUS_OUTPUT``: finish a run whose endpoints failed for some members.

A new run reads a published run's results, calls the endpoints again for its
FAILED members only (with the features that run computed: no export is read,
nothing is recomputed) and writes a complete output of its own: every other row
carried over unchanged, the dead letters carried over, the retried rows fresh.
The partner (unless given) and the as-of date are the previous run's. It is a
Beam pipeline like any run, so it reads and writes gs:// paths and runs on
Dataflow. ``run.json`` says which run it retried (``retry_of``) and accounts for
every member: carried over, retried, still failed.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import WriteToParquetBatched
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipeline import launch, logs, outputs, preflight, summary
from beam_pipeline.accounting import (
    ROW_KEYS,
    Accounts,
    Step,
    members_by_status,
    row_problems,
    status_problems,
    step_elements,
)
from beam_pipeline.finalize import Finalize, RunPlan
from beam_pipeline.pipeline import (
    DEAD_LETTER_FILES,
    DEAD_LETTER_REASONS,
    FINALIZE,
    RESULT_STATS,
    RESULTS,
    TO_RESULT_ROW,
    WRITE_DEAD_LETTERS,
    WRITE_RESULTS,
)
from beam_pipeline.runners import make_runner
from lantern.errors import ConfigError
from lantern.member_fingerprint import difference
from lantern.partner import PartnerConfig
from transforms import progress
from transforms.endpoints import CallEndpoints
from transforms.parquet_rows import RowsToTablesFn
from transforms.previous_results import (
    READ_MEMBERS,
    RETRY,
    CopyParquetRows,
    ReadPreviousResults,
)
from transforms.results import (
    DEAD_LETTER_SCHEMA,
    FAILED,
    OK,
    ToResultRowFn,
    feature_columns,
    results_schema,
)
from transforms.run_counts import CountRowsFn, MemberFingerprintFn, ResultStatsFn, ValueCountsFn

log = logging.getLogger(__name__)

NAMED_SOURCE = ("partner_options/", ".yaml")
# The retry pipeline's own top-level steps (the others are the batch job's: pipeline.py).
READ_PREVIOUS = "ReadPrevious"
CALL_ENDPOINTS = "CallEndpoints"  # how run.json names a partner chosen with --partner


@dataclasses.dataclass(frozen=True)
class PreviousRun:
    """A published run, checked to be complete: its summary, its files and its results schema."""

    output: str
    summary: dict
    results_files: tuple[tuple[str, int], ...]  # (path, size in bytes)
    dead_letter_files: tuple[tuple[str, int], ...]
    schema: pa.Schema

    @property
    def run_id(self) -> str:
        return self.summary["run_id"]

    @property
    def members_failed(self) -> int:
        return self.summary["accounting"]["members_failed"]


@dataclasses.dataclass(frozen=True)
class RetryJob:
    previous: PreviousRun
    partner: PartnerConfig
    as_of: dt.date
    staging: str
    plan: RunPlan | None = None  # the last step's; None builds the job without it


def _refuse(previous: str, why: str) -> ConfigError:
    return ConfigError(f"--retry-failed {previous}: {why}")


def _files(folder: str) -> tuple[tuple[str, int], ...]:
    matched = FileSystems.match([outputs.join(folder, "*.parquet")])[0].metadata_list
    return tuple(sorted((m.path, m.size_in_bytes) for m in matched))


def load_previous(path: str) -> PreviousRun:
    """The previous run at ``path``, or a one-line ConfigError if it is not a complete published run."""
    folder = path if outputs.is_remote(path) else os.path.abspath(path)
    run_json = outputs.join(folder, outputs.RUN_JSON)
    if not FileSystems.exists(run_json):
        raise _refuse(path, f"no {outputs.RUN_JSON}: not a complete published run "
                            "(a run still going or crashed, or not a run's output folder)")
    try:
        with FileSystems.open(run_json, compression_type="uncompressed") as handle:
            data = json.loads(handle.read().decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise _refuse(path, f"{outputs.RUN_JSON} cannot be read: {exc}") from None
    accounting = data.get("accounting") if isinstance(data, dict) else None
    if not isinstance(accounting, dict) or not all(k in data for k in ("run_id", "partner", "as_of")) \
            or not isinstance(accounting.get("members_failed"), int):
        raise _refuse(path, f"{outputs.RUN_JSON} is not a run summary (no run_id, partner, as_of or accounting)")
    if data.get("streaming"):
        raise _refuse(path, "a streaming run's output: only batch runs can be retried")
    results_files = _files(outputs.join(folder, "results"))
    dead_letter_files = _files(outputs.join(folder, "dead_letter"))
    if not results_files or not dead_letter_files:
        part = "results" if not results_files else "dead_letter"
        raise _refuse(path, f"{part}/ has no Parquet files: not a complete published run")
    try:
        with FileSystems.open(results_files[0][0], compression_type="uncompressed") as handle:
            schema = pq.read_schema(handle)
    except (OSError, pa.ArrowException) as exc:
        raise _refuse(path, f"cannot read the schema of {results_files[0][0]}: {exc}") from None
    return PreviousRun(folder, data, results_files, dead_letter_files, schema)


def apply_previous(args: argparse.Namespace) -> PreviousRun:
    """Check the retry's command line against the previous run; default the partner and as-of to it.

    Called before the partner is resolved, so a partner the user did not name
    is the previous run's partner file.
    """
    if args.input:
        raise ConfigError("usage: --retry-failed reads the previous run's results; it takes no --input")
    if args.features_only or getattr(args, "streaming", False):
        raise ConfigError("usage: --retry-failed cannot be combined with --features-only or --streaming")
    previous = load_previous(args.retry_failed)
    output = launch.absolute(args.output)
    if output.rstrip("/") == previous.output.rstrip("/"):
        raise _refuse(args.retry_failed, "--output must be a new folder, not the run being retried")
    as_of = previous.summary["as_of"]
    if args.as_of and args.as_of != as_of:
        raise _refuse(args.retry_failed, f"the run is as of {as_of}; a retry keeps its date (--as-of {args.as_of})")
    args.as_of = as_of
    if not (args.partner or args.partner_config):
        source = previous.summary.get("partner_source") or ""
        prefix, suffix = NAMED_SOURCE
        if source.startswith(prefix) and source.endswith(suffix):
            args.partner = source[len(prefix):-len(suffix)]
        elif source:
            args.partner_config = source
        else:
            args.partner = previous.summary["partner"]
    return previous


def previous_features(previous: PreviousRun) -> list[str]:
    """The features the previous run computed: recorded in run.json, else its results' feature columns."""
    recorded = previous.summary.get("partner_features")
    if isinstance(recorded, list):
        return [str(name) for name in recorded]
    names = previous.schema.names
    end = names.index("N_TRANSACTIONS") if "N_TRANSACTIONS" in names else len(names)
    return names[names.index("MEMBER_ID") + 1:end] if "MEMBER_ID" in names else []


def check_partner(previous: PreviousRun, partner: PartnerConfig, source: str) -> None:
    """The retry must call the endpoints with the features the previous run computed, for the same partner."""
    where = f"--retry-failed {previous.output}"
    if partner.name != previous.summary["partner"]:
        raise ConfigError(f"{where}: the run is partner {previous.summary['partner']!r}; "
                          f"{source} is partner {partner.name!r}")
    then = previous_features(previous)
    now = list(partner.feature_names) if "partner_features" in previous.summary else feature_columns(partner.feature_names)
    if set(then) != set(now):
        gone, new = sorted(set(then) - set(now)), sorted(set(now) - set(then))
        diff = "; ".join(part for part in (f"not in {source}: {', '.join(gone)}" if gone else "",
                                           f"new in {source}: {', '.join(new)}" if new else "") if part)
        raise ConfigError(f"{where}: the partner's features differ from the run's ({diff}); "
                          "run again from the export instead")
    missing = [f.name for f in results_schema(partner.feature_names) if f.name not in previous.schema.names]
    if missing:
        raise ConfigError(f"{where}: its results lack column(s) {', '.join(missing)}")


# The retry's counts, as its accountant reads them (beam_pipeline/accounting.py names the batch job's).
CARRIED_OVER, TO_RETRY, RETRIED = "carried_over", "to_retry", "retried"
# The fingerprints of the member IDs read from the previous run and of those in the results written.
MEMBERS_READ, MEMBERS_WRITTEN = "members_read", "members_written"


def build_retry_pipeline(p: beam.Pipeline, job: RetryJob) -> None:
    """Previous results -> (kept rows | FAILED members called again) -> results; dead letters copied;
    then the retry's last step (``beam_pipeline.finalize``) unless ``job.plan`` is None."""
    partner = job.partner
    schema = results_schema(partner.feature_names)
    previous = job.previous
    split = p | READ_PREVIOUS >> ReadPreviousResults(
        outputs.join(previous.output, "results", "*.parquet"), schema, partner.feature_names)
    retried_rows = (
        split[RETRY]
        | CALL_ENDPOINTS >> CallEndpoints(partner)
        | TO_RESULT_ROW >> beam.ParDo(ToResultRowFn(feature_columns(partner.feature_names), partner.name, job.as_of))
    )
    results = (split.kept, retried_rows | "ToArrow" >> beam.ParDo(RowsToTablesFn(schema))) | "Merge" >> beam.Flatten()
    dead_letters = p | "CopyDeadLetters" >> CopyParquetRows(outputs.join(previous.output, "dead_letter", "*.parquet"),
                                                             DEAD_LETTER_SCHEMA)
    written = {
        RESULTS: results | WRITE_RESULTS >> WriteToParquetBatched(outputs.join(job.staging, "results", "part"),
                                                                  schema, file_name_suffix=".parquet"),
        DEAD_LETTER_FILES: dead_letters | WRITE_DEAD_LETTERS >> WriteToParquetBatched(
            outputs.join(job.staging, "dead_letter", "part"), DEAD_LETTER_SCHEMA, file_name_suffix=".parquet"),
    }
    if job.plan is None:
        return
    counts = {
        CARRIED_OVER: (split.kept, CountRowsFn()),
        TO_RETRY: (split[RETRY], CountRowsFn()),
        RETRIED: (retried_rows, ResultStatsFn()),
        RESULT_STATS: (results, ResultStatsFn()),
        MEMBERS_READ: (split[READ_MEMBERS], MemberFingerprintFn()),
        MEMBERS_WRITTEN: (results, MemberFingerprintFn()),
        DEAD_LETTER_REASONS: (dead_letters, ValueCountsFn("REASON")),
    }
    p | FINALIZE >> Finalize(job.plan, counts, written)


# What run.json's steps report for a retry: (label, transform, unit, element count from the accounting).
STEPS = (
    Step("read_previous", READ_PREVIOUS, "members", lambda a: a["members"]),
    Step("call_endpoints", CALL_ENDPOINTS, "members", lambda a: a["members_retried"]),
    Step("result_rows", TO_RESULT_ROW, "members", lambda a: a["members_retried"]),
    Step("write_results", WRITE_RESULTS, "rows", lambda a: a["members"]),
    Step("write_dead_letters", WRITE_DEAD_LETTERS, "rows", lambda a: a["dead_letter_rows"]),
)


class RetryAccountant:
    """A retry's accounting, checked against the retried run's (its run.json's accounting, ``previous``).

    The row counts are the previous run's (the same input, its dead letters carried over). No
    member is held anywhere: the previous run's members are its FAILED ones called again plus the
    ones carried over, counted as they are read, and their statuses are counted as they are written.
    That the results hold exactly the members read, each once, is checked on fingerprints of their
    IDs (``lantern.member_fingerprint``), taken per bundle on each side and merged.
    """

    steps = STEPS

    def __init__(self, previous: dict):
        self._previous = dict(previous)

    def account(self, facts, written) -> Accounts:
        before = self._previous
        stats, retried, reasons = facts[RESULT_STATS], facts[RETRIED], facts[DEAD_LETTER_REASONS]
        acc = {key: before.get(key, 0) for key in ROW_KEYS}
        acc.update(dead_letter_rows=written[DEAD_LETTER_FILES], members=written[RESULTS],
                   **members_by_status(stats["statuses"]))
        acc.update({
            "members_carried_over": facts[CARRIED_OVER],
            "members_retried": facts[TO_RETRY],
            "members_retried_ok": retried["statuses"].get(OK, 0),
            "members_still_failed": retried["statuses"].get(FAILED, 0),
        })
        problems = row_problems(acc, None, reasons)
        problems += status_problems(stats["statuses"], stats["rows"], acc["members"])
        if acc["dead_letter_rows"] != before.get("dead_letter_rows"):
            problems.append(f"{acc['dead_letter_rows']} dead letters written, the previous run had "
                            f"{before.get('dead_letter_rows')}")
        if acc["members"] != before.get("members"):
            problems.append(f"members differ from the previous run's: {before.get('members')} then, "
                            f"{acc['members']} now")
        if acc["members_retried"] != before.get("members_failed") or retried["rows"] != acc["members_retried"]:
            problems.append(f"{acc['members_retried']} members retried ({retried['rows']} results rows made), "
                            f"the previous run reported {before.get('members_failed')} FAILED")
        read, wrote = facts[MEMBERS_READ], facts[MEMBERS_WRITTEN]
        if read.count != before.get("members"):
            problems.append(f"the previous run's results hold {read.count} members, its run.json says "
                            f"{before.get('members')}")
        if read != wrote:
            problems.append(difference(read, wrote, "read from the previous run", "written"))
        if acc["members_carried_over"] + acc["members_retried"] != acc["members"]:
            problems.append(f"carried over {acc['members_carried_over']} + retried {acc['members_retried']} "
                            f"!= members {acc['members']}")
        if acc["members_retried_ok"] + acc["members_still_failed"] != acc["members_retried"]:
            problems.append(f"retried {acc['members_retried']} != OK {acc['members_retried_ok']} + still failed "
                            f"{acc['members_still_failed']}")
        if acc["members_failed"] != acc["members_still_failed"]:
            problems.append(f"{acc['members_failed'] - acc['members_still_failed']} member(s) FAILED that the "
                            "previous run had not")
        if acc["members_ok"] != before.get("members_ok", 0) + acc["members_retried_ok"]:
            problems.append(f"members_ok {acc['members_ok']} != previous {before.get('members_ok')} + "
                            f"retried OK {acc['members_retried_ok']}")
        return Accounts(acc, problems, stats["offers"], dict(reasons), retried["latency_ms"],
                        step_elements(acc, {}, self.steps))


def run(args: argparse.Namespace, beam_args: list[str], previous: PreviousRun, partner: PartnerConfig,
        partner_source: str, start: launch.Start) -> tuple[int, dict | None]:
    """Run the retry job, which publishes itself; returns the exit code and the run summary."""
    check_partner(previous, partner, partner_source)
    as_of = dt.date.fromisoformat(previous.summary["as_of"])
    launch.check_output(args.output, args.overwrite, beam_args)
    if previous.members_failed and not args.skip_preflight:
        preflight.check_endpoints(partner)
    logs.configure(args.log_level, args.log_format)
    launch.say_notices(partner.notices())

    launched = launch.prepare(PipelineOptions(beam_args), partner.name, args.output, start, detach=args.detach)
    if previous.members_failed:
        log.info("run %s: retrying the %d FAILED member(s) of run %s (%s), partner=%s as_of=%s runner=%s output=%s",
                 launched.run_id, previous.members_failed, previous.run_id, previous.output, partner.name, as_of,
                 launched.runner, launched.output)
    else:
        log.info("run %s: nothing to retry: run %s (%s) has no FAILED member; its rows are carried over to %s",
                 launched.run_id, previous.run_id, previous.output, launched.output)

    fields = summary.launch_fields(launched, partner, partner_source, as_of.isoformat(),
                                   (*previous.results_files, *previous.dead_letter_files), vars(args),
                                   retry_of=(previous.run_id, previous.output))
    plan = RunPlan(launched.run_id, launched.output, launched.staging, args.overwrite, fields,
                   RetryAccountant(previous.summary["accounting"]))
    pipeline = beam.Pipeline(runner=make_runner(launched.options), options=launched.options)
    build_retry_pipeline(pipeline, RetryJob(previous, partner, as_of, launched.staging, plan))
    progress.reset()
    job = launch.submission(launched)
    result, failure = launch.run_job(pipeline, launched, job)
    if launched.detached and failure is None:
        return launch.submitted(launched, job, "retry job")
    return summary.conclude(launched, result, failure)
