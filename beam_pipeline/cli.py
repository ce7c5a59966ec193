"""``python -m beam_pipeline``: validate everything, run the job, check and publish its outputs.

Exit codes (docs/contract.md): 0 all members OK or NO_TRANSACTIONS; 2 a usage, partner
or input error found before the run (one line on stderr, nothing written);
3 the run finished but some members FAILED; 4 the dead letters passed
--max-dead-letter-ratio (one line on stderr, the outputs staged, not published);
1 anything unexpected. ``python -m beam_pipeline wait OUTPUT`` waits for a run
that another process launched (``beam_pipeline/wait.py``).
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

from beam_pipeline import (
    beam_options,
    dataflow,
    dead_letter_limit,
    incremental,
    inputs,
    jobs,
    launch,
    logs,
    option_types,
    preflight,
    retry,
    sdk_processes,
    streaming,
    summary,
    wait,
)
from beam_pipeline.accounting import AccountingError, BatchAccountant
from beam_pipeline.console import OneLineParser, format_summary
from beam_pipeline.finalize import RunPlan
from beam_pipeline.heartbeat import Heartbeat
from beam_pipeline.pipeline import BLOCKS, READERS, JobConfig, build_pipeline
from beam_pipeline.runners import make_runner
from lantern.errors import ConfigError
from lantern.member_table import shards_for
from lantern.partner import PartnerConfig, load, load_named
from transforms import progress
from transforms.input_files import InputChanged, InputTruncated

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The job's own options (Beam's are checked by ``beam_options``); ``beam_pipeline/flex_template.py``
    makes the template parameters from them."""
    # Options with a dash also answer to their underscore spelling: the Flex Template launcher passes
    # template parameters as --as_of=..., and Beam's own options are spelled that way too.
    parser = OneLineParser(prog="python -m beam_pipeline", description=__doc__.splitlines()[0],
                           allow_abbrev=False)
    parser.add_argument("--input", action="append",
                        help="export file or glob (local or gs://); repeat for several")
    parser.add_argument("--output", required=True, help="output directory (local or gs://)")
    parser.add_argument("--overwrite", nargs="?", const=True, default=False, type=option_types.switch("--overwrite"),
                        metavar="true|false",
                        help="replace the run the output folder holds, and everything else in it "
                             "(without it such a folder is refused)")
    parser.add_argument("--max-dead-letter-ratio", "--max_dead_letter_ratio", type=option_types.DEAD_LETTER_RATIO,
                        metavar="R",
                        help="exit 4, unpublished, when dead letters / rows read exceed R "
                             "(default: the partner's input.max_dead_letter_ratio, 0.05; 1 turns it off)")
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--partner", help="partner name: loads partner_options/NAME.yaml (default: default)")
    who.add_argument("--partner-config", "--partner_config", help="path to a partner YAML file")
    parser.add_argument("--as-of", "--as_of", type=option_types.AS_OF,
                        help="as-of date YYYY-MM-DD (default: today, UTC)")
    parser.add_argument("--endpoint-url", "--endpoint_url", type=option_types.ENDPOINT_URL,
                        help="replace scheme, host and port of every endpoint (on Dataflow: the partner's "
                             "production host, which workers reach)")
    parser.add_argument("--auth-secret", "--auth_secret", type=option_types.AUTH_SECRET,
                        help="Secret Manager version holding the partner's auth header value, "
                             "read where the partner file's env var is unset (Dataflow workers)")
    parser.add_argument("--features-only", "--features_only", nargs="?", const=True, default=False,
                        type=option_types.switch("--features-only"), metavar="true|false",
                        help="compute features, call no endpoint (status FEATURES_ONLY)")
    parser.add_argument("--reader", default=BLOCKS, choices=READERS,
                        help="blocks (default): read, parse and fold exports in blocks of lines; "
                             "lines: one element per line (ReadFromText), the reference path")
    parser.add_argument("--skip-preflight", "--skip_preflight", nargs="?", const=True, default=False,
                        type=option_types.switch("--skip-preflight"), metavar="true|false",
                        help="do not check that endpoint hosts answer before the run")
    parser.add_argument("--log-level", default="INFO", choices=logs.LEVELS,
                        help="the least severe messages logged (default INFO)")
    parser.add_argument("--log-format", default="text", choices=logs.FORMATS,
                        help="text, or json: one JSON object per line (Cloud Logging reads these)")
    parser.add_argument("--heartbeat-seconds", type=float, default=10.0,
                        help="log progress every N seconds during a local run (0: never; default 10)")
    parser.add_argument("--detach", action="store_true",
                        help="submit the job and exit 0 once the runner has accepted it, printing the job and "
                             "where the run will appear; the job publishes itself. Needs a runner that runs jobs "
                             "on its own: DataflowRunner, or PortableRunner with --job_endpoint (not LOOPBACK). "
                             "Then: python -m beam_pipeline wait OUTPUT")
    parser.add_argument("--retry-failed", "--retry_failed", metavar="PREVIOUS_OUTPUT",
                        help="call the endpoints again for the FAILED members of this published run only "
                             "and write a complete new output (docs/day-two.md)")
    parser.add_argument("--incremental-from", "--incremental_from", metavar="PREVIOUS_OUTPUT",
                        help="fold today's --input into the member state of this published run and write "
                             "results for every member of the merged state (docs/incremental.md)")
    parser.add_argument("--changed-only", "--changed_only", nargs="?", const=True, default=False,
                        type=option_types.switch("--changed-only"), metavar="true|false",
                        help="with --incremental-from: call the endpoints only for members with rows today; "
                             "the others keep the base run's decision (DECISION_CARRIED_OVER); wrong when the "
                             "partner's models depend on the as-of date (docs/incremental.md)")
    streaming.add_arguments(parser)
    _underscore_spellings(parser)
    return parser


def _underscore_spellings(parser: argparse.ArgumentParser) -> None:
    """Every ``--some-option`` also answers to ``--some_option`` (the Flex Template launcher's spelling)."""
    for action in parser._actions:
        for option in list(action.option_strings):
            twin = "--" + option[2:].replace("-", "_")
            if option.startswith("--") and twin not in parser._option_string_actions:
                action.option_strings.append(twin)
                parser._option_string_actions[twin] = action


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The job's options, and the rest for Beam: each of those must be an option Beam knows."""
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    beam_options.check_known(beam_args, parser)
    if not args.input and not args.streaming and not args.retry_failed:
        parser.error("the following arguments are required: --input")
    return args, beam_args


def parse_as_of(text: str | None) -> dt.date:
    if text is None:
        return dt.datetime.now(dt.timezone.utc).date()
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--as-of {text!r} is not a date YYYY-MM-DD") from None


def resolve_partner(args: argparse.Namespace, beam_args: list[str] | None = None) -> tuple[PartnerConfig, str]:
    """The partner file, with the options that change it; a job-wide rate cap becomes each SDK process's share."""
    if args.partner_config:
        partner, source = load(args.partner_config), args.partner_config
    else:
        name = args.partner or "default"
        partner, source = load_named(name), f"partner_options/{name}.yaml"
    partner = partner.with_endpoint_url(args.endpoint_url).with_auth_secret(args.auth_secret)
    if partner.calls.job_rate_limit_per_s:
        partner = partner.with_process_share(sdk_processes.max_sdk_processes(PipelineOptions(beam_args or [])))
    partner.auth_headers()  # a missing secret is a start-up error, not 10,000 failed calls
    return partner, source


def _local(pattern: str) -> str:
    return pattern if "://" in pattern else os.path.abspath(pattern)


def run(argv: list[str] | None = None) -> tuple[int, dict | None]:
    """Run the job; returns the exit code and the run summary as run.json holds it.

    A launch that does not wait (``--detach``, a Flex Template's) returns the job record instead
    (job.json: where the job runs). The summary is None when the run's accounting did not close
    (exit 1: the error is logged).
    """
    start = launch.Start.now()
    args, beam_args = parse_args(argv)
    if args.detach:
        jobs.check_detachable(PipelineOptions(beam_args), streaming=args.streaming)
    # Logs reach stderr only once the checks have passed: a usage or input error is one line (docs/contract.md).
    previous = retry.apply_previous(args) if args.retry_failed else None
    partner, partner_source = resolve_partner(args, beam_args)
    as_of = parse_as_of(args.as_of)
    if previous is not None:
        return retry.run(args, beam_args, previous, partner, partner_source, start)
    if args.streaming:
        logs.configure(args.log_level, args.log_format)
        launch.say_notices(partner.notices())
        return streaming.run(args, beam_args, partner, partner_source, as_of if args.as_of else None, start)
    return run_batch(args, beam_args, partner, partner_source, as_of, start)


def run_batch(args: argparse.Namespace, beam_args: list[str], partner: PartnerConfig, partner_source: str,
              as_of: dt.date, start: launch.Start) -> tuple[int, dict | None]:
    """The batch job: check inputs, output and endpoints, then run it; the job accounts for every row and
    publishes itself (beam_pipeline/finalize.py)."""
    patterns = [_local(p) for p in args.input]
    files, layouts = inputs.inspect_inputs(patterns, partner, partner_source)
    dead_letter_max = dead_letter_limit.limit_for(args.max_dead_letter_ratio, partner)
    if dataflow.runs_on_dataflow(PipelineOptions(beam_args)) and not args.features_only:
        preflight.check_workers_can_reach(partner)
    launch.check_output(args.output, args.overwrite, beam_args)
    if args.incremental_from and args.reader != BLOCKS:
        raise ConfigError("usage: --incremental-from folds into the state with the blocks reader; drop --reader lines")
    if args.changed_only and (args.features_only or not args.incremental_from):
        raise ConfigError("usage: --changed-only needs --incremental-from and endpoint calls (not --features-only)")
    state = incremental.plan([(f.path, f.size_bytes, f.generation) for f in files], partner.name, args.output,
                             args.incremental_from)
    if not (args.skip_preflight or args.features_only):
        preflight.check_endpoints(partner)
    logs.configure(args.log_level, args.log_format)
    launch.say_notices(partner.notices())

    launched = launch.prepare(PipelineOptions(beam_args), partner.name, args.output, start, as_of=as_of.isoformat(),
                              detach=args.detach)
    fields = summary.launch_fields(launched, partner, partner_source, as_of.isoformat(), files, vars(args),
                                   incremental_from=state.base and (state.base.manifest.run_id, state.base.output))
    accountant = incremental.StateAccountant(BatchAccountant(), state, launched.run_id, as_of.isoformat(),
                                             partner.name, launched.staging)
    plan = RunPlan(launched.run_id, launched.output, launched.staging, args.overwrite, fields, accountant,
                   dead_letter_max)
    job = JobConfig(tuple(files), layouts, partner, as_of, launched.staging, features_only=args.features_only,
                    reader=args.reader, shards=shards_for(inputs.estimated_bytes(files) + state.base_bytes), plan=plan,
                    base_state=state.base_paths, carry_from=state.base.output if args.changed_only else None)
    total_bytes = sum(f.size_bytes for f in files)
    log.info("run %s: partner=%s input=%s (%d file(s), %s bytes) output=%s as_of=%s runner=%s",
             launched.run_id, partner.name, ",".join(patterns), len(files), f"{total_bytes:,}", launched.output,
             as_of, launched.runner)

    engine = make_runner(launched.options)
    pipeline = beam.Pipeline(runner=engine, options=launched.options)
    build_pipeline(pipeline, job)
    progress.reset()
    # Only a local run can see live counts (transforms/progress.py); Dataflow shows its own.
    heartbeat_s = args.heartbeat_seconds if engine is not None else 0
    job = launch.submission(launched)
    with Heartbeat(heartbeat_s, total_bytes, live=_in_process(launched.options)):
        result, failure = launch.run_job(pipeline, launched, job)
    if launched.detached and failure is None:
        return launch.submitted(launched, job)
    return summary.conclude(launched, result, failure)


def _in_process(options: PipelineOptions) -> bool:
    """Whether the local runner's workers share this process (and so transforms/progress.py)."""
    return options.view_as(DirectOptions).direct_running_mode != "multi_processing"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["wait"]:
        return wait.main(argv[1:])
    try:
        code, run_summary = run(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return launch.EXIT_USAGE
    except AccountingError as exc:
        log.error("%s", exc)
        return launch.EXIT_UNEXPECTED
    except Exception as exc:  # the one place that turns a crash into exit 1 (logged with its traceback)
        failed_input = input_failure(exc)
        if failed_input is None:
            log.exception("run failed")
        else:  # an input failed the read (the job publishes nothing): one line, as a launch check's
            log.debug("run failed", exc_info=True)
            print(f"error: {failed_input}; the run was not published", file=sys.stderr)
        return launch.EXIT_UNEXPECTED
    if run_summary is not None:
        print(format_summary(run_summary))
        if code == launch.EXIT_TOO_MANY_DEAD_LETTERS:
            print(f"error: {run_summary['error']}", file=sys.stderr)
    return code


def input_failure(exc: BaseException) -> str | None:
    """The line of an input that failed the job's read (truncated, replaced), or None for any other failure.

    The local runner raises the worker's exception; runners that run workers elsewhere raise their own
    error with the worker's traceback in its text, whose last line names the input.
    """
    seen = exc
    while seen is not None:
        if isinstance(seen, (InputTruncated, InputChanged)):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    for kind in (InputTruncated, InputChanged):
        marker = f"{kind.__name__}: "
        lines = [line for line in str(exc).splitlines() if marker in line and "input " in line]
        if lines:
            return lines[-1].split(marker, 1)[1].strip()
    return None
