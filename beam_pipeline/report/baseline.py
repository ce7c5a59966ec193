"""The "Since the baseline" section and its figures, drawn from ``lantern.comparison``'s numbers."""
from __future__ import annotations

import pyarrow as pa

from beam_pipeline.report.charts import NONE, empty, figure, unit
from beam_pipeline.report.markup import e, num, table

COMPARISON_JSON = "comparison.json"
MEMBER_CHANGES = "comparison_members.parquet"
HIST_BINS = 30
HIST_CLIP = (0.5, 99.5)  # percentiles of both runs together: a long tail would squash every bar
FLAG_COLORS = {"major": "#c62828", "moderate": "#ef6c00", None: "#222"}
MEMBERS_SHOWN = 20


def fig_offers(comparison: dict):
    fig, (ax,) = figure(9, 4)
    mix = comparison["offers"]
    offers = sorted(set(mix["then"]) | set(mix["now"]))
    if not offers:
        empty(ax, "no member got an offer in either run")
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
    ax.set_xlabel("offer")
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


def fig_drift(comparison: dict, baseline: pa.Table, results: pa.Table):
    from lantern.comparison import finite, with_transactions

    columns = comparison["columns"]
    ncols = 3
    nrows = max(1, -(-len(columns) // ncols))
    fig, axes = figure(13, 3.1 * nrows, ncols=ncols, nrows=nrows)
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
            ax.set_xlabel(unit(name), fontsize=8)
        else:
            empty(ax, "no values in one of the runs")
        psi = f"PSI {col['psi']:.3f}" if col["psi"] is not None else "PSI n/a"
        flag = f" ({col['flag']}: {', '.join(col['flagged_by'])})" if col["flag"] else ""
        ax.set_title(f"{name}: {psi}{flag}", fontsize=9, color=FLAG_COLORS.get(col["flag"], "#222"))
        ax.tick_params(labelsize=8)
        ax.set_ylabel("% of members", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(columns):]:
        ax.set_visible(False)
    return fig


def _share_text(n: int, total: int) -> str:
    from beam_pipeline.report.charts import share

    return f"{n:,} ({share(n, total)})"


def _ms(value) -> str:
    return num(value, 1) if value is not None else NONE


def _rate(value) -> str:
    return f"{100 * value:.2f}" if value is not None else NONE


def _flag_cell(column: dict) -> str:
    if not column["flag"]:
        return ""
    return f"<b style='color:{FLAG_COLORS[column['flag']]}'>{column['flag']}: {e(', '.join(column['flagged_by']))}</b>"


def _ids(part: dict) -> str:
    if not part["count"]:
        return NONE
    shown = part["ids"][:MEMBERS_SHOWN]
    more = f" and {part['count'] - len(shown):,} more" if part["count"] > len(shown) else ""
    return f"{', '.join(e(i) for i in shown)}{more}"


def section(comparison: dict, img) -> str:
    m, mix = comparison["members"], comparison["offers"]
    base = comparison["baseline"]
    parts = [
        "<h2>Since the baseline</h2>",
        f"<p>Baseline: run <code>{e(base['run_id'])}</code>, partner {e(base.get('partner'))}, as of "
        f"{e(base['as_of'])}, read from <code>{e(base['output'])}</code>. Every number is in "
        f"{COMPARISON_JSON} beside this page; one row per new, gone or changed member in {MEMBER_CHANGES}.</p>",
        f"<p class='lead'>{e(comparison['headline'])}</p>",
    ]
    if comparison["not_compared"]:
        parts.append("<p>Not compared: " + "; ".join(f"{e(n['what'])} ({e(n['why'])})"
                                                     for n in comparison["not_compared"]) + ".</p>")
    parts.append("<h3>Members</h3>")
    if m["compared"]:
        parts.append(table(["baseline", "now", "new", "gone", "kept", "kept, outcome changed",
                            "kept, features changed"],
                           [[num(m["then"]), num(m["now"]), num(m["new"]), num(m["gone"]), num(m["kept"]),
                             num(m["kept_changed_outcome"]), num(m["kept_changed_features"])]], numeric_from=0))
        parts.append(table(["members", "count", f"ids (first {MEMBERS_SHOWN})"], [
            ["new", num(m["new_ids"]["count"]), _ids(m["new_ids"])],
            ["gone", num(m["gone_ids"]["count"]), _ids(m["gone_ids"])],
            ["kept, offer changed", num(m["changed_offer_ids"]["count"]), _ids(m["changed_offer_ids"])],
        ], numeric_from=1))
        if m["kept_changed_features_by_column"]:
            parts.append(table(["feature", "kept members whose value changed"],
                               [[e(c), num(n)] for c, n in m["kept_changed_features_by_column"].items()]))
    else:
        parts.append(f"<p>{m['then']:,} members in the baseline, {m['now']:,} now; not compared by id.</p>")
    parts.append("<h3>Offers</h3><p>Shares are of the members with an offer in each run.</p>")
    offers = sorted(set(mix["then"]) | set(mix["now"]))
    total_then, total_now = sum(mix["then"].values()), sum(mix["now"].values())
    psi = mix["psi"]
    parts.append(table(["offer", "baseline: members (share)", "now: members (share)"], [
        [e(o), _share_text(mix["then"].get(o, 0), total_then), _share_text(mix["now"].get(o, 0), total_now)]
        for o in offers] + [["PSI of the mix", f"{psi:.3f}" if psi is not None else NONE, ""]]))
    parts.append(img("baseline_offers.png"))
    if m["compared"]:
        outcomes_then = sorted({t["then"] for t in m["transitions"]}, key=str)
        outcomes_now = sorted({t["now"] for t in m["transitions"]}, key=str)
        cell = {(t["then"], t["now"]): t["members"] for t in m["transitions"]}
        parts.append("<h3>Kept members: outcome then (rows) and now (columns)</h3>"
                     "<p>An outcome is the member's offer, or its status when it got none.</p>")
        parts.append(table(["baseline \\ now", *outcomes_now], [
            [e(a), *[(f"<b>{cell[a, b]:,}</b>" if a != b else f"{cell[a, b]:,}") if (a, b) in cell else NONE
                     for b in outcomes_now]] for a in outcomes_then]))
    t = comparison["thresholds"]
    parts.append(
        "<h3>Features and predictions</h3><p>Members with transactions. A column is flagged by any of: "
        f"PSI over ten bins at the baseline's deciles above {t['psi_moderate']} (above {t['psi_major']}: major); "
        f"the two-sample Kolmogorov-Smirnov test with p below {t['ks_pvalue']:g} and statistic at least "
        f"{t['ks_min_statistic']} (the largest gap between the two cumulative distributions); the mean moved "
        f"by at least {t['mean_min_shift_sd']} baseline standard deviations with Welch's p below "
        f"{t['mean_pvalue']:g}.</p>")
    parts.append(table(["column", "unit", "members then", "members now", "mean then", "mean now", "mean change (%)",
                        "PSI", "KS", "KS p-value", "flag"], [
        [e(c["column"]), e(unit(c["column"])), num(c["n_then"]), num(c["n_now"]), num(c["mean_then"], 3),
         num(c["mean_now"], 3), num(c["mean_change_pct"], 1), num(c["psi"], 3), num(c["ks"], 3),
         f"{c['ks_pvalue']:.3g}" if c["ks_pvalue"] is not None else NONE, _flag_cell(c)]
        for c in comparison["columns"]], numeric_from=2))
    parts.append(img("baseline_drift.png"))
    dead = comparison["dead_letters"]
    parts.append("<h3>Rejected rows by reason</h3>")
    parts.append(table(["reason", "baseline (rows)", "now (rows)"], [
        [e(r), num(v["then"]), num(v["now"])] for r, v in dead["reasons"].items()]
        + [["all reasons", num(dead["total_then"]), num(dead["total_now"])],
           ["rows read", num(dead["rows_read_then"]), num(dead["rows_read_now"])]]))
    ends = comparison["endpoints"]
    parts.append("<h3>Endpoints</h3><p>Latency per call: the total (retries included) and, where both runs "
                 "measured it, the time on the wire (request sent to response read: the server's share). "
                 f"A rise of more than {100 * t['latency_rise']:.0f}% and at least {t['latency_min_ms']:g} ms "
                 "is in bold.</p>")
    for key, part in (("latency_ms", "latency"), ("wire_ms", "wire time")):
        if key not in ends:
            continue
        regressed = {(r["endpoint"], r["percentile"]) for r in ends["latency_regressions"] if r["part"] == part}

        def cell(kind, q, side, key=key, regressed=regressed):
            text = _ms(ends[key][kind][side][q])
            bold = side == "now" and (kind, q) in regressed
            return f"<b style='color:{FLAG_COLORS['major']}'>{text}</b>" if bold else text

        parts.append(table([f"endpoint ({part})", "p50 then (ms)", "p50 now (ms)", "p95 then (ms)", "p95 now (ms)",
                            "calls then", "calls now"], [
            [e(k), cell(k, "p50", "then"), cell(k, "p50", "now"), cell(k, "p95", "then"), cell(k, "p95", "now"),
             num(v["then"]["calls"]), num(v["now"]["calls"])] for k, v in ends[key].items()]))
    parts.append(table(["failure rate", "baseline (%)", "now (%)"], [
        ["FAILED / members called", _rate(ends["failure_rate"]["then"]), _rate(ends["failure_rate"]["now"])]]))
    return "".join(parts)
