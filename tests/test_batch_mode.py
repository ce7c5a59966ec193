"""End to end on a real uvicorn server: batch routes and per-member routes give the same results,
and ``--features-only`` gives the same features without a call."""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from beam_pipeline import cli, generate
from transforms.results import TIMING_COLUMNS

TIMING = [*TIMING_COLUMNS, "PARTNER"]
DECISION = ["ATS_PREDICTION", "RESP_PREDICTION", "OFFER", "ERROR"]


@pytest.fixture(scope="module")
def runs(server_url, tmp_path_factory):
    folder = tmp_path_factory.mktemp("batch_mode")
    export = folder / "export.csv"
    with open(export, "w", encoding="utf-8") as out:
        generate.write(out, n_rows=400, seed=11)
    out = {}
    for name, extra in {
        "per_member": ["--partner", "default"],
        "batch": ["--partner", "reference_batch"],
        "features_only": ["--features-only"],
    }.items():
        code, summary = cli.run(["--input", str(export), "--output", str(folder / name), "--as-of", "2026-11-24",
                                 "--endpoint-url", server_url, *extra])
        results = pq.read_table(folder / name / "results").sort_by("MEMBER_ID").to_pylist()
        out[name] = (code, summary, results)
    return out


def without(rows: list[dict], columns: list[str]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in columns} for row in rows]


def test_batch_mode_gives_the_same_results_as_per_member_mode(runs):
    code_m, summary_m, member = runs["per_member"]
    code_b, summary_b, batch = runs["batch"]
    assert code_m == code_b == 0
    assert summary_m["accounting"] == summary_b["accounting"]
    assert summary_b["accounting"]["members_ok"] > 50
    assert without(member, TIMING) == without(batch, TIMING)
    assert {row["OFFER"] for row in batch} == {"OFFER_1", "OFFER_2", None}


def test_features_only_computes_the_same_features_and_calls_nothing(runs):
    _, _, member = runs["per_member"]
    code, summary, features = runs["features_only"]
    acc = summary["accounting"]
    assert code == 0 and summary["options"]["cli"]["features_only"] is True
    assert acc["members_ok"] == 0 and acc["members_failed"] == 0
    assert acc["members_features_only"] == runs["per_member"][1]["accounting"]["members_ok"]
    assert {row["STATUS"] for row in features} == {"FEATURES_ONLY", "NO_TRANSACTIONS"}
    assert all(row[c] is None for row in features for c in DECISION + TIMING[:3])
    assert {row["ATTEMPTS"] for row in features} == {0}
    calls = DECISION + TIMING + ["STATUS", "ATTEMPTS"]
    assert without(member, calls) == without(features, calls)
