"""The HTML report renders from a real small run, embeds every figure, and copes with odd runs."""
from __future__ import annotations

import base64
import datetime as dt
import html
import json
import re
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_pipeline import report
from beam_pipeline.report import charts, sections
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
    assert sections.headline(run) in page
    for offer, n in run["offers"].items():
        assert f"{n:,} got {offer}" in page
    for step in run["steps"]:
        assert f"<td>{step['name']}</td>" in page
    for kind in ("ats", "resp", "offer"):
        assert f"<td>{kind}</td><td class='n'>{acc['members_ok']:,}</td>" in page
    for header in ("p50 (ms)", "p95 (ms)", "p99 (ms)", "max (ms)", "share of all members", "rate (elements/s)"):
        assert f"<th>{header}</th>" in page
        limit = run["concurrency_limit"][kind]
        assert f"{limit['mean']:,.1f} ({limit['min']:,}\u2013{limit['max']:,})</td>" in page
    assert "MISSING_MEMBER_ID" in page
    assert "<code class='raw'>M-BAD,<wbr>yesterday,<wbr>buy,<wbr>10,<wbr>1.5</code>" in page  # wraps between fields
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
    run = report.load_run(str(folder))
    summary = run.summary
    monkeypatch.setattr(charts, "SCATTER_POINTS", 10)
    ax = charts.fig_ats_resp(run).axes[0]
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
    run = report.load_run(str(output))
    result, changes = compare(run.summary, run.results, run.summary, run.results)
    assert len(result["columns"]) == len(SPEC_FEATURES) + 2
    assert all(c["psi"] == 0.0 and c["ks"] == 0.0 and c["flag"] is None for c in result["columns"])
    assert result["members"]["new"] == result["members"]["gone"] == result["members"]["kept_changed_outcome"] == 0
    assert result["headline"].endswith("offer mix stable; no feature or prediction drifted")
    assert changes.num_rows == 0


def test_the_shifted_feature_is_flagged_drawn_and_named_in_the_headline(shifted):
    result = json.loads((shifted / report.COMPARISON_JSON).read_text())
    assert [c["column"] for c in result["columns"] if c["flag"]] == ["AVG_REVENUE_USD"]
    column = next(c for c in result["columns"] if c["column"] == "AVG_REVENUE_USD")
    # 59 members: too few for KS or the mean test to be sure; PSI flags it
    assert column["psi"] > 0.25 and "psi" in column["flagged_by"]
    assert "AVG_REVENUE_USD drifted (" in result["headline"] and f"PSI {column['psi']:.2f})" in result["headline"]
    assert result["baseline"]["output"].endswith("out") and result["members"]["kept_changed_features"] > 0
    page = (shifted / report.REPORT_HTML).read_text(encoding="utf-8")
    images = _embedded(page)
    for name, title in (*report.FIGURES, *report.BASELINE_FIGURES):
        png = (shifted / name).read_bytes()
        assert png.startswith(PNG) and len(png) > 5000, name
        assert images[title] == png, name
    assert f"<b style='color:{report.FLAG_COLORS['major']}'>major: {', '.join(column['flagged_by'])}</b>" in page
    changes = pq.read_table(shifted / report.MEMBER_CHANGES)
    assert changes.num_rows == result["members"]["kept_changed_features"]
    assert all(r == ["AVG_REVENUE_USD"] for r in changes.column("FEATURES_CHANGED").to_pylist())
    assert "<h2>Since the baseline</h2>" in page and f"<p class='lead'>{html.escape(result['headline'])}</p>" in page


def test_a_bad_baseline_is_a_one_line_error(built, tmp_path, capsys):
    _, folder, _ = built
    assert report.main([str(folder), "--baseline", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path} has no run.json: not the output folder of a finished run\n"


def test_every_step_is_in_the_step_chart_and_untimed_ones_say_so(tmp_path):
    _synthetic_run(tmp_path, ["OK", "NO_TRANSACTIONS"], [])
    run = report.load_run(str(tmp_path))
    fig = charts.fig_steps(run)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["parse"] and "not timed: the launcher did not wait for the job" in texts
    assert fig.axes[0].get_xlabel() == "seconds"
    run.summary["launcher_wall_seconds"] = 61.0  # a launcher that waited, on a runner without step times
    assert "not timed by this runner" in [t.get_text() for ax in charts.fig_steps(run).axes for t in ax.texts]


def test_every_chart_axis_has_a_label(built):
    _, folder, _ = built
    run = report.load_run(str(folder))
    for make in (charts.fig_offers, charts.fig_statuses, charts.fig_steps, charts.fig_latency,
                 charts.fig_dead_letters, charts.fig_features, charts.fig_ats_resp):
        for ax in make(run).axes:
            if ax.get_visible() and (ax.patches or ax.collections or ax.lines):  # an axis with data drawn
                assert ax.get_xlabel() and ax.get_ylabel(), (make.__name__, ax.get_title())


def test_the_stale_data_notice(tmp_path):
    _synthetic_run(tmp_path, ["OK"], [])
    report.build_report(str(tmp_path))
    assert "class='notice'" not in (tmp_path / report.REPORT_HTML).read_text()  # 3 days: no notice
    table = pq.read_table(tmp_path / "results" / "p.parquet")
    i = table.column_names.index("DAYS_SINCE_LAST_TRANSACTION")
    pq.write_table(table.set_column(i, "DAYS_SINCE_LAST_TRANSACTION", pa.array([800], pa.int64())),
                   tmp_path / "results" / "p.parquet")
    report.build_report(str(tmp_path))
    assert "the newest transaction in this run is 800 days (about 2.2 years) before the as-of date 2026-11-24" \
        in (tmp_path / report.REPORT_HTML).read_text()


def _listing(folder) -> set:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "run.json").unlink(), "has no run.json: not the output folder of a finished run"),
    (lambda f: ((f / "run.json").unlink(), (f / "_staging-r2").mkdir(), (f / "_staging-r2" / "job.json").write_text("{}")),
     "has no run.json yet: its run is pending"),
    (lambda f: (f / "run.json").write_text("[1, 2]"), "is not a Lantern run summary"),
    (lambda f: (f / "run.json").write_text("{not json"), "is not JSON"),
    (lambda f: shutil.rmtree(f / "results"), "/results has no Parquet files: not a complete run output"),
    (lambda f: shutil.rmtree(f / "dead_letter"), "/dead_letter has no Parquet files"),
    (lambda f: ((f / "results" / "p.parquet").unlink(), pq.write_table(pa.table({"x": [1]}), f / "results" / "x.parquet")),
     "results lacks MEMBER_ID, N_TRANSACTIONS, OFFER, STATUS: not a Lantern run's output"),
    (lambda f: (f / "results" / "p.parquet").write_bytes(b"not parquet"), "/results cannot be read as Parquet"),
])
def test_a_partial_or_foreign_folder_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, damage, message):
    folder = tmp_path / "out"
    _synthetic_run(folder, ["OK", "FAILED"], [])
    damage(folder)
    before = _listing(folder)
    assert report.main([str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert _listing(folder) == before


def test_a_bad_baseline_writes_nothing(built, tmp_path, capsys):
    _, folder, _ = built
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    assert report.main([str(folder), "--baseline", str(tmp_path / "nowhere")]) == 2
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before


def test_a_retry_output_reports(small_run, tmp_path, server_url):
    from beam_pipeline import cli

    _, _, output = small_run
    code, _ = cli.run(["--retry-failed", str(output), "--output", str(tmp_path / "retry"),
                       "--endpoint-url", server_url, "--heartbeat-seconds", "0"])
    assert code == 0
    assert report.main([str(tmp_path / "retry")]) == 0
    page = (tmp_path / "retry" / report.REPORT_HTML).read_text()
    assert "(retry)" in page and "<td>read_previous</td>" in page


def _stream_run(folder):
    """A streaming output as the replay writes it: windowed result files, one row per update."""
    from transforms.results import stream_results_schema

    _synthetic_run(folder, ["OK", "OK", "NO_TRANSACTIONS"], [])
    batch = pq.read_table(folder / "results" / "p.parquet")
    shutil.rmtree(folder / "results")
    (folder / "results").mkdir()
    schema = stream_results_schema(SPEC_FEATURES)
    t0 = dt.datetime(2026, 11, 24, 10, 0, tzinfo=dt.timezone.utc)
    for w, (rows, seq) in enumerate((([0, 1, 2], 0), ([0, 1], 3))):
        updates = batch.take(rows).to_pylist()
        for k, row in enumerate(updates):
            at = t0 + dt.timedelta(seconds=60 * w + k)
            row |= {"UPDATE_SEQ": seq + k, "LAST_TRANSACTION_AT": at, "RECEIVED_AT": at, "FEATURES_AT": at,
                    "DECIDED_AT": at + dt.timedelta(seconds=2),
                    "TXN_TO_OFFER_MS": 2000.0 + k if row["OFFER"] else None}
        table = pa.Table.from_pylist(updates, schema=schema)
        for shard in range(2):  # a window's rows in two shard files
            name = f"part-2026-11-24T10:0{w}:00-2026-11-24T10:0{w + 1}:00-shard{shard:02d}-000000.parquet"
            pq.write_table(table.slice(shard, 1) if shard == 0 else table.slice(1), folder / "results" / name)
    shutil.rmtree(folder / "dead_letter")
    (folder / "dead_letter").mkdir()  # a stream with no dead letter writes no file
    summary = json.loads((folder / "run.json").read_text())
    summary = {k: summary[k] for k in ("run_id", "partner", "as_of", "runner", "started_at", "finished_at",
                                       "wall_seconds", "output", "versions", "latency_ms")}
    summary |= {"streaming": True, "replay": {"rate_per_s": 100.0, "debounce_s": 5.0, "idle_days": 30.0},
                "accounting": {"rows_replayed": 12, "transactions": 10, "dead_letter_rows": 0,
                               "member_only_rows": 2, "members": 3, "updates": 5, "updates_ok": 4,
                               "updates_no_transactions": 1, "updates_failed": 0},
                "txn_to_offer_ms": {"p50": 2000.5, "p95": 2001.0, "p99": 2001.0}}
    (folder / "run.json").write_text(json.dumps(summary))


def test_a_streaming_output_reports_updates_latency_and_windows(tmp_path, capsys):
    _stream_run(tmp_path)
    assert report.main([str(tmp_path)]) == 0
    page = (tmp_path / report.REPORT_HTML).read_text()
    images = _embedded(page)
    names = [n for n, _ in report.FIGURES if n != "steps.png"] + [n for n, _ in report.STREAM_FIGURES]
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(names)
    assert len(images) == len(names)
    assert page.count("<h2>Stream</h2>") == 1 and "Time per step" not in page
    assert "5 updates for 3 members (0 failed); at each member&#x27;s latest update 2 got OFFER_1" in page
    assert "<td>2026-11-24T10:00:00</td><td>2026-11-24T10:01:00</td><td class='n'>2</td><td class='n'>3</td>" in page
    assert "<td>2026-11-24T10:01:00</td><td>2026-11-24T10:02:00</td><td class='n'>2</td><td class='n'>2</td>" in page


def test_a_streaming_output_compares_with_a_batch_baseline(tmp_path):
    _synthetic_run(tmp_path / "batch", ["OK", "OK", "NO_TRANSACTIONS"], [])
    _stream_run(tmp_path / "stream")
    assert report.main([str(tmp_path / "stream"), "--baseline", str(tmp_path / "batch")]) == 0
    result = json.loads((tmp_path / "stream" / report.COMPARISON_JSON).read_text())
    assert result["members"]["now"] == 3 and result["members"]["kept_changed_outcome"] == 0


def test_an_incremental_output_reports_its_state(tmp_path):
    _synthetic_run(tmp_path, ["OK", "NO_TRANSACTIONS"], [])
    summary = json.loads((tmp_path / "run.json").read_text())
    summary |= {"incremental_from": "r0", "incremental_from_output": "/day1",
                "state": {"members": 2, "members_carried_over": 1, "members_updated": 1, "members_new": 0,
                          "transactions": 4, "inputs_folded": 2, "layout_version": 1}}
    (tmp_path / "run.json").write_text(json.dumps(summary))
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "part-0.parquet").write_bytes(b"")  # the report does not read the state itself
    assert report.main([str(tmp_path)]) == 0
    page = (tmp_path / report.REPORT_HTML).read_text()
    assert "(incremental)" in page and "member state of run <code>r0</code>" in page
    assert "<tr><td>members carried over</td><td class='n'>1</td></tr>" in page
