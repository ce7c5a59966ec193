"""``python -m beam_pipeline.report OUTPUT_DIR``: one HTML page that says how a run went.

Reads what a run published (``run.json``, ``results/``, ``dead_letter/``,
``metrics/``) and writes ``report.html`` beside it, self-contained (figures
embedded as data URIs, so it can be mailed or attached to a ticket), plus each
figure as a PNG. The page answers first what a newcomer asks: how many members
got which offer, how long each step and each endpoint took, which rows were
rejected and why. With ``--baseline PREVIOUS_OUTPUT`` it also says what moved
since that run ("Since the baseline", from ``beam_pipeline.comparison``) and
writes the numbers to ``comparison.json`` beside the page. It needs matplotlib
and scipy: ``pip install -e ".[report]"``.
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from beam_pipeline.outputs import RUN_JSON, join

log = logging.getLogger(__name__)

REPORT_HTML = "report.html"
COMPARISON_JSON = "comparison.json"
KINDS = ("ats", "resp", "offer")
# The figures, in page order: (file name, title). Tests check each one is on the page.
FIGURES = (
    ("offers.png", "Offer mix"),
    ("statuses.png", "Member status mix"),
    ("steps.png", "Time and throughput per step"),
    ("latency.png", "Request latency per endpoint"),
    ("dead_letters.png", "Rejected rows by reason"),
    ("features.png", "Feature distributions"),
    ("ats_resp.png", "ATS vs RESP, coloured by offer"),
)
# With --baseline only, in page order.
BASELINE_FIGURES = (
    ("baseline_offers.png", "Offer mix, baseline and now"),
    ("baseline_drift.png", "Feature and prediction distributions, baseline and now"),
)
HIST_BINS = 30
HIST_CLIP = (0.5, 99.5)  # percentiles of both runs together: a long tail would squash every bar
FLAG_COLORS = {"major": "#c62828", "moderate": "#ef6c00", None: "#222"}
EXAMPLES_PER_REASON = 5
FAILED_EXAMPLES = 20
SCATTER_POINTS = 20_000  # more only slows the drawing and hides nothing
_DPI = 100
NONE = "\u2013"  # an en dash: the report's mark for a missing value


class ReportError(RuntimeError):
    """The folder is not a finished run's output: no run.json, or its parts are missing."""


# ---------------------------------------------------------------- reading

def _read_table(folder: str, pattern: str = "*.parquet") -> pa.Table | None:
    matched = FileSystems.match([join(folder, pattern)])[0].metadata_list
    tables = []
    for meta in sorted(matched, key=lambda m: m.path):
        with FileSystems.open(meta.path, compression_type="uncompressed") as handle:
            tables.append(pq.read_table(handle))
    return pa.concat_tables(tables) if tables else None


def load_run(output: str) -> tuple[dict, pa.Table, pa.Table | None, pa.Table | None]:
    """run.json, results, dead letters and metrics of a published run."""
    summary_path = join(output, RUN_JSON)
    if not FileSystems.exists(summary_path):
        raise ReportError(f"{output} has no {RUN_JSON}: not the output folder of a finished run")
    with FileSystems.open(summary_path, compression_type="uncompressed") as handle:
        summary = json.loads(handle.read().decode("utf-8"))
    results = _read_table(join(output, "results"))
    if results is None:
        raise ReportError(f"{output}/results has no Parquet files")
    return summary, results, _read_table(join(output, "dead_letter")), _read_table(join(output, "metrics"))


# ---------------------------------------------------------------- figures

def _figure(width: float = 10, height: float = 4.2, ncols: int = 1, nrows: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=13, color="#555", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _share(n: int, total: int) -> str:
    """A percentage that stays readable for small shares (0.04%, not 0.0%)."""
    if not total:
        return NONE
    pct = 100 * n / total
    return f"{pct:.1f}%" if pct >= 1 or pct == 0 else f"{pct:.2g}%"


def _bars(ax, counts: dict, color, horizontal: bool = False, total: int | None = None) -> None:
    """Bars with their count (and share of ``total``) written on them."""
    labels = [str(k) for k in counts]
    values = list(counts.values())
    total = total or sum(values)
    bars = (ax.barh if horizontal else ax.bar)(labels, values, color=color)
    texts = [f"{v:,} ({_share(v, total)})" for v in values]
    ax.bar_label(bars, texts, padding=3, fontsize=10)
    if horizontal:
        ax.invert_yaxis()
        ax.set_xlim(0, max(values) * 1.35 if values else 1)
    else:
        ax.set_ylim(0, max(values) * 1.18 if values else 1)
    ax.grid(axis="x" if horizontal else "y", alpha=0.3)


def _palette(names) -> dict:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(sorted(names, key=str))}


def fig_offers(summary: dict, results: pa.Table):
    fig, (ax,) = _figure(8, 4)
    offers = summary.get("offers") or {}
    if offers:
        colors = _palette(offers)
        _bars(ax, offers, [colors[k] for k in offers])
        ax.set_ylabel("members")
        ax.set_title(f"Offer per member ({sum(offers.values()):,} members got an offer)")
    else:
        _empty(ax, "no member got an offer")
    return fig


STATUS_COLORS = {"OK": "#2e7d32", "NO_TRANSACTIONS": "#9e9e9e", "FAILED": "#c62828"}


def status_counts(results: pa.Table) -> dict[str, int]:
    """Members per status: the three of SPEC §4 always, then any other the run wrote (FEATURES_ONLY)."""
    counts = Counter(results.column("STATUS").to_pylist())
    ordered = {s: counts.get(s, 0) for s in STATUS_COLORS}
    ordered.update({s: n for s, n in sorted(counts.items(), key=lambda kv: str(kv[0])) if s not in ordered})
    return ordered


def fig_statuses(summary: dict, results: pa.Table):
    fig, (ax,) = _figure(8, 4)
    ordered = status_counts(results)
    _bars(ax, ordered, [STATUS_COLORS.get(s, "#1565c0") for s in ordered])
    ax.set_ylabel("members")
    ax.set_title(f"Status per member ({results.num_rows:,} members)")
    return fig


def fig_steps(summary: dict, results: pa.Table):
    steps = summary.get("steps") or []
    fig, (left, right) = _figure(12, 4.5, ncols=2)
    timed = [s for s in steps if s.get("seconds") is not None]
    if not timed:
        _empty(left, "this runner reported no step times")
        _empty(right, "")
        return fig
    names = [s["name"] for s in timed]
    bars = left.barh(names, [s["seconds"] for s in timed], color="#1565c0")
    left.bar_label(bars, [f"{s['seconds']:.2f}s" for s in timed], padding=3)
    left.invert_yaxis()
    left.set_xlim(0, max(s["seconds"] for s in timed) * 1.3 or 1)
    left.set_xlabel("seconds")
    left.set_title("Time per step")
    rates = [s for s in timed if s.get("per_second")]
    bars = right.barh([s["name"] for s in rates], [s["per_second"] for s in rates], color="#6a1b9a")
    right.bar_label(bars, [f"{s['per_second']:,.0f} {s['unit']}/s" for s in rates], padding=3)
    right.invert_yaxis()
    right.set_xscale("log")
    if rates:
        right.set_xlim(min(s["per_second"] for s in rates) / 2, max(s["per_second"] for s in rates) * 30)
    right.set_xlabel("elements per second (log scale)")
    right.set_title("Throughput per step")
    for ax in (left, right):
        ax.grid(axis="x", alpha=0.3)
    return fig


def fig_latency(summary: dict, results: pa.Table):
    fig, axes = _figure(13, 4, ncols=3)
    percentiles = summary.get("latency_ms") or {}
    for ax, kind in zip(axes, KINDS, strict=True):
        column = results.column(f"{kind.upper()}_LATENCY_MS").drop_null().to_pylist()
        if not column:
            _empty(ax, f"no {kind} calls")
            ax.set_title(kind)
            continue
        ax.hist(column, bins=40, color="#00838f", histtype="stepfilled")
        for name, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
            value = percentiles.get(kind, {}).get(name)
            if value is not None:
                ax.axvline(value, color="#d84315", linestyle=style, label=f"{name} {value:.1f} ms")
        if percentiles.get(kind):
            ax.legend(fontsize=9)
        ax.set_title(f"{kind} ({len(column):,} members)")
        ax.set_xlabel("ms per call, retries included")
        ax.set_ylabel("members")
        ax.grid(alpha=0.3)
    return fig


def fig_dead_letters(summary: dict, results: pa.Table):
    reasons = summary.get("dead_letter_reasons") or {}
    fig, (ax,) = _figure(9, max(2.5, 0.5 * len(reasons) + 1.5))
    if not reasons:
        _empty(ax, "no rejected rows")
        return fig
    ordered = dict(sorted(reasons.items(), key=lambda kv: -kv[1]))
    _bars(ax, ordered, "#ef6c00", horizontal=True, total=summary["accounting"]["rows_read"])
    ax.set_xlabel("rows (share of all rows read)")
    ax.set_title(f"{sum(reasons.values()):,} rejected rows by reason")
    return fig


def feature_names(results: pa.Table) -> list[str]:
    """Feature columns: those between MEMBER_ID and N_TRANSACTIONS in the results schema."""
    names = results.column_names
    start = names.index("MEMBER_ID") + 1
    end = names.index("N_TRANSACTIONS") if "N_TRANSACTIONS" in names else len(names)
    return names[start:end]


def fig_features(summary: dict, results: pa.Table):
    names = feature_names(results)
    ncols = 3
    nrows = max(1, -(-len(names) // ncols))
    fig, axes = _figure(13, 2.8 * nrows, ncols=ncols, nrows=nrows)
    for ax, name in zip(axes, names, strict=False):  # spare axes are hidden below
        values = results.column(name).drop_null().to_pylist()
        if values:
            ax.hist(values, bins=30, color="#5d4037", histtype="stepfilled")
        else:
            _empty(ax, "no values")
        ax.set_title(f"{name} (n={len(values):,})", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    return fig


def fig_ats_resp(summary: dict, results: pa.Table):
    fig, (ax,) = _figure(9, 6)
    called = results.filter(pc.and_(pc.is_valid(results.column("ATS_PREDICTION")),
                                    pc.is_valid(results.column("RESP_PREDICTION"))))
    if called.num_rows == 0:
        _empty(ax, "no member has both predictions")
        return fig
    title = "Predictions per member, coloured by the offer they got"
    offers = [o if o is not None else "no offer" for o in called.column("OFFER").to_pylist()]
    totals = Counter(offers)
    # Past SCATTER_POINTS, one member in `stride` of each offer: the same run gives the same
    # picture, and a rare offer keeps its points.
    stride = -(-called.num_rows // SCATTER_POINTS)
    if stride > 1:
        title += f" (1 member in {stride} drawn)"
    colors = _palette(totals)
    ats, resp = called.column("ATS_PREDICTION").to_pylist(), called.column("RESP_PREDICTION").to_pylist()
    for offer in sorted(totals, key=str):
        idx = [i for i, o in enumerate(offers) if o == offer][::stride]
        ax.scatter([ats[i] for i in idx], [resp[i] for i in idx], s=14, alpha=0.7, color=colors[offer],
                   label=f"{offer} ({totals[offer]:,} members)")
    ax.set_xlabel("ATS prediction")
    ax.set_ylabel("RESP prediction")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def fig_baseline_offers(comparison: dict):
    fig, (ax,) = _figure(9, 4)
    mix = comparison["offers"]
    offers = sorted(set(mix["then"]) | set(mix["now"]))
    if not offers:
        _empty(ax, "no member got an offer in either run")
        return fig
    total_then, total_now = sum(mix["then"].values()) or 1, sum(mix["now"].values()) or 1
    x = range(len(offers))
    width = 0.38
    for shift, label, counts, total, color in ((-width / 2, "baseline", mix["then"], total_then, "#90a4ae"),
                                               (width / 2, "now", mix["now"], total_now, "#1565c0")):
        shares = [100 * counts.get(o, 0) / total for o in offers]
        bars = ax.bar([i + shift for i in x], shares, width, label=label, color=color)
        ax.bar_label(bars, [f"{v:.1f}%" for v in shares], padding=2, fontsize=9)
    ax.set_xticks(list(x), offers)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.12)
    ax.set_ylabel("share of members with an offer (%)")
    psi = f"PSI {mix['psi']:.3f}" if mix["psi"] is not None else "PSI n/a"
    ax.set_title(f"Offer mix, baseline and now ({psi})")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return fig


def _hist_edges(then, now):
    import numpy as np

    both = np.concatenate([then, now])
    low, high = np.percentile(both, HIST_CLIP)
    if low == high:
        low, high = low - 0.5, high + 0.5
    return np.linspace(low, high, HIST_BINS + 1)


def fig_baseline_drift(comparison: dict, baseline: pa.Table, results: pa.Table):
    from lantern.comparison import finite, with_transactions

    columns = comparison["columns"]
    ncols = 3
    nrows = max(1, -(-len(columns) // ncols))
    fig, axes = _figure(13, 2.9 * nrows, ncols=ncols, nrows=nrows)
    then_rows, now_rows = with_transactions(baseline), with_transactions(results)
    for ax, col in zip(axes, columns, strict=False):  # spare axes are hidden below
        name = col["column"]
        then, now = finite(then_rows.column(name).to_pylist()), finite(now_rows.column(name).to_pylist())
        if len(then) and len(now):
            edges = _hist_edges(then, now)
            for values, label, color in ((then, "baseline", "#90a4ae"), (now, "now", "#1565c0")):
                clipped = values.clip(edges[0], edges[-1])
                ax.hist(clipped, bins=edges, weights=[100 / len(values)] * len(values), histtype="step",
                        linewidth=1.6, label=label, color=color)
            ax.legend(fontsize=7)
        else:
            _empty(ax, "no values in one of the runs")
        psi = f"PSI {col['psi']:.3f}" if col["psi"] is not None else "PSI n/a"
        flag = f" ({col['flag']})" if col["flag"] else ""
        ax.set_title(f"{name}: {psi}{flag}", fontsize=9, color=FLAG_COLORS.get(col["flag"], "#222"))
        ax.tick_params(labelsize=8)
        ax.set_ylabel("% of members", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(columns):]:
        ax.set_visible(False)
    return fig


FIGURE_MAKERS: dict[str, Callable] = {
    "offers.png": fig_offers,
    "statuses.png": fig_statuses,
    "steps.png": fig_steps,
    "latency.png": fig_latency,
    "dead_letters.png": fig_dead_letters,
    "features.png": fig_features,
    "ats_resp.png": fig_ats_resp,
}


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


# ---------------------------------------------------------------- HTML

def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _num(value, digits: int = 0) -> str:
    if value is None:
        return NONE
    if isinstance(value, float) and digits:
        return f"{value:,.{digits}f}"
    return f"{value:,.0f}" if isinstance(value, (int, float)) else _e(value)


def _table(header: list[str], rows: list[list], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(
            f"<td class='n'>{c}</td>" if i >= numeric_from else f"<td>{c}</td>" for i, c in enumerate(row)
        ) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(images: dict, name: str) -> str:
    title = dict(FIGURES + BASELINE_FIGURES)[name]
    data = base64.b64encode(images[name]).decode("ascii")
    return f"<figure><img alt='{_e(title)}' src='data:image/png;base64,{data}'><figcaption>{_e(title)} " \
           f"(<a href='{_e(name)}'>{_e(name)}</a>)</figcaption></figure>"


def headline(summary: dict) -> str:
    """The sentence a reader needs first, in plain words."""
    acc = summary["accounting"]
    offers = summary.get("offers") or {}
    offer_text = ", ".join(f"{n:,} got {o}" for o, n in offers.items()) or "none got an offer"
    if acc.get("members_features_only"):
        offer_text += f", {acc['members_features_only']:,} got features only (no endpoint calls)"
    return (
        f"{acc['members']:,} members: {offer_text}; {acc['members_no_transactions']:,} had no transactions "
        f"and {acc['members_failed']:,} failed. {acc['rows_read']:,} rows read, "
        f"{acc['dead_letter_rows']:,} rejected. Run took {summary['wall_seconds']:.1f}s."
    )


def _section_members(summary: dict, results: pa.Table, images: dict) -> str:
    acc = summary["accounting"]
    offers = summary.get("offers") or {}
    offer_rows = [[_e(o), _num(n), _share(n, acc["members"])] for o, n in offers.items()]
    status_rows = [[_e(s), _num(n), _share(n, acc["members"])] for s, n in status_counts(results).items()]
    closes = acc["rows_read"] == acc["transactions"] + acc["member_only_rows"] + acc["dead_letter_rows"]
    accounting = _table(["rows", "count"], [
        ["rows read (header lines excluded)", _num(acc["rows_read"])],
        ["transactions", _num(acc["transactions"])],
        ["member-only rows", _num(acc["member_only_rows"])],
        ["rejected rows (dead letters)", _num(acc["dead_letter_rows"])],
        ["accounting closes (read = transactions + member-only + rejected)", "yes" if closes else "<b>NO</b>"],
    ])
    return (
        "<h2>Members and offers</h2><div class='row'>"
        f"<div>{_table(['offer', 'members', 'share of members'], offer_rows)}"
        f"{_table(['status', 'members', 'share'], status_rows)}{accounting}</div>"
        f"<div>{_img(images, 'offers.png')}{_img(images, 'statuses.png')}</div></div>"
        f"{_img(images, 'ats_resp.png')}"
    )


ENDPOINT_COLUMNS = ["endpoint", "calls", "p50", "p95", "p99", "max", "ok", "errors", "retries", "throttled", "limit"]


def _section_time(summary: dict, images: dict) -> str:
    step_rows = [[_e(s["name"]), _num(s["elements"]), _e(s["unit"]),
                  _num(s["seconds"], 3) if s["seconds"] is not None else NONE, _num(s["per_second"])]
                 for s in summary.get("steps") or []]
    source = next((s.get("seconds_source") for s in summary.get("steps") or [] if s.get("seconds_source")), None)
    note = {"execution_time": "Seconds are Beam's execution time of each step, excluding the steps after it.",
            "bundle_ms": "Seconds are bundle wall times of each step's DoFn, including steps fused after it."
            }.get(source, "")
    latency = summary.get("latency_ms") or {}
    requests = summary.get("requests") or {}
    limits = summary.get("concurrency_limit") or {}
    endpoint_rows = []
    for kind in KINDS:
        lat, req, lim = latency.get(kind) or {}, requests.get(kind) or {}, limits.get(kind)
        errors = sum(v for k, v in req.items() if k not in ("ok", "retries", "throttled"))
        limit = f"{lim['mean']:,.1f} ({lim['min']:,}\u2013{lim['max']:,})" if lim else NONE
        endpoint_rows.append([_e(kind), _num(lat.get("count")), _num(lat.get("p50"), 1), _num(lat.get("p95"), 1),
                              _num(lat.get("p99"), 1), _num(lat.get("max"), 1), _num(req.get("ok")),
                              _num(errors), _num(req.get("retries", 0)), _num(req.get("throttled", 0)), _e(limit)])
    return (
        f"<h2>Time per step</h2><p>Wall time of the whole run: <b>{summary['wall_seconds']:.1f}s</b>. {note}</p>"
        f"{_table(['step', 'elements', 'unit', 'seconds', 'per second'], step_rows)}{_img(images, 'steps.png')}"
        "<h2>Endpoints</h2><p>Latency is the wall time of one call to the endpoint, retries included (ms), "
        "over the members that were called. The limit is the number of calls each worker let be in flight "
        "at once, learnt from latency and errors (mean over the run, and its range).</p>"
        f"{_table(ENDPOINT_COLUMNS, endpoint_rows)}"
        f"{_img(images, 'latency.png')}"
    )


def _section_rejected(summary: dict, dead: pa.Table | None, results: pa.Table, images: dict) -> str:
    reasons = summary.get("dead_letter_reasons") or {}
    parts = ["<h2>Rejected rows</h2>"]
    if not reasons:
        parts.append("<p>No input row was rejected.</p>")
        parts.append(_img(images, "dead_letters.png"))
    else:
        parts.append(_table(["reason", "rows", "share of rows read"], [
            [_e(r), _num(n), _share(n, summary["accounting"]["rows_read"])]
            for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])]))
        parts.append(_img(images, "dead_letters.png"))
        parts.append(f"<h3>Examples (up to {EXAMPLES_PER_REASON} per reason; all in dead_letter/)</h3>")
        examples, seen = [], Counter()
        for row in (dead.to_pylist() if dead is not None else []):
            if seen[row["REASON"]] < EXAMPLES_PER_REASON:
                seen[row["REASON"]] += 1
                examples.append(row)
        examples.sort(key=lambda r: r["REASON"])
        parts.append(_table(["reason", "detail", "raw line", "file"], [
            [_e(r["REASON"]), _e(r["DETAIL"]), f"<code>{_e(r['RAW_LINE'])}</code>", _e(r["SOURCE"])]
            for r in examples], numeric_from=99))
    failed = results.filter(pc.equal(results.column("STATUS"), "FAILED"))
    parts.append("<h2>Failed members</h2>")
    if failed.num_rows == 0:
        parts.append("<p>No member failed.</p>")
    else:
        rows = failed.select(["MEMBER_ID", "ERROR", "ATTEMPTS"]).to_pylist()[:FAILED_EXAMPLES]
        parts.append(f"<p>{failed.num_rows:,} members failed after retries (first {len(rows)} shown; "
                     "all in results/ with STATUS = FAILED).</p>")
        parts.append(_table(["member", "error", "attempts"],
                            [[_e(r["MEMBER_ID"]), _e(r["ERROR"]), _num(r["ATTEMPTS"])] for r in rows],
                            numeric_from=2))
    return "".join(parts)


def _section_features(results: pa.Table, images: dict) -> str:
    rows = []
    for name in feature_names(results):
        column = results.column(name).drop_null()
        if len(column) == 0:
            rows.append([_e(name), "0", NONE, NONE, NONE, NONE])
            continue
        column = column.cast(pa.float64())
        median = pc.quantile(column, q=[0.5]).to_pylist()[0]
        rows.append([_e(name), _num(len(column)), _num(pc.min(column).as_py(), 3), _num(median, 3),
                     _num(pc.mean(column).as_py(), 3), _num(pc.max(column).as_py(), 3)])
    return ("<h2>Features</h2><p>Members with transactions only (the others have no features).</p>"
            f"{_table(['feature', 'members', 'min', 'median', 'mean', 'max'], rows)}{_img(images, 'features.png')}")


def _section_details(summary: dict, metrics: pa.Table | None) -> str:
    inputs = _table(["input file", "bytes"], [[_e(i["path"]), _num(i["size_bytes"])] for i in summary.get("inputs") or []])
    versions = _table(["package", "version"], [[_e(k), _e(v)] for k, v in (summary.get("versions") or {}).items()],
                      numeric_from=99)
    options = f"<pre>{_e(json.dumps(summary.get('options') or {}, indent=2, default=str))}</pre>"
    metric_rows = []
    if metrics is not None:
        for r in metrics.to_pylist():
            value = r["VALUE"] if r["KIND"] != "distribution" else (
                f"n={r['COUNT']:,} mean={r['MEAN'] or 0:,.1f} min={r['MIN'] or 0:,.0f} max={r['MAX'] or 0:,.0f}"
                if r["COUNT"] is not None else None)
            metric_rows.append([_e(r["NAMESPACE"]), _e(r["NAME"]), _e(r["STEP"]), _e(r["KIND"]),
                                _num(value) if isinstance(value, float) else _e(value)])
    metrics_table = _table(["namespace", "name", "step", "kind", "value"], metric_rows, numeric_from=4)
    return (
        "<h2>Run details</h2>"
        f"<p>Run <code>{_e(summary['run_id'])}</code>, partner <b>{_e(summary['partner'])}</b>, "
        f"as of {_e(summary['as_of'])}, runner {_e(summary['runner'])}, started {_e(summary['started_at'])}, "
        f"finished {_e(summary['finished_at'])}, exit code {_e(summary.get('exit_code'))}.</p>"
        f"{inputs}<details><summary>Options</summary>{options}</details>"
        f"<details><summary>Package versions</summary>{versions}</details>"
        f"<details><summary>All Beam metrics ({len(metric_rows)})</summary>{metrics_table}</details>"
    )


def _share_text(n: int, total: int) -> str:
    return f"{n:,} ({_share(n, total)})"


def _ms(value) -> str:
    return _num(value, 1) if value is not None else NONE


def _rate(value) -> str:
    return f"{100 * value:.2f}%" if value is not None else NONE


def _psi_cell(value, flag) -> str:
    if value is None:
        return NONE
    text = f"{value:.3f}"
    return f"<b style='color:{FLAG_COLORS[flag]}'>{text} {flag}</b>" if flag else text


def _section_baseline(comparison: dict, images: dict) -> str:
    m, mix = comparison["members"], comparison["offers"]
    base = comparison["baseline"]
    parts = [
        "<h2>Since the baseline</h2>",
        f"<p>Baseline: run <code>{_e(base['run_id'])}</code> as of {_e(base['as_of'])} "
        f"(<code>{_e(base['output'])}</code>). The numbers are in {COMPARISON_JSON} beside this page.</p>",
        f"<p class='lead'>{_e(comparison['headline'])}</p>",
        "<h3>Members</h3>",
        _table(["baseline", "now", "new", "gone", "kept", "kept, outcome changed"],
               [[_num(m["then"]), _num(m["now"]), _num(m["new"]), _num(m["gone"]), _num(m["kept"]),
                 _num(m["kept_changed_outcome"])]], numeric_from=0),
        "<h3>Offers</h3>",
    ]
    offers = sorted(set(mix["then"]) | set(mix["now"]))
    total_then, total_now = sum(mix["then"].values()), sum(mix["now"].values())
    parts.append(_table(["offer", "baseline", "now"], [
        [_e(o), _share_text(mix["then"].get(o, 0), total_then), _share_text(mix["now"].get(o, 0), total_now)]
        for o in offers] + [["PSI of the mix", _psi_cell(mix["psi"], mix["flag"]), ""]]))
    parts.append(_img(images, "baseline_offers.png"))
    outcomes_then = sorted({t["then"] for t in m["transitions"]}, key=str)
    outcomes_now = sorted({t["now"] for t in m["transitions"]}, key=str)
    cell = {(t["then"], t["now"]): t["members"] for t in m["transitions"]}
    parts.append("<h3>Kept members: outcome then (rows) and now (columns)</h3>"
                 "<p>An outcome is the member's offer, or its status when it got none.</p>")
    parts.append(_table(["baseline \\ now", *outcomes_now], [
        [_e(a), *[(f"<b>{cell[a, b]:,}</b>" if a != b else f"{cell[a, b]:,}") if (a, b) in cell else NONE
                  for b in outcomes_now]] for a in outcomes_then]))
    parts.append("<h3>Features and predictions</h3><p>Members with transactions. PSI over ten bins at the "
                 "baseline's deciles (above 0.1 moderate, above 0.25 major); KS is the two-sample "
                 "Kolmogorov-Smirnov statistic (the largest gap between the two cumulative distributions).</p>")
    parts.append(_table(["column", "members then", "members now", "mean then", "mean now", "PSI", "KS", "KS p-value"], [
        [_e(c["column"]), _num(c["n_then"]), _num(c["n_now"]), _num(c["mean_then"], 3), _num(c["mean_now"], 3),
         _psi_cell(c["psi"], c["flag"]), _num(c["ks"], 3), f"{c['ks_pvalue']:.3g}" if c["ks_pvalue"] is not None else NONE]
        for c in comparison["columns"]]))
    if comparison["columns_not_compared"]:
        parts.append(f"<p>Not in the baseline, so not compared: {_e(', '.join(comparison['columns_not_compared']))}.</p>")
    parts.append(_img(images, "baseline_drift.png"))
    dead = comparison["dead_letters"]
    parts.append("<h3>Rejected rows by reason</h3>")
    parts.append(_table(["reason", "baseline", "now"], [
        [_e(r), _num(v["then"]), _num(v["now"])] for r, v in dead["reasons"].items()]
        + [["all reasons", _num(dead["total_then"]), _num(dead["total_now"])],
           ["rows read", _num(dead["rows_read_then"]), _num(dead["rows_read_now"])]]))
    ends = comparison["endpoints"]
    parts.append("<h3>Endpoints</h3>")
    parts.append(_table(["endpoint", "p50 then (ms)", "p50 now", "p95 then", "p95 now", "calls then", "calls now"], [
        [_e(k), _ms(v["then"]["p50"]), _ms(v["now"]["p50"]), _ms(v["then"]["p95"]), _ms(v["now"]["p95"]),
         _num(v["then"]["calls"]), _num(v["now"]["calls"])] for k, v in ends["latency_ms"].items()]
        + [["failure rate (FAILED / called)", _rate(ends["failure_rate"]["then"]), _rate(ends["failure_rate"]["now"]),
            "", "", "", ""]]))
    return "".join(parts)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1300px;
color:#222;padding:0 1em}
h1{margin-bottom:.2em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.lead{font-size:1.2em;background:#f3f6fa;border-left:4px solid #1565c0;padding:.6em 1em}
table{border-collapse:collapse;margin:.6em 1em .8em 0;font-size:.92em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f5f5f5} td.n{text-align:right;font-variant-numeric:tabular-nums}
code{font-size:.9em;word-break:break-all} figure{margin:.5em 0} img{max-width:100%;border:1px solid #eee}
figcaption{color:#666;font-size:.85em} .row{display:flex;flex-wrap:wrap;gap:1.5em}
details{margin:.5em 0} pre{background:#f7f7f7;padding:.6em;overflow:auto}
"""


def render_html(summary: dict, results: pa.Table, dead: pa.Table | None, metrics: pa.Table | None,
                images: dict, comparison: dict | None = None) -> str:
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Lantern run {_e(summary['run_id'])}</title><style>{_CSS}</style></head><body>"
        f"<h1>Offer pipeline run — partner {_e(summary['partner'])}, as of {_e(summary['as_of'])}</h1>"
        f"<p class='lead'>{_e(headline(summary))}</p>"
        f"{_section_baseline(comparison, images) if comparison is not None else ''}"
        f"{_section_members(summary, results, images)}"
        f"{_section_time(summary, images)}"
        f"{_section_rejected(summary, dead, results, images)}"
        f"{_section_features(results, images)}"
        f"{_section_details(summary, metrics)}"
        "</body></html>\n"
    )


def _write(path: str, data: bytes) -> None:
    with FileSystems.create(path) as handle:
        handle.write(data)


def build_report(output: str, baseline: str | None = None) -> str:
    """Write the PNGs and report.html into ``output``; returns the report's path.

    With ``baseline`` (a previous run's output folder), also the "Since the
    baseline" section, its figures, and ``comparison.json``.
    """
    summary, results, dead, metrics = load_run(output)
    comparison = None
    if baseline is not None:  # first: a bad baseline fails before anything is drawn
        from lantern.comparison import compare

        baseline_summary, baseline_results, _, _ = load_run(baseline)
        comparison = compare(baseline_summary, baseline_results, summary, results, feature_names(results))
    images = {}
    for name, _ in FIGURES:
        images[name] = _png(FIGURE_MAKERS[name](summary, results))
        _write(join(output, name), images[name])
    if comparison is not None:
        _write(join(output, COMPARISON_JSON), (json.dumps(comparison, indent=2) + "\n").encode("utf-8"))
        makers = {"baseline_offers.png": lambda: fig_baseline_offers(comparison),
                  "baseline_drift.png": lambda: fig_baseline_drift(comparison, baseline_results, results)}
        for name, _ in BASELINE_FIGURES:
            images[name] = _png(makers[name]())
            _write(join(output, name), images[name])
        log.info("compared with the baseline %s: %s", baseline, comparison["headline"])
    path = join(output, REPORT_HTML)
    _write(path, render_html(summary, results, dead, metrics, images, comparison).encode("utf-8"))
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


if __name__ == "__main__":
    sys.exit(main())
