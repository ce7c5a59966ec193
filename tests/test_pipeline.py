"""End to end: a real uvicorn server, the CLI, and expected values computed straight from the CSV."""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from beam_pipeline import cli, generate
from tests.reference import assert_row_matches, expected_member
from transforms.results import TIMING_COLUMNS

AS_OF = dt.date(2026, 11, 24)


def expected_from_csv(path: Path, as_of: dt.date) -> tuple[dict, int]:
    """Naive reference implementation: lists per member, plain float arithmetic, SPEC formulas."""
    members: dict[str, list] = defaultdict(list)
    dead = 0
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            mid = (row["MEMBER_ID"] or "").strip()
            vals = [row[c] for c in ("LAST_TRANSACTION_TS", "LAST_TRANSACTION_TYPE",
                                     "LAST_TRANSACTION_POINTS_BOUGHT", "LAST_TRANSACTION_REVENUE_USD")]
            if None in vals or not mid:
                dead += 1
                continue
            if not any(vals):
                members.setdefault(mid, [])
                continue
            try:
                when = dt.datetime.strptime(vals[0], "%Y-%m-%d %H:%M:%S")
                kind = vals[1].lower()
                pts, rev = float(vals[2]), float(vals[3])
                assert kind in ("buy", "gift", "redeem") and pts == pts and rev == rev
            except (ValueError, AssertionError):
                dead += 1
                continue
            members[mid].append((when, kind, pts, rev))
    out = {mid: expected_member(txns, as_of) for mid, txns in members.items()}
    return out, dead


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("in") / "export.csv"
    with open(path, "w", newline="") as handle:
        generate.write(handle, n_rows=600, seed=11, rows_per_member=4)
    return path


@pytest.fixture(scope="module")
def run_output(export, server_url, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "run"
    code, summary = cli.run(["--input", str(export), "--output", str(out), "--as-of", AS_OF.isoformat(),
                             "--endpoint-url", server_url])
    return code, summary, out


def read_results(out: Path) -> dict:
    table = pq.read_table(out / "results")
    return {row["MEMBER_ID"]: row for row in table.to_pylist()}


def test_every_member_matches_the_csv_to_1e_9(export, run_output):
    code, _, out = run_output
    assert code == 0
    expected, _ = expected_from_csv(export, AS_OF)
    rows = read_results(out)
    assert set(rows) == set(expected)
    for mid, exp in expected.items():
        row = rows[mid]
        if exp is None:
            assert row["STATUS"] == "NO_TRANSACTIONS" and row["AVG_POINTS_BOUGHT"] is None
            assert row["OFFER"] is None and row["ATTEMPTS"] == 0
            continue
        assert_row_matches(row, exp, mid, abs_tol=1e-9)


def test_accounting_and_outputs(export, run_output):
    _, summary, out = run_output
    expected, dead = expected_from_csv(export, AS_OF)
    acc = summary["accounting"]
    with open(export) as handle:
        assert acc["rows_read"] == sum(1 for _ in handle) - 1
    assert acc["rows_read"] == acc["transactions"] + acc["member_only_rows"] + acc["dead_letter_rows"]
    assert acc["dead_letter_rows"] == dead > 0
    assert acc["members"] == len(expected)
    assert acc["members_no_transactions"] == sum(v is None for v in expected.values()) > 0
    on_disk = json.loads((out / "run.json").read_text())
    assert on_disk["accounting"] == acc and on_disk["as_of"] == AS_OF.isoformat()
    assert pq.read_table(out / "dead_letter").num_rows == dead
    metrics = pq.read_table(out / "metrics").to_pylist()
    rows_read = sum(m["VALUE"] for m in metrics if m["NAME"] == "rows_read")
    assert rows_read == acc["rows_read"]
    assert not [p for p in os.listdir(out) if p.startswith("_staging")]
    assert set(summary["latency_ms"]["ats"]) >= {"p50", "p95", "p99"}


def test_rerun_gives_the_same_results(export, run_output, server_url, tmp_path):
    _, _, out = run_output
    cli.run(["--input", str(export), "--output", str(tmp_path), "--as-of", AS_OF.isoformat(),
             "--endpoint-url", server_url])
    drop = set(TIMING_COLUMNS)
    first = {k: {c: v for c, v in r.items() if c not in drop} for k, r in read_results(out).items()}
    second = {k: {c: v for c, v in r.items() if c not in drop} for k, r in read_results(tmp_path).items()}
    assert first == second


@pytest.mark.parametrize(
    "override, message",
    [
        ({"--input": "nope.csv"}, "input"),
        ({"--input": None}, "usage: the following arguments are required: --input"),
        ({"--partner": "no_such_partner"}, "unknown partner 'no_such_partner'"),
        ({"--as-of": "24/11/2026"}, "--as-of"),
        ({"--output": "{tmp}/a-file/out"}, "not writable"),
        ({"--endpoint-url": "http://127.0.0.1:9"}, "cannot reach ATS endpoint http://127.0.0.1:9/ml/ats/predict"),
    ],
)
def test_bad_invocations_exit_2_with_one_line(override, message, export, server_url, tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a directory")
    flags = {"--input": str(export), "--output": str(tmp_path / "out"), "--endpoint-url": server_url, **override}
    argv = [part for flag, value in flags.items() if value is not None
            for part in (flag, value.format(tmp=tmp_path))]
    code = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_legacy_partner_reads_the_camel_case_header(server_url, tmp_path):
    text = io.StringIO()
    generate.write(text, n_rows=50, seed=2)
    lines = text.getvalue().splitlines()
    lines[0] = "memberId,lastTransatcionUtcTs,lastTransactionType,lastTransactionPointsBought,lastTransactionRevenueUSD"
    src = tmp_path / "legacy.csv"
    src.write_text("\n".join(lines) + "\n")
    code, summary = cli.run(["--input", str(src), "--output", str(tmp_path / "o"), "--partner", "legacy_export",
                             "--as-of", "2026-11-24", "--endpoint-url", server_url])
    assert code == 0 and summary["accounting"]["rows_read"] == 50
