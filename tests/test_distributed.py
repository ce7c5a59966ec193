"""The whole job with 2 worker processes gives what the single-process engine gives.

``--direct_running_mode=multi_processing`` pickles every DoFn, CombineFn and
option into separate SDK worker processes and splits the data between them,
which is what Dataflow workers do: an unpicklable step, state kept in a module
global, or a setup() that only works in the launching process fails here.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from apache_beam.runners.portability import local_job_service

from beam_pipeline import cli, launch
from beam_pipeline.generate import main as generate
from transforms.results import TIMING_COLUMNS

TIMING = TIMING_COLUMNS


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("export") / "members.csv"
    generate(["--rows", "400", "--seed", "11", "--out", str(path)])
    with path.open("a") as handle:  # one of each kind of row the generator may leave out
        handle.write(",2021-05-01 10:00:00,buy,100,1.0\n"        # no member id
                     "zz1,not-a-date,buy,100,1.0\n"              # bad timestamp
                     "zz2,2021-05-01 10:00:00,gift,5\n"          # a field short
                     "zz3,,,,\n")                                # member without transactions
    return path


def run_job(export: Path, out: Path, server_url: str, *beam_args: str) -> dict:
    code, summary = cli.run([
        "--input", str(export), "--output", str(out), "--as-of", "2026-11-24",
        "--endpoint-url", server_url, "--log-level", "WARNING", *beam_args,
    ])
    assert code == launch.EXIT_OK
    return summary


def table(out: Path, part: str, key: list[str]) -> list[dict]:
    """Every row of one output, timing columns left out (wall times differ run to run)."""
    data = pq.read_table(out / part)
    rows = data.drop_columns([c for c in TIMING if c in data.column_names]).to_pylist()
    return sorted(rows, key=lambda r: [str(r[k]) for k in key])


def test_two_worker_processes_give_the_single_process_results(export, tmp_path, server_url, monkeypatch):
    single = run_job(export, tmp_path / "single", server_url)

    launched = []
    popen = local_job_service.subprocess.Popen

    def recording_popen(cmd, *args, **kwargs):
        launched.append((cmd, kwargs.get("env", {}).get("WORKER_ID")))
        return popen(cmd, *args, **kwargs)

    monkeypatch.setattr(local_job_service.subprocess, "Popen", recording_popen)
    multi = run_job(export, tmp_path / "multi", server_url,
                    "--direct_num_workers=2", "--direct_running_mode=multi_processing")
    workers = {worker for cmd, worker in launched if "sdk_worker_main" in cmd}
    assert len(workers) >= 2, f"expected 2 SDK worker processes, launched: {launched}"

    assert multi["accounting"] == single["accounting"]
    assert single["accounting"]["members_ok"] > 0
    assert single["accounting"]["members_no_transactions"] > 0
    assert single["accounting"]["dead_letter_rows"] >= 3
    assert multi["offers"] == single["offers"]
    assert multi["dead_letter_reasons"] == single["dead_letter_reasons"]
    assert table(tmp_path / "multi", "results", ["MEMBER_ID"]) == table(tmp_path / "single", "results", ["MEMBER_ID"])
    dead_key = ["SOURCE", "RAW_LINE", "REASON"]
    assert table(tmp_path / "multi", "dead_letter", dead_key) == table(tmp_path / "single", "dead_letter", dead_key)
    assert json.loads((tmp_path / "multi" / "run.json").read_text())["accounting"] == multi["accounting"]
