"""Onboarding a partner with a file only, and operating safely: the dead-letter limit (exit 4),
output folders never silently replaced (--overwrite), and errors that say how to fix them.

The partner here is written from the partner-file reference alone: a `|`-separated export
with its own column names, day-first times without seconds, and its own words for the
transaction types. Expected values are computed straight from the file, independently of
the pipeline's code.
"""
from __future__ import annotations

import datetime as dt
import json
import random
import shutil
from collections import defaultdict
from pathlib import Path

import jsonschema
import pyarrow.parquet as pq
import pytest

from beam_pipeline import cli, generate
from tests.conftest import ROOT, free_port
from tests.reference import assert_row_matches, expected_member
from tests.test_run_summary import SCHEMA

AS_OF = dt.date(2026, 11, 24)
PARTNER = """\
name: pipe_club
description: pipe-separated export, day-first times without seconds, its own type words
input:
  columns: {member_id: customer, timestamp: ts_utc, type: kind, points: pts, revenue: usd}
  delimiter: "|"
  timestamp_formats: ["%d/%m/%Y %H:%M"]
  type_values:
    buy: [Purchase]
    gift: [Present]
    redeem: [Redemption]
"""
# The same export read with the default words: every transaction is UNKNOWN_TYPE.
NO_VOCABULARY = PARTNER.split("  type_values:")[0].replace("pipe_club", "pipe_club_plain")
WORDS = {"buy": ("Purchase", "PURCHASE", " purchase "), "gift": ("Present", "present"),
         "redeem": ("Redemption", "REDEMPTION ")}


def write_export(path: Path, seed: int = 3) -> Path:
    """About 160 rows, 30 members, 3 of them with only an id, 2 rows that must be rejected."""
    rng = random.Random(seed)
    lines = ["customer|ts_utc|kind|pts|usd"]
    start = dt.datetime(2024, 3, 1, 8, 0)
    minute = 0
    for m in range(30):
        member = f"C{m:03d}"
        if m % 10 == 9:
            lines.append(f"{member}||||")
            continue
        for _ in range(rng.randrange(1, 9)):
            minute += rng.randrange(1, 5000)  # distinct times: "most recent" needs no tie rule
            kind = rng.choice(("buy", "gift", "redeem"))
            points = rng.randrange(1, 90) * 100 * (-1 if kind == "redeem" else 1)
            revenue = 0.0 if kind == "redeem" else round(rng.uniform(1, 400), 2)
            when = (start + dt.timedelta(minutes=minute)).strftime("%d/%m/%Y %H:%M")
            lines.append(f"{member}|{when}|{rng.choice(WORDS[kind])}|{points}|{revenue}")
    body = lines[1:]
    rng.shuffle(body)
    lines = [lines[0], *body, "C001|05/03/2024 10:00|Transfer|100|1.0", "C002|05/03/2024 10:00:00|Purchase|100|1.0"]
    path.write_text("\n".join(lines) + "\n")
    return path


def expected(path: Path) -> tuple[dict, int]:
    """docs/contract.md and §3 computed directly: lists per member, plain arithmetic."""
    kinds = {"purchase": "buy", "present": "gift", "redemption": "redeem"}
    members: dict[str, list] = defaultdict(list)
    rejected = 0
    for line in path.read_text().splitlines()[1:]:
        member, when, kind, pts, usd = line.split("|")
        if not (when or kind or pts or usd):
            members[member] = members[member]
            continue
        try:
            ts = dt.datetime.strptime(when, "%d/%m/%Y %H:%M")
        except ValueError:
            rejected += 1
            continue
        if kind.strip().lower() not in kinds:
            rejected += 1
            continue
        members[member].append((ts, kinds[kind.strip().lower()], float(pts), float(usd)))
    out = {member: expected_member(txns, AS_OF) for member, txns in members.items()}
    return out, rejected


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("onboard")
    (folder / "pipe_club.yaml").write_text(PARTNER)
    (folder / "pipe_club_plain.yaml").write_text(NO_VOCABULARY)
    write_export(folder / "export.psv")
    return folder


def cli_args(work: Path, out: Path, url: str, partner: str = "pipe_club.yaml", *extra: str) -> list[str]:
    return ["--input", str(work / "export.psv"), "--output", str(out), "--partner-config", str(work / partner),
            "--as-of", AS_OF.isoformat(), "--endpoint-url", url, "--heartbeat-seconds", "0",
            "--log-level", "WARNING", *extra]


@pytest.fixture(scope="module")
def onboarded(work, server_url):
    out = work / "out"
    code, summary = cli.run(cli_args(work, out, server_url))
    return code, summary, out


def test_a_partner_from_the_docs_runs_end_to_end_and_matches_a_direct_computation(work, onboarded):
    code, summary, out = onboarded
    assert code == 0
    want, rejected = expected(work / "export.psv")
    rows = {r["MEMBER_ID"]: r for r in pq.read_table(out / "results").to_pylist()}
    assert set(rows) == set(want) and sum(v is not None for v in want.values()) >= 20
    for member, features in want.items():
        row = rows[member]
        if features is None:
            assert row["STATUS"] == "NO_TRANSACTIONS"
            continue
        assert_row_matches(row, features, member, abs_tol=1e-12)
    assert summary["dead_letter_reasons"] == {"BAD_TIMESTAMP": 1, "UNKNOWN_TYPE": 1} and rejected == 2
    detail = {d["REASON"]: d["DETAIL"] for d in pq.read_table(out / "dead_letter").to_pylist()}
    assert "accepted (any case): purchase, present, redemption" in detail["UNKNOWN_TYPE"]


def test_dead_letters_below_the_limit_warn_in_the_summary_line(onboarded):
    _, summary, _ = onboarded
    acc = summary["accounting"]
    assert 0 < acc["dead_letter_rows"] / acc["rows_read"] < 0.05
    assert summary["dead_letter_limit"]["exceeded"] is False and summary["dead_letter_limit"]["limit"] == 0.05
    line = cli.format_summary(summary).splitlines()[1]
    assert line.startswith(f"rows read {acc['rows_read']}: ")
    assert f"(note: dead-letter ratio {acc['dead_letter_rows'] / acc['rows_read']:.3g}, under the limit 0.05)" in line


def test_generate_writes_an_export_for_a_partner_file(work, tmp_path):
    out = tmp_path / "gen.psv"
    assert generate.main(["--partner-config", str(work / "pipe_club.yaml"), "--rows", "40", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "customer|ts_utc|kind|pts|usd"
    kinds = {line.split("|")[2] for line in lines[1:] if line.count("|") == 4}
    assert {"Purchase", "Present", "Redemption"} <= kinds and not kinds & {"buy", "gift", "redeem"}


def _run_folder_entries(out: Path) -> set[str]:
    return {p.name for p in out.iterdir()}


def test_past_the_limit_the_run_exits_4_unpublished_and_the_earlier_run_stays(work, onboarded, server_url,
                                                                              tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(onboarded[2], out)
    before = json.loads((out / "run.json").read_text())
    code = cli.main(cli_args(work, out, server_url, "pipe_club_plain.yaml", "--overwrite"))
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 4 and len(err) == 1, err
    staging = next(out.glob("_staging-*"))
    summary = json.loads((staging / "run.json").read_text())
    acc = summary["accounting"]
    ratio = acc["dead_letter_rows"] / acc["rows_read"]
    assert ratio > 0.5 and summary["exit_code"] == 4 and summary["published"] is False
    jsonschema.Draft202012Validator(SCHEMA).validate(summary)
    assert err[0] == (
        f"error: {acc['dead_letter_rows']} of {acc['rows_read']} rows are dead letters (ratio {ratio:.3g}), "
        f"above the limit 0.05 (--max-dead-letter-ratio, partner input.max_dead_letter_ratio); "
        f"top reasons: UNKNOWN_TYPE {acc['dead_letter_rows'] - 1}, BAD_TIMESTAMP 1; e.g. "
        + err[0].split("; e.g. ")[1]
    )
    assert "UNKNOWN_TYPE: unknown transaction type" in err[0] and "accepted (any case): buy, gift, redeem" in err[0]
    assert err[0].endswith(f"the run is not published, its outputs are in {staging}")
    assert (staging / "results").is_dir() and (staging / "dead_letter").is_dir()
    # Not published: the earlier run is untouched, even with --overwrite.
    assert json.loads((out / "run.json").read_text())["run_id"] == before["run_id"]
    assert f"outputs: {staging} (NOT published" in captured.out


def test_refused_without_overwrite_and_replaced_whole_with_it(work, onboarded, server_url, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(onboarded[2], out)
    (out / "report.html").write_text("<html>the earlier run</html>")
    (out / "offers.png").write_bytes(b"png")
    (out / "_staging-20200101T000000Z-deadbeef").mkdir()
    before = _run_folder_entries(out)
    first_id = json.loads((out / "run.json").read_text())["run_id"]

    code = cli.main(cli_args(work, out, server_url, "pipe_club_plain.yaml", "--max-dead-letter-ratio", "1"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"error: output {out} already holds a run (run.json); give a new folder, "
                                 "or --overwrite to replace that run and everything in the folder"]
    assert _run_folder_entries(out) == before

    # The limit off (1.0): the same mostly-rejected export runs to the end, with a warning.
    code, summary = cli.run(cli_args(work, out, server_url, "pipe_club_plain.yaml",
                                     "--max-dead-letter-ratio", "1", "--overwrite"))
    assert code == 0 and summary["run_id"] != first_id
    assert summary["dead_letter_limit"]["limit"] == 1.0 and summary["dead_letter_limit"]["exceeded"] is False
    assert ", no limit set)" in cli.format_summary(summary).splitlines()[1]
    assert _run_folder_entries(out) == {"results", "dead_letter", "metrics", "state", "run.json"}
    assert json.loads((out / "run.json").read_text())["run_id"] == summary["run_id"]
    assert pq.read_table(out / "dead_letter").num_rows == summary["accounting"]["dead_letter_rows"]


UNREACHABLE = "http://127.0.0.1:{port}"


@pytest.mark.parametrize("case, message", [
    ("pipe_header_default_partner",
     "header has no column 'MEMBER_ID' (input.columns.member_id in partner_options/default.yaml); columns are: "
     "customer|ts_utc|kind|pts|usd; the header splits on '|' into 5 columns: set input.delimiter: '|' and "
     "input.columns to those names in partner_options/default.yaml"),
    ("renamed_column",
     "header has no column 'ts_utc' (input.columns.timestamp in {work}/pipe_club.yaml); columns are: "
     "customer,when,kind,pts,usd; set input.columns.timestamp in {work}/pipe_club.yaml to the name this "
     "export uses (one of the columns above)"),
    ("unreachable",
     "cannot reach ATS endpoint {url}/ml/ats/predict: connection refused; point the run at a service that is up "
     "with --endpoint-url http://HOST:PORT, or start the reference service from the repository root: "
     "uvicorn app:app --port 8000"),
    ("unknown_partner", "unknown partner 'pipeclub': no {partners}/pipeclub.yaml; available partners: "),
    ("bad_ratio", "--max-dead-letter-ratio 1.5 is not between 0 and 1 (1 turns the check off)"),
])
def test_errors_say_how_to_fix_them_in_one_line(case, message, work, tmp_path, capsys):
    url = UNREACHABLE.format(port=free_port())
    export = work / "export.psv"
    argv = ["--input", str(export), "--output", str(tmp_path / "out"), "--partner-config", str(work / "pipe_club.yaml"),
            "--as-of", AS_OF.isoformat(), "--endpoint-url", url]
    if case == "pipe_header_default_partner":
        argv[4:6] = ["--partner", "default"]
    elif case == "renamed_column":
        export = tmp_path / "renamed.psv"
        export.write_text("customer,when,kind,pts,usd\nC1,01/01/2024 10:00,Purchase,1,1\n")
        argv[1] = str(export)
        (work / "comma.yaml").write_text(PARTNER.replace('"|"', '","'))
        argv[5] = str(work / "comma.yaml")
        message = message.replace("pipe_club.yaml", "comma.yaml")
    elif case == "unknown_partner":
        argv[4:6] = ["--partner", "pipeclub"]
    elif case == "bad_ratio":
        argv += ["--max-dead-letter-ratio", "1.5"]
    code = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: ")
    assert message.format(work=work, url=url, partners=ROOT / "partner_options") in err[0], err[0]
    if case == "unknown_partner":
        assert "default, legacy_export" in err[0] and "--partner-config FILE" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, message", [
    (["--partner", "pipeclub"], "error: unknown partner 'pipeclub'"),
    (["--partner-config", "/no/such/partner.yaml"], "error: partner file /no/such/partner.yaml does not exist "
                                                    "(shipped partners, for --partner NAME: "),
])
def test_generate_errors_are_one_line_with_exit_2(argv, message, tmp_path, capsys):
    assert generate.main([*argv, "--out", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err
