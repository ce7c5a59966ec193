"""``python -m beam_pipeline.report OUTPUT_DIR``: one HTML page that says how a run went.

Reads what a run published (``run.json``, ``results/``, ``dead_letter/``,
``metrics/``) and writes ``report.html`` beside it, self-contained (figures
embedded as data URIs, so it can be mailed or attached to a ticket), plus each
figure as a PNG. The page answers first what a newcomer asks: how many members
got which offer, how long each step and each endpoint took, which rows were
rejected and why. It reads batch, ``--retry-failed``, incremental and streaming
outputs (a stream adds its updates over time, transaction-to-offer latency and
result windows). With ``--baseline PREVIOUS_OUTPUT`` it also says what moved
since that run ("Since the baseline", from ``lantern.comparison``) and writes
``comparison.json`` and ``comparison_members.parquet`` beside the page.

A folder that is not a finished run's output is refused in one line (exit 2)
before anything is drawn, and nothing is written. It needs matplotlib and
scipy: ``pip install -e ".[report]"``.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys

from beam_pipeline.outputs import join
from beam_pipeline.report.baseline import COMPARISON_JSON, FLAG_COLORS, MEMBER_CHANGES
from beam_pipeline.report.folder import ReportError, Run, load_run

log = logging.getLogger(__name__)

REPORT_HTML = "report.html"
# The figures, in page order: (file name, title). Tests check each one is on the page.
FIGURES = (
    ("offers.png", "Offer mix"),
    ("statuses.png", "Member status mix"),
    ("steps.png", "Time and rate per step"),
    ("latency.png", "Request latency per endpoint"),
    ("dead_letters.png", "Rejected rows by reason"),
    ("features.png", "Feature distributions"),
    ("ats_resp.png", "ATS vs RESP, coloured by offer"),
)
# A streaming output's own figures (it has no steps figure).
STREAM_FIGURES = (
    ("stream_updates.png", "Member updates over time"),
    ("stream_latency.png", "Transaction to offer latency"),
    ("stream_windows.png", "Updates per result window"),
)
# With --baseline only, in page order.
BASELINE_FIGURES = (
    ("baseline_offers.png", "Offer mix, baseline and now"),
    ("baseline_drift.png", "Feature and prediction distributions, baseline and now"),
)
TITLES = dict(FIGURES + STREAM_FIGURES + BASELINE_FIGURES)

__all__ = ["BASELINE_FIGURES", "COMPARISON_JSON", "FIGURES", "FLAG_COLORS", "MEMBER_CHANGES", "REPORT_HTML",
           "STREAM_FIGURES", "ReportError", "Run", "build_report", "load_run", "main"]


def figure_names(run: Run) -> list[str]:
    names = [n for n, _ in FIGURES if not (run.streaming and n == "steps.png")]
    return names + ([n for n, _ in STREAM_FIGURES] if run.streaming else [])


def _draw(run: Run) -> dict[str, bytes]:
    from beam_pipeline.report import charts, stream

    makers = {"offers.png": charts.fig_offers, "statuses.png": charts.fig_statuses, "steps.png": charts.fig_steps,
              "latency.png": charts.fig_latency, "dead_letters.png": charts.fig_dead_letters,
              "features.png": charts.fig_features, "ats_resp.png": charts.fig_ats_resp,
              "stream_updates.png": stream.fig_updates, "stream_latency.png": stream.fig_txn_to_offer,
              "stream_windows.png": stream.fig_windows}
    return {name: charts.png(makers[name](run)) for name in figure_names(run)}


def render_html(run: Run, images: dict, comparison: dict | None = None) -> str:
    from beam_pipeline.report import baseline, markup, sections, stream

    def img(name: str) -> str:
        return markup.img(images, TITLES, name)

    s = run.summary
    lead = stream.headline(run) if run.streaming else sections.headline(s)
    body = [
        f"<h1>Offer pipeline run — partner {markup.e(s['partner'])}, as of {markup.e(s.get('as_of'))}</h1>",
        f"<p class='lead'>{markup.e(lead)}</p>",
        sections.stale_notice(run),
        baseline.section(comparison, img) if comparison is not None else "",
        stream.section(run, img) if run.streaming else "",
        sections.section_members(run, img),
        "" if run.streaming else sections.section_steps(run, img),
        sections.section_endpoints(run, img),
        sections.section_rejected(run, img),
        sections.section_features(run, img),
        sections.section_details(run),
    ]
    return markup.page(f"Lantern run {s['run_id']}", "".join(body))


def _write(path: str, data: bytes) -> None:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(path) as handle:
        handle.write(data)


def build_report(output: str, baseline: str | None = None) -> str:
    """Write the PNGs and report.html into ``output``; returns the report's path.

    With ``baseline`` (a previous run's output folder), also the "Since the
    baseline" section, its figures, ``comparison.json`` and the per-member changes.
    Everything is read, checked, compared and drawn before the first file is written.
    """
    run = load_run(output)
    files: dict[str, bytes] = {}
    comparison = None
    if baseline is not None:  # first: a bad baseline fails before anything is drawn
        import pyarrow.parquet as pq

        from beam_pipeline.report import baseline as section
        from beam_pipeline.report.charts import png
        from lantern.comparison import compare

        then = load_run(baseline)
        comparison, changes = compare(then.summary, then.results, run.summary, run.results,
                                      baseline_output=baseline, current_output=output)
        files[COMPARISON_JSON] = (json.dumps(comparison, indent=2) + "\n").encode("utf-8")
        buffer = io.BytesIO()
        pq.write_table(changes, buffer)
        files[MEMBER_CHANGES] = buffer.getvalue()
        files["baseline_offers.png"] = png(section.fig_offers(comparison))
        files["baseline_drift.png"] = png(section.fig_drift(comparison, then.results, run.results))
    images = _draw(run) | {k: v for k, v in files.items() if k.endswith(".png")}
    files.update(images)
    files[REPORT_HTML] = render_html(run, images, comparison).encode("utf-8")
    for name, data in files.items():
        _write(join(output, name), data)
    if comparison is not None:
        log.info("compared with the baseline %s: %s", baseline, comparison["headline"])
    path = join(output, REPORT_HTML)
    log.info("report written to %s", path)
    return path


def main(argv: list[str] | None = None) -> int:
    from beam_pipeline import logs

    parser = argparse.ArgumentParser(prog="python -m beam_pipeline.report", description=__doc__.splitlines()[0])
    parser.add_argument("output", help="output folder of a finished run (the pipeline's --output)")
    parser.add_argument("--baseline", metavar="PREVIOUS_OUTPUT",
                        help="a previous run's output folder: add 'Since the baseline' and write comparison.json")
    args = parser.parse_args(argv)
    logs.configure("WARNING")
    try:
        import matplotlib  # noqa: F401
        if args.baseline:
            import scipy  # noqa: F401
    except ImportError as exc:
        print(f'error: the report needs {exc.name}: pip install -e ".[report]"', file=sys.stderr)
        return 2
    try:
        path = build_report(args.output, args.baseline)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {path if '://' in path else os.path.abspath(path)}")
    return 0
