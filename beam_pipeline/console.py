"""What a run prints when it ends: a few lines on where its outputs are and how every row and member went.

Read from the run's summary as run.json holds it, so the console and the file
never disagree. A usage error is one line too (:class:`OneLineParser`).
"""
from __future__ import annotations

import argparse

from beam_pipeline import dead_letter_limit
from lantern.errors import ConfigError
from lantern.job_record import JobRecord


def format_submitted(record: JobRecord) -> str:
    """What a launch that does not wait prints: the job, where its run will appear, how to wait for it."""
    staging = record.output.rstrip("/") + f"/_staging-{record.run_id}"
    return (
        f"submitted: run {record.run_id}, {record.where()}\n"
        f"outputs: {record.output} once the run is published (run.json last); a run held back stays in {staging}\n"
        f"wait for it: python -m beam_pipeline wait {record.output}"
    )


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are a ConfigError: one line on stderr and exit 2, not the usage text."""

    def error(self, message: str):
        raise ConfigError(f"usage: {message} (see --help)")


def format_summary(s: dict) -> str:
    """The console summary of a batch, retry or streaming run, or of a job submitted and not waited for."""
    if s.get("streaming"):
        return _streaming(s)
    if "accounting" not in s and "launcher" in s:
        return format_submitted(JobRecord.model_validate(s))
    acc = s["accounting"]
    offers = ", ".join(f"{k} {v}" for k, v in s["offers"].items()) or "none"
    where = s["output"] if s.get("published", True) else f"{s['staging']} (NOT published: too many dead letters)"
    limit = s.get("dead_letter_limit")
    note = limit and dead_letter_limit.note(dead_letter_limit.Verdict(**limit))
    retried = f"\n{retry_line(s)}" if s.get("retry_of") else ""
    state = "state/, " if s.get("state") else ""  # every batch run's member state; a retry holds none
    return (
        f"outputs: {where} (results/, dead_letter/, metrics/, {state}run.json)\n"
        f"rows read {acc['rows_read']}: {acc['transactions']} transactions, {acc['member_only_rows']} "
        f"member-only, {acc['dead_letter_rows']} dead letters{f' ({note})' if note else ''}\n"
        f"members {acc['members']}: {acc['members_ok']} OK, {acc['members_no_transactions']} "
        f"NO_TRANSACTIONS, {acc['members_failed']} FAILED\n"
        f"offers: {offers}\n"
        f"wall time: {s['wall_seconds']:.1f}s{retried}"
    )


def retry_line(s: dict) -> str:
    """What a ``--retry-failed`` run did, in one line."""
    acc = s["accounting"]
    if not acc["members_retried"]:
        return (f"retry of {s['retry_of']}: nothing to retry (no FAILED member); "
                f"{acc['members_carried_over']:,} members carried over")
    return (f"retry of {s['retry_of']}: {acc['members_carried_over']:,} members carried over, "
            f"{acc['members_retried']:,} retried: {acc['members_retried_ok']:,} OK, "
            f"{acc['members_still_failed']:,} still FAILED")


def _streaming(s: dict) -> str:
    if "accounting" not in s:  # a live stream: started, never finished here
        return f"streaming job {s['run_id']} on {s['runner']}: results in {s['output']}"
    acc = s["accounting"]
    lat = s["txn_to_offer_ms"]
    return (
        f"outputs: {s['output']} (results/, dead_letter/, metrics/, run.json)\n"
        f"rows replayed {acc['rows_replayed']}: {acc['transactions']} transactions, {acc['member_only_rows']} "
        f"member-only, {acc['dead_letter_rows']} dead letters\n"
        f"updates {acc['updates']} for {acc['members']} members: {acc['updates_ok']} OK, "
        f"{acc['updates_no_transactions']} NO_TRANSACTIONS, {acc['updates_failed']} FAILED\n"
        f"transaction -> offer latency ms: p50 {lat.get('p50')}, p95 {lat.get('p95')}, p99 {lat.get('p99')}\n"
        f"wall time: {s['wall_seconds']:.1f}s"
    )


def step_line(step: dict) -> str:
    """One step of run.json in a log line: elements, seconds and throughput."""
    text = f"step {step['name']}: {step['elements']:,} {step['unit']}"
    if step["seconds"] is None:
        return text + " (time not reported by this runner)"
    rate = f", {step['per_second']:,.0f} {step['unit']}/s" if step["per_second"] else ""
    return text + f" in {step['seconds']:.3f}s{rate}"
