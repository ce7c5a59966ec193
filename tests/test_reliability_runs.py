"""Whole runs of the CLI against the real reference service with faults injected, and output safety.

Every run here must end with the accounting closed and every member in exactly
one results row, whatever the endpoints did.
"""
from __future__ import annotations

import json
import re
import shutil
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from beam_pipeline import accounting, cli, preflight
from tests.broken_server import BrokenServer
from tests.conftest import free_port, uvicorn_process, uvicorn_server, write_partner
from transforms.results import TIMING_COLUMNS

AS_OF = "2026-11-24"
# Latency and attempts differ between runs by nature; everything else must not.
HTTP_503 = 'HTTP 503: {"detail": "injected fault: HTTP 503"}'
VOLATILE = (*TIMING_COLUMNS, "ATTEMPTS")



def run(export: Path, output: Path, partner: Path, *extra: str) -> tuple[int, dict | None, list[dict]]:
    code = cli.main(["--input", str(export), "--output", str(output), "--partner-config", str(partner),
                     "--as-of", AS_OF, "--log-level", "WARNING", *extra])
    run_json = output / "run.json"
    if not run_json.exists():
        return code, None, []
    rows = pq.read_table(output / "results").to_pylist()
    return code, json.loads(run_json.read_text()), sorted(rows, key=lambda r: r["MEMBER_ID"])


def stable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in VOLATILE} for row in rows]


def assert_consistent(run_summary: dict, rows: list[dict], output: Path) -> None:
    """The published outputs agree with each other and account for every row and member."""
    acc = run_summary["accounting"]
    assert acc["rows_read"] == acc["transactions"] + acc["member_only_rows"] + acc["dead_letter_rows"]
    assert acc["members"] == len(rows) == len({r["MEMBER_ID"] for r in rows})
    assert acc["members"] == acc["members_ok"] + acc["members_no_transactions"] + acc["members_failed"]
    assert pq.read_table(output / "dead_letter").num_rows == acc["dead_letter_rows"]
    assert not list(output.glob("_staging-*"))
    for row in rows:
        assert (row["STATUS"] == "FAILED") == (row["ERROR"] is not None)
        assert (row["STATUS"] == "OK") == (row["OFFER"] is not None)


@pytest.fixture(scope="module")
def baseline_run(export, server_url, tmp_path_factory):
    """A run against the healthy service: its results rows and output folder."""
    work = tmp_path_factory.mktemp("baseline")
    code, run_summary, rows = run(export, work / "out", write_partner(work, server_url))
    assert code == 0
    assert_consistent(run_summary, rows, work / "out")
    assert run_summary["accounting"]["members_failed"] == 0
    assert run_summary["accounting"]["members_no_transactions"] > 0
    assert run_summary["accounting"]["dead_letter_rows"] > 0
    return rows, work / "out"


@pytest.fixture(scope="module")
def baseline(baseline_run):
    """What every faulty run should converge to."""
    return baseline_run[0]


def test_20pct_500s_and_timeouts_end_ok_after_retries(export, baseline, tmp_path):
    env = {"FAULT_RATE": "0.2", "FAULT_STATUS": "500", "FAULT_LATENCY_MS": "800", "FAULT_LATENCY_RATE": "0.05"}
    with uvicorn_server(env=env) as url:
        partner = write_partner(tmp_path, url, retries=10, read_timeout_s=0.3)
        code, run_summary, rows = run(export, tmp_path / "out", partner)
    assert code == 0
    assert_consistent(run_summary, rows, tmp_path / "out")
    assert stable(rows) == stable(baseline)
    called = [r for r in rows if r["STATUS"] == "OK"]
    assert sum(r["ATTEMPTS"] for r in called) > 3 * len(called)  # retries happened
    metrics = pq.read_table(tmp_path / "out" / "metrics").to_pylist()
    retries = sum(m["VALUE"] for m in metrics if m["NAME"].startswith("retries_"))
    assert retries == sum(r["ATTEMPTS"] for r in called) - 3 * len(called)


def test_one_endpoint_failing_fails_every_member_with_the_reason_and_exit_3(export, baseline, tmp_path):
    with uvicorn_server(env={"FAULT_RATE": "1", "FAULT_STATUS": "503", "FAULT_PATHS": "/ml/resp"}) as url:
        code, run_summary, rows = run(export, tmp_path / "out", write_partner(tmp_path, url, retries=2))
    assert code == 3
    assert run_summary["exit_code"] == 3
    assert_consistent(run_summary, rows, tmp_path / "out")
    assert [r["MEMBER_ID"] for r in rows] == [r["MEMBER_ID"] for r in baseline]
    for row, base in zip(rows, baseline):
        if base["STATUS"] == "NO_TRANSACTIONS":
            assert row["STATUS"] == "NO_TRANSACTIONS" and row["ATTEMPTS"] == 0
            continue
        assert row["STATUS"] == "FAILED"
        assert row["ATS_PREDICTION"] == base["ATS_PREDICTION"]
        assert row["OFFER"] is None
        if row["ATTEMPTS"] == 1 + 3:  # ATS once, RESP 1 + 2 retries, no offer call
            assert row["ERROR"] == f"resp: {HTTP_503}"
        else:  # RESP held back by the client-side throttler: not sent at all
            assert row["ATTEMPTS"] == 1
            assert row["ERROR"] == f"resp: not sent: most calls are failing (last: {HTTP_503})"
    metrics = {m["NAME"]: m["VALUE"] for m in pq.read_table(tmp_path / "out" / "metrics").to_pylist()
               if m["KIND"] == "counter"}
    failed = run_summary["accounting"]["members_failed"]
    assert metrics["requests_resp_http_error"] + metrics["requests_resp_throttled"] == failed
    assert metrics["requests_resp_throttled"] > 0
    assert metrics["requests_ats_ok"] == failed
    assert metrics.get("requests_offer_ok", 0) == 0


BATCH_ROUTES = {
    "batch": True, "max_batch_size": 4,  # about 14 requests per route for the 54 members
    **{kind: {"path": path, "batch_path": path + "/batch"}
       for kind, path in (("ats", "/ml/ats/predict"), ("resp", "/ml/resp/predict"), ("offer", "/offer/assign"))},
}


def test_batch_routes_with_20pct_500s_end_ok_after_retries(export, baseline, tmp_path):
    with uvicorn_server(env={"FAULT_RATE": "0.2", "FAULT_STATUS": "500"}) as url:
        partner = write_partner(tmp_path, url, endpoints=BATCH_ROUTES, retries=10)
        code, run_summary, rows = run(export, tmp_path / "out", partner)
    assert code == 0
    assert_consistent(run_summary, rows, tmp_path / "out")
    assert stable(rows) == stable(baseline)
    assert max(r["ATTEMPTS"] for r in rows) > 3  # some of the ~42 requests were retried (P(none) < 1e-4)


def test_a_failing_batch_route_fails_its_members_with_the_reason(export, baseline, tmp_path):
    with uvicorn_server(env={"FAULT_RATE": "1", "FAULT_STATUS": "503", "FAULT_PATHS": "/offer/assign/batch"}) as url:
        partner = write_partner(tmp_path, url, endpoints=BATCH_ROUTES, retries=1)
        code, run_summary, rows = run(export, tmp_path / "out", partner)
    assert code == 3
    assert_consistent(run_summary, rows, tmp_path / "out")
    for row, base in zip(rows, baseline, strict=True):
        if base["STATUS"] == "NO_TRANSACTIONS":
            assert row["STATUS"] == "NO_TRANSACTIONS"
            continue
        assert row["STATUS"] == "FAILED"
        assert row["ERROR"] in (f"offer: {HTTP_503}", f"offer: not sent: most calls are failing (last: {HTTP_503})")
        assert (row["ATS_PREDICTION"], row["RESP_PREDICTION"]) == (base["ATS_PREDICTION"], base["RESP_PREDICTION"])


def test_killing_the_server_mid_run_fails_the_rest_and_keeps_outputs_whole(export, baseline, tmp_path):
    """The server is killed once it has answered 24 calls; the run carries on without it."""
    log = tmp_path / "access.log"
    stop = threading.Event()
    with uvicorn_process(env={"FAULT_LATENCY_MS": "40"}, access_log=log) as (url, proc):

        def kill_after_24_calls():
            while not stop.is_set():
                if log.read_bytes().count(b'"POST ') >= 24:
                    proc.kill()
                    return
                time.sleep(0.01)

        watcher = threading.Thread(target=kill_after_24_calls, daemon=True)
        watcher.start()
        partner = write_partner(tmp_path, url, retries=2, concurrency=2)
        try:
            code, run_summary, rows = run(export, tmp_path / "out", partner)
        finally:
            stop.set()
            watcher.join()
        assert proc.poll() is not None, "the run ended before the server was killed"
    assert code == 3
    assert_consistent(run_summary, rows, tmp_path / "out")
    assert [r["MEMBER_ID"] for r in rows] == [r["MEMBER_ID"] for r in baseline]
    statuses = {r["STATUS"] for r in rows}
    assert statuses == {"OK", "FAILED", "NO_TRANSACTIONS"}
    for row, base in zip(stable(rows), stable(baseline)):
        if row["STATUS"] == "FAILED":
            for error in row["ERROR"].split("; "):
                assert re.fullmatch(r"(ats|resp|offer): (not sent: most calls are failing \(last: )?"
                                    r"ConnectionError: (connection refused|connection lost: .*)\)?", error), error
        else:
            assert row == base


def test_unreachable_endpoint_stops_before_the_run(export, tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}"
    code, run_summary, _ = run(export, tmp_path / "out", write_partner(tmp_path, url))
    assert code == 2
    assert capsys.readouterr().err == (
        f"error: cannot reach ATS endpoint {url}/ml/ats/predict: connection refused; {preflight.HOW_TO_FIX}\n"
    )
    assert not (tmp_path / "out").exists()


def test_a_crashed_run_publishes_nothing_and_keeps_the_previous_outputs(
        export, server_url, baseline_run, tmp_path, monkeypatch):
    baseline, baseline_output = baseline_run
    out = tmp_path / "out"
    shutil.copytree(baseline_output, out)
    first = json.loads((out / "run.json").read_text())

    import transforms.results as results

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(results, "result_row", broken)
    code, after, rows = run(export, out, write_partner(tmp_path, server_url), "--overwrite")
    assert code == 1
    assert after["run_id"] == first["run_id"]  # the previous run's outputs are untouched
    assert stable(rows) == stable(baseline)
    assert len(list(out.glob("_staging-*"))) == 1  # the crashed run's partial files stay aside


def test_an_accounting_violation_fails_loudly_and_publishes_nothing(export, server_url, tmp_path, monkeypatch,
                                                                    caplog):
    real = accounting.BatchAccountant.account

    def one_row_lost(self, facts, written):
        facts[accounting.ROWS]["rows_read"] += 1
        return real(self, facts, written)

    monkeypatch.setattr(accounting.BatchAccountant, "account", one_row_lost)
    code, run_summary, _ = run(export, tmp_path / "out", write_partner(tmp_path, server_url))
    assert code == 1
    assert run_summary is None and not (tmp_path / "out" / "results").exists()
    assert "accounting does not close: rows_read" in caplog.text
    staged = json.loads(next((tmp_path / "out").glob("_staging-*/run.json")).read_text())
    assert staged["exit_code"] == 1 and staged["published"] is False
    assert staged["error"].startswith("accounting does not close: rows_read")


def test_accounting_catches_a_member_without_a_results_row():
    facts = {accounting.ROWS: {"rows_read": 4, "transactions": 2, "member_only_rows": 1, "dead_letter_rows": 1},
             accounting.MEMBERS_WITH_FEATURES: 2, accounting.DEAD_LETTER_REASONS: {"BAD_NUMBER": 1},
             accounting.RESULT_STATS: {"rows": 2, "statuses": {"OK": 1, "FAILED": 1}, "offers": {}, "latency_ms": {}}}
    written = {accounting.RESULTS: 2, accounting.DEAD_LETTER_FILES: 1}
    accounts = accounting.BatchAccountant().account(facts, written)
    assert accounts.problems == [] and accounts.accounting["members_failed"] == 1
    facts[accounting.MEMBERS_WITH_FEATURES] = 3
    assert accounting.BatchAccountant().account(facts, written).problems == [
        "3 members had features but 2 results rows were written"]


@pytest.mark.parametrize("mode, reason", [
    ("reset", r"ConnectionError: connection lost: .*"),
    ("garbage", r"ConnectionError: bad HTTP answer: .*"),
    ("hang", r"ConnectionError: read timeout"),
])
def test_an_endpoint_that_resets_hangs_or_answers_garbage_fails_every_member_and_exit_3(
        export, baseline, tmp_path, mode, reason):
    with BrokenServer(mode) as server:
        partner = write_partner(tmp_path, server.url, retries=1, read_timeout_s=0.2)
        code, run_summary, rows = run(export, tmp_path / "out", partner)
    assert code == 3
    assert_consistent(run_summary, rows, tmp_path / "out")
    assert [r["MEMBER_ID"] for r in rows] == [r["MEMBER_ID"] for r in baseline]  # no member lost
    for row, base in zip(rows, baseline, strict=True):
        if base["STATUS"] == "NO_TRANSACTIONS":
            assert row["STATUS"] == "NO_TRANSACTIONS"
            continue
        assert row["STATUS"] == "FAILED" and row["OFFER"] is None
        for error in row["ERROR"].split("; "):
            assert re.fullmatch(rf"(ats|resp): (not sent: most calls are failing \(last: )?{reason}\)?", error), error
    assert all(limit["min"] >= 1 for limit in run_summary["concurrency_limit"].values())
