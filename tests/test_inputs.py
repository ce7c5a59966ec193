"""Messy input files: each one either stops the run before it starts (exit 2, one line, nothing
written) or runs to the end with every row accounted for (docs/contract.md and §4).

The runnable cases share one run over many files at once (a glob plus a second ``--input``),
each file with its own members, and each test checks its own file's rows.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from beam_pipeline import cli
from tests.conftest import write_partner

AS_OF = "2026-11-24"
HEADER = "MEMBER_ID,LAST_TRANSACTION_TS,LAST_TRANSACTION_TYPE,LAST_TRANSACTION_POINTS_BOUGHT,LAST_TRANSACTION_REVENUE_USD"
UNREACHABLE = "http://127.0.0.1:9"  # input errors are found before any endpoint is asked

# file name -> raw bytes; every data line's member id starts with the file's tag.
FILES: dict[str, bytes] = {
    "extra_columns.csv": (
        b"NOTE,LAST_TRANSACTION_TYPE,MEMBER_ID,COUNTRY,LAST_TRANSACTION_TS,"
        b"LAST_TRANSACTION_REVENUE_USD,LAST_TRANSACTION_POINTS_BOUGHT\n"
        b"hello,buy,EX1,FR,2024-01-01 10:00:00,5.0,100\n"
        b"again,gift,EX1,DE,2024-01-02 10:00:00,15.0,300\n"
    ),
    "crlf.csv": (HEADER + "\r\nCR1,2024-01-01 10:00:00,buy,100,1.0\r\nCR1,2024-01-03 10:00:00,buy,200,2.0\r\n"
                 "CR2,,,,\r\n").encode(),
    "bom.csv": b"\xef\xbb\xbf" + (HEADER + "\nBOM1,2024-01-01 10:00:00,buy,100,1.0\n").encode(),
    "quoted.csv": (
        HEADER + "\n"
        '"QU,1","2024-01-01 10:00:00","buy","100","1.0"\n'
        '"QU""2",2024-01-01 10:00:00,gift,100,1.0\n'
        '"QU3,2024-01-01 10:00:00,buy,100,1.0\n'
    ).encode(),
    "not_utf8.csv": (HEADER + "\n").encode()
    + b"NU1,2024-01-01 10:00:00,buy,100,1.0\n"
    + b"NU\xe92,2024-01-01 10:00:00,buy,100,1.0\n"
    + b"NU3,2024-01-01 10:00:00,buy,100,\xff\xfe\n"
    + b"NU4,2024-01-01 10:00:00,buy,100,1.0\n",
    "long_line.csv": (
        HEADER + "\n"
        + "LL1,2024-01-01 10:00:00,buy,100,1.0," + "x" * 2_000_000 + "\n"
        + "LL2,2024-01-01 10:00:00,buy,100,1.0\n"
    ).encode(),
    "non_finite.csv": (
        HEADER + "\n"
        "NF1,2024-01-01 10:00:00,buy,nan,1.0\n"
        "NF1,2024-01-01 10:00:00,buy,100,inf\n"
        "NF1,2024-01-01 10:00:00,redeem,-Infinity,0\n"
        "NF1,2024-01-01 10:00:00,buy,100,1e999\n"
        "NF1,2024-01-02 10:00:00,buy,100,1.0\n"
    ).encode(),
    "future.csv": (
        HEADER + "\n"
        "FU1,2026-11-24 23:59:59,buy,100,1.0\n"  # the as-of day itself: kept
        "FU1,2026-11-25T00:30:00+01:00,buy,300,3.0\n"  # 23:30 UTC on the as-of day: kept
        "FU1,2026-11-25 00:00:00,buy,500,5.0\n"  # the day after: rejected
        "FU2,2031-01-01 00:00:00,gift,100,1.0\n"  # only future rows: rejected, no member row
    ).encode(),
    "mixed_case.csv": (
        HEADER + "\n"
        "MC1,2024-01-01 10:00:00,Buy,100,1.0\n"
        "MC1,2024-01-02 10:00:00,GIFT,100,1.0\n"
        "MC1,2024-01-03 10:00:00,rEdEeM,-100,0\n"
        "MC1,2024-01-04 10:00:00,swap,-100,0\n"
    ).encode(),
    "repeated_header.csv": (
        HEADER + "\nRH1,2024-01-01 10:00:00,buy,100,1.0\n"
        + HEADER + "\r\nRH2,2024-01-01 10:00:00,buy,100,1.0\n"
        + "\ufeff" + HEADER + "\nRH3,,,,\n"
    ).encode(),
    "all_rejected.csv": (HEADER + "\nAR1,yesterday,buy,1,1\n,2024-01-01 10:00:00,buy,1,1\nAR2,2024-01-01 10:00:00\n").encode(),
}
EXPECTED_HEADER_LINES = len(FILES) + 2  # one per file, and two repeats


def _data_lines(name: str) -> int:
    """Data rows of a file counted without the pipeline: physical lines minus header lines."""
    lines = FILES[name].splitlines()
    return sum(1 for line in lines if line.lstrip(b"\xef\xbb\xbf").rstrip(b"\r") != HEADER.encode()
               and not line.lstrip(b"\xef\xbb\xbf").startswith(b"NOTE,"))


@pytest.fixture(scope="module")
def messy_run(tmp_path_factory, server_url):
    work = tmp_path_factory.mktemp("messy")
    (work / "in").mkdir()
    (work / "more").mkdir()
    for name, data in FILES.items():
        folder = "more" if name == "repeated_header.csv" else "in"
        (work / folder / name).write_bytes(data)
    out = work / "out"
    code = cli.main(["--input", str(work / "in" / "*.csv"), "--input", str(work / "more" / "repeated_header.csv"),
                     "--output", str(out), "--partner-config", str(write_partner(work, server_url)),
                     "--as-of", AS_OF, "--log-level", "WARNING",
                     "--max-dead-letter-ratio", "1"])  # mostly bad rows on purpose
    results = {r["MEMBER_ID"]: r for r in pq.read_table(out / "results").to_pylist()}
    dead = pq.read_table(out / "dead_letter").to_pylist()
    return code, json.loads((out / "run.json").read_text()), results, dead


def _dead(dead: list[dict], name: str) -> list[tuple[str, str]]:
    """(reason, start of the raw line) of one file's dead letters."""
    return sorted((d["REASON"], d["RAW_LINE"][:40]) for d in dead if Path(d["SOURCE"]).name == name)


def _members(results: dict, tag: str) -> dict:
    return {k: v for k, v in results.items() if k.startswith(tag)}


def test_several_files_at_once_account_for_every_row(messy_run):
    code, run_summary, results, dead = messy_run
    acc = run_summary["accounting"]
    assert code == 0
    assert acc["rows_read"] == sum(_data_lines(name) for name in FILES)
    assert acc["rows_read"] == acc["transactions"] + acc["member_only_rows"] + acc["dead_letter_rows"]
    assert acc["header_lines"] == EXPECTED_HEADER_LINES
    assert acc["members"] == len(results)
    assert {Path(i["path"]).name for i in run_summary["inputs"]} == set(FILES)
    assert {Path(d["SOURCE"]).name for d in dead} <= set(FILES)


def test_extra_columns_are_ignored_and_columns_found_by_name(messy_run):
    results = messy_run[2]
    ex1 = results["EX1"]
    assert (ex1["N_TRANSACTIONS"], ex1["AVG_POINTS_BOUGHT"], ex1["AVG_REVENUE_USD"]) == (2, 200.0, 10.0)
    assert ex1["PCT_GIFT_TRANSACTIONS"] == 0.5 and ex1["STATUS"] == "OK"


def test_crlf_line_endings(messy_run):
    results, dead = messy_run[2], messy_run[3]
    assert results["CR1"]["N_TRANSACTIONS"] == 2 and results["CR1"]["AVG_POINTS_BOUGHT"] == 150.0
    assert results["CR2"]["STATUS"] == "NO_TRANSACTIONS"
    assert _dead(dead, "crlf.csv") == []


def test_utf8_bom(messy_run):
    assert messy_run[2]["BOM1"]["STATUS"] == "OK"
    assert _dead(messy_run[3], "bom.csv") == []


def test_quoted_fields_with_commas_and_quotes(messy_run):
    results, dead = messy_run[2], messy_run[3]
    assert results["QU,1"]["STATUS"] == "OK"
    assert results['QU"2']["PCT_GIFT_TRANSACTIONS"] == 1.0
    assert _dead(dead, "quoted.csv") == [("MALFORMED_CSV", '"QU3,2024-01-01 10:00:00,buy,100,1.0')]


def test_non_utf8_lines_are_dead_lettered_and_the_run_goes_on(messy_run):
    results, dead = messy_run[2], messy_run[3]
    assert sorted(_members(results, "NU")) == ["NU1", "NU4"]
    assert _dead(dead, "not_utf8.csv") == [
        ("NOT_UTF8", "NU3,2024-01-01 10:00:00,buy,100,\\xff\\xfe"),
        ("NOT_UTF8", "NU\\xe92,2024-01-01 10:00:00,buy,100,1.0"),
    ]


def test_a_very_long_line_is_one_dead_letter(messy_run):
    results, dead = messy_run[2], messy_run[3]
    assert "LL2" in results and "LL1" not in results
    (reason, start), = _dead(dead, "long_line.csv")
    assert reason == "WRONG_FIELD_COUNT" and start.startswith("LL1,")
    raw = next(d["RAW_LINE"] for d in dead if d["RAW_LINE"].startswith("LL1,"))
    assert len(raw) > 2_000_000  # kept whole


def test_nan_and_infinity_are_rejected(messy_run):
    results, dead = messy_run[2], messy_run[3]
    assert [r for r, _ in _dead(dead, "non_finite.csv")] == ["NON_FINITE_NUMBER"] * 4
    assert results["NF1"]["N_TRANSACTIONS"] == 1 and results["NF1"]["AVG_REVENUE_USD"] == 1.0


def test_timestamps_after_the_as_of_date_are_rejected(messy_run):
    results, dead = messy_run[2], messy_run[3]
    fu1 = results["FU1"]
    assert (fu1["N_TRANSACTIONS"], fu1["AVG_POINTS_BOUGHT"], fu1["DAYS_SINCE_LAST_TRANSACTION"]) == (2, 200.0, 0)
    assert "FU2" not in results  # a member with only rejected rows has no results row
    assert [r for r, _ in _dead(dead, "future.csv")] == ["AFTER_AS_OF"] * 2


def test_types_are_case_insensitive(messy_run):
    results, dead = messy_run[2], messy_run[3]
    mc1 = results["MC1"]
    assert [mc1[f"PCT_{t}_TRANSACTIONS"] for t in ("BUY", "GIFT", "REDEEM")] == [1 / 3] * 3
    assert [r for r, _ in _dead(dead, "mixed_case.csv")] == ["UNKNOWN_TYPE"]


def test_a_header_repeated_inside_the_file_is_skipped(messy_run):
    results, dead = messy_run[2], messy_run[3]
    assert sorted(_members(results, "RH")) == ["RH1", "RH2", "RH3"]
    assert _dead(dead, "repeated_header.csv") == []


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.csv", "input {d}/missing.csv: no such file (or the glob matches nothing)"),
    (lambda d: d / "nothing-*.csv", "input {d}/nothing-*.csv: no such file (or the glob matches nothing)"),
    (lambda d: d, "input {d} is a directory; give a file or a glob such as {d}/*.csv"),
    (lambda d: _write(d / "empty.csv", b""), "input {d}/empty.csv is empty"),
    (lambda d: _write(d / "blank.csv", b"\n \r\n"), "input {d}/blank.csv is empty"),
    (lambda d: _write(d / "header.csv", (HEADER + "\r\n").encode()), "input {d}/header.csv has a header but no data rows"),
    (lambda d: _write(d / "no_type.csv", b"MEMBER_ID,LAST_TRANSACTION_TS,LAST_TRANSACTION_POINTS_BOUGHT,"
                                         b"LAST_TRANSACTION_REVENUE_USD\nM1,2024-01-01 00:00:00,1,1\n"),
     "input {d}/no_type.csv: header has no column 'LAST_TRANSACTION_TYPE' (input.columns.type in "
     "partner_options/default.yaml)"),
])
def test_unusable_input_stops_before_the_run(make, message, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    path = make(inputs)
    code = cli.main(["--input", str(path), "--output", str(tmp_path / "out"), "--as-of", AS_OF,
                     "--endpoint-url", UNREACHABLE])
    err = capsys.readouterr().err.splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: " + message.format(d=inputs)), err
    assert not (tmp_path / "out").exists()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_a_file_whose_every_row_is_rejected_adds_dead_letters_only(messy_run):
    results, dead = messy_run[2], messy_run[3]
    assert _members(results, "AR") == {}
    assert [r for r, _ in _dead(dead, "all_rejected.csv")] == ["BAD_TIMESTAMP", "MISSING_MEMBER_ID",
                                                               "WRONG_FIELD_COUNT"]
