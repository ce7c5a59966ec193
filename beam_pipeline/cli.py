"""``python -m beam_pipeline``: validate everything, run the job, check and publish its outputs.

Exit codes (SPEC §5): 0 all members OK or NO_TRANSACTIONS; 2 a usage, partner
or input error found before the run (one line on stderr, nothing written);
3 the run finished but some members FAILED; 4 the dead letters passed
--max-dead-letter-ratio (one line on stderr, the outputs staged, not published);
1 anything unexpected.
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import time
import uuid

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

from beam_pipeline import (
    dataflow,
    dead_letter_limit,
    inputs,
    logs,
    outputs,
    preflight,
    retry,
    run_folder,
    streaming,
    summary,
)
from beam_pipeline.heartbeat import Heartbeat
from beam_pipeline.pipeline import BLOCKS, READERS, JobConfig, build_pipeline
from beam_pipeline.runners import make_runner, runner_name
from lantern.errors import ConfigError
from lantern.partner import PartnerConfig, load, load_named
from transforms import progress

log = logging.getLogger(__name__)

EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE, EXIT_FAILED_MEMBERS, EXIT_TOO_MANY_DEAD_LETTERS = 0, 1, 2, 3, 4


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise ConfigError(f"usage: {message} (see --help)")


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    # Options with a dash also answer to their underscore spelling: the Flex Template launcher passes
    # template parameters as --as_of=..., and Beam's own options are spelled that way too.
    parser = _ArgumentParser(prog="python -m beam_pipeline", description=__doc__.splitlines()[0],
                             allow_abbrev=False)
    parser.add_argument("--input", action="append",
                        help="export file or glob (local or gs://); repeat for several")
    parser.add_argument("--output", required=True, help="output directory (local or gs://)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run the output folder holds, and everything else in it "
                             "(without it such a folder is refused)")
    parser.add_argument("--max-dead-letter-ratio", "--max_dead_letter_ratio", type=float, metavar="R",
                        help="exit 4, unpublished, when dead letters / rows read exceed R "
                             "(default: the partner's input.max_dead_letter_ratio, 0.05; 1 turns it off)")
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--partner", help="partner name: loads partner_options/NAME.yaml (default: default)")
    who.add_argument("--partner-config", "--partner_config", help="path to a partner YAML file")
    parser.add_argument("--as-of", "--as_of", help="as-of date YYYY-MM-DD (default: today, UTC)")
    parser.add_argument("--endpoint-url", "--endpoint_url", help="replace scheme, host and port of every endpoint")
    parser.add_argument("--auth-secret", "--auth_secret",
                        help="Secret Manager version holding the partner's auth header value, "
                             "read where the partner file's env var is unset (Dataflow workers)")
    parser.add_argument("--features-only", "--features_only", action="store_true",
                        help="compute features, call no endpoint (status FEATURES_ONLY)")
    parser.add_argument("--reader", default=BLOCKS, choices=READERS,
                        help="blocks (default): read, parse and fold exports in blocks of lines; "
                             "lines: one element per line (ReadFromText), the reference path")
    parser.add_argument("--skip-preflight", "--skip_preflight", action="store_true",
                        help="do not check that endpoint hosts answer before the run")
    parser.add_argument("--log-level", default="INFO", choices=logs.LEVELS)
    parser.add_argument("--log-format", default="text", choices=logs.FORMATS,
                        help="text, or json: one JSON object per line (Cloud Logging reads these)")
    parser.add_argument("--heartbeat-seconds", type=float, default=10.0,
                        help="log progress every N seconds during a local run (0: never; default 10)")
    parser.add_argument("--retry-failed", "--retry_failed", metavar="PREVIOUS_OUTPUT",
                        help="call the endpoints again for the FAILED members of this published run only "
                             "and write a complete new output (docs/day-two.md)")
    streaming.add_arguments(parser)
    args, beam_args = parser.parse_known_args(argv)
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


def resolve_partner(args: argparse.Namespace) -> tuple[PartnerConfig, str]:
    if args.partner_config:
        partner, source = load(args.partner_config), args.partner_config
    else:
        name = args.partner or "default"
        partner, source = load_named(name), f"partner_options/{name}.yaml"
    partner = partner.with_endpoint_url(args.endpoint_url).with_auth_secret(args.auth_secret)
    partner.auth_headers()  # a missing secret is a start-up error, not 10,000 failed calls
    return partner, source


def _local(pattern: str) -> str:
    return pattern if "://" in pattern else os.path.abspath(pattern)


def run(argv: list[str] | None = None) -> tuple[int, dict | None]:
    """Run the job; returns the exit code and the run summary.

    The summary is None when a Flex Template launch only submitted the job.
    """
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.monotonic()
    args, beam_args = parse_args(argv)
    # Logs reach stderr only once the checks have passed: a usage or input error is one line (SPEC §5).
    previous = retry.apply_previous(args) if args.retry_failed else None
    partner, partner_source = resolve_partner(args)
    as_of = parse_as_of(args.as_of)
    if previous is not None:
        return retry.run(args, beam_args, previous, partner, partner_source, started, t0)
    if args.streaming:
        logs.configure(args.log_level, args.log_format)
        return streaming.run(args, beam_args, partner, partner_source, as_of if args.as_of else None)
    patterns = [_local(p) for p in args.input]
    files, layouts = inputs.inspect_inputs(patterns, partner, partner_source)
    outputs.check_writable(args.output)
    dead_letter_max = dead_letter_limit.limit_for(args.max_dead_letter_ratio, partner)
    if not dataflow.is_template_launch(PipelineOptions(beam_args)):
        run_folder.check(args.output, args.overwrite)
    if not (args.skip_preflight or args.features_only):
        preflight.check_endpoints(partner)
    logs.configure(args.log_level, args.log_format)

    options = PipelineOptions(beam_args)
    run_id = f"{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    dataflow.prepare(options, partner.name, run_id)
    runner = runner_name(options)
    output = args.output if outputs.is_remote(args.output) else os.path.abspath(args.output)
    if dataflow.is_template_launch(options):
        outputs.check_fresh(output)  # the launcher cannot wait to publish: the job writes in place
        staging = output
    else:
        staging = outputs.staging_dir(output, run_id)
    job = JobConfig(tuple(patterns), layouts, partner, as_of, staging, features_only=args.features_only,
                    reader=args.reader)
    total_bytes = sum(f.size_bytes for f in files)
    log.info("run %s: partner=%s input=%s (%d file(s), %s bytes) output=%s as_of=%s runner=%s",
             run_id, partner.name, ",".join(patterns), len(files), f"{total_bytes:,}", output, as_of, runner)

    engine = make_runner(options)
    pipeline = beam.Pipeline(runner=engine, options=options)
    build_pipeline(pipeline, job)
    progress.reset()
    # Only a local run can see live counts (transforms/progress.py); Dataflow shows its own.
    heartbeat_s = args.heartbeat_seconds if engine is not None else 0
    with Heartbeat(heartbeat_s, total_bytes, live=_in_process(options)):
        result = pipeline.run()
        if dataflow.is_template_launch(options):
            # The Flex Template launcher submits the job after this process exits; nothing can wait here,
            # so there is no metrics/ or run.json: the job page in the console has the counters.
            log.info("run %s: job submitted from a Flex Template; results/ and dead_letter/ appear in %s "
                     "when it finishes", run_id, output)
            return EXIT_OK, None
        result.wait_until_finish()

    rows = summary.metric_rows(result)
    summary.write_metrics(rows, staging)
    results = summary.read_parts(outputs.join(staging, "results"))
    dead = summary.read_parts(outputs.join(staging, "dead_letter"), columns=["REASON"])
    acc = summary.accounting(summary.counter_totals(rows), results, dead)
    verdict = dead_letter_limit.judge(acc, dead_letter_max)
    exit_code = EXIT_FAILED_MEMBERS if acc["members_failed"] else EXIT_OK
    if verdict.exceeded:
        exit_code = EXIT_TOO_MANY_DEAD_LETTERS
    finished = dt.datetime.now(dt.timezone.utc)
    run_summary = {
        "run_id": run_id,
        "partner": partner.name,
        "partner_source": partner_source,
        "partner_features": list(partner.feature_names),
        "as_of": as_of.isoformat(),
        "runner": runner,
        "started_at": started.isoformat(),
        "finished_at": finished.isoformat(),
        "wall_seconds": round(time.monotonic() - t0, 3),
        "exit_code": exit_code,
        "accounting": acc,
        "offers": _offer_counts(results),
        "dead_letter_reasons": _value_counts(dead, "REASON"),
        "dead_letter_limit": verdict.as_json(),
        "steps": summary.steps(rows, acc),
        "latency_ms": summary.latency_percentiles(results),
        "requests": summary.requests(rows),
        "inputs": [{"path": f.path, "size_bytes": f.size_bytes} for f in files],
        "output": output,
        "options": {
            "endpoint_base_url": summary.redact({"url": partner.endpoints.base_url})["url"],
            "cli": summary.redact(vars(args)),
            "pipeline": summary.redact(options.get_all_options(drop_default=True, retain_unknown_options=True)),
        },
        "versions": summary.package_versions(),
    }
    for step in run_summary["steps"]:
        log.info("%s", summary.step_line(step), extra={"step": step})
    if verdict.exceeded:
        return exit_code, dead_letter_limit.hold_back(run_summary, verdict, staging)
    outputs.write_json(outputs.join(staging, outputs.RUN_JSON), run_summary)
    if args.overwrite:
        run_folder.clear(output, keep=staging)
    outputs.publish(staging, output)
    log.info("run %s finished in %.1fs: %s", run_id, run_summary["wall_seconds"],
             format_summary(run_summary).replace("\n", "; "), extra={"accounting": acc})
    return exit_code, run_summary


def _in_process(options: PipelineOptions) -> bool:
    """Whether the local runner's workers share this process (and so transforms/progress.py)."""
    return options.view_as(DirectOptions).direct_running_mode != "multi_processing"


def _value_counts(table, column: str) -> dict:
    counts: dict = {}
    for value in table.column(column).to_pylist():
        counts[value] = counts.get(value, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: str(kv[0])))


def _offer_counts(results) -> dict:
    return {k: v for k, v in _value_counts(results, "OFFER").items() if k is not None}


def format_summary(s: dict) -> str:
    if s.get("streaming"):
        return streaming.format_summary(s)
    acc = s["accounting"]
    offers = ", ".join(f"{k} {v}" for k, v in s["offers"].items()) or "none"
    where = s["output"] if s.get("published", True) else f"{s['staging']} (NOT published: too many dead letters)"
    limit = s.get("dead_letter_limit")
    warning = limit and dead_letter_limit.warning(dead_letter_limit.Verdict(**limit))
    retried = f"\n{retry.format_line(s)}" if s.get("retry_of") else ""
    return (
        f"outputs: {where} (results/, dead_letter/, metrics/, run.json)\n"
        f"rows read {acc['rows_read']}: {acc['transactions']} transactions, {acc['member_only_rows']} "
        f"member-only, {acc['dead_letter_rows']} dead letters{f' ({warning})' if warning else ''}\n"
        f"members {acc['members']}: {acc['members_ok']} OK, {acc['members_no_transactions']} "
        f"NO_TRANSACTIONS, {acc['members_failed']} FAILED\n"
        f"offers: {offers}\n"
        f"wall time: {s['wall_seconds']:.1f}s{retried}"
    )


def main(argv: list[str] | None = None) -> int:
    try:
        code, run_summary = run(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except summary.AccountingError as exc:
        log.error("%s", exc)
        return EXIT_UNEXPECTED
    except Exception:  # the one place that turns a crash into exit 1 (logged with its traceback)
        log.exception("run failed")
        return EXIT_UNEXPECTED
    if run_summary is not None:
        print(format_summary(run_summary))
        if code == EXIT_TOO_MANY_DEAD_LETTERS:
            print(f"error: {run_summary['error']}", file=sys.stderr)
    return code
