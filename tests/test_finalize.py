"""The run's last step (``beam_pipeline.finalize``) and the counts it is built from (``transforms.run_counts``)."""
from __future__ import annotations

import datetime as dt
import json
import os
from collections import Counter
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from apache_beam.internal import pickler
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline import cli, finalize, launch, outputs, summary
from beam_pipeline.accounting import BatchAccountant
from beam_pipeline.inputs import layout_for
from beam_pipeline.pipeline import (
    DEAD_LETTER_FILES,
    DEAD_LETTER_REASONS,
    MEMBERS_WITH_FEATURES,
    RESULT_STATS,
    RESULTS,
    ROWS,
    JobConfig,
    build_pipeline,
)
from beam_pipeline.runners import local_runner
from lantern.latency_histogram import RELATIVE_ERROR, LogHistogram
from lantern.partner import load_named
from transforms.input_files import InputFile
from transforms.results import DEAD_LETTER_SCHEMA
from transforms.run_counts import CountRowsFn, PartialCountFn, ResultStatsFn, SumCountsFn, ValueCountsFn

# --- the counts ---------------------------------------------------------------------------------


def _row(status: str, offer: str | None = None, ats: float | None = None) -> dict:
    return {"MEMBER_ID": f"m-{status}-{offer}-{ats}", "STATUS": status, "OFFER": offer, "ATS_LATENCY_MS": ats,
            "RESP_LATENCY_MS": None, "OFFER_LATENCY_MS": None}


def test_counts_combine_over_bundles_rows_and_tables():
    rows = [_row("OK", "OFFER_1", 10.0), _row("FAILED"), _row("NO_TRANSACTIONS")]
    table = pa.Table.from_pylist([_row("OK", "OFFER_2", 20.0), _row("OK", "OFFER_1", 30.0)])
    with TestPipeline() as p:
        parse = p | "Bundles" >> beam.Create([{"rows_read": 3, "transactions": 2}, {"rows_read": 4, "member_only_rows": 1}])
        assert_that(parse | "Sum" >> beam.CombineGlobally(SumCountsFn()),
                    equal_to([{"member_only_rows": 1, "rows_read": 7, "transactions": 2}]), label="sum")
        results = p | "Results" >> beam.Create([*rows, table])
        assert_that(results | "Count" >> beam.CombineGlobally(CountRowsFn()), equal_to([5]), label="count")
        stats = results | "Stats" >> beam.CombineGlobally(ResultStatsFn())
        assert_that(stats | beam.Map(lambda s: (s["rows"], s["statuses"], s["offers"], s["latency_ms"]["ats"]["count"],
                                                 s["latency_ms"]["ats"]["max"], s["latency_ms"]["resp"])),
                    equal_to([(5, {"FAILED": 1, "NO_TRANSACTIONS": 1, "OK": 3}, {"OFFER_1": 2, "OFFER_2": 1},
                               3, 30.0, {})]), label="stats")
        dead = p | "Dead" >> beam.Create([{"REASON": "BAD_NUMBER"}, pa.table({"REASON": ["BAD_NUMBER", "NOT_UTF8"]})])
        assert_that(dead | "Reasons" >> beam.CombineGlobally(ValueCountsFn("REASON")),
                    equal_to([{"BAD_NUMBER": 2, "NOT_UTF8": 1}]), label="reasons")
    with TestPipeline() as p:  # no input at all: every count still has its one value
        empty = p | beam.Create([])
        assert_that(empty | "Stats" >> beam.CombineGlobally(ResultStatsFn())
                    | beam.Map(lambda s: (s["rows"], s["statuses"], s["latency_ms"]["ats"])),
                    equal_to([(0, {}, {})]), label="empty")


def test_latency_histogram_is_within_its_stated_error_however_it_is_merged():
    rng = np.random.default_rng(7)
    values = np.concatenate([rng.lognormal(3, 1, 20_000), rng.uniform(0.01, 0.5, 500), [0.0]])
    exact = np.sort(values)
    whole = LogHistogram()
    whole.add_array(values)
    parts = [LogHistogram() for _ in range(7)]
    for i, value in enumerate(values.tolist()):
        parts[i % 7].add_one(value)
    merged = parts[0]
    for part in parts[1:]:
        merged.merge(part)
    for q in (0.0, 0.01, 0.5, 0.95, 0.99, 1.0):
        truth = exact[int(np.floor(q * (len(exact) - 1)))]
        for histogram in (whole, merged):
            assert abs(histogram.quantile(q) - truth) <= RELATIVE_ERROR * truth + 1e-12, q
    assert whole.summary() == merged.summary()
    assert whole.summary()["count"] == len(values) and whole.summary()["max"] == round(float(values.max()), 3)
    assert LogHistogram().summary() == {}


@pytest.mark.parametrize("partner_name,features_only", [("default", True), ("reference_batch", False)])
def test_only_per_bundle_accumulators_enter_a_flatten(tmp_path, partner_name, features_only):
    """The local runner materializes every Flatten of several inputs (each producer writes into one
    buffer, read by a later stage): a members or results table flattened on its way to be counted
    would be held in memory for the whole run, about a kilobyte per member. So the only Flattens of
    a run whose members move as tables (features-only, batch routes) take the counts' per-bundle
    accumulators, a few per bundle however many members."""
    partner = load_named(partner_name)
    export = tmp_path / "in.csv"
    export.write_text("MEMBER_ID,LAST_TRANSACTION_TS,LAST_TRANSACTION_TYPE,LAST_TRANSACTION_POINTS_BOUGHT,"
                      "LAST_TRANSACTION_REVENUE_USD\nm1,2024-01-01 10:00:00,buy,10,1.5\n")
    plan = finalize.RunPlan("r", str(tmp_path / "out"), str(tmp_path / "staging"), False, {}, BatchAccountant(), 0.05)
    job = JobConfig((InputFile(str(export), export.stat().st_size),),
                    {str(export): layout_for(str(export), partner, "partner")}, partner, dt.date(2026, 11, 24),
                    str(tmp_path / "staging"), features_only=features_only, plan=plan)
    pipeline = beam.Pipeline(runner=local_runner())
    build_pipeline(pipeline, job)
    proto = pipeline.to_runner_api()
    transforms = proto.components.transforms
    producer = {pcoll: t for t in transforms.values() if not t.subtransforms for pcoll in t.outputs.values()}
    flattens = [t for t in transforms.values()
                if t.spec.urn == common_urns.primitives.FLATTEN.urn and len(t.inputs) > 1]
    assert flattens, "the run's counts are gathered by a Flatten"
    for flatten in flattens:
        for pcoll in flatten.inputs.values():
            step = producer[pcoll]
            assert step.spec.urn == common_urns.primitives.PAR_DO.urn, (flatten.unique_name, step.unique_name)
            fn = pickler.loads(beam_runner_api_pb2.ParDoPayload.FromString(step.spec.payload).do_fn.payload)
            fn = fn[0] if isinstance(fn, tuple) else fn
            assert isinstance(fn, PartialCountFn), f"{flatten.unique_name} takes {step.unique_name}'s elements"


# --- the last step ------------------------------------------------------------------------------

FIELDS = {"run_id": "20261124T000000Z-0000aaaa", "partner": "default", "partner_source": "partner_options/default.yaml",
          "partner_features": ["F1"], "as_of": "2026-11-24", "runner": "DirectRunner",
          "started_at": "2026-11-24T00:00:00+00:00", "inputs": [{"path": "in.csv", "size_bytes": 10}],
          "options": {"endpoint_base_url": "http://127.0.0.1", "cli": {}, "pipeline": {}}}


def _staged_run(tmp_path: Path, members: int = 3, dead: int = 1, overwrite: bool = False, limit: float = 0.5):
    """A staging folder as the writes leave it, the plan, and the counts and file names the last step gets."""
    output = tmp_path / "out"
    staging = output / "_staging-run"
    (staging / "results").mkdir(parents=True)
    (staging / "dead_letter").mkdir()
    statuses = (["OK", "FAILED", "NO_TRANSACTIONS"] * members)[:members]
    results = pa.table({"MEMBER_ID": [f"m{i}" for i in range(members)], "STATUS": statuses})
    pq.write_table(results, staging / "results" / "part-00000-of-00001.parquet")
    rows = pa.Table.from_pylist([{"SOURCE": "in.csv", "RAW_LINE": "x", "REASON": "BAD_NUMBER", "DETAIL": "no"}] * dead,
                                schema=DEAD_LETTER_SCHEMA)
    pq.write_table(rows, staging / "dead_letter" / "part-00000-of-00001.parquet")
    stats = {"rows": members, "statuses": dict(Counter(statuses)), "offers": {"OFFER_1": statuses.count("OK")},
             "latency_ms": {"ats": {}, "resp": {}, "offer": {}}}
    gathered = {
        ROWS: {"rows_read": 4 + dead, "header_lines": 1, "transactions": 3, "member_only_rows": 1,
               "dead_letter_rows": dead},
        MEMBERS_WITH_FEATURES: members,
        RESULT_STATS: stats,
        DEAD_LETTER_REASONS: {"BAD_NUMBER": dead} if dead else {},
        finalize.WRITTEN_PREFIX + RESULTS: [str(staging / "results" / "part-00000-of-00001.parquet")],
        finalize.WRITTEN_PREFIX + DEAD_LETTER_FILES: [str(staging / "dead_letter" / "part-00000-of-00001.parquet")],
    }
    plan = finalize.RunPlan(FIELDS["run_id"], str(output), str(staging), overwrite, {**FIELDS, "output": str(output)},
                            BatchAccountant(), limit)
    return plan, gathered


def test_finalize_publishes_run_json_last_and_a_second_call_changes_nothing(tmp_path, monkeypatch):
    plan, items = _staged_run(tmp_path)
    moved = []
    real_move, real_rename = outputs._move, outputs.FileSystems.rename

    def move(source, target):
        moved.append(os.path.basename(target))
        real_move(source, target)

    def rename(sources, targets):
        moved.extend(os.path.basename(t) for t in targets)
        real_rename(sources, targets)

    monkeypatch.setattr(outputs, "_move", move)
    monkeypatch.setattr(outputs.FileSystems, "rename", rename)
    record = finalize.finalize(plan, items)
    assert moved == ["dead_letter", "results", "run.json"]  # run.json last
    output = Path(plan.output)
    published = json.loads((output / "run.json").read_text())
    assert published == record and published["published"] is True and published["exit_code"] == 3
    assert published["accounting"]["members"] == 3 and published["dead_letter_limit"]["exceeded"] is False
    assert not Path(plan.staging).exists() and pq.read_table(output / "results").num_rows == 3
    before = (output / "run.json").stat().st_mtime_ns
    moved.clear()
    assert finalize.finalize(plan, items) == record  # a retried finalize: nothing moves, nothing is rewritten
    assert moved == [] and (output / "run.json").stat().st_mtime_ns == before


def test_a_publication_cut_short_is_finished_by_the_retry(tmp_path, monkeypatch):
    plan, items = _staged_run(tmp_path)
    real_move = outputs._move

    def crash_on_results(source, target):
        if source.endswith("results"):
            raise OSError("worker lost")
        real_move(source, target)

    monkeypatch.setattr(outputs, "_move", crash_on_results)
    with pytest.raises(OSError, match="worker lost"):
        finalize.finalize(plan, items)
    output = Path(plan.output)
    assert not (output / "run.json").exists() and (output / "dead_letter").exists()  # visibly incomplete
    monkeypatch.setattr(outputs, "_move", real_move)
    record = finalize.finalize(plan, items)
    assert json.loads((output / "run.json").read_text()) == record
    assert pq.read_table(output / "results").num_rows == 3 and pq.read_table(output / "dead_letter").num_rows == 1
    assert not Path(plan.staging).exists()


def test_an_accounting_that_does_not_close_stages_exit_1_and_fails_every_attempt(tmp_path):
    plan, items = _staged_run(tmp_path)
    items = {**items, MEMBERS_WITH_FEATURES: 4}
    with pytest.raises(finalize.FinalizeError, match=r"^accounting does not close: 4 members had features but 3"):
        finalize.finalize(plan, items)
    staged = json.loads((Path(plan.staging) / "run.json").read_text())
    assert (staged["exit_code"], staged["published"], staged["staging"]) == (1, False, plan.staging)
    assert staged["error"].startswith("accounting does not close")
    assert not (Path(plan.output) / "run.json").exists() and not (Path(plan.output) / "results").exists()
    with pytest.raises(finalize.FinalizeError) as again:  # a retry fails the same way
        finalize.finalize(plan, items)
    assert str(again.value) == staged["error"]


def test_too_many_dead_letters_hold_the_run_back_and_fail_the_job(tmp_path):
    plan, items = _staged_run(tmp_path, dead=4, limit=0.1)
    with pytest.raises(finalize.FinalizeError, match=r"^4 of 8 rows are dead letters \(ratio 0.5\), above the limit 0.1"):
        finalize.finalize(plan, items)
    staged = json.loads((Path(plan.staging) / "run.json").read_text())
    assert (staged["exit_code"], staged["published"]) == (4, False)
    assert staged["dead_letter_limit"] == {"ratio": 0.5, "limit": 0.1, "exceeded": True}
    assert "BAD_NUMBER 4" in staged["error"] and not (Path(plan.output) / "results").exists()
    with pytest.raises(finalize.FinalizeError, match="above the limit"):
        finalize.finalize(plan, items)


def _counted(p, items) -> tuple[dict, dict]:
    """The counts and writes of ``_staged_run`` as the pipeline hands them to ``Finalize``."""
    facts, files = finalize.gather(items)
    stats = facts[RESULT_STATS]
    results = [{"STATUS": status, "OFFER": "OFFER_1" if status == "OK" else None}
               for status, n in stats["statuses"].items() for _ in range(n)]
    counts = {
        ROWS: (p | "Rows" >> beam.Create([facts[ROWS]]), SumCountsFn()),
        MEMBERS_WITH_FEATURES: (p | "Members" >> beam.Create(range(facts[MEMBERS_WITH_FEATURES])), CountRowsFn()),
        RESULT_STATS: (p | "Results" >> beam.Create(results), ResultStatsFn()),
        DEAD_LETTER_REASONS: (p | "Dead" >> beam.Create([{"REASON": reason} for reason, n in
                                                          facts[DEAD_LETTER_REASONS].items() for _ in range(n)]),
                              ValueCountsFn("REASON")),
    }
    return counts, {name: p | f"W{name}" >> beam.Create(paths) for name, paths in files.items()}


def test_the_finalize_transform_waits_for_its_counts_and_writes_and_fails_the_job(tmp_path):
    plan, items = _staged_run(tmp_path)
    with TestPipeline() as p:
        assert_that(p | finalize.Finalize(plan, *_counted(p, items)), equal_to([3]))
    published = json.loads((Path(plan.output) / "run.json").read_text())
    assert published["exit_code"] == 3 and published["offers"] == {"OFFER_1": 1}
    assert published["accounting"]["dead_letter_rows"] == 1

    plan, items = _staged_run(tmp_path / "again", dead=4, limit=0.1)
    with pytest.raises(Exception, match=r"above the limit 0\.1"), TestPipeline() as p:
        _ = p | finalize.Finalize(plan, *_counted(p, items))
    assert json.loads((Path(plan.staging) / "run.json").read_text())["exit_code"] == 4


# --- end to end: nothing but the job decides ----------------------------------------------------


def _driver_reference(output: Path) -> dict:
    """What the launcher used to compute after the job, by reading the whole results table back."""
    results = pq.read_table(output / "results")
    dead = pq.read_table(output / "dead_letter", columns=["REASON"])
    statuses = Counter(results.column("STATUS").to_pylist())
    latency = {}
    for kind in ("ats", "resp", "offer"):
        column = results.column(f"{kind.upper()}_LATENCY_MS").drop_null()
        latency[kind] = {} if not len(column) else {
            **dict(zip(("p50", "p95", "p99"), pc.quantile(column, q=[0.5, 0.95, 0.99]).to_pylist(), strict=True)),
            "mean": pc.mean(column).as_py(), "max": round(pc.max(column).as_py(), 3), "count": len(column)}
    return {
        "members": results.num_rows, "members_ok": statuses["OK"], "members_failed": statuses["FAILED"],
        "members_no_transactions": statuses["NO_TRANSACTIONS"], "dead_letter_rows": dead.num_rows,
        "offers": dict(Counter(o for o in results.column("OFFER").to_pylist() if o is not None)),
        "dead_letter_reasons": dict(Counter(dead.column("REASON").to_pylist())), "latency_ms": latency,
    }


def test_a_run_nobody_waits_for_publishes_what_the_waiting_launcher_computed(tmp_path, server_url, monkeypatch):
    from beam_pipeline import generate

    export = tmp_path / "export.csv"
    with open(export, "w", encoding="utf-8", newline="") as out:
        generate.write(out, n_rows=400, seed=5)
        out.write("M-BAD,yesterday,buy,10,1.5\n")
    real_run_job = launch.run_job

    def detached(pipeline, launched, job=None):
        def forbidden(*args, **kwargs):
            raise AssertionError("the launcher read the results or the metrics")

        with monkeypatch.context() as m:  # while the job runs, nothing may read a table or the metrics
            m.setattr(pq, "read_table", forbidden)
            m.setattr(summary, "read_parts", forbidden)
            m.setattr(summary, "metric_rows", forbidden)
            real_run_job(pipeline, launched, job)
        return None, None  # the launcher looks at no result, as a detached launch

    monkeypatch.setattr(launch, "run_job", detached)
    output = tmp_path / "out"
    code, record = cli.run(["--input", str(export), "--output", str(output), "--as-of", "2026-11-24",
                            "--endpoint-url", server_url, "--heartbeat-seconds", "0"])
    published = json.loads((output / "run.json").read_text())
    assert code == published["exit_code"] == 0 and record == published and published["published"] is True
    assert "requests" not in published and not (output / "metrics").exists()  # the runner's metrics: nobody read them
    reference = _driver_reference(output)
    acc = published["accounting"]
    for key in ("members", "members_ok", "members_failed", "members_no_transactions", "dead_letter_rows"):
        assert acc[key] == reference[key], key
    assert acc["rows_read"] == 401 == acc["transactions"] + acc["member_only_rows"] + acc["dead_letter_rows"]
    assert published["offers"] == dict(sorted(reference["offers"].items()))
    assert published["dead_letter_reasons"] == dict(sorted(reference["dead_letter_reasons"].items()))
    assert published["dead_letter_reasons"]["BAD_TIMESTAMP"] >= 1
    for kind, exact in reference["latency_ms"].items():
        got = published["latency_ms"][kind]
        assert exact and got["count"] == exact["count"] and got["max"] == exact["max"]
        assert got["mean"] == pytest.approx(exact["mean"], abs=1e-3)
        values = np.sort(pq.read_table(output / "results").column(f"{kind.upper()}_LATENCY_MS").drop_null().to_numpy())
        for p, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):  # the value at the same rank, within 0.5%
            truth = values[int(np.floor(q * (len(values) - 1)))]
            assert abs(got[p] - truth) <= RELATIVE_ERROR * truth + 5e-4, (kind, p)
