"""The run's figures (matplotlib): every axis labelled with its unit, every share with its denominator.

Each ``fig_*`` takes the loaded :class:`~beam_pipeline.report.folder.Run` and
returns a figure; ``png`` renders it. Drawing helpers shared with the baseline
and streaming figures live here too.
"""
from __future__ import annotations

import io
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from beam_pipeline.report.folder import Run

KINDS = ("ats", "resp", "offer")
SCATTER_POINTS = 20_000  # more only slows the drawing and hides nothing
LATENCY_FLOOR_MS = 0.1  # the latency histograms' first bar holds everything shorter
DPI = 100
NONE = "\u2013"  # an en dash: the report's mark for a missing value
STATUS_COLORS = {"OK": "#2e7d32", "NO_TRANSACTIONS": "#9e9e9e", "FAILED": "#c62828"}
# The unit of each contract feature (docs/contract.md); a partner's extra feature gets one from its name.
FEATURE_UNITS = {
    "AVG_POINTS_BOUGHT": "points",
    "AVG_REVENUE_USD": "USD",
    "LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT": "points",
    "LAST_3_TRANSACTIONS_AVG_REVENUE_USD": "USD",
    "PCT_BUY_TRANSACTIONS": "share of transactions, 0-1",
    "PCT_GIFT_TRANSACTIONS": "share of transactions, 0-1",
    "PCT_REDEEM_TRANSACTIONS": "share of transactions, 0-1",
    "DAYS_SINCE_LAST_TRANSACTION": "days",
    "N_TRANSACTIONS": "transactions",
    "ATS_PREDICTION": "ATS score",
    "RESP_PREDICTION": "probability, 0-1",
}


def unit(name: str) -> str:
    if name in FEATURE_UNITS:
        return FEATURE_UNITS[name]
    upper = name.upper()
    for token, text in (("USD", "USD"), ("POINTS", "points"), ("DAYS", "days"), ("PCT", "share, 0-1")):
        if token in upper:
            return text
    return "value"


def figure(width: float = 10, height: float = 4.2, ncols: int = 1, nrows: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=13, color="#555", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def share(n: int, total: int) -> str:
    """A percentage that stays readable for small shares (0.04%, not 0.0%)."""
    if not total:
        return NONE
    pct = 100 * n / total
    return f"{pct:.1f}%" if pct >= 1 or pct == 0 else f"{pct:.2g}%"


def bars(ax, counts: dict, color, total: int, horizontal: bool = False) -> None:
    """Bars with their count and share of ``total`` (the denominator the caller states) on them."""
    labels = [str(k) for k in counts]
    values = list(counts.values())
    drawn = (ax.barh if horizontal else ax.bar)(labels, values, color=color)
    ax.bar_label(drawn, [f"{v:,} ({share(v, total)})" for v in values], padding=3, fontsize=10)
    if horizontal:
        ax.invert_yaxis()
        ax.set_xlim(0, max(values) * 1.35 if values else 1)
    else:
        ax.set_ylim(0, max(values) * 1.18 if values else 1)
    ax.grid(axis="x" if horizontal else "y", alpha=0.3)


def palette(names) -> dict:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(sorted(names, key=str))}


def offer_counts(results: pa.Table) -> dict[str, int]:
    counts = Counter(o for o in results.column("OFFER").to_pylist() if o is not None)
    return dict(sorted(counts.items()))


def status_counts(results: pa.Table) -> dict[str, int]:
    """Members per status: the three of docs/contract.md always, then any other the run wrote (FEATURES_ONLY)."""
    counts = Counter(results.column("STATUS").to_pylist())
    ordered = {s: counts.get(s, 0) for s in STATUS_COLORS}
    ordered.update({s: n for s, n in sorted(counts.items(), key=lambda kv: str(kv[0])) if s not in ordered})
    return ordered


def fig_offers(run: Run):
    fig, (ax,) = figure(8, 4)
    offers, members = offer_counts(run.results), run.results.num_rows
    if offers:
        colors = palette(offers)
        bars(ax, offers, [colors[k] for k in offers], total=members)
        ax.set_ylabel("members")
        ax.set_xlabel("offer (bar labels: members, share of all members)")
        ax.set_title(f"Offer per member ({sum(offers.values()):,} of {members:,} members got one)")
    else:
        empty(ax, "no member got an offer")
    return fig


def fig_statuses(run: Run):
    fig, (ax,) = figure(8, 4)
    ordered = status_counts(run.results)
    bars(ax, ordered, [STATUS_COLORS.get(s, "#1565c0") for s in ordered], total=run.results.num_rows)
    ax.set_ylabel("members")
    ax.set_xlabel("status (bar labels: members, share of all members)")
    ax.set_title(f"Status per member ({run.results.num_rows:,} members)")
    return fig


def _thousands(value, _position) -> str:
    return f"{value:,.0f}"


def untimed_reason(summary: dict) -> str:
    """Why a step has no seconds: the runner reported no time for it, or nobody waited for the job
    (step times come from the runner's metrics, which only a launcher that waits adds to run.json)."""
    steps = summary.get("steps") or []
    if steps and all(s.get("seconds") is None for s in steps) and "launcher_wall_seconds" not in summary:
        return "not timed: the launcher did not wait for the job"
    return "not timed by this runner"


def fig_steps(run: Run):
    """Time per step (every step; an untimed one says so), and each step's rate in a panel of its own
    unit: rows/s, accumulators/s and members/s are not comparable on one axis."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    steps = run.summary.get("steps") or []
    units = list(dict.fromkeys(s["unit"] for s in steps if s.get("per_second")))
    cols = 2
    rate_rows = max(1, -(-len(units) // cols))
    fig = Figure(figsize=(12, 1.6 + 0.4 * len(steps) + 2.4 * rate_rows), dpi=DPI, layout="constrained")
    grid = fig.add_gridspec(1 + rate_rows, cols, height_ratios=[0.8 + 0.4 * len(steps) / 2.4] + [1] * rate_rows)
    top = fig.add_subplot(grid[0, :])
    if not steps:
        empty(top, "run.json lists no steps")
        return fig
    names = [s["name"] for s in steps]
    seconds = [s["seconds"] if s.get("seconds") is not None else 0 for s in steps]
    untimed = untimed_reason(run.summary)
    drawn = top.barh(names, seconds, color=["#1565c0" if s.get("seconds") is not None else "#bdbdbd" for s in steps])
    top.bar_label(drawn, [f"{s['seconds']:.3f} s" if s.get("seconds") is not None else untimed
                          for s in steps], padding=3)
    top.invert_yaxis()
    top.set_xlim(0, (max(seconds) or 1) * 1.3)
    top.set_xlabel("seconds")
    top.set_ylabel("step")
    top.set_title("Time per step")
    top.grid(axis="x", alpha=0.3)
    for i, name in enumerate(units):
        ax = fig.add_subplot(grid[1 + i // cols, i % cols])
        rated = [s for s in steps if s.get("per_second") and s["unit"] == name]
        drawn = ax.barh([s["name"] for s in rated], [s["per_second"] for s in rated], color="#6a1b9a")
        ax.bar_label(drawn, [f"{s['per_second']:,.0f}" for s in rated], padding=3, fontsize=9)
        ax.invert_yaxis()
        ax.set_xlim(0, max(s["per_second"] for s in rated) * 1.35)
        ax.xaxis.set_major_formatter(FuncFormatter(_thousands))
        ax.set_xlabel(f"{name} per second")
        ax.set_ylabel("step")
        ax.set_title(f"Rate, {name}/s", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    if not units:
        empty(fig.add_subplot(grid[1, :]), "no step has a rate (no step times)")
    return fig


def latency_columns(results: pa.Table, kind: str) -> list[tuple[str, str]]:
    """(column, label) of one endpoint's latency columns present in the results: the call's total
    and, where the run measured them, its wait for a slot and its time on the wire."""
    out = []
    for suffix, label in (("LATENCY_MS", "total per call"), ("WAIT_MS", "waiting for a slot"),
                          ("WIRE_MS", "on the wire")):
        name = f"{kind.upper()}_{suffix}"
        if name in results.column_names:
            out.append((name, label))
    return out


def fig_latency(run: Run):
    """Per endpoint, histograms of each measured part of a call on a log scale: waiting for a slot can be
    a hundred times the time on the wire, and both must stay readable."""
    import numpy as np

    fig, axes = figure(13, 4, ncols=3)
    results = run.results if run.updates is None else run.updates
    for ax, kind in zip(axes, KINDS, strict=True):
        columns = latency_columns(results, kind)
        series = [(label, np.asarray([v for v in results.column(column).to_pylist() if v is not None and v > 0]))
                  for column, label in columns]
        series = [(label, values) for label, values in series if len(values)]
        if not series:
            empty(ax, f"no {kind} calls")
            ax.set_title(kind)
            continue
        # Under 0.1 ms (a free slot at once) is drawn in the first bar: no need for decades of nothing.
        low = max(min(values.min() for _, values in series), LATENCY_FLOOR_MS)
        high = max(max(values.max() for _, values in series), low * 2)
        edges = np.geomspace(low, high * 1.0001, 41)
        for (label, values), color in zip(series, ("#00838f", "#ef6c00", "#6a1b9a"), strict=False):
            ax.hist(values.clip(low, None), bins=edges, color=color, histtype="step", linewidth=1.6, label=label)
        ax.set_xscale("log")
        ax.legend(fontsize=8)
        calls = pc.count(results.column(columns[0][0])).as_py()
        ax.set_title(f"{kind} ({calls:,} calls)")
        ax.set_xlabel(f"milliseconds per call (log scale; first bar: under {LATENCY_FLOOR_MS:g} ms too)")
        ax.set_ylabel("calls")
        ax.grid(alpha=0.3)
    return fig


def fig_dead_letters(run: Run):
    reasons = run.summary.get("dead_letter_reasons") or _reasons(run.dead)
    fig, (ax,) = figure(9, max(2.5, 0.5 * len(reasons) + 1.5))
    if not reasons:
        empty(ax, "no rejected rows")
        return fig
    ordered = dict(sorted(reasons.items(), key=lambda kv: -kv[1]))
    bars(ax, ordered, "#ef6c00", total=rows_read(run.summary), horizontal=True)
    ax.set_xlabel("rows (bar labels: rows, share of all rows read)")
    ax.set_ylabel("reason")
    ax.set_title(f"{sum(reasons.values()):,} rejected rows by reason")
    return fig


def _reasons(dead: pa.Table | None) -> dict[str, int]:
    return dict(Counter(dead.column("REASON").to_pylist())) if dead is not None else {}


def rows_read(summary: dict) -> int:
    acc = summary.get("accounting") or {}
    return acc.get("rows_read", acc.get("rows_replayed", 0))


def feature_names(results: pa.Table) -> list[str]:
    """Feature columns: those between MEMBER_ID and N_TRANSACTIONS in the results schema."""
    names = results.column_names
    start = names.index("MEMBER_ID") + 1
    end = names.index("N_TRANSACTIONS") if "N_TRANSACTIONS" in names else len(names)
    return names[start:end]


def fig_features(run: Run):
    names = feature_names(run.results)
    ncols = 3
    nrows = max(1, -(-len(names) // ncols))
    fig, axes = figure(13, 3.0 * nrows, ncols=ncols, nrows=nrows)
    for ax, name in zip(axes, names, strict=False):  # spare axes are hidden below
        values = run.results.column(name).drop_null().to_pylist()
        if values:
            ax.hist(values, bins=30, color="#5d4037", histtype="stepfilled")
            ax.set_xlabel(unit(name), fontsize=8)
            ax.set_ylabel("members", fontsize=8)
        else:
            empty(ax, "no values")
        ax.set_title(f"{name} (n={len(values):,})", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    return fig


def fig_ats_resp(run: Run):
    results = run.results
    fig, (ax,) = figure(9, 6)
    called = results.filter(pc.and_(pc.is_valid(results.column("ATS_PREDICTION")),
                                    pc.is_valid(results.column("RESP_PREDICTION"))))
    if called.num_rows == 0:
        empty(ax, "no member has both predictions")
        return fig
    title = "Predictions per member, coloured by the offer they got"
    offers = [o if o is not None else "no offer" for o in called.column("OFFER").to_pylist()]
    totals = Counter(offers)
    # Past SCATTER_POINTS, one member in `stride` of each offer: the same run gives the same
    # picture, and a rare offer keeps its points.
    stride = -(-called.num_rows // SCATTER_POINTS)
    if stride > 1:
        title += f" (1 member in {stride} drawn)"
    colors = palette(totals)
    ats, resp = called.column("ATS_PREDICTION").to_pylist(), called.column("RESP_PREDICTION").to_pylist()
    for offer in sorted(totals, key=str):
        idx = [i for i, o in enumerate(offers) if o == offer][::stride]
        ax.scatter([ats[i] for i in idx], [resp[i] for i in idx], s=14, alpha=0.7, color=colors[offer],
                   label=f"{offer} ({totals[offer]:,} members)")
    ax.set_xlabel(f"ATS prediction ({unit('ATS_PREDICTION')})")
    ax.set_ylabel(f"RESP prediction ({unit('RESP_PREDICTION')})")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return fig
