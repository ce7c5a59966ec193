"""``--retry-failed``: a run whose RESP route failed, finished by a retry against the healthy service.

The runs are real: the CLI against uvicorn serving ``app.py``, the failing route
made to fail by fault injection. One failed run and one clean run of the same
small export are shared by the module's tests.
"""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import apache_beam as beam
import jsonschema
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline import cli, retry
from beam_pipeline.pipeline import DEAD_LETTER_FILES, DEAD_LETTER_REASONS, RESULT_STATS, RESULTS
from lantern.errors import ConfigError
from lantern.features import SPEC_FEATURES
from lantern.member_fingerprint import of_ids
from lantern.partner import load
from tests.conftest import free_port, uvicorn_server, write_partner
from transforms.previous_results import READ_MEMBERS, RETRY, SplitPreviousResultsFn
from transforms.results import TIMING_COLUMNS, feature_columns, result_row, results_schema
from transforms.run_counts import MemberFingerprintFn, ResultStatsFn

AS_OF = "2026-11-24"
VOLATILE = (*TIMING_COLUMNS, "ATTEMPTS")
RUN_SCHEMA = json.loads((Path(retry.__file__).parent / "schemas" / "run.schema.json").read_text())
RESP_DOWN = {"FAULT_RATE": "1", "FAULT_STATUS": "503", "FAULT_PATHS": "/ml/resp"}


def main(*argv: str) -> int:
    return cli.main([*argv, "--log-level", "WARNING", "--heartbeat-seconds", "0"])


def published(output: Path) -> tuple[dict, list[dict]]:
    rows = pq.read_table(output / "results").to_pylist()
    return json.loads((output / "run.json").read_text()), sorted(rows, key=lambda r: r["MEMBER_ID"])


def stable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in VOLATILE} for row in rows]


def dead_letters(output: Path) -> list[dict]:
    return sorted(pq.read_table(output / "dead_letter").to_pylist(), key=lambda r: (r["RAW_LINE"], r["SOURCE"]))



@pytest.fixture(scope="module")
def resp_down_url():
    with uvicorn_server(env=RESP_DOWN) as url:
        yield url


@pytest.fixture(scope="module")
def failed_run(export, resp_down_url, tmp_path_factory) -> Path:
    """The export run while the RESP route answers 503 to everything."""
    work = tmp_path_factory.mktemp("failed")
    partner = write_partner(work, resp_down_url, retries=1)
    code = main("--input", str(export), "--output", str(work / "out"), "--partner-config", str(partner),
                "--as-of", AS_OF)
    assert code == 3
    return work / "out"


@pytest.fixture(scope="module")
def clean_run(export, server_url, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("clean")
    code = main("--input", str(export), "--output", str(work / "out"), "--partner-config",
                str(write_partner(work, server_url)), "--as-of", AS_OF)
    assert code == 0
    return work / "out"


@pytest.fixture(scope="module")
def retried(failed_run, server_url, tmp_path_factory):
    """--retry-failed of the failed run against the healthy service: (exit code, stdout, output)."""
    output = tmp_path_factory.mktemp("retried") / "out"
    code = main("--retry-failed", str(failed_run), "--output", str(output), "--endpoint-url", server_url)
    return code, output


def test_a_run_with_the_resp_route_down_fails_every_member_with_transactions(failed_run):
    run_summary, rows = published(failed_run)
    acc = run_summary["accounting"]
    assert run_summary["exit_code"] == 3 and acc["members_ok"] == 0
    assert acc["members_failed"] == acc["members"] - acc["members_no_transactions"] > 0
    assert run_summary["partner_features"] == list(SPEC_FEATURES)
    assert all(r["ERROR"].startswith("resp: ") for r in rows if r["STATUS"] == "FAILED")


def test_retry_against_the_healthy_service_equals_a_clean_run(retried, failed_run, clean_run):
    code, output = retried
    assert code == 0
    run_summary, rows = published(output)
    clean_summary, clean_rows = published(clean_run)
    assert stable(rows) == stable(clean_rows)  # value for value, features and predictions included
    assert dead_letters(output) == dead_letters(clean_run)
    before_summary, before_rows = published(failed_run)
    carried = {r["MEMBER_ID"]: r for r in before_rows if r["STATUS"] != "FAILED"}
    assert [r for r in rows if r["MEMBER_ID"] in carried] == [carried[m] for m in sorted(carried)]  # unchanged
    assert all(r["ATTEMPTS"] >= 3 for r in rows if r["STATUS"] == "OK")  # fresh calls, fresh attempts
    jsonschema.validate(run_summary, RUN_SCHEMA)
    assert run_summary["retry_of"] == before_summary["run_id"]
    assert run_summary["exit_code"] == 0 and not list(output.glob("_staging-*"))
    assert (run_summary["partner"], run_summary["as_of"]) == (before_summary["partner"], AS_OF)
    acc, before = run_summary["accounting"], before_summary["accounting"]
    assert acc["members_retried"] == before["members_failed"] == acc["members_retried_ok"]
    assert acc["members_still_failed"] == acc["members_failed"] == 0
    assert acc["members_carried_over"] + acc["members_retried"] == acc["members"] == before["members"]
    assert acc["rows_read"] == acc["transactions"] + acc["member_only_rows"] + acc["dead_letter_rows"]
    for key in ("rows_read", "transactions", "member_only_rows", "dead_letter_rows", "members_no_transactions",
                "members_ok"):
        assert acc[key] == clean_summary["accounting"][key], key
    assert run_summary["offers"] == clean_summary["offers"]
    assert run_summary["dead_letter_reasons"] == clean_summary["dead_letter_reasons"]
    assert run_summary["latency_ms"]["resp"]["count"] == acc["members_retried"]
    assert run_summary["requests"]["resp"]["ok"] == acc["members_retried"]


def test_retry_while_the_route_is_still_down_exits_3_with_every_member_still_failed(
        failed_run, resp_down_url, tmp_path, capsys):
    code = main("--retry-failed", str(failed_run), "--output", str(tmp_path / "out"), "--endpoint-url", resp_down_url)
    assert code == 3
    run_summary, rows = published(tmp_path / "out")
    acc = run_summary["accounting"]
    assert acc["members_still_failed"] == acc["members_retried"] == acc["members_failed"] > 0
    assert Counter(r["STATUS"] for r in rows) == Counter(r["STATUS"] for r in published(failed_run)[1])
    assert f"{acc['members_retried']} retried: 0 OK, {acc['members_failed']} still FAILED" in capsys.readouterr().out


def test_retrying_a_run_with_nothing_failed_is_a_no_op_that_says_so(clean_run, tmp_path, capsys):
    nobody = f"http://127.0.0.1:{free_port()}"  # no endpoint is needed: nothing is called
    code = main("--retry-failed", str(clean_run), "--output", str(tmp_path / "out"), "--endpoint-url", nobody)
    assert code == 0
    assert "nothing to retry (no FAILED member)" in capsys.readouterr().out
    run_summary, rows = published(tmp_path / "out")
    assert rows == published(clean_run)[1]  # every row carried over as it was, latencies included
    assert run_summary["accounting"]["members_retried"] == 0
    assert run_summary["requests"] == {}


def _bad_partner(folder: Path, server_url: str) -> Path:
    path = write_partner(folder, server_url)
    config = json.loads(path.read_text()) | {"features": list(SPEC_FEATURES[:7])}
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("case, message", [
    ("missing", "no run.json: not a complete published run"),
    ("no_run_json", "no run.json: not a complete published run"),
    ("not_a_summary", "run.json is not a run summary"),
    ("no_results", "results/ has no Parquet files: not a complete published run"),
    ("other_features", "the partner's features differ from the run's (not in "),
    ("other_as_of", "the run is as of 2026-11-24; a retry keeps its date (--as-of 2026-11-25)"),
    ("with_input", "--retry-failed reads the previous run's results; it takes no --input"),
    ("same_output", "--output must be a new folder, not the run being retried"),
    ("output_holds_a_run", "already holds a run (run.json); give a new folder, or --overwrite"),
])
def test_a_bad_previous_folder_is_one_line_and_exit_2(case, message, clean_run, export, server_url, tmp_path, capsys):
    previous, extra = tmp_path / "previous", []
    if case != "missing":
        shutil.copytree(clean_run, previous)
    output = tmp_path / "out"
    if case == "no_run_json":
        (previous / "run.json").unlink()
    elif case == "not_a_summary":
        (previous / "run.json").write_text("[1, 2]")
    elif case == "no_results":
        shutil.rmtree(previous / "results")
    elif case == "other_features":
        extra = ["--partner-config", str(_bad_partner(tmp_path, server_url))]
    elif case == "other_as_of":
        extra = ["--as-of", "2026-11-25"]
    elif case == "with_input":
        extra = ["--input", str(export)]
    elif case == "same_output":
        output = previous
    elif case == "output_holds_a_run":
        shutil.copytree(clean_run, output)
    code = main("--retry-failed", str(previous), "--output", str(output), "--endpoint-url", server_url, *extra)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert case in ("same_output", "output_holds_a_run") or not output.exists()


def test_the_features_check_names_what_differs(clean_run, server_url, tmp_path):
    previous = retry.load_previous(str(clean_run))
    partner = load(_bad_partner(tmp_path, server_url))
    with pytest.raises(ConfigError, match=r"not in x.yaml: DAYS_SINCE_LAST_TRANSACTION\)"):
        retry.check_partner(previous, partner, "x.yaml")
    retry.check_partner(previous, load(write_partner(tmp_path, server_url)), "x.yaml")


def _rows(statuses: list[str]) -> pa.Table:
    features = dict.fromkeys(SPEC_FEATURES, 1.5) | {"DAYS_SINCE_LAST_TRANSACTION": 3}
    rows = []
    for i, status in enumerate(statuses):
        no_txn = status == "NO_TRANSACTIONS"
        decision = None if no_txn else {"STATUS": status, "ATTEMPTS": 1, "OFFER": "OFFER_1" if status == "OK" else None}
        rows.append(result_row(f"m{i}", {"N_TRANSACTIONS": 0 if no_txn else 2, "FEATURES": None if no_txn else features},
                               decision, feature_columns(SPEC_FEATURES), "default", None))
    return pa.Table.from_pylist(rows, schema=results_schema(SPEC_FEATURES))


def test_split_keeps_rows_as_they_are_and_hands_failed_members_to_the_endpoints():
    table = _rows(["OK", "FAILED", "NO_TRANSACTIONS", "FAILED"])
    features = dict.fromkeys(SPEC_FEATURES, 1.5) | {"DAYS_SINCE_LAST_TRANSACTION": 3}
    with TestPipeline() as p:
        split = (p | beam.Create([table]) | beam.ParDo(
            SplitPreviousResultsFn(results_schema(SPEC_FEATURES), SPEC_FEATURES)).with_outputs(
            RETRY, READ_MEMBERS, main="kept"))
        assert_that(split.kept | beam.FlatMap(lambda t: t.to_pylist()),
                    equal_to([r for r in table.to_pylist() if r["STATUS"] != "FAILED"]), label="kept")
        assert_that(split[RETRY], equal_to([("m1", {"N_TRANSACTIONS": 2, "FEATURES": features}),
                                            ("m3", {"N_TRANSACTIONS": 2, "FEATURES": features})]), label="retry")
        assert_that(split[READ_MEMBERS] | beam.CombineGlobally(MemberFingerprintFn()),
                    equal_to([of_ids(["m0", "m1", "m2", "m3"])]), label="read")


def _stats(table: pa.Table) -> dict:
    fn = ResultStatsFn()
    return fn.extract_output(fn.add_input(fn.create_accumulator(), table))


def _members(table: pa.Table):
    fn = MemberFingerprintFn()
    return fn.extract_output(fn.add_input(fn.create_accumulator(), table))


def test_retry_accounting_refuses_a_lost_or_new_failure():
    before = {"rows_read": 5, "header_lines": 1, "transactions": 4, "member_only_rows": 1, "dead_letter_rows": 0,
              "members": 3, "members_ok": 1, "members_no_transactions": 1, "members_failed": 1}
    accountant = retry.RetryAccountant(before)

    def account(after: pa.Table, retried: list[str]):
        facts = {retry.CARRIED_OVER: 2, retry.TO_RETRY: 1, retry.RETRIED: _stats(_rows(retried)),
                 RESULT_STATS: _stats(after), DEAD_LETTER_REASONS: {},
                 retry.MEMBERS_READ: of_ids(["m0", "m1", "m2"]), retry.MEMBERS_WRITTEN: _members(after)}
        return accountant.account(facts, {RESULTS: after.num_rows, DEAD_LETTER_FILES: 0})

    accounts = account(_rows(["OK", "OK", "NO_TRANSACTIONS"]), ["OK"])
    acc = accounts.accounting
    assert accounts.problems == []
    assert (acc["members_retried_ok"], acc["members_failed"], acc["members_ok"]) == (1, 0, 2)
    assert acc["members_carried_over"] + acc["members_retried"] == acc["members"] == 3
    problems = account(_rows(["FAILED", "OK", "NO_TRANSACTIONS"]), ["OK"]).problems
    assert "1 member(s) FAILED that the previous run had not" in problems
    problems = account(_rows(["OK", "OK"]), ["OK"]).problems
    assert "members differ from the previous run's: 3 then, 2 now" in problems
    assert "carried over 2 + retried 1 != members 2" in problems


def test_retry_accounting_refuses_results_that_lose_or_duplicate_a_member():
    """Every count agrees (three rows, the same statuses): only the member IDs tell the runs apart."""
    before = {"rows_read": 5, "header_lines": 1, "transactions": 4, "member_only_rows": 1, "dead_letter_rows": 0,
              "members": 3, "members_ok": 1, "members_no_transactions": 1, "members_failed": 1}
    accountant = retry.RetryAccountant(before)
    read = of_ids(["m0", "m1", "m2"])

    def account(after: pa.Table, read=read):
        facts = {retry.CARRIED_OVER: 2, retry.TO_RETRY: 1, retry.RETRIED: _stats(_rows(["OK"])),
                 RESULT_STATS: _stats(after), DEAD_LETTER_REASONS: {},
                 retry.MEMBERS_READ: read, retry.MEMBERS_WRITTEN: _members(after)}
        return accountant.account(facts, {RESULTS: after.num_rows, DEAD_LETTER_FILES: 0}).problems

    rows = _rows(["OK", "OK", "NO_TRANSACTIONS"])
    assert account(rows) == []
    # In another order, in other tables: the same members.
    assert account(pa.concat_tables([rows.slice(2), rows.slice(0, 2)])) == []
    ids = rows.column("MEMBER_ID").to_pylist()
    duplicated = rows.set_column(0, "MEMBER_ID", pa.array([ids[0], ids[0], ids[2]]))  # m1 lost, m0 twice
    [problem] = account(duplicated)
    assert problem.startswith("member IDs written are not those read from the previous run: 3 each, but not "
                              "the same IDs")
    renamed = rows.set_column(0, "MEMBER_ID", pa.array(["m0", "m9", "m2"]))
    assert len(account(renamed)) == 1
    problems = account(rows.slice(0, 2))
    assert "member IDs written are not those read from the previous run: 3 read from the previous run, " \
           "2 written" in " ".join(problems)
    # The previous run's files hold fewer members than its run.json says.
    problems = account(rows.slice(0, 2), read=of_ids(["m0", "m1"]))
    assert "the previous run's results hold 2 members, its run.json says 3" in problems


def test_member_fingerprint_is_exact_whatever_the_order_or_the_bundles():
    ids = [f"member-{i}" for i in range(1000)]
    whole = of_ids(ids)
    assert whole == of_ids(reversed(ids)) == of_ids(ids[:400]).merge(of_ids(ids[400:]))
    assert whole.count == 1000
    assert of_ids([*ids[:-1], ids[0]]) != whole  # one lost, one duplicated
    assert of_ids([*ids, ids[5]]) != whole
    assert of_ids([]) == of_ids([]).merge(of_ids([]))
