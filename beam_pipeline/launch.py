"""How every run starts and ends, whichever job it runs: batch, ``--retry-failed`` or a streaming replay.

Before the pipeline: the output folder is checked (writable; holding no run
unless ``--overwrite``), the run gets its id, Dataflow gets its worker image and
job name, and the run gets a private staging folder. The batch and retry jobs
end themselves (``beam_pipeline.finalize``: accounting, run.json, publication),
so a launch that does not wait (a Flex Template launch) keeps every guarantee;
a launcher that waits adds what only it sees (the runner's metrics, its own wall
time) and turns the run.json the job wrote into the exit code (``conclude``).
A streaming replay is still published here, by the launcher (``finish``).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import time
import uuid

from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipeline import console, dataflow, dead_letter_limit, finalize, jobs, outputs, run_folder
from beam_pipeline.runners import runner_name
from lantern.run_record import ReplaySummary, RunSummary, to_json

log = logging.getLogger(__name__)

# docs/contract.md: 0 all members OK or NO_TRANSACTIONS; 1 anything unexpected; 2 a usage, partner or input
# error found before the run; 3 some members FAILED; 4 too many dead letters (not published).
EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE, EXIT_FAILED_MEMBERS, EXIT_TOO_MANY_DEAD_LETTERS = 0, 1, 2, 3, 4


@dataclasses.dataclass(frozen=True)
class Start:
    """When the run started: wall clock for run.json, monotonic clock for its duration."""

    at: dt.datetime
    monotonic: float

    @classmethod
    def now(cls) -> Start:
        return cls(dt.datetime.now(dt.timezone.utc), time.monotonic())


@dataclasses.dataclass(frozen=True)
class Launch:
    """One run's identity and places, fixed before its pipeline is built."""

    run_id: str
    start: Start
    options: PipelineOptions
    runner: str
    output: str  # absolute for a local folder
    staging: str  # where the pipeline writes: a private folder, or ``output`` itself when in place
    template: bool  # a Flex Template launch: the job is submitted and finalizes itself; nothing waits for it
    detached: bool = False  # nothing waits for the job (``--detach``, or a Flex Template launch)

    def wall_seconds(self) -> float:
        return round(time.monotonic() - self.start.monotonic, 3)


def run_id(started: dt.datetime) -> str:
    """Sortable by start time, unique across runs started in the same second."""
    return f"{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def absolute(output: str) -> str:
    return output if outputs.is_remote(output) else os.path.abspath(output)


def check_output(output: str, overwrite: bool, beam_args: list[str]) -> None:
    """Before anything runs: the folder can be written, and holds no run unless ``--overwrite``."""
    del beam_args  # every launch, a Flex Template's too, stages its outputs and publishes them at the end
    outputs.check_writable(output)
    run_folder.check(output, overwrite)


def say_notices(notices: list[str]) -> None:
    """Warnings about the run's settings (``PartnerConfig.notices``), once logging is set up."""
    for notice in notices:
        log.warning("%s", notice)


def prepare(options: PipelineOptions, partner: str, output: str, start: Start, staged: bool = True,
            as_of: str | None = None, detach: bool = False) -> Launch:
    """The run id, Dataflow's worker image, job name and labels, and where the pipeline writes.

    ``staged=False`` (a live stream, which appends windows and never ends) writes straight into ``output``.
    ``detach``: submit the job and return (``jobs.check_detachable`` has said the runner can run it alone).
    """
    rid = run_id(start.at)
    dataflow.prepare(options, partner, rid, as_of)
    output = absolute(output)
    template = dataflow.is_template_launch(options)
    staging = outputs.staging_dir(output, rid) if staged else output
    return Launch(rid, start, options, runner_name(options), output, staging, template, detach or template)


def submission(launch: Launch) -> jobs.Submission:
    """The run's ``job.json`` (where its job runs), kept current by ``run_job``."""
    return jobs.Submission(launch.run_id, launch.options, launch.runner, launch.output, launch.staging,
                           detached=launch.detached)


def submitted(launch: Launch, job: jobs.Submission, what: str = "job") -> tuple[int, dict]:
    """A launch that does not wait ends when its job is submitted: exit 0, and the job record to print.

    The job publishes itself (or holds the run back); ``python -m beam_pipeline wait`` waits for it.
    """
    log.info("run %s: %s submitted%s (%s); it publishes its run.json in %s when it finishes (or holds the run "
             "back in %s)", launch.run_id, what, " from a Flex Template" if launch.template else "",
             job.record.where(), launch.output, launch.staging)
    return EXIT_OK, job.record.model_dump(mode="json")


def run_job(pipeline, launch: Launch, job: jobs.Submission | None = None):
    """Run the pipeline; waits unless the launch is detached (``--detach``, a Flex Template's).

    Returns the ``PipelineResult`` (None when ``run`` itself failed, as the local runner's does) and the
    job's failure (None when it did not): a run that the last step held back fails its job on purpose,
    and its run.json says why.
    """
    job = job or submission(launch)
    result = None
    try:
        # job.json in the staging folder says where the job runs, before and once it is submitted.
        with finalize.runner_quiet_about_held_back_runs(), job:
            result = pipeline.run()
            job.submitted(result)
            if not launch.detached:
                result.wait_until_finish()
        return result, None
    except Exception as exc:  # noqa: BLE001 - conclude() tells a held-back run from a crash by its run.json
        return result, exc  # a runner that fails in wait_until_finish still has the job's metrics


def exit_code(failed: int) -> int:
    """3 when any member (or streaming update) FAILED, else 0."""
    return EXIT_FAILED_MEMBERS if failed else EXIT_OK


def finish(launch: Launch, record: RunSummary | ReplaySummary, code: int, overwrite: bool,
           verdict: dead_letter_limit.Verdict | None = None) -> tuple[int, dict]:
    """Publish the run (or hold it back past the dead-letter limit); returns the exit code and run.json."""
    if isinstance(record, RunSummary):
        for step in record.steps:
            line = step.model_dump(mode="json")
            log.info("%s", console.step_line(line), extra={"step": line})
    if verdict is not None and verdict.exceeded:
        held = dead_letter_limit.hold_back(record, verdict, launch.staging)
        return EXIT_TOO_MANY_DEAD_LETTERS, to_json(held)
    summary = to_json(record)
    outputs.write_json(outputs.join(launch.staging, outputs.RUN_JSON), summary)
    clear = (lambda: run_folder.clear(launch.output, keep=launch.staging)) if overwrite else None
    outputs.publish(launch.staging, launch.output, clear)
    log.info("run %s finished in %.1fs: %s", launch.run_id, summary["wall_seconds"],
             console.format_summary(summary).replace("\n", "; "), extra={"accounting": summary["accounting"]})
    return code, summary
