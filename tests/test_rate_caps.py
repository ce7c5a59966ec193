"""Rate caps hold where the docs say: per SDK process across its threads, and job-wide across processes.

Measured against a real uvicorn server on loopback, from the times the server saw the
requests arrive: calls per second over the run = (calls - 1) / (last - first).
"""
from __future__ import annotations

import json
import urllib.request

import pytest

from beam_pipeline import cli, generate
from tests.conftest import uvicorn_server, write_partner

CAP = 100  # calls per second
TOLERANCE = 1.10  # the target: at most 110 calls/s


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """~120 members with transactions: ~350 calls, 3.5 s at the cap."""
    path = tmp_path_factory.mktemp("rate") / "export.csv"
    with open(path, "w", encoding="utf-8", newline="") as out:
        generate.write(out, 600, seed=8)
    return path


def calls_per_second(calls, export, tmp_path, beam_args) -> tuple[float, int]:
    with uvicorn_server("tests.arrivals_service:app") as url:
        partner = write_partner(tmp_path, url, concurrency=16, **calls)
        code = cli.main(["--input", str(export), "--output", str(tmp_path / "out"), "--partner-config", str(partner),
                         "--as-of", "2026-11-24", "--log-level", "WARNING", "--heartbeat-seconds", "0", *beam_args])
        with urllib.request.urlopen(url + "/_arrivals") as answer:  # noqa: S310 - our own loopback server
            arrivals = sorted(json.load(answer))
    assert code == 0
    return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]), len(arrivals)


def test_the_process_cap_holds_across_four_threads(export, tmp_path):
    rate, n = calls_per_second({"rate_limit_per_s": CAP}, export, tmp_path,
                               ["--direct_running_mode", "multi_threading", "--direct_num_workers", "4"])
    assert n > 200
    assert rate <= CAP * TOLERANCE, f"{rate:.0f} calls/s over {n} calls"


def test_the_job_cap_holds_across_two_processes(export, tmp_path):
    rate, n = calls_per_second({"job_rate_limit_per_s": CAP}, export, tmp_path,
                               ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"])
    assert n > 200
    assert rate <= CAP * TOLERANCE, f"{rate:.0f} calls/s over {n} calls"
