"""run.json against its JSON schema, the metrics Parquet, and the summary's pure pieces."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pyarrow.parquet as pq
import pytest

from beam_pipeline import accounting, summary
from lantern import run_record

SCHEMA_FILE = Path(summary.__file__).parent / "schemas" / "run.schema.json"
SCHEMA = json.loads(SCHEMA_FILE.read_text())


def test_schema_is_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_committed_schema_is_the_one_the_record_generates():
    assert SCHEMA_FILE.read_text() == run_record.schema_text(), \
        "run `python -m lantern.run_record > beam_pipeline/schemas/run.schema.json`"


def test_record_leaves_out_absent_fields_and_writes_nulls_it_must():
    step = run_record.Step(name="read", transform="ReadExports", unit="lines", elements=3, seconds=None,
                           per_second=None, seconds_source=None)
    assert run_record.to_json(step)["seconds"] is None
    assert run_record.to_json(run_record.Latency()) == {}
    acc = run_record.Accounting(**ACC)
    assert run_record.to_json(acc) == ACC  # no retry counts unless a retry sets them
    with pytest.raises(ValueError, match="members_retired"):
        run_record.Accounting(**ACC, members_retired=1)  # a misspelt field fails when the record is built


def test_run_json_matches_schema_and_the_outputs(small_run):
    code, _, output = small_run
    assert code == 0
    run = json.loads((output / "run.json").read_text())
    jsonschema.Draft202012Validator(SCHEMA).validate(run)
    acc = run["accounting"]
    assert acc["rows_read"] == 302
    assert acc["rows_read"] == acc["transactions"] + acc["member_only_rows"] + acc["dead_letter_rows"]
    assert run["dead_letter_reasons"]["MISSING_MEMBER_ID"] >= 1 and run["dead_letter_reasons"]["BAD_TIMESTAMP"] >= 1
    assert sum(run["offers"].values()) == acc["members_ok"]
    steps = {s["name"]: s for s in run["steps"]}
    assert steps["parse"]["elements"] == 302 and steps["call_endpoints"]["elements"] == acc["members_ok"]
    # Beam samples execution time (every 2 to 200 ms), so a short step may get none and fall back to its
    # bundle time (the read step always has one): check the arithmetic.
    timed = [s for s in run["steps"] if s["seconds"]]
    assert timed and any(s["seconds_source"] == "execution_time" for s in timed)
    assert all(s["seconds_source"] in ("execution_time", "bundle_ms") for s in timed)
    assert steps["read"]["seconds"] is not None  # timed on every runner
    assert all(s["per_second"] == round(s["elements"] / s["seconds"], 1) for s in timed)
    for kind in ("ats", "resp", "offer"):
        assert run["latency_ms"][kind]["count"] == acc["members_ok"]
        assert run["requests"][kind]["ok"] == acc["members_ok"]
        limit = run["concurrency_limit"][kind]
        assert 1 <= limit["min"] <= limit["mean"] <= limit["max"] <= 256 and limit["samples"] >= 1
    assert run["inputs"][0]["size_bytes"] > 0
    assert run["options"]["cli"]["as_of"] == "2026-11-24"


def test_schema_rejects_a_summary_without_accounting(small_run):
    run = json.loads((small_run[2] / "run.json").read_text())
    del run["accounting"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(SCHEMA).validate(run)
    run = json.loads((small_run[2] / "run.json").read_text())
    run["steps"][0]["elements"] = -1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(SCHEMA).validate(run)


def test_metrics_parquet_has_counters_distributions_and_step_times(small_run):
    _, run, output = small_run
    table = pq.read_table(output / "metrics" / "metrics.parquet").to_pylist()
    by_name = {(r["NAMESPACE"], r["NAME"]): r for r in table}
    assert by_name[("offer_pipeline", "rows_read")]["VALUE"] == 302
    assert by_name[("offer_pipeline", "dead_letter_MISSING_MEMBER_ID")]["VALUE"] >= 1
    assert by_name[("offer_pipeline", "requests_ats_ok")]["VALUE"] == run["accounting"]["members_ok"]
    latency = by_name[("offer_pipeline", "latency_ms_resp")]
    assert latency["KIND"] == "distribution" and latency["COUNT"] == run["accounting"]["members_ok"]
    assert by_name[("offer_pipeline", "bundle_ms")]["KIND"] == "distribution"
    execution = [r for r in table if r["NAME"] == summary.EXECUTION_MSECS]
    assert execution and all(r["NAMESPACE"] == "beam" and r["VALUE"] > 0 for r in execution)


def _row(namespace, name, step, kind="counter", value=None, total=None):
    return {"NAMESPACE": namespace, "NAME": name, "STEP": step, "KIND": kind, "VALUE": value, "COUNT": None,
            "SUM": total, "MIN": None, "MAX": None, "MEAN": None}


ACC = {"rows_read": 10, "header_lines": 1, "transactions": 8, "member_only_rows": 1, "dead_letter_rows": 1,
       "members": 4, "members_ok": 2, "members_no_transactions": 1, "members_failed": 1}


def test_steps_prefer_execution_time_and_fall_back_to_bundle_times():
    execution = [_row("beam", summary.EXECUTION_MSECS, "Parse/ParseLine/ParDo(ParseLineFn)", value=500.0),
                 _row("beam", summary.EXECUTION_MSECS, "DecideOffers/CallEndpoints/Call", value=3000.0),
                 _row("beam", summary.EXECUTION_MSECS, "ParseSomethingElse", value=999.0)]
    steps = {s["name"]: s for s in summary.timed_steps(accounting.step_elements(ACC, {}, accounting.STEPS), execution)}
    assert steps["parse"]["seconds"] == 0.5 and steps["parse"]["per_second"] == 20.0
    assert steps["call_endpoints"]["seconds"] == 3.0 and steps["call_endpoints"]["elements"] == 3
    assert steps["read"]["seconds"] is None and steps["read"]["elements"] == 11
    bundles = [_row("offer_pipeline", "bundle_ms", "Parse/ParseLine/ParDo(ParseLineFn)", "distribution", total=250.0)]
    steps = {s["name"]: s for s in summary.timed_steps(accounting.step_elements(ACC, {}, accounting.STEPS), bundles)}
    assert steps["parse"]["seconds"] == 0.25 and steps["parse"]["seconds_source"] == "bundle_ms"
    assert steps["features"]["seconds"] is None and steps["features"]["seconds_source"] is None


def test_requests_by_endpoint_and_outcome():
    rows = [_row("offer_pipeline", "requests_ats_ok", "s1", value=5.0),
            _row("offer_pipeline", "requests_ats_ok", "s2", value=2.0),
            _row("offer_pipeline", "requests_ats_http_error", "s1", value=1.0),
            _row("offer_pipeline", "retries_ats", "s1", value=3.0),
            _row("offer_pipeline", "requests_offer_throttled", "s1", value=1.0),
            _row("other", "requests_ats_ok", "s1", value=100.0)]
    assert summary.requests(rows) == {"ats": {"ok": 7, "http_error": 1, "retries": 3}, "offer": {"throttled": 1}}


def test_concurrency_limits_combine_every_worker_and_step():
    def limit(step, count, total, low, high, namespace="offer_pipeline"):
        return {**_row(namespace, "concurrency_limit_ats", step, "distribution", total=total),
                "COUNT": count, "MIN": low, "MAX": high}

    rows = [limit("w1", 4, 400.0, 60.0, 140.0), limit("w2", 6, 300.0, 20.0, 80.0),
            limit("w1", 5, 5000.0, 1000.0, 1000.0, namespace="other"),
            {**limit("w3", 0, 0.0, 0.0, 0.0)}]
    assert summary.concurrency_limits(rows) == {"ats": {"mean": 70.0, "min": 20, "max": 140, "samples": 10}}


def test_redact_masks_secrets_and_url_passwords():
    out = summary.redact({"api_token": "abc", "db_password": "hunter2", "auth_header": None,
                          "endpoint_url": "https://user:pw@ml.example.com:8443/x", "runner": "DirectRunner",
                          "input": ["a.csv"]})
    assert out["api_token"] == summary.REDACTED and out["db_password"] == summary.REDACTED
    assert out["auth_header"] is None
    assert out["endpoint_url"] == "https://ml.example.com:8443/x"
    assert out["runner"] == "DirectRunner" and out["input"] == ["a.csv"]
