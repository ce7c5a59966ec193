"""The HTML report renders from a real small run, embeds every figure, and copes with odd runs."""
from __future__ import annotations

import base64
import datetime as dt
import json
import re
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_pipeline import report
from lantern.features import SPEC_FEATURES
from transforms.results import DEAD_LETTER_SCHEMA, feature_columns, result_row, results_schema

PNG = b"\x89PNG\r\n\x1a\n"


def _embedded(page: str) -> dict[str, bytes]:
    """alt text -> PNG bytes of every embedded image."""
    return {alt: base64.b64decode(data) for alt, data in
            re.findall(r"<img alt='([^']*)' src='data:image/png;base64,([A-Za-z0-9+/=]+)'>", page)}


@pytest.fixture(scope="module")
def built(small_run, tmp_path_factory):
    _, run, output = small_run
    folder = tmp_path_factory.mktemp("report") / "out"
    shutil.copytree(output, folder)
    assert report.main([str(folder)]) == 0
    return run, folder, (folder / report.REPORT_HTML).read_text(encoding="utf-8")


def test_every_figure_is_written_and_embedded(built):
    _, folder, page = built
    images = _embedded(page)
    for name, title in report.FIGURES:
        png = (folder / name).read_bytes()
        assert png.startswith(PNG) and len(png) > 5000, name
        assert images[title] == png, name  # the page carries the same figure, no external file needed
    assert "src='http" not in page and "<script" not in page


def test_page_answers_offers_times_and_rejections(built):
    run, _, page = built
    acc = run["accounting"]
    assert report.headline(run) in page
    for offer, n in run["offers"].items():
        assert f"{n:,} got {offer}" in page
    for step in run["steps"]:
        assert f"<td>{step['name']}</td>" in page
    for kind in ("ats", "resp", "offer"):
        assert f"<td>{kind}</td><td class='n'>{acc['members_ok']:,}</td>" in page
        limit = run["concurrency_limit"][kind]
        assert f"{limit['mean']:,.1f} ({limit['min']:,}\u2013{limit['max']:,})</td>" in page
    assert "MISSING_MEMBER_ID" in page and "M-BAD,yesterday,buy,10,1.5" in page
    assert "No member failed." in page


def _synthetic_run(folder, statuses, dead_rows):
    """A published-looking folder with chosen member statuses and dead letters."""
    as_of = dt.date(2026, 11, 24)
    columns = feature_columns(SPEC_FEATURES)
    features = dict.fromkeys(SPEC_FEATURES, 1.0) | {"DAYS_SINCE_LAST_TRANSACTION": 3}
    rows = []
    for i, status in enumerate(statuses):
        if status == "NO_TRANSACTIONS":
            rows.append(result_row(f"m{i}", {"N_TRANSACTIONS": 0, "FEATURES": None}, None, columns, "default", as_of))
            continue
        called = status == "OK"
        decision = {"STATUS": status, "ATTEMPTS": 3, "ATS_LATENCY_MS": 5.0, "RESP_LATENCY_MS": 6.0,
                    "ERROR": "ats: HTTP 500: <b>boom</b>" if status == "FAILED" else None,
                    "ATS_PREDICTION": 10.0 if called else None,
                    "RESP_PREDICTION": 0.5 if called else None,
                    "OFFER": "OFFER_1" if called else None,
                    "OFFER_LATENCY_MS": 4.0 if called else None}
        rows.append(result_row(f"m{i}", {"N_TRANSACTIONS": 2, "FEATURES": features}, decision, columns,
                               "default", as_of))
    (folder / "results").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=results_schema(SPEC_FEATURES)), folder / "results" / "p.parquet")
    (folder / "dead_letter").mkdir()
    pq.write_table(pa.Table.from_pylist(dead_rows, schema=DEAD_LETTER_SCHEMA), folder / "dead_letter" / "p.parquet")
    ok = statuses.count("OK")
    summary = {
        "run_id": "r1", "partner": "default", "as_of": "2026-11-24", "runner": "DataflowRunner",
        "started_at": "2026-11-24T10:00:00+00:00", "finished_at": "2026-11-24T10:01:00+00:00",
        "wall_seconds": 60.0, "exit_code": 3,
        "accounting": {"rows_read": 2 * len(statuses) + len(dead_rows), "header_lines": 1,
                       "transactions": 2 * len(statuses), "member_only_rows": 0,
                       "dead_letter_rows": len(dead_rows), "members": len(statuses), "members_ok": ok,
                       "members_no_transactions": statuses.count("NO_TRANSACTIONS"),
                       "members_failed": statuses.count("FAILED"),
                       "members_features_only": statuses.count("FEATURES_ONLY")},
        "offers": {"OFFER_1": ok} if ok else {}, "dead_letter_reasons": {},
        # as Dataflow reports them: no execution times, bundle times for the timed DoFns only
        "steps": [{"name": "parse", "transform": "Parse", "unit": "rows", "elements": 4, "seconds": None,
                   "per_second": None, "seconds_source": None}],
        "latency_ms": {"ats": {}, "resp": {}, "offer": {}}, "requests": {}, "inputs": [],
        "output": str(folder), "options": {}, "versions": {},
    }
    (folder / "run.json").write_text(json.dumps(summary))


def test_renders_a_run_with_failures_no_offers_and_no_dead_letters(tmp_path):
    _synthetic_run(tmp_path, ["FAILED", "FAILED", "NO_TRANSACTIONS", "FEATURES_ONLY"], [])
    page = (tmp_path / report.REPORT_HTML)
    report.build_report(str(tmp_path))
    text = page.read_text(encoding="utf-8")
    assert len(_embedded(text)) == len(report.FIGURES)
    assert "No input row was rejected." in text
    assert "2 members failed after retries" in text
    assert "none got an offer, 1 got features only" in text
    assert "<tr><td>FEATURES_ONLY</td><td class='n'>1</td>" in text
    assert "&lt;b&gt;boom&lt;/b&gt;" in text and "<b>boom</b>" not in text  # endpoint text is escaped


def test_a_folder_without_run_json_is_a_one_line_error(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2
    assert "has no run.json" in capsys.readouterr().err


def test_large_runs_draw_a_fixed_sample_of_the_scatter(built, monkeypatch):
    _, folder, _ = built
    summary, results, _, _ = report.load_run(str(folder))
    monkeypatch.setattr(report, "SCATTER_POINTS", 10)
    ax = report.fig_ats_resp(summary, results).axes[0]
    drawn = sum(len(c.get_offsets()) for c in ax.collections)
    assert drawn <= 10 + len(summary["offers"]) and "drawn" in ax.get_title()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [f"{o} ({n:,} members)" for o, n in sorted(summary["offers"].items())]


@pytest.fixture(scope="module")
def shifted(small_run, tmp_path_factory):
    """The small run with AVG_REVENUE_USD doubled, reported against the small run."""
    _, _, output = small_run
    shifted = tmp_path_factory.mktemp("baseline") / "shifted"
    shutil.copytree(output, shifted)
    table = pq.read_table(shifted / "results")
    i = table.column_names.index("AVG_REVENUE_USD")
    doubled = pa.array([None if v is None else 2 * v for v in table.column(i).to_pylist()], pa.float64())
    shutil.rmtree(shifted / "results")
    (shifted / "results").mkdir()
    pq.write_table(table.set_column(i, "AVG_REVENUE_USD", doubled), shifted / "results" / "part.parquet")
    assert report.main([str(shifted), "--baseline", str(output)]) == 0
    return shifted


def test_a_run_against_itself_has_psi_0_and_no_flags(small_run):
    from lantern.comparison import compare

    _, _, output = small_run
    summary, results, _, _ = report.load_run(str(output))
    result = compare(summary, results, summary, results, report.feature_names(results))
    assert len(result["columns"]) == len(SPEC_FEATURES) + 2
    assert all(c["psi"] == 0.0 and c["ks"] == 0.0 and c["flag"] is None for c in result["columns"])
    assert result["members"]["new"] == result["members"]["gone"] == result["members"]["kept_changed_outcome"] == 0
    assert result["headline"].endswith("offer mix stable; no feature or prediction drifted")


def test_the_shifted_feature_is_flagged_drawn_and_named_in_the_headline(shifted):
    result = json.loads((shifted / report.COMPARISON_JSON).read_text())
    assert [c["column"] for c in result["columns"] if c["flag"]] == ["AVG_REVENUE_USD"]
    psi = next(c["psi"] for c in result["columns"] if c["column"] == "AVG_REVENUE_USD")
    assert psi > 0.25 and f"AVG_REVENUE_USD drifted (PSI {psi:.2f})" in result["headline"]
    page = (shifted / report.REPORT_HTML).read_text(encoding="utf-8")
    images = _embedded(page)
    for name, title in (*report.FIGURES, *report.BASELINE_FIGURES):
        png = (shifted / name).read_bytes()
        assert png.startswith(PNG) and len(png) > 5000, name
        assert images[title] == png, name
    assert f"<b style='color:{report.FLAG_COLORS['major']}'>{psi:.3f} major</b>" in page
    assert "<h2>Since the baseline</h2>" in page and f"<p class='lead'>{result['headline']}</p>" in page


def test_a_bad_baseline_is_a_one_line_error(built, tmp_path, capsys):
    _, folder, _ = built
    assert report.main([str(folder), "--baseline", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path} has no run.json: not the output folder of a finished run\n"
