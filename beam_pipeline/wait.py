"""``python -m beam_pipeline wait OUTPUT``: wait until OUTPUT holds a finished run; exit with its exit code.

For schedulers and for runs nobody waits on (``--detach``, Flex Template
launches). The newest run in OUTPUT is the one waited for. While it is pending,
its job's runner is asked (``job.json`` says which: ``beam_pipeline/jobs.py``),
so a job that failed before it could write its ``run.json`` ends the wait with
the runner's own error instead of a wait that never ends.

Exit codes: 0 and 3 the run was published (3: some members FAILED); 4 it was
held back past the dead-letter limit (nothing published); 1 it failed (the
finalize step's error, or the runner's when the job failed before it); 2
OUTPUT holds no run and none is pending; 5 ``--timeout`` ran out while the run
was still pending (the job keeps running; wait again later).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Callable

from beam_pipeline import jobs, launch, logs, run_folder
from beam_pipeline.console import OneLineParser, format_summary
from lantern.errors import ConfigError
from lantern.job_record import JobRecord

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_NO_RUN, EXIT_TIMEOUT = 0, 1, 2, 5
POLL_S = 2.0  # how often the folder is looked at
ASK_EVERY_S = 10.0  # how often the runner is asked while the run is pending
UNREACHABLE_S = 300.0  # a runner that cannot be asked for this long ends the wait (exit 1)
SETTLE_S = 10.0  # after the runner says the job ended: how long its run.json may take to appear


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How the wait ended: the exit code, what goes to stdout, and the one line for stderr."""

    code: int
    run_id: str | None = None
    summary: dict | None = None
    error: str | None = None


@dataclasses.dataclass
class Waiter:
    """Polls the folder, asks the runner now and then; its clock and sleep are replaceable for tests."""

    output: str
    timeout_s: float | None = None
    poll_s: float = POLL_S
    ask_every_s: float = ASK_EVERY_S
    unreachable_s: float = UNREACHABLE_S
    settle_s: float = SETTLE_S
    ask: Callable[[JobRecord], jobs.JobState] = jobs.state_of
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

    def wait(self) -> Outcome:
        found = run_folder.runs(self.output)
        if not found:
            return Outcome(EXIT_NO_RUN, error=f"{self.output} holds no run and none is pending")
        run_id = found[-1].run_id
        start = self.clock()
        last_ask = unreachable_since = ended_at = None
        state: jobs.JobState | None = None
        reported = None
        while True:
            run = run_folder.find(self.output, run_id)
            if run is None:
                return Outcome(EXIT_FAILED, run_id, error=f"run {run_id} is no longer in {self.output} "
                                                          "(another launch replaced it)")
            if run.ended:
                return self._ended(run)
            now = self.clock()
            job = run.job
            if job is not None and (last_ask is None or now - last_ask >= self.ask_every_s or ended_at is not None):
                last_ask = now
                try:
                    state = self.ask(job)
                    unreachable_since = None
                except jobs.Unreachable as exc:
                    unreachable_since = unreachable_since or now
                    if now - unreachable_since >= self.unreachable_s:
                        return Outcome(EXIT_FAILED, run_id, error=f"run {run_id}: {exc} (for "
                                                                  f"{now - unreachable_since:.0f}s)")
                    log.info("run %s: %s", run_id, exc)  # transient until unreachable_s: the end says it once
                    state = None
                if state is not None and state.terminal:
                    ended_at = ended_at or now
                    # The launcher saw the job end: nothing will write a run.json any more.
                    if job.error or now - ended_at >= self.settle_s:
                        return Outcome(EXIT_FAILED, run_id, error=_unfinished(run_id, job, state))
                if state is not None and state.state != reported:
                    reported = state.state
                    log.info("run %s: %s is %s", run_id, job.where(), state.state)
            if self.timeout_s is not None and now - start >= self.timeout_s:
                doing = f"{job.where()} is {state.state}" if job is not None and state is not None else "pending"
                return Outcome(EXIT_TIMEOUT, run_id, error=f"run {run_id} still pending after {self.timeout_s:g}s "
                                                           f"({doing}); the job keeps running")
            self.sleep(self.poll_s)

    def _ended(self, run: run_folder.Run) -> Outcome:
        summary = run.summary or {}
        code = summary.get("exit_code")
        if code not in (0, 1, 3, 4):
            return Outcome(EXIT_FAILED, run.run_id, summary, f"run {run.run_id}: {run.path} has no exit code "
                                                             f"0, 1, 3 or 4 ({code!r})")
        error = summary.get("error") if code in (1, 4) else None
        if code in (1, 4) and not error:
            error = f"run {run.run_id} was not published"
        return Outcome(code, run.run_id, summary if run.published or code == 4 else None, error)


def _unfinished(run_id: str, job: JobRecord, state: jobs.JobState) -> str:
    """The one line for a job that ended without publishing or holding back its run."""
    if state.state == "DONE":
        return f"run {run_id}: {job.where()} ended DONE but wrote no run.json"
    why = f": {state.error}" if state.error else ""
    return f"run {run_id}: {job.where()} ended {state.state} without finishing the run{why}"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = OneLineParser(prog="python -m beam_pipeline wait", description=__doc__.splitlines()[0],
                                     allow_abbrev=False)
    parser.add_argument("output", metavar="OUTPUT", help="the run's output folder (local or gs://)")
    parser.add_argument("--timeout", type=float, metavar="S",
                        help=f"give up after S seconds, exit {EXIT_TIMEOUT}, the job left running (default: no limit)")
    parser.add_argument("--poll-seconds", type=float, default=POLL_S, metavar="S",
                        help=f"how often to look at OUTPUT (default {POLL_S:g})")
    parser.add_argument("--log-level", default="WARNING", choices=logs.LEVELS)
    args = parser.parse_args(argv)
    if args.timeout is not None and args.timeout < 0:
        parser.error("--timeout must not be negative")
    if args.poll_seconds <= 0:
        parser.error("--poll-seconds must be positive")
    return args


def main(argv: list[str]) -> int:
    """``argv``: what follows ``wait`` on the command line."""
    try:
        args = parse_args(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return launch.EXIT_USAGE
    logs.configure(args.log_level, "text")
    output = launch.absolute(args.output)
    try:
        outcome = Waiter(output, args.timeout, poll_s=args.poll_seconds, ask_every_s=ASK_EVERY_S,
                         unreachable_s=UNREACHABLE_S, settle_s=SETTLE_S).wait()
    except KeyboardInterrupt:
        return 130
    if outcome.summary is not None:
        print(format_summary(outcome.summary))
    if outcome.error:
        print(f"error: {outcome.error}", file=sys.stderr)
    return outcome.code
